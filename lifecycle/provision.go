package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/internal/ctxutil"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// ProvisionRequest asks for new instances in a pool.
type ProvisionRequest struct {
	// OfferID rents this offer (first attempt only; later attempts search
	// the pool's filter). 0 picks the best offer of the pool's filter.
	OfferID int64 `json:"offer_id,omitempty"`
	// Count is the number of instances, default 1.
	Count int `json:"count,omitempty"`
}

// maxProvisionCount bounds one request; larger fleets are built with
// several requests or min_instances.
const maxProvisionCount = 32

// Provision starts provisioning instances in pool and returns their
// operations at once, in state "pending"; the work continues in the
// background until each is "succeeded" or "failed". Before anything is
// recorded it checks, in order: the pool exists (ErrUnknownPool), an offer
// is available (ErrNoOffers) within max_price_per_hour, the account credit
// (min_credit), and, under the Store lock, max_instances (ErrMaxInstances)
// and the pool and gateway budgets. Budget refusals are *BudgetError.
func (m *Manager) Provision(ctx context.Context, pool string, req ProvisionRequest) ([]*Operation, error) {
	tpl, ok := m.cfg.Pools[pool]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPool, pool)
	}
	n := req.Count
	if n == 0 {
		n = 1
	}
	if n < 0 || n > maxProvisionCount {
		return nil, &ValidationError{"count", fmt.Sprintf("%d is out of range 1-%d", req.Count, maxProvisionCount)}
	}
	if req.OfferID < 0 {
		return nil, &ValidationError{"offer_id", fmt.Sprintf("%d is not a valid offer id", req.OfferID)}
	}
	if req.OfferID > 0 && n != 1 {
		return nil, &ValidationError{"offer_id", fmt.Sprintf("needs count 1, got %d (an offer can be rented once)", n)}
	}
	if m.isStopped() {
		return nil, ErrStopped
	}
	offers, err := m.candidateOffers(ctx, pool, tpl, req.OfferID)
	if err != nil {
		m.noteRefusal(err)
		return nil, err
	}
	if err := m.checkCredit(ctx, pool); err != nil {
		m.noteRefusal(err)
		return nil, err
	}
	var ops []*Operation
	err = m.withLock(ctx, func(ctx context.Context) error {
		recs, err := m.loadAll(ctx)
		if err != nil {
			return err
		}
		c := m.poolCount(recs, pool, nil)
		if tpl.MaxInstances > 0 && c.capTotal()+n > tpl.MaxInstances {
			return fmt.Errorf("%w: pool %q has %d instances and %d provisionings in progress; %d more would exceed max_instances %d",
				ErrMaxInstances, pool, c.billing, c.inProgress, n, tpl.MaxInstances)
		}
		prices := pickPrices(tpl, offers, m.offersInUse(recs, ""), n)
		total := 0.0
		for _, p := range prices {
			total += p
		}
		if err := m.checkSpend(recs, pool, tpl, total, ""); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			op := m.newProvisionOp(pool, TriggerAPI, prices[i])
			op.OfferID = req.OfferID
			if err := m.saveOp(ctx, op); err != nil {
				return err
			}
			ops = append(ops, op)
		}
		return nil
	})
	if err != nil {
		m.noteRefusal(err)
		// Operations already written are picked up by reconciliation.
		for _, op := range ops {
			m.startWorker(op)
		}
		return nil, err
	}
	out := make([]*Operation, len(ops))
	for i, op := range ops {
		out[i] = op.clone()
		m.startWorker(op)
	}
	return out, nil
}

// newProvisionOp builds a pending provisioning leased to this Manager.
func (m *Manager) newProvisionOp(pool, trigger string, price float64) *Operation {
	now := m.now()
	id := newOpID()
	m.stats.provisionsStarted.Add(1)
	return &Operation{
		ID: id, Kind: KindProvision, Pool: pool, State: StatePending, Reason: trigger,
		Created: now, Updated: now, Label: FormatLabel(m.cfg.GatewayID, pool, id),
		EstimatedPrice: price, Owner: m.owner, LeaseUntil: now.Add(m.cfg.LeaseTTL),
	}
}

// poolCounts is a pool's size for min/max_instances.
type poolCounts struct {
	live       int // instance records provisioning or active (not dead)
	billing    int // every record that may still bill, dead and destroying ones included
	inProgress int // provisionings without a counted instance
}

// total is what counts towards min_instances: instances that serve or
// will.
func (c poolCounts) total() int { return c.live + c.inProgress }

// capTotal is what counts against max_instances: everything that may bill.
func (c poolCounts) capTotal() int { return c.billing + c.inProgress }

// poolCount counts a pool's instances: records being provisioned or active
// (not dead ones, when dead is given) as live, every record that may still
// bill (destroying and destroy_failed too) as billing, and provisionings in
// progress whose instance has no record yet.
func (m *Manager) poolCount(recs *records, pool string, dead map[int64]bool) poolCounts {
	var c poolCounts
	counted := map[int64]bool{}
	for id, rec := range recs.insts {
		if rec.Pool != pool || !rec.Live() {
			continue
		}
		c.billing++
		counted[id] = true
		if !dead[id] && (rec.State == InstanceProvisioning || rec.State == InstanceActive) {
			c.live++
		}
	}
	for _, op := range recs.ops {
		if op.Kind != KindProvision || op.Pool != pool || op.Final() {
			continue
		}
		if cur := op.current(); cur != nil && cur.InstanceID > 0 && counted[cur.InstanceID] {
			continue
		}
		c.inProgress++
	}
	return c
}

// runProvision drives a provisioning to a final state, one step at a time.
// Each step persists before it acts, so that the operation can be resumed
// from its record after a crash at any point.
func (m *Manager) runProvision(ctx context.Context, h *opHandle) {
	for ctx.Err() == nil && !h.crashed.Load() {
		op := h.get()
		if op.Final() {
			return
		}
		tpl, ok := m.cfg.Pools[op.Pool]
		if !ok {
			// The pool was removed from the configuration: finish what
			// exists (destroying an instance still loading) and stop.
			tpl = PoolTemplate{}.withDefaults()
			if cur := op.current(); cur != nil && cur.InstanceID > 0 && cur.State != AttemptDestroying {
				m.failAttempt(ctx, h, "pool no longer configured")
				continue
			}
			if op.current() == nil {
				m.finish(ctx, h, StateFailed, fmt.Sprintf("pool %q is no longer configured", op.Pool))
				return
			}
		}
		cur := op.current()
		switch {
		case cur == nil:
			if len(op.Attempts) >= tpl.MaxAttempts {
				last := "no attempt"
				if n := len(op.Attempts); n > 0 {
					last = op.Attempts[n-1].Error
				}
				m.finish(ctx, h, StateFailed, fmt.Sprintf("all %d attempts failed; last: %s", len(op.Attempts), last))
				return
			}
			m.startAttempt(ctx, h, tpl)
		case cur.State == AttemptCreating && cur.InstanceID == 0:
			m.resolveCreate(ctx, h)
		case cur.State == AttemptCreating:
			m.recordCreated(ctx, h, cur.InstanceID)
		case cur.State == AttemptLoading:
			m.waitReady(ctx, h, tpl)
		case cur.State == AttemptDestroying:
			m.cleanupAttempt(ctx, h)
		case cur.State == AttemptReady:
			m.succeed(ctx, h)
		default:
			m.log.Error("unknown attempt state; failing the attempt", logOp(op.ID), logState(cur.State))
			m.failAttempt(ctx, h, "unknown attempt state "+cur.State)
		}
	}
}

// finish ends an operation.
func (m *Manager) finish(ctx context.Context, h *opHandle, state, msg string) {
	_ = h.update(ctx, func(op *Operation) {
		op.State = state
		op.Ended = m.now()
		if state == StateFailed {
			op.Error = msg
		}
	})
	op := h.get()
	if op.Kind != KindProvision {
		return
	}
	if state == StateFailed {
		m.stats.provisionsFailed.Add(1)
		m.log.Warn("provisioning failed", logOp(op.ID), logPool(op.Pool), logReason(msg))
		if op.Replaces > 0 {
			// Let the next reconciliation try another replacement.
			pctx, cancel := persistCtx(ctx)
			_, _ = m.updateInst(pctx, op.Replaces, func(rec *InstanceRecord) *InstanceRecord {
				if rec == nil || rec.ReplacedBy != op.ID {
					return nil
				}
				rec.ReplacedBy = ""
				return rec
			})
			cancel()
		}
	}
}

// startAttempt picks an offer, reserves it under the Store lock after the
// budget checks, records the attempt and only then creates the instance.
func (m *Manager) startAttempt(ctx context.Context, h *opHandle, tpl PoolTemplate) {
	op := h.get()
	exclude := map[int64]bool{}
	for _, a := range op.Attempts {
		exclude[a.MachineID] = true // never the same machine twice
	}

	var candidates []vastclient.Offer
	var err error
	for try := 0; ; try++ {
		if len(op.Attempts) == 0 && op.OfferID > 0 {
			var o *vastclient.Offer
			if o, err = m.findOffer(ctx, op.OfferID); err == nil {
				candidates = []vastclient.Offer{*o}
			}
		} else {
			candidates, err = m.searchOffers(ctx, tpl, nil)
		}
		if err == nil || errors.Is(err, ErrNoOffers) || ctx.Err() != nil || try >= 2 {
			break
		}
		m.log.Warn("offer search failed; retrying", logOp(op.ID), logErr(err))
		if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
			return
		}
	}
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if errors.Is(err, ErrNoOffers) && op.OfferID > 0 && len(op.Attempts) == 0 {
			// The requested offer is gone: record it as a failed attempt
			// and let the next one search the pool's filter.
			now := m.now()
			_ = h.update(ctx, func(op *Operation) {
				op.Attempts = append(op.Attempts, Attempt{OfferID: op.OfferID, Started: now, Ended: now,
					State: AttemptFailed, Error: "requested offer no longer available"})
			})
			return
		}
		m.finish(ctx, h, StateFailed, err.Error())
		return
	}
	usable := candidates[:0]
	for _, o := range candidates {
		if !exclude[o.MachineID] {
			usable = append(usable, o)
		}
	}
	if len(usable) == 0 {
		m.finish(ctx, h, StateFailed, fmt.Sprintf("%v: every matching offer is on a machine this operation already tried", ErrNoOffers))
		return
	}
	if err := m.checkCredit(ctx, op.Pool); err != nil {
		if ctx.Err() != nil {
			return
		}
		m.noteRefusal(err)
		m.finish(ctx, h, StateFailed, err.Error())
		return
	}

	var chosen *vastclient.Offer
	err = m.withLock(ctx, func(lctx context.Context) error {
		recs, err := m.loadAll(lctx)
		if err != nil {
			return err
		}
		inUse := m.offersInUse(recs, op.ID)
		for i := range usable {
			o := usable[i]
			if inUse[o.ID] {
				continue
			}
			price := effectivePrice(tpl, o)
			if c := priceCap(tpl); c > 0 && price > c+priceEpsilon {
				continue
			}
			if err := m.checkSpend(recs, op.Pool, tpl, price, op.ID); err != nil {
				return err
			}
			now := m.now()
			if err := h.update(lctx, func(op *Operation) {
				op.State = StateCreating
				op.Attempts = append(op.Attempts, Attempt{
					OfferID: o.ID, MachineID: o.MachineID, GPUName: o.GPUName, Price: price,
					Started: now, State: AttemptCreating,
				})
			}); err != nil {
				return err
			}
			chosen = &o
			m.mu.Lock()
			m.reserved[o.ID] = op.ID
			m.mu.Unlock()
			return nil
		}
		return fmt.Errorf("%w: all matching offers are being rented by other operations", ErrNoOffers)
	})
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		m.noteRefusal(err)
		m.finish(ctx, h, StateFailed, err.Error())
		return
	}
	defer func() {
		m.mu.Lock()
		delete(m.reserved, chosen.ID)
		m.mu.Unlock()
	}()
	m.create(ctx, h, tpl, *chosen)
}

// offersInUse returns the offers other operations are creating from, so
// that two provisionings do not race for one offer (the loser would get
// no_such_ask and waste an attempt).
func (m *Manager) offersInUse(recs *records, self string) map[int64]bool {
	out := map[int64]bool{}
	for _, op := range recs.ops {
		if op.ID == self || op.Final() || op.Kind != KindProvision {
			continue
		}
		if cur := op.current(); cur != nil && cur.State == AttemptCreating {
			out[cur.OfferID] = true
		}
	}
	m.mu.Lock()
	for id, opID := range m.reserved {
		if opID != self {
			out[id] = true
		}
	}
	m.mu.Unlock()
	return out
}

// createRequest builds the create body. The token goes only into the
// request's env; it is never logged or stored by this package.
func (m *Manager) createRequest(tpl PoolTemplate, label string) vastclient.CreateRequest {
	env := make(map[string]string, len(tpl.Env)+1)
	for k, v := range tpl.Env {
		env[k] = v
	}
	env[EnvToken] = newToken()
	req := vastclient.CreateRequest{
		Image:          tpl.Image,
		TemplateHashID: tpl.TemplateHashID,
		Label:          label,
		Disk:           tpl.Disk,
		Runtype:        tpl.Runtype,
		Env:            env,
		Onstart:        tpl.Onstart,
		Args:           append([]string(nil), tpl.Args...),
	}
	if tpl.Type == TypeBid {
		p := tpl.BidPrice
		req.Price = &p
	}
	return req
}

// create calls the API and routes every outcome.
func (m *Manager) create(ctx context.Context, h *opHandle, tpl PoolTemplate, offer vastclient.Offer) {
	op := h.get()
	m.log.Info("creating instance", logOp(op.ID), logPool(op.Pool), logOffer(offer.ID),
		logMachine(offer.MachineID), logPrice(effectivePrice(tpl, offer)), logAttempt(len(op.Attempts)))
	if m.runHook(h, "before-create") {
		return
	}
	// Fencing: a worker whose lease lapsed (its storage stalled, say) or
	// that lost the operation to another process must not create.
	if !h.mayCall(ctx) {
		if !h.crashed.Load() {
			// The owner could not be re-checked: the create was not sent,
			// so the attempt never happened.
			_ = h.update(ctx, func(op *Operation) {
				if cur := op.current(); cur != nil && cur.State == AttemptCreating && cur.InstanceID == 0 {
					op.Attempts = op.Attempts[:len(op.Attempts)-1]
				}
				op.State = StatePending
			})
			_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		}
		return
	}
	res, err := m.api.CreateInstance(ctx, offer.ID, m.createRequest(tpl, op.Label))
	m.evictOffer(offer.ID)
	if m.runHook(h, "after-create") {
		return
	}
	switch {
	case res != nil && res.InstanceID > 0:
		// success:false with an id still means an instance exists.
		if !res.Success {
			m.log.Warn("create answered success:false with an instance id; tracking it",
				logOp(op.ID), logInst(res.InstanceID))
		}
		m.recordCreated(ctx, h, res.InstanceID)
	case errors.Is(err, vastclient.ErrCreateUncertain):
		m.log.Warn("create outcome unknown; looking the label up before anything else",
			logOp(op.ID), logErr(err))
		m.resolveCreate(ctx, h)
	case ctx.Err() != nil && res == nil && !errors.Is(err, vastclient.ErrCreateUncertain):
		// Stopped before the request could reach vast.ai (the client
		// reports any create that may have been sent as uncertain): the
		// attempt never happened, so the next owner need not resolve it.
		_ = h.update(ctx, func(op *Operation) {
			if cur := op.current(); cur != nil && cur.State == AttemptCreating && cur.InstanceID == 0 {
				op.Attempts = op.Attempts[:len(op.Attempts)-1]
			}
			op.State = StatePending
		})
	case ctx.Err() != nil:
		// Stopping with an uncertain create. The attempt stays "creating"
		// without an id, so the next owner resolves it by label before
		// creating again.
	case errors.Is(err, vastclient.ErrNoSuchAsk):
		m.endAttempt(ctx, h, AttemptFailed, "no_such_ask: the offer was rented by someone else")
	case errors.Is(err, vastclient.ErrAuth):
		m.endAttempt(ctx, h, AttemptFailed, err.Error())
		m.finish(ctx, h, StateFailed, "vast.ai rejected the API key: "+err.Error())
	case err != nil:
		m.endAttempt(ctx, h, AttemptFailed, "create failed: "+err.Error())
	default:
		m.endAttempt(ctx, h, AttemptFailed, "create returned no instance id")
	}
}

// endAttempt closes the current attempt (no instance to clean up).
func (m *Manager) endAttempt(ctx context.Context, h *opHandle, state, msg string) {
	m.stats.attemptsFailed.Add(1)
	op := h.get()
	m.log.Warn("provisioning attempt failed", logOp(op.ID), logPool(op.Pool),
		logAttempt(len(op.Attempts)), logReason(msg))
	_ = h.update(ctx, func(op *Operation) {
		if cur := op.current(); cur != nil {
			cur.State = state
			cur.Error = msg
			cur.Ended = m.now()
		}
		op.State = StatePending
	})
}

// A create whose outcome is unknown is concluded to have created nothing
// only after lostCreateListings successful label listings at least
// lostCreateSpacing apart without it: new instances can be missing from
// listings for a while. A late row that still shows up afterwards is
// retired by reconciliation as a duplicate.
const (
	lostCreateListings = 3
	lostCreateSpacing  = time.Second
)

// resolveCreate finds the instance of a create whose outcome is unknown
// (an ambiguous answer, or a process that died around the call) by its
// label (see lostCreateListings).
func (m *Manager) resolveCreate(ctx context.Context, h *opHandle) {
	op := h.get()
	known := op.knownInstances()
	misses := 0
	backoff := m.cfg.PollInterval
	for misses < lostCreateListings {
		res, err := m.api.ListInstances(ctx, vastclient.ListOptions{Label: op.Label})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Never create again before a listing succeeded.
			m.log.Warn("listing by label failed; retrying", logOp(op.ID), logErr(err))
			if ctxutil.Sleep(ctx, backoff) != nil {
				return
			}
			backoff = min(backoff*2, m.cfg.DestroyBackoffMax)
			continue
		}
		var found []int64
		seen := map[int64]bool{}
		// The routing side's listings are consulted too: another view of
		// the account widens the window in which a late row can show up.
		rows, _, _ := m.fleet.Instances()
		for _, in := range append(res.Instances, rows...) {
			if in.Label == op.Label && !known[in.ID] && !seen[in.ID] && in.CurState != "unloaded" {
				seen[in.ID] = true
				found = append(found, in.ID)
			}
		}
		if len(found) > 0 {
			sort.Slice(found, func(i, j int) bool { return found[i] < found[j] })
			for _, dup := range found[1:] {
				// Only one create was made per attempt; more instances with
				// the label are leftovers of a lost answer. Keep one.
				if _, err := m.startDestroy(ctx, dup, destroyParams{
					reason: "duplicate instance with the label of operation " + op.ID,
					pool:   op.Pool, label: op.Label, parent: op.ID,
				}); err != nil {
					m.log.Error("could not start destroying a duplicate", logInst(dup), logErr(err))
				}
			}
			m.log.Info("found the instance of an uncertain create by its label", logOp(op.ID), logInst(found[0]))
			m.recordCreated(ctx, h, found[0])
			return
		}
		misses++
		if misses < lostCreateListings && ctxutil.Sleep(ctx, max(m.cfg.PollInterval, lostCreateSpacing)) != nil {
			return
		}
	}
	m.endAttempt(ctx, h, AttemptFailed, "create outcome unknown and no instance with the label appeared")
}

// recordCreated persists a new instance id: the instance record first (so
// that counting never misses it), then the attempt. Both writes survive a
// cancelled ctx.
func (m *Manager) recordCreated(ctx context.Context, h *opHandle, id int64) {
	op := h.get()
	cur := op.current()
	if cur == nil {
		return
	}
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	_, err := m.updateInst(pctx, id, func(rec *InstanceRecord) *InstanceRecord {
		if rec != nil && rec.OpID == op.ID {
			return nil
		}
		return &InstanceRecord{
			ID: id, Pool: op.Pool, Label: op.Label, OpID: op.ID, OfferID: cur.OfferID,
			MachineID: cur.MachineID, Price: cur.Price, State: InstanceProvisioning,
		}
	})
	if err != nil {
		// The label still identifies it; reconciliation is the backstop.
		m.log.Error("could not record a new instance", logOp(op.ID), logInst(id), logErr(err))
	}
	_ = h.update(ctx, func(op *Operation) {
		if cur := op.current(); cur != nil {
			cur.InstanceID = id
			cur.State = AttemptLoading
		}
		op.State = StateWaiting
	})
	m.log.Info("instance created; waiting until it is ready", logOp(op.ID), logPool(op.Pool), logInst(id))
}

// terminalStatus tells whether an actual_status means the instance will
// never become ready. exited is immediate; offline and unknown may be a
// missed heartbeat, so they must be seen twice in a row.
func terminalStatus(status string) (immediate, ifRepeated bool) {
	switch status {
	case "exited", "destroyed":
		return true, false
	case "offline", "unknown":
		return false, true
	}
	return false, false
}

// waitReady waits until the routing side reports the instance ready, or a
// failure: a dead status, intended_status flipped to stopped, the instance
// disappearing, a destruction requested by someone else, or ReadyTimeout in
// one state.
func (m *Manager) waitReady(ctx context.Context, h *opHandle, tpl PoolTemplate) {
	op := h.get()
	cur := op.current()
	id, created := cur.InstanceID, cur.Started
	if m.runHook(h, "waiting") {
		return
	}
	hardCap := 3 * tpl.ReadyTimeout // a state that keeps flapping
	var lastObs time.Time
	suspect := 0
	for {
		if rec, err := m.loadInst(ctx, id); err == nil && rec != nil && (rec.destroying() || !rec.Live()) {
			msg := "instance " + rec.State
			if rec.DestroyReason != "" {
				msg += ": " + rec.DestroyReason
			}
			m.stats.attemptsFailed.Add(1)
			_ = h.update(ctx, func(op *Operation) {
				if cur := op.current(); cur != nil {
					cur.State, cur.Error, cur.Ended = AttemptFailed, msg, m.now()
				}
			})
			m.finish(ctx, h, StateFailed, msg)
			return
		}
		if ctx.Err() != nil {
			return
		}
		state, since, known := m.fleet.State(id)
		if !known {
			state, since = "unknown to the routing side", created
		}
		switch state {
		case FleetReady:
			m.succeed(ctx, h)
			return
		case FleetFailed:
			m.failAttempt(ctx, h, "the routing side reports the instance failed")
			return
		case FleetStopped:
			m.failAttempt(ctx, h, "the instance stopped")
			return
		case FleetGone:
			// The routing side no longer lists it; a listing glitch must not
			// cost a healthy instance, so the show endpoint decides.
			if _, err := m.api.ShowInstance(ctx, id); errors.Is(err, vastclient.ErrNotFound) {
				m.failAttempt(ctx, h, "the instance disappeared")
				return
			}
		}
		if since.Before(created) {
			since = created
		}
		now := m.now()
		if now.Sub(since) > tpl.ReadyTimeout {
			m.failAttempt(ctx, h, fmt.Sprintf("not ready within %s (state %q since %s)",
				tpl.ReadyTimeout, state, since.UTC().Format(time.RFC3339)))
			return
		}
		if now.Sub(created) > hardCap {
			m.failAttempt(ctx, h, fmt.Sprintf("not ready within %s of creation", hardCap))
			return
		}
		if now.Sub(lastObs) >= m.cfg.StatusPollInterval {
			lastObs = now
			row, err := m.observe(ctx, id, lastObs)
			switch {
			case errors.Is(err, vastclient.ErrNotFound):
				m.failAttempt(ctx, h, "the instance disappeared (show: not found)")
				return
			case err != nil:
				if ctx.Err() != nil {
					return
				}
				m.log.Debug("could not observe instance", logInst(id), logErr(err))
			default:
				imm, rep := terminalStatus(row.ActualStatus)
				switch {
				case imm:
					m.failAttempt(ctx, h, "actual_status "+row.ActualStatus)
					return
				case rep:
					suspect++
					if suspect >= 2 {
						m.failAttempt(ctx, h, "actual_status "+row.ActualStatus)
						return
					}
				default:
					suspect = 0
				}
				if row.IntendedStatus == "stopped" || row.ActualStatus == "stopped" {
					m.failAttempt(ctx, h, "vast.ai set intended_status stopped (stuck or unschedulable)")
					return
				}
			}
		}
		if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
			return
		}
	}
}

// observe returns the instance's row: from the routing side's listing when
// it is fresher than since and has the row, otherwise from the show
// endpoint.
func (m *Manager) observe(ctx context.Context, id int64, since time.Time) (*vastclient.Instance, error) {
	if rows, at, ok := m.fleet.Instances(); ok && !at.Before(since.Add(-m.cfg.StatusPollInterval)) {
		for i := range rows {
			if rows[i].ID == id {
				return &rows[i], nil
			}
		}
	}
	return m.api.ShowInstance(ctx, id)
}

// failAttempt marks the current attempt for clean-up.
func (m *Manager) failAttempt(ctx context.Context, h *opHandle, reason string) {
	m.stats.attemptsFailed.Add(1)
	op := h.get()
	m.log.Warn("provisioning attempt failed; destroying its instance", logOp(op.ID), logPool(op.Pool),
		logAttempt(len(op.Attempts)), logReason(reason))
	_ = h.update(ctx, func(op *Operation) {
		if cur := op.current(); cur != nil {
			cur.State = AttemptDestroying
			cur.Error = reason
		}
		op.State = StateCleaningUp
	})
}

// cleanupAttempt destroys a failed attempt's instance with verification,
// blocklists its machine and closes the attempt. If the destruction cannot
// be verified within DestroyVerifyAttempts, it continues in the background
// (and on every reconciliation) while the provisioning moves on.
func (m *Manager) cleanupAttempt(ctx context.Context, h *opHandle) {
	op := h.get()
	cur := op.current()
	confirmed := true
	if cur.InstanceID > 0 {
		dop, err := m.startDestroy(ctx, cur.InstanceID, destroyParams{
			reason: "provisioning attempt failed: " + cur.Error,
			pool:   op.Pool, label: op.Label, parent: op.ID, inline: true,
		})
		if err != nil {
			m.log.Error("could not start destroying a failed attempt's instance", logOp(op.ID),
				logInst(cur.InstanceID), logErr(err))
			if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
				return
			}
			return // the loop retries the clean-up
		}
		dh, ok := m.register(dop)
		if !ok {
			// Another worker of this process handles it; wait for it.
			confirmed = m.waitDestroyed(ctx, dop.ID)
		} else {
			func() {
				defer m.wg.Done()
				defer dh.cancel()
				stop := dh.renew(dh.ctx)
				confirmed = m.runDestroy(dh.ctx, dh, m.cfg.DestroyVerifyAttempts)
				stop()
				m.release(dh)
			}()
			if !confirmed && ctx.Err() == nil {
				// Keep trying in the background; the provisioning goes on.
				if fresh, err := m.loadOp(ctx, dop.ID); err == nil && fresh != nil {
					fresh.Owner, fresh.LeaseUntil = m.owner, m.now().Add(m.cfg.LeaseTTL)
					m.startWorker(fresh)
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
	if cur.MachineID > 0 {
		m.blockMachine(ctx, cur.MachineID, op.ID, cur.Error)
	}
	state := AttemptFailed
	if !confirmed {
		state = AttemptDestroyFailed
	}
	_ = h.update(ctx, func(op *Operation) {
		if c := op.current(); c != nil {
			c.State = state
			c.Ended = m.now()
		}
		op.State = StatePending
	})
}

// waitDestroyed waits for a destroy operation of this process to end.
func (m *Manager) waitDestroyed(ctx context.Context, opID string) bool {
	for m.isActive(opID) {
		if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
			return false
		}
	}
	op, err := m.loadOp(ctx, opID)
	return err == nil && op != nil && op.State == StateSucceeded
}

// succeed marks the instance active and the operation succeeded; a
// max_lifetime replacement then drains and destroys the instance it
// replaces.
func (m *Manager) succeed(ctx context.Context, h *opHandle) {
	op := h.get()
	cur := op.current()
	id := cur.InstanceID
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	rec, err := m.updateInst(pctx, id, func(rec *InstanceRecord) *InstanceRecord {
		if rec == nil {
			rec = &InstanceRecord{ID: id, Pool: op.Pool, Label: op.Label, OpID: op.ID,
				OfferID: cur.OfferID, MachineID: cur.MachineID, Price: cur.Price, State: InstanceProvisioning}
		}
		if rec.State != InstanceProvisioning {
			return nil // a destruction was requested meanwhile: do not resurrect
		}
		rec.State = InstanceActive
		rec.ReadyAt = m.now()
		return rec
	})
	if err != nil {
		m.log.Error("could not record a ready instance; will retry", logOp(op.ID), logInst(id), logErr(err))
		_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		return
	}
	if rec.State != InstanceActive {
		_ = h.update(ctx, func(op *Operation) {
			if c := op.current(); c != nil {
				c.State, c.Error, c.Ended = AttemptFailed, "instance "+rec.State, m.now()
			}
		})
		m.finish(ctx, h, StateFailed, "the instance was destroyed while provisioning")
		return
	}
	_ = h.update(ctx, func(op *Operation) {
		if c := op.current(); c != nil {
			c.State = AttemptReady
			c.Ended = m.now()
		}
		op.InstanceID = id
		op.Error = ""
	})
	m.finish(ctx, h, StateSucceeded, "")
	m.stats.provisionsSucceeded.Add(1)
	m.log.Info("instance ready", logOp(op.ID), logPool(op.Pool), logInst(id),
		logDuration(m.now().Sub(op.Created)), zap.Int("attempts", len(op.Attempts)))
	if op.Replaces > 0 {
		m.retire(ctx, op.Replaces, op.ID)
	}
}

// retire drains and destroys an instance replaced because of max_lifetime.
func (m *Manager) retire(ctx context.Context, old int64, byOp string) {
	rec, err := m.loadInst(ctx, old)
	if err != nil || rec == nil || !rec.Live() || rec.destroying() {
		return
	}
	if _, err := m.startDestroy(ctx, old, destroyParams{
		reason: "max_lifetime: replaced by operation " + byOp, pool: rec.Pool, label: rec.Label,
		parent: byOp, drain: true,
	}); err != nil {
		m.log.Error("could not retire a replaced instance; reconciliation will retry",
			logInst(old), logErr(err))
	}
}
