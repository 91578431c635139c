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
	billing    int // every record that may still bill, dead and destroying ones included, stopped ones not
	inProgress int // provisionings without a counted instance
}

// total is what counts towards min_instances: instances that serve or
// will.
func (c poolCounts) total() int { return c.live + c.inProgress }

// capTotal is what counts against max_instances: everything that may bill.
func (c poolCounts) capTotal() int { return c.billing + c.inProgress }

// poolCount counts a pool's instances: records being provisioned or active
// (not dead ones, when dead is given) as live, every record that may still
// bill (destroying, destroy_failed and starting too, stopped ones not) as
// billing, and provisionings in progress whose instance has no record yet.
func (m *Manager) poolCount(recs *records, pool string, dead map[int64]bool) poolCounts {
	var c poolCounts
	counted := map[int64]bool{}
	for id, rec := range recs.insts {
		if rec.Pool != pool || !rec.Live() {
			continue
		}
		if rec.State == InstanceStopped {
			// A warm instance holds no GPU: it is not under max_instances,
			// unless a start of it was recorded (the record follows).
			if op := recs.ops[rec.ScaleOp]; op == nil || op.Kind != KindStart || op.Final() {
				continue
			}
		}
		c.billing++
		counted[id] = true
		if (rec.State == InstanceProvisioning || rec.State == InstanceActive) && !dead[id] {
			c.live++
		}
	}
	serving := recs.servingOps()
	for _, op := range recs.ops {
		if op.Kind != KindProvision || op.Pool != pool || op.Final() || countedOp(op, counted, serving) {
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
				m.failAttempt(ctx, h, thenCleanUp, "pool no longer configured")
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
			m.failAttempt(ctx, h, thenCleanUp, "unknown attempt state "+cur.State)
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
		if m.cfg.Pools[op.Pool].Autoscale.Enabled {
			m.Kick() // the pool is below its desired count again
		}
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

// startAttempt runs the first steps of one attempt, each of which persists
// before the next one acts: choose the offers (chooseOffers), check the
// account credit, check the budgets and record the attempt under the Store
// lock (recordAttempt), and only then create the instance (create).
func (m *Manager) startAttempt(ctx context.Context, h *opHandle, tpl PoolTemplate) {
	usable, ok := m.chooseOffers(ctx, h, tpl)
	if !ok {
		return
	}
	if err := m.checkCredit(ctx, h.get().Pool); err != nil {
		m.refuseAttempt(ctx, h, err)
		return
	}
	offer, err := m.recordAttempt(ctx, h, tpl, usable)
	if err != nil {
		m.refuseAttempt(ctx, h, err)
		return
	}
	defer m.unreserve(offer.ID)
	m.create(ctx, h, tpl, offer)
}

// refuseAttempt fails the operation on a refusal made before anything was
// created (credit, budget, offers taken), unless the worker is stopping.
func (m *Manager) refuseAttempt(ctx context.Context, h *opHandle, err error) {
	if ctx.Err() != nil {
		return
	}
	m.noteRefusal(err)
	m.finish(ctx, h, StateFailed, err.Error())
}

// chooseOffers returns the offers this attempt may rent: on machines the
// operation has not tried yet (never the same machine twice). false means
// it ended the attempt or the operation, or the worker is stopping.
func (m *Manager) chooseOffers(ctx context.Context, h *opHandle, tpl PoolTemplate) ([]vastclient.Offer, bool) {
	op := h.get()
	candidates, err := m.searchAttemptOffers(ctx, op, tpl)
	if ctx.Err() != nil {
		return nil, false
	}
	if err != nil {
		if errors.Is(err, ErrNoOffers) && op.OfferID > 0 && len(op.Attempts) == 0 {
			// The requested offer is gone: the next attempt searches the
			// pool's filter.
			m.requestedOfferGone(ctx, h)
			return nil, false
		}
		m.finish(ctx, h, StateFailed, err.Error())
		return nil, false
	}
	tried := map[int64]bool{}
	for _, a := range op.Attempts {
		tried[a.MachineID] = true
	}
	usable := candidates[:0]
	for _, o := range candidates {
		if !tried[o.MachineID] {
			usable = append(usable, o)
		}
	}
	if len(usable) == 0 {
		m.finish(ctx, h, StateFailed, fmt.Sprintf("%v: every matching offer is on a machine this operation already tried", ErrNoOffers))
		return nil, false
	}
	return usable, true
}

// searchAttemptOffers looks the candidates up: the requested offer on the
// first attempt, the pool's filter otherwise. A failed search is retried
// twice, a poll interval apart; finding nothing is an answer, not a
// failure.
func (m *Manager) searchAttemptOffers(ctx context.Context, op *Operation, tpl PoolTemplate) ([]vastclient.Offer, error) {
	for try := 0; ; try++ {
		var candidates []vastclient.Offer
		var err error
		if len(op.Attempts) == 0 && op.OfferID > 0 {
			var o *vastclient.Offer
			if o, err = m.findOffer(ctx, op.OfferID); err == nil {
				candidates = []vastclient.Offer{*o}
			}
		} else {
			candidates, err = m.searchOffers(ctx, tpl, nil)
		}
		if err == nil || errors.Is(err, ErrNoOffers) || ctx.Err() != nil || try >= 2 {
			return candidates, err
		}
		m.log.Warn("offer search failed; retrying", logOp(op.ID), logErr(err))
		if err := ctxutil.Sleep(ctx, m.cfg.PollInterval); err != nil {
			return nil, err
		}
	}
}

// recordAttempt takes the first usable offer that no other operation is
// renting and that fits the price cap, checks the pool and gateway budgets
// with its price and records the attempt, all under the Store lock, so
// that processes sharing the Store never overspend together. The offer
// stays reserved in this process until unreserve.
func (m *Manager) recordAttempt(ctx context.Context, h *opHandle, tpl PoolTemplate, usable []vastclient.Offer) (vastclient.Offer, error) {
	op := h.get()
	var chosen vastclient.Offer
	err := m.withLock(ctx, func(lctx context.Context) error {
		recs, err := m.loadAll(lctx)
		if err != nil {
			return err
		}
		inUse := m.offersInUse(recs, op.ID)
		for _, o := range usable {
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
			if err := m.beginAttempt(lctx, h, o, price); err != nil {
				return err
			}
			chosen = o
			m.reserve(o.ID, op.ID)
			return nil
		}
		return fmt.Errorf("%w: all matching offers are being rented by other operations", ErrNoOffers)
	})
	return chosen, err
}

// reserve and unreserve mark an offer as being created from by this
// process (see offersInUse).
func (m *Manager) reserve(offerID int64, opID string) {
	m.mu.Lock()
	m.reserved[offerID] = opID
	m.mu.Unlock()
}

func (m *Manager) unreserve(offerID int64) {
	m.mu.Lock()
	delete(m.reserved, offerID)
	m.mu.Unlock()
}

// offersInUse returns the offers other operations are creating from or
// whose instance holds them, so that two provisionings do not race for
// one offer (the loser would get no_such_ask and waste an attempt). An
// offer search is cached (OfferCacheTTL), so an offer rented a moment ago
// by one of ours is still in it: its attempt or record says it is taken.
func (m *Manager) offersInUse(recs *records, self string) map[int64]bool {
	out := map[int64]bool{}
	for _, op := range recs.ops {
		if op.ID == self || op.Final() || op.Kind != KindProvision {
			continue
		}
		if cur := op.current(); cur != nil && (cur.State == AttemptCreating || cur.State == AttemptLoading) {
			out[cur.OfferID] = true
		}
	}
	for _, rec := range recs.insts {
		if rec.OfferID > 0 && (rec.State == InstanceProvisioning || rec.State == InstanceActive || rec.State == InstanceStarting) {
			out[rec.OfferID] = true
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

// create calls the API, after the fencing check, and routes the outcome.
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
			m.withdrawAttempt(ctx, h)
			_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		}
		return
	}
	res, err := m.api.CreateInstance(ctx, offer.ID, m.createRequest(tpl, op.Label))
	m.evictOffer(offer.ID)
	if m.runHook(h, "after-create") {
		return
	}
	m.routeCreate(ctx, h, res, err)
}

// routeCreate takes the create's answer to the next step: waiting for the
// instance, resolving an uncertain outcome by label, or ending the attempt.
func (m *Manager) routeCreate(ctx context.Context, h *opHandle, res *vastclient.CreateResult, err error) {
	op := h.get()
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
	case ctx.Err() != nil && res == nil:
		// Stopped before the request could reach vast.ai (the client
		// reports any create that may have been sent as uncertain): the
		// attempt never happened, so the next owner need not resolve it.
		m.withdrawAttempt(ctx, h)
	case ctx.Err() != nil:
		// Stopping with an uncertain create. The attempt stays "creating"
		// without an id, so the next owner resolves it by label before
		// creating again.
	case errors.Is(err, vastclient.ErrNoSuchAsk):
		m.failAttempt(ctx, h, thenRetry, "no_such_ask: the offer was rented by someone else")
	case errors.Is(err, vastclient.ErrAuth):
		m.failAttempt(ctx, h, thenFail, err.Error())
		m.finish(ctx, h, StateFailed, "vast.ai rejected the API key: "+err.Error())
	case err != nil:
		m.failAttempt(ctx, h, thenRetry, "create failed: "+err.Error())
	default:
		m.failAttempt(ctx, h, thenRetry, "create returned no instance id")
	}
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
	m.failAttempt(ctx, h, thenRetry, "create outcome unknown and no instance with the label appeared")
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
	m.markCreated(ctx, h, id)
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
// failure: a destruction requested by someone else (the operation fails),
// or one of pollReady's reasons (the attempt is cleaned up).
func (m *Manager) waitReady(ctx context.Context, h *opHandle, tpl PoolTemplate) {
	cur := h.get().current()
	if m.runHook(h, "waiting") {
		return
	}
	w := &readyWatch{id: cur.InstanceID, created: cur.Started, hardCap: 3 * tpl.ReadyTimeout.D()}
	for {
		if msg := m.destroyRequested(ctx, w.id); msg != "" {
			m.failAttempt(ctx, h, thenFail, msg)
			m.finish(ctx, h, StateFailed, msg)
			return
		}
		if ctx.Err() != nil || m.runHook(h, "ready-look") {
			return
		}
		ready, fail := m.pollReady(ctx, w, tpl)
		switch {
		case ready:
			m.succeed(ctx, h)
			return
		case fail != "":
			m.failAttempt(ctx, h, thenCleanUp, fail)
			return
		}
		if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
			return
		}
	}
}

// readyWatch is what waitReady carries from one look at an instance to the
// next.
type readyWatch struct {
	id      int64
	created time.Time     // the attempt's start: no clock runs from earlier
	hardCap time.Duration // bounds a state that keeps flapping
	lastObs time.Time     // the last look at the instance row
	suspect int           // consecutive rows with a possibly terminal status
}

// destroyRequested says why the instance will not be provisioned when its
// record was marked for destruction (or is no longer live), or "".
func (m *Manager) destroyRequested(ctx context.Context, id int64) string {
	rec, err := m.loadInst(ctx, id)
	if err != nil || rec == nil || (!rec.destroying() && rec.Live()) {
		return ""
	}
	msg := "instance " + rec.State
	if rec.DestroyReason != "" {
		msg += ": " + rec.DestroyReason
	}
	return msg
}

// pollReady takes one look: the routing side's state, then ReadyTimeout in
// one state and the hard cap since creation, then (every
// StatusPollInterval) the instance row. It reports ready, or why the
// attempt is given up, or neither (look again later).
func (m *Manager) pollReady(ctx context.Context, w *readyWatch, tpl PoolTemplate) (ready bool, fail string) {
	state, since, known := m.fleet.State(w.id)
	if !known {
		state, since = "unknown to the routing side", w.created
	}
	if ready, fail = m.fleetVerdict(ctx, w.id, state); ready || fail != "" {
		return ready, fail
	}
	if since.Before(w.created) {
		since = w.created
	}
	now := m.now()
	if now.Sub(since) > tpl.ReadyTimeout.D() {
		return false, fmt.Sprintf("not ready within %s (state %q since %s)",
			tpl.ReadyTimeout, state, since.UTC().Format(time.RFC3339))
	}
	if now.Sub(w.created) > w.hardCap {
		return false, fmt.Sprintf("not ready within %s of creation", w.hardCap)
	}
	if now.Sub(w.lastObs) < m.cfg.StatusPollInterval {
		return false, ""
	}
	w.lastObs = now
	return false, m.rowVerdict(ctx, w)
}

// fleetVerdict reads the routing side's health state of the instance.
func (m *Manager) fleetVerdict(ctx context.Context, id int64, state string) (ready bool, fail string) {
	switch state {
	case FleetReady:
		return true, ""
	case FleetFailed:
		return false, "the routing side reports the instance failed"
	case FleetStopped:
		return false, "the instance stopped"
	case FleetGone:
		// The routing side no longer lists it; a listing glitch must not
		// cost a healthy instance, so the show endpoint decides.
		if _, err := m.api.ShowInstance(ctx, id); errors.Is(err, vastclient.ErrNotFound) {
			return false, "the instance disappeared"
		}
	}
	return false, ""
}

// rowVerdict reads vast.ai's own view of the instance: a terminal
// actual_status (see terminalStatus), or intended_status stopped.
func (m *Manager) rowVerdict(ctx context.Context, w *readyWatch) string {
	row, err := m.observe(ctx, w.id, w.lastObs)
	switch {
	case errors.Is(err, vastclient.ErrNotFound):
		return "the instance disappeared (show: not found)"
	case err != nil:
		if ctx.Err() == nil {
			m.log.Debug("could not observe instance", logInst(w.id), logErr(err))
		}
		return ""
	}
	immediate, ifRepeated := terminalStatus(row.ActualStatus)
	switch {
	case immediate:
		return "actual_status " + row.ActualStatus
	case ifRepeated:
		if w.suspect++; w.suspect >= 2 {
			return "actual_status " + row.ActualStatus
		}
	default:
		w.suspect = 0
	}
	if row.IntendedStatus == "stopped" || row.ActualStatus == "stopped" {
		return "vast.ai set intended_status stopped (stuck or unschedulable)"
	}
	return ""
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

// cleanupAttempt destroys a failed attempt's instance with verification,
// blocklists its machine and closes the attempt. If the destruction cannot
// be verified within DestroyVerifyAttempts, it continues in the background
// (and on every reconciliation) while the provisioning moves on.
func (m *Manager) cleanupAttempt(ctx context.Context, h *opHandle) {
	op := h.get()
	cur := op.current()
	confirmed := true
	if m.runHook(h, "cleanup") {
		return
	}
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
		if dop.Parent != op.ID {
			// Someone else (an operator) is destroying the instance: their
			// word ends the provisioning, as in waitReady, whatever made
			// the attempt fail first (their destroy may be the cause).
			m.endByOthersDestroy(ctx, h, dop)
			return
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
	m.closeAttempt(ctx, h, state)
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
		m.failAttempt(ctx, h, thenFail, "instance "+rec.State)
		m.finish(ctx, h, StateFailed, "the instance was destroyed while provisioning")
		return
	}
	m.markReady(ctx, h, id)
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

// The changes a provisioning makes to its attempts. Each persists through
// opHandle.update (a compare-and-set on owner and version) before the next
// step acts.

// beginAttempt records a new attempt on offer, in state "creating" without
// an instance id: from here on the label is looked up before any new
// create.
func (m *Manager) beginAttempt(ctx context.Context, h *opHandle, o vastclient.Offer, price float64) error {
	now := m.now()
	return h.update(ctx, func(op *Operation) {
		op.State = StateCreating
		op.Attempts = append(op.Attempts, Attempt{
			OfferID: o.ID, MachineID: o.MachineID, GPUName: o.GPUName, Price: price,
			Started: now, State: AttemptCreating,
		})
	})
}

// requestedOfferGone records the caller's offer as a failed attempt.
func (m *Manager) requestedOfferGone(ctx context.Context, h *opHandle) {
	now := m.now()
	_ = h.update(ctx, func(op *Operation) {
		op.Attempts = append(op.Attempts, Attempt{OfferID: op.OfferID, Started: now, Ended: now,
			State: AttemptFailed, Error: "requested offer no longer available"})
	})
}

// withdrawAttempt removes an attempt whose create was never sent: it did
// not happen, so nobody needs to resolve it by label.
func (m *Manager) withdrawAttempt(ctx context.Context, h *opHandle) {
	_ = h.update(ctx, func(op *Operation) {
		if cur := op.current(); cur != nil && cur.State == AttemptCreating && cur.InstanceID == 0 {
			op.Attempts = op.Attempts[:len(op.Attempts)-1]
		}
		op.State = StatePending
	})
}

// markCreated binds the attempt to its instance and starts waiting.
func (m *Manager) markCreated(ctx context.Context, h *opHandle, id int64) {
	_ = h.update(ctx, func(op *Operation) {
		if cur := op.current(); cur != nil {
			cur.InstanceID = id
			cur.State = AttemptLoading
		}
		op.State = StateWaiting
	})
}

// afterFailure is what follows a failed attempt.
type afterFailure int

const (
	// thenCleanUp: the attempt's instance is destroyed first
	// (cleanupAttempt), then the next attempt may start.
	thenCleanUp afterFailure = iota
	// thenRetry: there is no instance to clean up; the next attempt may
	// start.
	thenRetry
	// thenFail: the operation fails with the attempt; the caller finishes
	// it.
	thenFail
)

// failAttempt records why the current attempt failed and what follows.
func (m *Manager) failAttempt(ctx context.Context, h *opHandle, next afterFailure, reason string) {
	m.stats.attemptsFailed.Add(1)
	op := h.get()
	msg := "provisioning attempt failed"
	if next == thenCleanUp {
		msg += "; destroying its instance"
	}
	m.log.Warn(msg, logOp(op.ID), logPool(op.Pool), logAttempt(len(op.Attempts)), logReason(reason))
	_ = h.update(ctx, func(op *Operation) {
		cur := op.current()
		switch {
		case next == thenCleanUp:
			if cur != nil {
				cur.State, cur.Error = AttemptDestroying, reason
			}
			op.State = StateCleaningUp
			return
		case cur != nil:
			cur.Error = reason
		}
		op.endAttempt(AttemptFailed, m.now())
		if next == thenRetry {
			op.State = StatePending
		}
	})
}

// endByOthersDestroy fails a provisioning whose attempt's instance is
// being destroyed by another operation (dop): no retry, no blocklisting of
// the machine. dop's own worker confirms the destruction.
func (m *Manager) endByOthersDestroy(ctx context.Context, h *opHandle, dop *Operation) {
	msg := "instance " + InstanceDestroying
	if dop.Reason != "" {
		msg += ": " + dop.Reason
	}
	m.log.Info("the instance of the attempt is destroyed by another operation; provisioning ends",
		logOp(h.get().ID), logInst(dop.InstanceID), zap.String("destroy_op", dop.ID))
	_ = h.update(ctx, func(op *Operation) { op.endAttempt(AttemptFailed, m.now()) })
	m.finish(ctx, h, StateFailed, msg)
}

// closeAttempt ends a failed attempt once its clean-up is done (state is
// AttemptFailed, or AttemptDestroyFailed while the destruction goes on in
// the background); the next attempt may start.
func (m *Manager) closeAttempt(ctx context.Context, h *opHandle, state string) {
	_ = h.update(ctx, func(op *Operation) {
		op.endAttempt(state, m.now())
		op.State = StatePending
	})
}

// markReady ends the attempt and binds the operation to its instance.
func (m *Manager) markReady(ctx context.Context, h *opHandle, id int64) {
	_ = h.update(ctx, func(op *Operation) {
		op.endAttempt(AttemptReady, m.now())
		op.InstanceID = id
		op.Error = ""
	})
}

// endAttempt ends the attempt in progress, if any, in state at when.
func (o *Operation) endAttempt(state string, when time.Time) {
	if c := o.current(); c != nil {
		c.State, c.Ended = state, when
	}
}
