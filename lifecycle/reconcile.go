package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Report says what a reconciliation found and did.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Listed is false when the instance listing failed; then nothing was
	// adopted, destroyed, marked gone or provisioned.
	Listed    bool   `json:"listed"`
	ListError string `json:"list_error,omitempty"`
	// Owned is the number of listed instances this gateway owns.
	Owned            int     `json:"owned"`
	OrphansAdopted   []int64 `json:"orphans_adopted,omitempty"`
	OrphansDestroyed []int64 `json:"orphans_destroyed,omitempty"`
	// OrphansPending were seen once under the destroy policy; they are
	// destroyed if the next reconciliation sees them again.
	OrphansPending []int64 `json:"orphans_pending,omitempty"`
	OrphansIgnored []int64 `json:"orphans_ignored,omitempty"`
	// OrphansOverCap were not adopted because their pool is at
	// max_instances or over a budget. They keep billing: destroy them or
	// raise the limit.
	OrphansOverCap []int64 `json:"orphans_over_cap,omitempty"`
	// GhostSuspects are recorded instances missing from the listing, not
	// yet confirmed gone.
	GhostSuspects []int64 `json:"ghost_suspects,omitempty"`
	// Ghosts were confirmed gone (listing and show) and marked "gone".
	Ghosts []int64 `json:"ghosts,omitempty"`
	// DeadDestroyed were active but dead (exited, offline, failed, ...)
	// for longer than the pool's ready_timeout.
	DeadDestroyed []int64 `json:"dead_destroyed,omitempty"`
	// DuplicatesDestroyed carried the label of an operation bound to
	// another instance.
	DuplicatesDestroyed []int64 `json:"duplicates_destroyed,omitempty"`
	// DuplicatesPending were seen once; they are destroyed if the next
	// reconciliation sees them again.
	DuplicatesPending []int64 `json:"duplicates_pending,omitempty"`
	// ProbeFailing are pools where every instance that was ready before
	// fails its health probe now (after a configuration change, say).
	// They are kept, not replaced: only vast.ai's view of an instance, or
	// an operator, destroys an instance that served.
	ProbeFailing []string `json:"probe_failing,omitempty"`
	// Unmanaged are live instances of pools that are no longer configured.
	// They keep billing and are left alone (a configuration mistake must
	// not destroy a fleet): destroy them explicitly.
	Unmanaged         []int64       `json:"unmanaged,omitempty"`
	ProvisionsStarted []string      `json:"provisions_started,omitempty"`
	Replacements      []Replacement `json:"replacements,omitempty"`
	// Resumed are operations taken over from a process that stopped or
	// died (their lease was released or expired).
	Resumed []string `json:"resumed,omitempty"`
	// DestroyRetries are instances whose unfinished destruction was resumed.
	DestroyRetries []int64 `json:"destroy_retries,omitempty"`
	// ScaleStarted are the warm starts, stops and destructions autoscaling
	// started (its creates are in ProvisionsStarted).
	ScaleStarted []string `json:"scale_started,omitempty"`
	// ScaleRefused are "pool: why" for autoscaled pools whose scale-up was
	// refused (see PoolScale.LastRefusal); retried every
	// ScaleRetryInterval, so they do not make the report "acted".
	ScaleRefused []string `json:"scale_refused,omitempty"`
	Errors       []string `json:"errors,omitempty"`
}

// Replacement is a max_lifetime replacement step.
type Replacement struct {
	Old int64  `json:"old"`
	Op  string `json:"op"`
	// Phase is "started" (replacement provisioning begun) or "retiring"
	// (the replacement is ready; the old instance is drained and destroyed).
	Phase string `json:"phase"`
}

func (r *Report) acted() bool {
	return len(r.OrphansAdopted)+len(r.OrphansDestroyed)+len(r.OrphansPending)+len(r.Ghosts)+
		len(r.DuplicatesDestroyed)+len(r.DuplicatesPending)+len(r.OrphansOverCap)+
		len(r.DeadDestroyed)+len(r.ProvisionsStarted)+len(r.Replacements)+len(r.Resumed)+
		len(r.DestroyRetries)+len(r.ScaleStarted)+len(r.Errors) > 0
}

func (r *Report) errorf(format string, args ...any) {
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// Reconcile compares the account's instances with the records and acts:
// it resumes abandoned operations and destructions, handles orphans by
// policy, marks confirmed ghosts gone, destroys dead instances, replaces
// instances past max_lifetime and provisions pools up to min_instances.
// Decisions are made under the Store lock after re-reading the records, so
// processes sharing the Store never act twice. When the listing fails,
// only resumption happens: nothing is destroyed, adopted, marked gone or
// provisioned on an unknown view. The error reports a failed listing or
// lock; the Report is returned in every case.
func (m *Manager) Reconcile(ctx context.Context) (*Report, error) {
	rep := &Report{Started: m.now()}
	if m.isStopped() {
		// A stopped Manager could decide but not act: leave it to the next.
		return rep, ErrStopped
	}
	m.stats.reconciles.Add(1)
	res, listStart, lerr := m.listForReconcile(ctx)
	if lerr != nil {
		rep.ListError = lerr.Error()
	} else {
		rep.Listed = true
	}
	var toStart []*Operation
	err := m.withLock(ctx, func(ctx context.Context) error {
		recs, err := m.loadAll(ctx)
		if err != nil {
			return err
		}
		st, err := m.loadState(ctx)
		if err != nil {
			return err
		}
		toStart = append(toStart, m.resumeLocked(ctx, recs, rep)...)
		if rep.Listed {
			dead := m.reconcileListing(ctx, recs, st, res, listStart, rep)
			st.ListedAt = listStart
			toStart = append(toStart, m.reconcileLifetime(ctx, recs, dead, rep)...)
			toStart = append(toStart, m.reconcileMin(ctx, recs, dead, rep)...)
			toStart = append(toStart, m.reconcileScale(ctx, recs, dead, rowsByID(res), listStart, rep)...)
		}
		st.LastRun, st.LastOwner = m.now(), m.owner
		return m.saveState(ctx, st)
	})
	for _, op := range toStart {
		m.startWorker(op)
	}
	if err == nil {
		m.prune(ctx)
	}
	rep.Finished = m.now()
	switch {
	case err != nil:
		m.stats.reconcileErrors.Add(1)
		rep.errorf("%v", err)
		return rep, fmt.Errorf("reconcile: %w", err)
	case lerr != nil:
		m.stats.reconcileErrors.Add(1)
		return rep, fmt.Errorf("reconcile: listing instances failed, nothing acted upon: %w", lerr)
	}
	return rep, nil
}

// listForReconcile returns the listing reconciliation acts on and when it
// began: the routing side's latest successful listing when it is at most
// FleetListingMaxAge old (one listing then feeds both), otherwise a
// listing of its own. A failed listing is an error, never "no instances".
func (m *Manager) listForReconcile(ctx context.Context) (*vastclient.ListResult, time.Time, error) {
	if maxAge := m.cfg.FleetListingMaxAge; maxAge > 0 {
		if l, ok := m.fleet.Listing(); ok && !l.Started.IsZero() && m.now().Sub(l.Started) <= maxAge {
			return &vastclient.ListResult{Instances: l.Rows, Skipped: l.Skipped}, l.Started, nil
		}
	}
	start := m.now()
	res, err := m.api.ListInstances(ctx, vastclient.ListOptions{})
	if err != nil {
		return nil, start, err
	}
	m.noteListing(res, start)
	return res, start, nil
}

// resume takes over abandoned operations without a full reconciliation.
func (m *Manager) resume(ctx context.Context) error {
	if m.isStopped() {
		return nil
	}
	var toStart []*Operation
	rep := &Report{}
	err := m.withLock(ctx, func(ctx context.Context) error {
		recs, err := m.loadAll(ctx)
		if err != nil {
			return err
		}
		toStart = m.resumeLocked(ctx, recs, rep)
		return nil
	})
	for _, op := range toStart {
		m.startWorker(op)
	}
	if len(rep.Resumed) > 0 {
		m.log.Info("resumed operations", zap.Strings("ops", rep.Resumed))
	}
	return err
}

// resumeLocked leases to this process every unfinished operation whose
// lease was released or expired, and repairs records whose destruction
// lost its operation. The Store lock must be held.
func (m *Manager) resumeLocked(ctx context.Context, recs *records, rep *Report) []*Operation {
	if m.isStopped() {
		return nil
	}
	now := m.now()
	var out []*Operation
	ids := make([]string, 0, len(recs.ops))
	for id := range recs.ops {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		op := recs.ops[id]
		if op.Final() || m.isActive(op.ID) {
			continue
		}
		if op.Owner != m.owner && now.Before(op.LeaseUntil) {
			continue // another process works on it
		}
		prev := op.Owner
		if err := m.takeOver(ctx, op); err != nil {
			if !errors.Is(err, ErrLeaseLost) {
				rep.errorf("taking over operation %s: %v", op.ID, err)
			}
			continue
		}
		m.log.Info("resuming operation", logOp(op.ID), zap.String("kind", op.Kind),
			logState(op.State), zap.String("previous_owner", prev))
		rep.Resumed = append(rep.Resumed, op.ID)
		if op.Kind == KindDestroy {
			rep.DestroyRetries = append(rep.DestroyRetries, op.InstanceID)
		}
		out = append(out, op)
	}
	return append(out, m.repairRecords(ctx, recs, rep)...)
}

// repairRecords finishes the bookkeeping of records whose operation ended
// without it (a lost write) and restarts destructions that lost their
// operation. It returns the destroy operations to start.
func (m *Manager) repairRecords(ctx context.Context, recs *records, rep *Report) []*Operation {
	var out []*Operation
	for id, rec := range recs.insts {
		if rec.State == InstanceStarting {
			m.repairStarting(ctx, recs, rec, rep)
			continue
		}
		if rec.State == InstanceProvisioning {
			// A provisioning record outlives its operation only if a write
			// was lost: finish the bookkeeping the operation could not.
			op := recs.ops[rec.OpID]
			switch {
			case op == nil || !op.Final():
			case op.State == StateSucceeded && op.InstanceID == id:
				rec.State, rec.ReadyAt = InstanceActive, op.Ended
				if err := m.saveInst(ctx, rec); err != nil {
					rep.errorf("recording %d active: %v", id, err)
				}
			default:
				dop, err := m.startDestroyLocked(ctx, rec, "leftover of operation "+op.ID+" ("+op.State+")")
				if err != nil {
					rep.errorf("destroying leftover %d: %v", id, err)
					continue
				}
				recs.ops[dop.ID] = dop
				rep.DestroyRetries = append(rep.DestroyRetries, id)
				out = append(out, dop)
			}
			continue
		}
		// Records marked for destruction must have a live destroy operation.
		if !rec.destroying() {
			continue
		}
		dop := recs.ops[rec.DestroyOp]
		switch {
		case dop != nil && dop.State == StateSucceeded:
			rec.State = InstanceDestroyed
			if err := m.saveInst(ctx, rec); err != nil {
				rep.errorf("recording destruction of %d: %v", id, err)
			}
		case dop == nil || dop.State == StateFailed:
			op, err := m.startDestroyLocked(ctx, rec, rec.DestroyReason)
			if err != nil {
				rep.errorf("restarting destruction of %d: %v", id, err)
				continue
			}
			recs.ops[op.ID] = op
			rep.DestroyRetries = append(rep.DestroyRetries, id)
			out = append(out, op)
		}
	}
	return out
}

// takeOver leases op to this process as a compare-and-set: only if the
// stored copy is still the one read (same owner and version) and its lease
// is released or expired. Waiting for the operation's lock is bounded by
// the lease TTL: a holder stalled that long is not waited for.
func (m *Manager) takeOver(ctx context.Context, op *Operation) error {
	prevOwner, prevVersion := op.Owner, op.Version
	now := m.now()
	next := op.clone()
	next.Owner, next.LeaseUntil = m.owner, now.Add(m.cfg.LeaseTTL)
	err := m.casOp(ctx, next, min(m.cfg.LockTimeout, m.cfg.LeaseTTL), func(cur *Operation) error {
		switch {
		case cur == nil:
			return fmt.Errorf("%w: operation %s no longer stored", ErrLeaseLost, op.ID)
		case cur.Owner != prevOwner || cur.Version != prevVersion:
			return fmt.Errorf("%w: operation %s changed meanwhile", ErrLeaseLost, op.ID)
		case cur.Owner != m.owner && now.Before(cur.LeaseUntil):
			return fmt.Errorf("%w: operation %s is leased", ErrLeaseLost, op.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	*op = *next
	return nil
}

// startDestroyLocked records a destroy operation for a record without
// starting its worker (the caller does, after releasing the lock).
func (m *Manager) startDestroyLocked(ctx context.Context, rec *InstanceRecord, reason string) (*Operation, error) {
	if reason == "" {
		reason = "resumed destruction"
	}
	op, err := m.startDestroy(ctx, rec.ID, destroyParams{reason: reason, pool: rec.Pool, label: rec.Label, inline: true})
	if err != nil {
		return nil, err
	}
	return op, nil
}

// listingView is the listing reconciliation acts on.
type listingView struct {
	res   *vastclient.ListResult
	start time.Time // when the listing began
	now   time.Time // when this reconciliation looked at it
	// fresh is false when an earlier reconciliation already counted
	// sightings and misses in this listing.
	fresh bool
	byID  map[int64]*vastclient.Instance
}

// reconcileListing handles, in order, duplicates and orphans (listed
// instances of ours without a live record), ghosts (live records missing
// from the listings) and dead instances (active and listed, but dead). It
// returns the instances considered dead (not counted towards
// min_instances).
func (m *Manager) reconcileListing(ctx context.Context, recs *records, st *reconcileState,
	res *vastclient.ListResult, listStart time.Time, rep *Report) map[int64]bool {
	l := &listingView{res: res, start: listStart, now: m.now(), fresh: listStart.After(st.ListedAt),
		byID: make(map[int64]*vastclient.Instance, len(res.Instances))}
	for i := range res.Instances {
		l.byID[res.Instances[i].ID] = &res.Instances[i]
	}
	m.reconcileOrphans(ctx, recs, st, l, rep)
	ids := make([]int64, 0, len(recs.insts))
	for id := range recs.insts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		m.checkGhost(ctx, recs.insts[id], st, l, rep)
	}
	dead := m.reconcileDead(ctx, recs, st, l, ids, rep)
	m.reportUnmanaged(recs, ids, rep)
	forgetSettled(recs, st)
	return dead
}

// reconcileOrphans counts the instances this gateway owns and handles the
// listed ones of ours that are duplicates (retireDuplicate) or orphans
// (handleOrphan). Sightings must be consecutive: counters of instances
// not seen this time are dropped.
func (m *Manager) reconcileOrphans(ctx context.Context, recs *records, st *reconcileState, l *listingView, rep *Report) {
	orphanSeen, dupSeen := map[int64]bool{}, map[int64]bool{}
	for i := range l.res.Instances {
		row := &l.res.Instances[i]
		lbl, ours := ownedLabel(m.cfg.GatewayID, row.Label)
		rec := recs.insts[row.ID]
		if ours || (rec != nil && rec.Live()) {
			rep.Owned++
		}
		if ours && row.CurState != "unloaded" {
			if bound := boundElsewhere(recs, l.byID, lbl.OpID, row.ID); bound > 0 {
				dupSeen[row.ID] = true
				m.retireDuplicate(ctx, recs, st, row, lbl, bound, l.fresh, rep)
				continue
			}
		}
		// Orphans: our label, no live record, no operation still working on it.
		if !ours || (rec != nil && rec.Live()) || row.CurState == "unloaded" {
			continue
		}
		if op := recs.ops[lbl.OpID]; op != nil && !op.Final() {
			continue // its operation will record it
		}
		if rec != nil && rec.State == InstanceDestroyed {
			// Confirmed destroyed, yet listed again: not trusted to be the
			// same contract; handle it like any orphan.
			m.log.Warn("an instance confirmed destroyed is listed again", logInst(row.ID))
		}
		orphanSeen[row.ID] = true
		m.handleOrphan(ctx, recs, st, row, lbl, l, rep)
	}
	for id := range st.Orphans {
		if !orphanSeen[id] {
			delete(st.Orphans, id)
		}
	}
	for id := range st.Duplicates {
		if !dupSeen[id] {
			delete(st.Duplicates, id)
		}
	}
}

// handleOrphan applies the orphan policy to one orphan.
func (m *Manager) handleOrphan(ctx context.Context, recs *records, st *reconcileState,
	row *vastclient.Instance, lbl Label, l *listingView, rep *Report) {
	switch m.cfg.Orphans {
	case OrphansAdopt:
		m.adoptOrphan(ctx, recs, row, lbl, l.now, rep)
	case OrphansDestroy:
		if l.fresh || st.Orphans[row.ID] == 0 {
			st.Orphans[row.ID]++
		}
		if st.Orphans[row.ID] < 2 {
			rep.OrphansPending = append(rep.OrphansPending, row.ID)
			return
		}
		orphan := &InstanceRecord{ID: row.ID, Pool: lbl.Pool, Label: row.Label, OpID: lbl.OpID,
			MachineID: row.MachineID, Price: budgetRate(row)}
		op, err := m.startDestroyLocked(ctx, orphan, "orphan: labelled "+row.Label+" without a record")
		if err != nil {
			rep.errorf("destroying orphan %d: %v", row.ID, err)
			return
		}
		recs.ops[op.ID] = op
		delete(st.Orphans, row.ID)
		m.stats.orphansDestroyed.Add(1)
		m.startWorker(op)
		rep.OrphansDestroyed = append(rep.OrphansDestroyed, row.ID)
	default:
		rep.OrphansIgnored = append(rep.OrphansIgnored, row.ID)
	}
}

// adoptOrphan writes an active record for an orphan, unless that would
// exceed its pool's max_instances or a budget.
func (m *Manager) adoptOrphan(ctx context.Context, recs *records, row *vastclient.Instance, lbl Label,
	now time.Time, rep *Report) {
	if why := m.adoptionRefused(recs, lbl.Pool, row); why != "" {
		m.log.Error("orphan instance not adopted; it keeps billing: destroy it or raise the limit",
			logInst(row.ID), logPool(lbl.Pool), logReason(why))
		rep.OrphansOverCap = append(rep.OrphansOverCap, row.ID)
		return
	}
	start := time.Time{}
	if row.StartDate > 0 {
		start = time.Unix(0, int64(row.StartDate*1e9))
	}
	adopted := &InstanceRecord{
		ID: row.ID, Pool: lbl.Pool, Label: row.Label, OpID: lbl.OpID, MachineID: row.MachineID,
		Price: budgetRate(row), State: InstanceActive, Adopted: true, Created: now, Started: start,
	}
	if m.cfg.Pools[lbl.Pool].Autoscale.Enabled && rowStopped(row) {
		// A warm instance (its stop's record was lost): kept stopped.
		adopted.State, adopted.Price = InstanceStopped, row.DPHTotal
		adopted.StoppedAt, adopted.StoppedRate = now, ledger.Rate(row)
	}
	if err := m.saveInst(ctx, adopted); err != nil {
		rep.errorf("adopting orphan %d: %v", row.ID, err)
		return
	}
	recs.insts[row.ID] = adopted
	if _, ok := m.cfg.Pools[lbl.Pool]; !ok {
		m.log.Warn("adopted an orphan of a pool that is not configured", logInst(row.ID), logPool(lbl.Pool))
	}
	m.stats.orphansAdopted.Add(1)
	m.log.Warn("adopted orphan instance", logInst(row.ID), logPool(lbl.Pool), zap.String("label", row.Label))
	rep.OrphansAdopted = append(rep.OrphansAdopted, row.ID)
}

// checkGhost counts a live record missing from a successful listing; after
// GhostConfirmations consecutive misses the show endpoint confirms that it
// is gone before the record is marked so.
func (m *Manager) checkGhost(ctx context.Context, rec *InstanceRecord, st *reconcileState, l *listingView, rep *Report) {
	id := rec.ID
	if _, listed := l.byID[id]; listed || !rec.Live() {
		delete(st.Misses, id)
		return
	}
	if !rec.Created.Before(l.start) || l.res.Skipped > 0 {
		// Created after the listing began, or the listing had rows
		// without a usable id (one of them might be this instance).
		return
	}
	if l.fresh {
		st.Misses[id]++
	}
	if st.Misses[id] < m.cfg.GhostConfirmations {
		rep.GhostSuspects = append(rep.GhostSuspects, id)
		return
	}
	_, err := m.api.ShowInstance(ctx, id)
	switch {
	case errors.Is(err, vastclient.ErrNotFound):
		delete(st.Misses, id)
		if rec.destroying() {
			return // its destroy worker confirms and records it
		}
		rec.State = InstanceGone
		if err := m.saveInst(ctx, rec); err != nil {
			rep.errorf("marking %d gone: %v", id, err)
			return
		}
		m.stats.ghosts.Add(1)
		m.log.Warn("instance gone (missing from listings and show)", logInst(id), logPool(rec.Pool),
			zap.Int("listings", m.cfg.GhostConfirmations))
		rep.Ghosts = append(rep.Ghosts, id)
	case err == nil:
		// The listing omits it but it exists: a listing glitch.
		st.Misses[id] = 0
		rep.GhostSuspects = append(rep.GhostSuspects, id)
	default:
		rep.errorf("confirming ghost %d: %v", id, err)
	}
}

// reconcileDead destroys instances that are active and listed but dead
// (deadReason) for longer than their pool's ready_timeout: they bill
// without serving. It also tallies which pools fail their probes
// (setProbeFailing) and returns the dead instances.
func (m *Manager) reconcileDead(ctx context.Context, recs *records, st *reconcileState, l *listingView,
	ids []int64, rep *Report) map[int64]bool {
	dead := map[int64]bool{}
	probes := probeTally{}
	for _, id := range ids {
		rec, row := recs.insts[id], l.byID[id]
		if rec.State != InstanceActive || row == nil || scaling(recs, rec) {
			// A stop in progress makes an active instance look dead.
			delete(st.DeadSince, id)
			continue
		}
		tpl, ok := m.cfg.Pools[rec.Pool]
		if !ok {
			tpl = PoolTemplate{}.withDefaults()
		}
		m.noteReady(ctx, rec)
		why := m.deadReason(tpl, rec, row)
		if why == "" {
			delete(st.DeadSince, id)
			probes.add(m.fleet, rec)
			continue
		}
		dead[id] = true
		since, seen := st.DeadSince[id]
		if !seen {
			st.DeadSince[id], since = l.now, l.now
		}
		if l.now.Sub(since) < tpl.ReadyTimeout.D() {
			continue
		}
		op, err := m.startDestroyLocked(ctx, rec, "dead: "+why)
		if err != nil {
			rep.errorf("destroying dead instance %d: %v", id, err)
			continue
		}
		recs.ops[op.ID] = op
		rec.State = InstanceDestroying
		delete(st.DeadSince, id)
		m.startWorker(op)
		rep.DeadDestroyed = append(rep.DeadDestroyed, id)
	}
	rep.ProbeFailing = m.setProbeFailing(probes)
	return dead
}

// reportUnmanaged lists the serving or provisioning instances of pools
// that are not configured: they keep billing and are left alone.
func (m *Manager) reportUnmanaged(recs *records, ids []int64, rep *Report) {
	for _, id := range ids {
		rec := recs.insts[id]
		if _, ok := m.cfg.Pools[rec.Pool]; !ok && (rec.State == InstanceActive || rec.State == InstanceProvisioning) {
			rep.Unmanaged = append(rep.Unmanaged, id)
		}
	}
	if len(rep.Unmanaged) > 0 {
		m.log.Warn("instances of pools that are not configured keep billing", zap.Int64s("instances", rep.Unmanaged))
	}
}

// forgetSettled drops the dead and missing counters of instances whose
// records no longer need them.
func forgetSettled(recs *records, st *reconcileState) {
	for id := range st.DeadSince {
		if r := recs.insts[id]; r == nil || r.State != InstanceActive {
			delete(st.DeadSince, id)
		}
	}
	for id := range st.Misses {
		if r := recs.insts[id]; r == nil || !r.Live() {
			delete(st.Misses, id)
		}
	}
}

// boundElsewhere returns the instance that the finished provisioning
// opID is bound to, when that is not id and it may still exist; 0 else.
func boundElsewhere(recs *records, byID map[int64]*vastclient.Instance, opID string, id int64) int64 {
	op := recs.ops[opID]
	if op == nil || op.Kind != KindProvision || op.State != StateSucceeded || op.InstanceID <= 0 || op.InstanceID == id {
		return 0
	}
	if r := recs.insts[op.InstanceID]; (r != nil && r.Live()) || byID[op.InstanceID] != nil {
		return op.InstanceID
	}
	return 0
}

// retireDuplicate drains and destroys (after two sightings) an instance
// that carries the label of an operation bound to another instance: the
// answer of its create was lost, or two processes both created.
func (m *Manager) retireDuplicate(ctx context.Context, recs *records, st *reconcileState,
	row *vastclient.Instance, l Label, bound int64, fresh bool, rep *Report) {
	if rec := recs.insts[row.ID]; rec != nil && rec.destroying() {
		return // already on its way out
	}
	if fresh || st.Duplicates[row.ID] == 0 {
		st.Duplicates[row.ID]++
	}
	if st.Duplicates[row.ID] < 2 {
		rep.DuplicatesPending = append(rep.DuplicatesPending, row.ID)
		return
	}
	reason := fmt.Sprintf("duplicate: labelled for operation %s, which is bound to instance %d", l.OpID, bound)
	op, err := m.startDestroy(ctx, row.ID, destroyParams{reason: reason, pool: l.Pool, label: row.Label,
		drain: true, inline: true})
	if err != nil {
		rep.errorf("destroying duplicate %d: %v", row.ID, err)
		return
	}
	recs.ops[op.ID] = op
	if rec := recs.insts[row.ID]; rec != nil {
		rec.State = InstanceDestroying
	}
	delete(st.Duplicates, row.ID)
	m.stats.duplicatesDestroyed.Add(1)
	m.log.Error("a second instance for one operation; draining and destroying it",
		logInst(row.ID), logOp(l.OpID), logPool(l.Pool), zap.Int64("bound_instance", bound))
	m.startWorker(op)
	rep.DuplicatesDestroyed = append(rep.DuplicatesDestroyed, row.ID)
}

// adoptionRefused says why adopting an orphan into pool would exceed
// max_instances or a budget, or "" when it would not. Orphans of pools
// that are not configured have no limits here (they are reported as
// unmanaged).
func (m *Manager) adoptionRefused(recs *records, pool string, row *vastclient.Instance) string {
	tpl, ok := m.cfg.Pools[pool]
	if !ok {
		return ""
	}
	// A stopped instance of an autoscaled pool holds no GPU: it is adopted
	// into the warm pool whatever max_instances says.
	warm := tpl.Autoscale.Enabled && rowStopped(row)
	if c := m.poolCount(recs, pool, nil); !warm && tpl.MaxInstances > 0 && c.capTotal()+1 > tpl.MaxInstances {
		return fmt.Sprintf("pool %q has %d instances and %d provisionings in progress; max_instances is %d",
			pool, c.billing, c.inProgress, tpl.MaxInstances)
	}
	// The orphan's row is already in the spend (an owned label); the pool
	// must not be over budget with it.
	if err := m.checkSpend(recs, pool, tpl, 0, ""); err != nil {
		m.noteRefusal(err)
		return err.Error()
	}
	return ""
}

// deadReason says why an active instance is dead, or "" if it is not.
// Only vast.ai's view (exited, offline, unknown, stopped, intended_status
// stopped) kills an instance that was ready before: failing probes alone
// may be a configuration change (a wrong path, model or token source), and
// destroying a serving fleet for it would cost more than it saves. An
// instance that never was ready is dead when the routing side says it
// failed. Stopped bid instances were outbid and resume by themselves;
// they are left alone.
func (m *Manager) deadReason(tpl PoolTemplate, rec *InstanceRecord, row *vastclient.Instance) string {
	switch row.ActualStatus {
	case "exited", "offline", "unknown":
		return "actual_status " + row.ActualStatus
	case "stopped":
		if tpl.Type != TypeBid {
			return "stopped"
		}
	}
	if row.IntendedStatus == "stopped" && tpl.Type != TypeBid {
		return "intended_status stopped"
	}
	if !rec.ReadyAt.IsZero() {
		return ""
	}
	if st, _, ok := m.fleet.State(row.ID); ok && st == FleetFailed {
		return "the routing side reports it failed"
	}
	return ""
}

// noteReady records that an active instance is ready now, if its record
// does not know it was (an adopted orphan, a record from before ReadyAt).
func (m *Manager) noteReady(ctx context.Context, rec *InstanceRecord) {
	if !rec.ReadyAt.IsZero() {
		return
	}
	if st, _, ok := m.fleet.State(rec.ID); !ok || st != FleetReady {
		return
	}
	rec.ReadyAt = m.now()
	if err := m.saveInst(ctx, rec); err != nil {
		m.log.Warn("could not record that an instance is ready", logInst(rec.ID), logErr(err))
	}
}

// probeTally counts, per pool, the active instances that were ready
// before and those of them failing their probes now.
type probeTally map[string]*[2]int

func (t probeTally) add(f Fleet, rec *InstanceRecord) {
	if rec.ReadyAt.IsZero() {
		return
	}
	c := t[rec.Pool]
	if c == nil {
		c = new([2]int)
		t[rec.Pool] = c
	}
	c[0]++
	if st, _, ok := f.State(rec.ID); ok && (st == FleetFailed || st == FleetUnhealthy) {
		c[1]++
	}
}

// setProbeFailing records which pools have every previously ready
// instance failing its probe, logs each change (at error level when it
// starts) and returns the failing pools, sorted.
func (m *Manager) setProbeFailing(t probeTally) []string {
	var out []string
	m.mu.Lock()
	prev := m.probeFailing
	m.probeFailing = map[string]bool{}
	for pool, c := range t {
		if c[0] > 0 && c[1] == c[0] {
			m.probeFailing[pool] = true
			out = append(out, pool)
		}
	}
	now := m.probeFailing
	m.mu.Unlock()
	sort.Strings(out)
	for _, pool := range out {
		if !prev[pool] {
			m.log.Error("every instance of the pool fails its health probe although it was ready before; "+
				"keeping them (check the pool's health settings and token source after a configuration change)",
				logPool(pool), zap.Int("instances", t[pool][0]))
		}
	}
	for pool := range prev {
		if !now[pool] {
			m.log.Info("the pool's instances pass their health probe again", logPool(pool))
		}
	}
	return out
}

// reconcileLifetime replaces instances older than their pool's
// max_lifetime: a replacement is provisioned first; once it is ready the
// old instance is drained and destroyed (by the replacement's worker, or
// here if that step was interrupted).
func (m *Manager) reconcileLifetime(ctx context.Context, recs *records, dead map[int64]bool, rep *Report) []*Operation {
	now := m.now()
	var out []*Operation
	ids := make([]int64, 0, len(recs.insts))
	for id := range recs.insts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		rec := recs.insts[id]
		tpl, ok := m.cfg.Pools[rec.Pool]
		if !ok || tpl.MaxLifetime <= 0 || rec.State != InstanceActive || dead[id] {
			continue
		}
		if rec.ReplacedBy != "" {
			rop := recs.ops[rec.ReplacedBy]
			switch {
			case rop != nil && rop.State == StateSucceeded:
				op, err := m.startDestroy(ctx, id, destroyParams{
					reason: "max_lifetime: replaced by operation " + rop.ID, pool: rec.Pool,
					label: rec.Label, parent: rop.ID, drain: true, inline: true,
				})
				if err != nil {
					rep.errorf("retiring %d: %v", id, err)
					continue
				}
				recs.ops[op.ID] = op
				out = append(out, op)
				rep.Replacements = append(rep.Replacements, Replacement{Old: id, Op: rop.ID, Phase: "retiring"})
				continue
			case rop != nil && !rop.Final():
				continue // replacement in progress
			}
			// The replacement failed or its record is gone: try again.
			rec.ReplacedBy = ""
		}
		if rec.age(now) < tpl.MaxLifetime.D() {
			continue
		}
		// A replacement is made before the old instance goes, so at the
		// cap it may exceed max_instances by one: one replacement at a
		// time, the next once the retired instance is confirmed gone.
		if c := m.poolCount(recs, rec.Pool, nil); tpl.MaxInstances > 0 && c.capTotal() > tpl.MaxInstances {
			m.log.Debug("max_lifetime replacement waits for the previous one (max_instances)",
				logInst(id), logPool(rec.Pool), zap.Int("instances", c.capTotal()))
			continue
		}
		if op := m.startReplacement(ctx, recs, rec, tpl, rep); op != nil {
			out = append(out, op)
		}
	}
	return out
}

// startReplacement records a max_lifetime replacement of rec, within the
// budgets and the credit guard, and returns it (nil when refused or not
// stored).
func (m *Manager) startReplacement(ctx context.Context, recs *records, rec *InstanceRecord, tpl PoolTemplate, rep *Report) *Operation {
	id := rec.ID
	var prices []float64
	offers, err := m.candidateOffers(ctx, rec.Pool, tpl, 0)
	if err == nil {
		prices = pickPrices(tpl, offers, m.offersInUse(recs, ""), 1)
		err = m.checkSpend(recs, rec.Pool, tpl, prices[0], "")
	}
	if err == nil {
		err = m.checkCredit(ctx, rec.Pool)
	}
	if err != nil {
		m.noteRefusal(err)
		rep.errorf("replacing %d (max_lifetime %s): %v", id, tpl.MaxLifetime, err)
		return nil
	}
	op := m.newProvisionOp(rec.Pool, TriggerMaxLifetime, prices[0])
	op.Replaces = id
	if err := m.saveOp(ctx, op); err != nil {
		rep.errorf("replacing %d: %v", id, err)
		return nil
	}
	recs.ops[op.ID] = op
	rec.ReplacedBy = op.ID
	if err := m.saveInst(ctx, rec); err != nil {
		rep.errorf("recording replacement of %d: %v", id, err)
	}
	m.log.Info("replacing an instance past max_lifetime", logInst(id), logPool(rec.Pool), logOp(op.ID),
		logDuration(rec.age(m.now())))
	rep.Replacements = append(rep.Replacements, Replacement{Old: id, Op: op.ID, Phase: "started"})
	rep.ProvisionsStarted = append(rep.ProvisionsStarted, op.ID)
	return op
}

// reconcileMin provisions pools up to min_instances, within max_instances
// and the budgets. Dead instances do not count.
func (m *Manager) reconcileMin(ctx context.Context, recs *records, dead map[int64]bool, rep *Report) []*Operation {
	var out []*Operation
	names := make([]string, 0, len(m.cfg.Pools))
	for name := range m.cfg.Pools {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, pool := range names {
		tpl := m.cfg.Pools[pool]
		if tpl.MinInstances <= 0 || tpl.Autoscale.Enabled {
			continue // autoscaled pools: reconcileScale
		}
		c := m.poolCount(recs, pool, dead)
		need := tpl.MinInstances - c.total()
		if tpl.MaxInstances > 0 {
			need = min(need, tpl.MaxInstances-c.capTotal())
		}
		if need <= 0 {
			continue
		}
		var prices []float64
		offers, err := m.candidateOffers(ctx, pool, tpl, 0)
		if err == nil {
			prices = pickPrices(tpl, offers, m.offersInUse(recs, ""), need)
			err = m.checkCredit(ctx, pool)
		}
		if err != nil {
			m.noteRefusal(err)
			rep.errorf("pool %q below min_instances (%d of %d): %v", pool, c.total(), tpl.MinInstances, err)
			continue
		}
		started := 0
		for _, price := range prices {
			if err := m.checkSpend(recs, pool, tpl, price, ""); err != nil {
				m.noteRefusal(err)
				rep.errorf("pool %q below min_instances: %v", pool, err)
				break
			}
			op := m.newProvisionOp(pool, TriggerMinInstances, price)
			if err := m.saveOp(ctx, op); err != nil {
				rep.errorf("provisioning pool %q: %v", pool, err)
				break
			}
			recs.ops[op.ID] = op
			rep.ProvisionsStarted = append(rep.ProvisionsStarted, op.ID)
			out = append(out, op)
			started++
		}
		if started > 0 {
			m.log.Info("provisioning towards min_instances", logPool(pool),
				zap.Int("have", c.total()), zap.Int("min", tpl.MinInstances), zap.Int("started", started))
		}
	}
	return out
}

// prune deletes finished operations and records of destroyed or gone
// instances older than Retention.
func (m *Manager) prune(ctx context.Context) {
	cutoff := m.now().Add(-m.cfg.Retention)
	m.mu.Lock()
	var ops []string
	for id, op := range m.ops {
		if op.Final() && !op.Ended.IsZero() && op.Ended.Before(cutoff) {
			ops = append(ops, id)
		}
	}
	var insts []int64
	for id, r := range m.insts {
		if !r.Live() && r.Updated.Before(cutoff) {
			insts = append(insts, id)
		}
	}
	m.mu.Unlock()
	for _, id := range ops {
		if err := m.store.Delete(ctx, m.opKey(id)); err == nil {
			m.mu.Lock()
			delete(m.ops, id)
			m.mu.Unlock()
		}
	}
	for _, id := range insts {
		if err := m.store.Delete(ctx, m.instKey(id)); err == nil {
			m.mu.Lock()
			delete(m.insts, id)
			delete(m.instMu, id)
			m.mu.Unlock()
		}
	}
	m.pruneBlocklist(ctx)
}

// rowsByID indexes a listing's rows.
func rowsByID(res *vastclient.ListResult) map[int64]*vastclient.Instance {
	out := make(map[int64]*vastclient.Instance, len(res.Instances))
	for i := range res.Instances {
		out[res.Instances[i].ID] = &res.Instances[i]
	}
	return out
}

// scaling reports whether a stop or start is working on rec.
func scaling(recs *records, rec *InstanceRecord) bool {
	op := recs.ops[rec.ScaleOp]
	return op != nil && !op.Final() && (op.Kind == KindStop || op.Kind == KindStart)
}

// repairStarting finishes the bookkeeping of a starting record whose start
// operation ended without it (a lost write): active if the start
// succeeded, and active too otherwise (see below).
func (m *Manager) repairStarting(ctx context.Context, recs *records, rec *InstanceRecord, rep *Report) {
	op := recs.ops[rec.ScaleOp]
	if op != nil && !op.Final() {
		return
	}
	if op != nil && op.State == StateSucceeded {
		rec.State, rec.ReadyAt = InstanceActive, op.Ended
	} else {
		// Whether it runs is unknown: as active, reconciliation either
		// finds it serving or destroys it as dead (stopped), never lets it
		// bill unseen.
		m.log.Error("a warm start ended without recording the instance; recording it active",
			logInst(rec.ID), logOp(rec.ScaleOp))
		rec.State = InstanceActive
	}
	rec.ScaleOp = ""
	if err := m.saveInst(ctx, rec); err != nil {
		rep.errorf("repairing the record of %d: %v", rec.ID, err)
	}
}
