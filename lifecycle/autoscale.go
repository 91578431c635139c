package lifecycle

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// PoolScale is an autoscaled pool's size as this Manager sees it, for the
// admin API, metrics and the dashboard.
type PoolScale struct {
	// Desired is the count given to SetDesired; DesiredSet is false before
	// the first call (after a restart reconciliation then leaves the
	// pool's size alone).
	Desired    int  `json:"desired"`
	DesiredSet bool `json:"desired_set"`
	// Serving counts active instances that are not dead and not leaving.
	Serving int `json:"serving"`
	// Provisioning counts creates in progress, Starting warm starts in
	// progress, Leaving scale-downs in progress (draining, stopping,
	// destroying).
	Provisioning int `json:"provisioning"`
	Starting     int `json:"starting"`
	Leaving      int `json:"leaving"`
	// Stopped counts the warm pool's stopped instances and StoppedRate is
	// what they bill ($/hour, storage).
	Stopped     int     `json:"stopped"`
	StoppedRate float64 `json:"stopped_rate"`
	// LastRefusal is why the latest scale-up could not be made (budget,
	// max_instances, credit, no offer), and when; empty when the latest
	// one could.
	LastRefusal   string    `json:"last_refusal,omitempty"`
	LastRefusalAt time.Time `json:"last_refusal_at,omitzero"`
}

// SetDesired sets the count an autoscaled pool converges to, and asks Run
// for a reconciliation soon when it changed. It never blocks.
func (m *Manager) SetDesired(pool string, n int) {
	m.mu.Lock()
	if m.desired == nil {
		m.desired = map[string]int{}
	}
	prev, ok := m.desired[pool]
	m.desired[pool] = n
	m.mu.Unlock()
	if !ok || prev != n {
		m.Kick()
	}
}

// Kick asks Run for a reconciliation now; kicks coalesce. It never blocks.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// PoolScale returns an autoscaled pool's size; ok is false for a pool
// that is not configured or not autoscaled.
func (m *Manager) PoolScale(pool string) (PoolScale, bool) {
	tpl, ok := m.cfg.Pools[pool]
	if !ok || !tpl.Autoscale.Enabled {
		return PoolScale{}, false
	}
	rows, _, _ := m.latestListing()
	byID := make(map[int64]*vastclient.Instance, len(rows))
	for i := range rows {
		byID[rows[i].ID] = &rows[i]
	}
	recs := &records{ops: map[string]*Operation{}, insts: map[int64]*InstanceRecord{}}
	m.mu.Lock()
	for id, op := range m.ops {
		recs.ops[id] = op.clone()
	}
	for id, r := range m.insts {
		c := *r
		recs.insts[id] = &c
	}
	d, set := m.desired[pool]
	ps := PoolScale{Desired: d, DesiredSet: set}
	if si := m.scale[pool]; si != nil {
		ps.LastRefusal, ps.LastRefusalAt = si.refusal, si.refusalAt
	}
	m.mu.Unlock()
	c := m.scaleCount(recs, pool, nil, byID)
	ps.Serving, ps.Provisioning, ps.Starting, ps.Leaving = c.serving, c.provisioning, c.starting, c.leaving
	ps.Stopped, ps.StoppedRate = c.stopped, c.stoppedRate
	return ps, true
}

// scaleInfo is what the Manager remembers of an autoscaled pool's
// scale-ups: the latest refusal and the last one logged (each distinct
// refusal is logged once, not at every retry).
type scaleInfo struct {
	refusal   string
	refusalAt time.Time
	logged    string
}

// scaleView is an autoscaled pool's size as reconciliation counts it.
type scaleView struct {
	serving      int // active, not dead, not leaving
	provisioning int // records being provisioned (not dead) and creates in progress
	starting     int // warm starts in progress
	stopping     int // stops in progress (part of leaving)
	leaving      int // stops and scale-down destructions in progress
	stopped      int // warm instances not being started
	stoppedRate  float64
	// busy are the instances a start, stop or scale-down works on.
	busy map[int64]bool
}

// count is what the desired count is compared with.
func (c scaleView) count() int { return c.serving + c.provisioning + c.starting }

// scaleCount counts pool's instances for autoscaling (see PoolScale). A
// create whose outcome is unknown is a provisioning in progress (poolCount's
// rule), so no second create is made while it is uncertain.
// stopRecorded reports whether a stop's instance is recorded stopped: the
// stop wrote the record and has yet to mark itself succeeded.
func stopRecorded(recs *records, op *Operation) bool {
	rec := recs.insts[op.InstanceID]
	return rec != nil && rec.State == InstanceStopped && rec.ScaleOp != op.ID
}

func (m *Manager) scaleCount(recs *records, pool string, dead map[int64]bool, byID map[int64]*vastclient.Instance) scaleView {
	c := scaleView{busy: map[int64]bool{}}
	for _, op := range recs.ops {
		if op.Pool != pool || op.Final() || op.InstanceID <= 0 {
			continue
		}
		switch {
		case op.Kind == KindStart:
			c.starting++
			c.busy[op.InstanceID] = true
		case op.Kind == KindStop && stopRecorded(recs, op):
			// Its work is done (the record says stopped) and only the
			// operation's own end is left: the instance is warm already.
		case op.Kind == KindStop:
			c.stopping++
			c.leaving++
			c.busy[op.InstanceID] = true
		case op.Kind == KindDestroy && op.Autoscale:
			c.leaving++
			c.busy[op.InstanceID] = true
		}
	}
	c.provisioning = m.poolCount(recs, pool, dead).inProgress
	for id, rec := range recs.insts {
		if rec.Pool != pool || dead[id] {
			continue
		}
		switch rec.State {
		case InstanceProvisioning:
			c.provisioning++
		case InstanceActive:
			if !c.busy[id] {
				c.serving++
			}
		case InstanceStopped:
			if c.busy[id] {
				continue
			}
			c.stopped++
			if row := byID[id]; rowStopped(row) {
				c.stoppedRate += ledger.Rate(row)
			} else { // not listed, or listed before it stopped
				c.stoppedRate += rec.StoppedRate
			}
		}
	}
	return c
}

// desiredOf returns the count given to SetDesired for pool.
func (m *Manager) desiredOf(pool string) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.desired[pool]
	return n, ok
}

// autoscaleSpec is pool's autoscale block, defaults applied.
func (m *Manager) autoscaleSpec(pool string) AutoscaleSpec {
	tpl, ok := m.cfg.Pools[pool]
	if !ok {
		tpl = PoolTemplate{Autoscale: AutoscaleSpec{Enabled: true}}.withDefaults()
	}
	return tpl.Autoscale
}

// reconcileScale converges each autoscaled pool to its desired count:
// up by starting warm instances, then creating; down by draining, then
// stopping (up to warm.stopped) or destroying. It also destroys stopped
// instances past warm.max_stopped_age. A pool whose SetDesired was not
// called yet (a process just started) keeps its size. The Store lock must
// be held and the listing must have succeeded.
func (m *Manager) reconcileScale(ctx context.Context, recs *records, dead map[int64]bool,
	byID map[int64]*vastclient.Instance, listedAt time.Time, rep *Report) []*Operation {
	var out []*Operation
	pending := false
	for _, pool := range slices.Sorted(maps.Keys(m.cfg.Pools)) {
		tpl := m.cfg.Pools[pool]
		if !tpl.Autoscale.Enabled {
			continue
		}
		desired, set := m.desiredOf(pool)
		out = append(out, m.retireStopped(ctx, recs, pool, tpl, byID, set, rep)...)
		if !set {
			continue
		}
		c := m.scaleCount(recs, pool, dead, byID)
		switch have := c.count(); {
		case desired > have:
			out = append(out, m.scaleUp(ctx, recs, pool, tpl, desired-have, byID, listedAt, rep)...)
		case desired < have && c.provisioning+c.starting == 0:
			out = append(out, m.scaleDown(ctx, recs, pool, tpl, have-desired, c, dead, rep)...)
		}
		if m.scaleCount(recs, pool, dead, byID).count() != desired {
			pending = true
		}
	}
	m.scalePending.Store(pending)
	return out
}

// scaleUp adds need instances to pool, each within max_instances (stopped
// instances do not count against it), the budgets (at the instance's full
// running price) and the credit guard: the cheapest eligible warm
// instance is started first, else one is created. The first refusal ends
// it and is kept in PoolScale.LastRefusal.
func (m *Manager) scaleUp(ctx context.Context, recs *records, pool string, tpl PoolTemplate, need int,
	byID map[int64]*vastclient.Instance, listedAt time.Time, rep *Report) []*Operation {
	var out []*Operation
	refusal := m.checkCredit(ctx, pool)
	var prices []float64
	created := 0
	for i := 0; i < need && refusal == nil; i++ {
		if c := m.poolCount(recs, pool, nil); tpl.MaxInstances > 0 && c.capTotal()+1 > tpl.MaxInstances {
			refusal = fmt.Errorf("%w: pool %q has %d instances and %d provisionings or starts in progress; max_instances is %d",
				ErrMaxInstances, pool, c.billing, c.inProgress, tpl.MaxInstances)
			break
		}
		if rec := m.warmCandidate(recs, pool, tpl, byID, listedAt); rec != nil {
			if refusal = m.checkSpend(recs, pool, tpl, rec.Price, ""); refusal != nil {
				break
			}
			op, err := m.startWarmLocked(ctx, recs, rec)
			if err != nil {
				rep.errorf("starting warm instance %d: %v", rec.ID, err)
				break
			}
			rep.ScaleStarted = append(rep.ScaleStarted, op.ID)
			out = append(out, op)
			continue
		}
		if prices == nil {
			offers, err := m.candidateOffers(ctx, pool, tpl, 0)
			if err != nil {
				refusal = err
				break
			}
			prices = pickPrices(tpl, offers, m.offersInUse(recs, ""), need)
		}
		price := prices[min(created, len(prices)-1)]
		if refusal = m.checkSpend(recs, pool, tpl, price, ""); refusal != nil {
			break
		}
		op := m.newProvisionOp(pool, TriggerAutoscale, price)
		if err := m.saveOp(ctx, op); err != nil {
			rep.errorf("provisioning pool %q: %v", pool, err)
			break
		}
		recs.ops[op.ID] = op
		created++
		rep.ProvisionsStarted = append(rep.ProvisionsStarted, op.ID)
		out = append(out, op)
	}
	m.noteScale(pool, refusal, rep)
	if len(out) > 0 {
		m.log.Info("scaling up", logPool(pool), zap.Int("need", need), zap.Int("started", len(out)-created),
			zap.Int("created", created))
	}
	return out
}

// noteScale keeps a scale-up's outcome: the refusal (logged at warn once
// per distinct message) or, when it could be made, no refusal.
func (m *Manager) noteScale(pool string, refusal error, rep *Report) {
	m.mu.Lock()
	if m.scale == nil {
		m.scale = map[string]*scaleInfo{}
	}
	si := m.scale[pool]
	if si == nil {
		si = &scaleInfo{}
		m.scale[pool] = si
	}
	if refusal == nil {
		si.refusal, si.refusalAt, si.logged = "", time.Time{}, ""
		m.mu.Unlock()
		return
	}
	msg := refusal.Error()
	si.refusal, si.refusalAt = msg, m.now()
	first := si.logged != msg
	si.logged = msg
	m.mu.Unlock()
	m.noteRefusal(refusal)
	rep.ScaleRefused = append(rep.ScaleRefused, pool+": "+msg)
	if first {
		m.log.Warn("autoscaled pool below its desired count: scale-up refused; retrying every scale_retry_interval",
			logPool(pool), logReason(msg), zap.Duration("retry", m.cfg.ScaleRetryInterval))
	}
}

// warmCandidate returns the cheapest stopped instance of pool that may be
// started: listed as stopped (or stopped, verified, after the listing was
// taken: a listing a moment old must not turn a warm start into a
// create), not worked on, fewer than two failed starts and none within
// the last four start timeouts.
func (m *Manager) warmCandidate(recs *records, pool string, tpl PoolTemplate,
	byID map[int64]*vastclient.Instance, listedAt time.Time) *InstanceRecord {
	busy := m.scaleCount(recs, pool, nil, byID).busy
	now := m.now()
	var best *InstanceRecord
	for id, rec := range recs.insts {
		row := byID[id]
		listedStopped := rowStopped(row) || (row != nil && rec.StoppedAt.After(listedAt))
		if rec.Pool != pool || rec.State != InstanceStopped || busy[id] || !listedStopped ||
			rec.StartFailures >= maxStartFailures ||
			(!rec.StartFailedAt.IsZero() && now.Sub(rec.StartFailedAt) < 4*tpl.Autoscale.Warm.StartTimeout) {
			continue
		}
		if best == nil || rec.Price < best.Price || (rec.Price == best.Price && rec.ID < best.ID) {
			best = rec
		}
	}
	return best
}

// maxStartFailures is the number of failed warm starts after which an
// instance is destroyed instead of stopped again: its machine is busy.
const maxStartFailures = 2

// rowStopped reports whether a row shows a stopped instance (not one
// waiting in "scheduling", which is a start in progress).
func rowStopped(row *vastclient.Instance) bool {
	if row == nil {
		return false
	}
	return row.ActualStatus == "stopped" || (row.CurState == "stopped" && row.IntendedStatus == "stopped")
}

// startWarmLocked records a warm start of rec: the operation first, then
// the record as starting (so that it counts against max_instances and
// budgets at its full price). The Store lock must be held.
func (m *Manager) startWarmLocked(ctx context.Context, recs *records, rec *InstanceRecord) (*Operation, error) {
	op := m.newScaleOp(KindStart, rec, StateStarting, TriggerAutoscale)
	if err := m.saveOp(ctx, op); err != nil {
		return nil, err
	}
	recs.ops[op.ID] = op
	rec.State, rec.ScaleOp = InstanceStarting, op.ID
	if err := m.saveInst(ctx, rec); err != nil {
		// The worker writes it again before it acts.
		m.log.Warn("could not record a warm start", logInst(rec.ID), logOp(op.ID), logErr(err))
	}
	m.log.Info("starting a warm instance", logInst(rec.ID), logPool(rec.Pool), logOp(op.ID), logPrice(rec.Price))
	return op, nil
}

// newScaleOp builds a stop or start operation leased to this Manager.
func (m *Manager) newScaleOp(kind string, rec *InstanceRecord, state, reason string) *Operation {
	now := m.now()
	return &Operation{
		ID: newOpID(), Kind: kind, Pool: rec.Pool, State: state, Reason: reason, Created: now, Updated: now,
		InstanceID: rec.ID, Label: rec.Label, Drain: kind == KindStop, Owner: m.owner, LeaseUntil: now.Add(m.cfg.LeaseTTL),
	}
}

// ReasonScaleDown is the reason of a scale-down's stop or destruction.
const ReasonScaleDown = "autoscale: scale down"

// scaleDown removes excess serving instances of pool, the most expensive
// (then the newest) first, skipping dead ones (not counted; reconcileDead
// handles them) and those being replaced: each is drained
// and then stopped while the warm pool has room, destroyed otherwise.
// Instances already leaving are not counted, so a later reconciliation
// never picks one twice.
func (m *Manager) scaleDown(ctx context.Context, recs *records, pool string, tpl PoolTemplate, excess int,
	c scaleView, dead map[int64]bool, rep *Report) []*Operation {
	var victims []*InstanceRecord
	for id, rec := range recs.insts {
		if rec.Pool == pool && rec.State == InstanceActive && !c.busy[id] && !dead[id] && rec.ReplacedBy == "" {
			victims = append(victims, rec)
		}
	}
	slices.SortFunc(victims, func(a, b *InstanceRecord) int {
		switch {
		case a.Price != b.Price:
			return cmp.Compare(b.Price, a.Price)
		case !a.Created.Equal(b.Created):
			return b.Created.Compare(a.Created)
		}
		return cmp.Compare(b.ID, a.ID)
	})
	var out []*Operation
	warm := c.stopped + c.stopping
	for _, rec := range victims[:min(excess, len(victims))] {
		var op *Operation
		var err error
		if warm < tpl.Autoscale.Warm.Stopped {
			op = m.newScaleOp(KindStop, rec, StateDraining, ReasonScaleDown)
			if err = m.saveOp(ctx, op); err == nil {
				rec.ScaleOp = op.ID
				err = m.saveInst(ctx, rec)
				warm++
			}
		} else {
			op, err = m.startDestroy(ctx, rec.ID, destroyParams{reason: ReasonScaleDown, pool: pool,
				label: rec.Label, drain: true, autoscale: true, inline: true})
			if err == nil {
				rec.State = InstanceDestroying
			}
		}
		if op != nil && op.Owner == m.owner {
			recs.ops[op.ID] = op
			out = append(out, op)
			rep.ScaleStarted = append(rep.ScaleStarted, op.ID)
		}
		if err != nil {
			rep.errorf("scaling pool %q down (instance %d): %v", pool, rec.ID, err)
			continue
		}
		m.log.Info("scaling down", logPool(pool), logInst(rec.ID), logOp(op.ID), zap.String("kind", op.Kind),
			logPrice(rec.Price))
	}
	return out
}

// retireStopped destroys, with verification, stopped instances of pool
// past warm.max_stopped_age and, once the pool's desired count is known,
// those beyond warm.stopped (the most expensive first).
func (m *Manager) retireStopped(ctx context.Context, recs *records, pool string, tpl PoolTemplate,
	byID map[int64]*vastclient.Instance, desiredSet bool, rep *Report) []*Operation {
	busy := m.scaleCount(recs, pool, nil, byID).busy
	now := m.now()
	var stopped []*InstanceRecord
	var out []*Operation
	retire := func(rec *InstanceRecord, reason string) {
		op, err := m.startDestroyLocked(ctx, rec, reason)
		if err != nil {
			rep.errorf("destroying stopped instance %d: %v", rec.ID, err)
			return
		}
		recs.ops[op.ID] = op
		rec.State = InstanceDestroying
		rep.ScaleStarted = append(rep.ScaleStarted, op.ID)
		out = append(out, op)
	}
	for id, rec := range recs.insts {
		if rec.Pool != pool || rec.State != InstanceStopped || busy[id] {
			continue
		}
		if !rec.StoppedAt.IsZero() && now.Sub(rec.StoppedAt) > tpl.Autoscale.Warm.MaxStoppedAge {
			retire(rec, "autoscale: max_stopped_age")
			continue
		}
		stopped = append(stopped, rec)
	}
	if !desiredSet || len(stopped) <= tpl.Autoscale.Warm.Stopped {
		return out
	}
	slices.SortFunc(stopped, func(a, b *InstanceRecord) int {
		if a.Price != b.Price {
			return cmp.Compare(b.Price, a.Price)
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, rec := range stopped[:len(stopped)-tpl.Autoscale.Warm.Stopped] {
		retire(rec, "autoscale: more stopped instances than warm.stopped")
	}
	return out
}
