package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/internal/ctxutil"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Destroy destroys an instance this gateway owns (it has a record, or a
// "cv:<gateway>:" label) and returns the operation at once; the
// destruction is verified in the background (see the package doc).
// Another gateway's or an unlabelled instance gives ErrNotOwned: use
// ForceDestroy. Destructions are never refused for budget reasons.
func (m *Manager) Destroy(ctx context.Context, id int64, reason string) (*Operation, error) {
	return m.requestDestroy(ctx, id, reason, false, false)
}

// ForceDestroy destroys any instance of the account, owned or not, for an
// operator who names it explicitly. It is otherwise like Destroy.
func (m *Manager) ForceDestroy(ctx context.Context, id int64, reason string) (*Operation, error) {
	return m.requestDestroy(ctx, id, reason, true, false)
}

// Drain stops routing to an owned instance, waits (at most DrainTimeout)
// for its in-flight requests, then destroys it like Destroy. It returns the
// operation at once, in state "draining".
func (m *Manager) Drain(ctx context.Context, id int64, reason string) (*Operation, error) {
	return m.requestDestroy(ctx, id, reason, false, true)
}

// ForceDrain drains and destroys any instance of the account, owned or
// not, like ForceDestroy; it is otherwise like Drain.
func (m *Manager) ForceDrain(ctx context.Context, id int64, reason string) (*Operation, error) {
	return m.requestDestroy(ctx, id, reason, true, true)
}

func (m *Manager) requestDestroy(ctx context.Context, id int64, reason string, force, drain bool) (*Operation, error) {
	if id <= 0 {
		return nil, &ValidationError{"id", fmt.Sprintf("%d is not a positive instance id", id)}
	}
	if m.isStopped() {
		return nil, ErrStopped
	}
	if reason == "" {
		reason = "requested"
	}
	rec, err := m.loadInst(ctx, id)
	if err != nil {
		return nil, err
	}
	p := destroyParams{reason: reason, force: force, drain: drain}
	owned := rec != nil && rec.Live()
	if rec != nil {
		p.pool, p.label = rec.Pool, rec.Label
	}
	if !owned {
		row, err := m.lookupRow(ctx, id)
		switch {
		case errors.Is(err, vastclient.ErrNotFound):
			if !force {
				return nil, fmt.Errorf("%w: %d", ErrInstanceNotFound, id)
			}
		case err != nil:
			if !force {
				return nil, fmt.Errorf("checking who owns instance %d: %w", id, err)
			}
		default:
			if l, ok := ownedLabel(m.cfg.GatewayID, row.Label); ok {
				owned = true
				p.pool, p.label = l.Pool, row.Label
			} else if !force {
				return nil, fmt.Errorf("instance %d is labelled %q: %w", id, row.Label, ErrNotOwned)
			} else {
				p.label = row.Label
			}
		}
	}
	if !owned {
		m.log.Warn("forced destruction of an instance this gateway does not own",
			logInst(id), logReason(reason))
	}
	return m.startDestroy(ctx, id, p)
}

// lookupRow finds an instance row in the latest listing or, failing that,
// with the show endpoint.
func (m *Manager) lookupRow(ctx context.Context, id int64) (*vastclient.Instance, error) {
	rows, _, ok := m.latestListing()
	if ok {
		for i := range rows {
			if rows[i].ID == id {
				return &rows[i], nil
			}
		}
	}
	return m.api.ShowInstance(ctx, id)
}

// destroyParams describe a destruction.
type destroyParams struct {
	reason      string
	pool, label string
	parent      string
	force       bool
	drain       bool
	// autoscale: a scale-down (Operation.Autoscale); the instance stays
	// in routing until its drain succeeded.
	autoscale bool
	// inline: the caller runs the operation itself (no worker started).
	inline bool
}

// RoutingReasonDestroying is the reason given to the routing side when an
// instance leaves routing because it is being destroyed.
const RoutingReasonDestroying = "destroying"

// startDestroy records a destroy operation and marks the instance record
// "destroying" (creating the record if needed, so that the id is never
// forgotten), takes the instance out of routing, then starts the worker. A
// destruction already in progress for the id is returned instead of
// starting another: the check and the writes happen under the instance's
// lock (in this process and in the Store), so concurrent requests, from
// this process or another, share one operation.
func (m *Manager) startDestroy(ctx context.Context, id int64, p destroyParams) (*Operation, error) {
	if existing := m.pendingDestroy(id); existing != nil {
		return existing, nil
	}
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	mu := m.instLock(id)
	mu.Lock()
	defer mu.Unlock()
	unlock, err := m.lockInstance(pctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := m.loadInst(pctx, id)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.destroying() && rec.DestroyOp != "" {
		dop, err := m.loadOp(pctx, rec.DestroyOp)
		if err != nil {
			return nil, err
		}
		if dop != nil && !dop.Final() {
			return dop, nil
		}
	}
	if existing := m.pendingDestroy(id); existing != nil {
		return existing, nil
	}
	now := m.now()
	op := &Operation{
		ID: newOpID(), Kind: KindDestroy, Pool: p.pool, State: StatePending, Reason: p.reason,
		Created: now, Updated: now, InstanceID: id, Label: p.label, Parent: p.parent,
		Drain: p.drain, Force: p.force, Owner: m.owner, LeaseUntil: now.Add(m.cfg.LeaseTTL),
		Autoscale: p.autoscale,
	}
	if p.drain {
		op.State = StateDraining
	}
	if err := m.saveOp(pctx, op); err != nil {
		return nil, err
	}
	if rec == nil {
		rec = &InstanceRecord{ID: id, Pool: p.pool, Label: p.label, Created: now}
	}
	if rec.State != InstanceDestroyFailed {
		rec.State = InstanceDestroying
	}
	rec.DestroyOp = op.ID
	rec.DestroyReason = p.reason
	if err := m.saveInst(pctx, rec); err != nil {
		return nil, err
	}
	// Routing stops before anything else: requests in flight finish on
	// their own, no new one is sent to an instance about to disappear. A
	// scale-down may still be given up (drain timeout): its drain stops
	// routing instead, and the exclusion follows the drain.
	if !(p.autoscale && p.drain) {
		m.fleet.Exclude(id, RoutingReasonDestroying)
	}
	m.log.Info("destroying instance", logInst(id), logOp(op.ID), logPool(p.pool),
		logReason(p.reason), zap.Bool("drain", p.drain), zap.Bool("force", p.force))
	if !p.inline {
		m.startWorker(op)
	}
	return op.clone(), nil
}

// lockInstance takes the Store lock of one instance's record, which makes
// "is a destruction already running?" and recording one atomic between
// processes.
func (m *Manager) lockInstance(ctx context.Context, id int64) (unlock func(), err error) {
	name := fmt.Sprintf("%s/instance_locks/%d", m.keyBase(), id)
	lctx, cancel := context.WithTimeout(ctx, m.cfg.LockTimeout)
	defer cancel()
	if err := m.store.Lock(lctx, name); err != nil {
		return nil, fmt.Errorf("locking instance record %d: %w", id, err)
	}
	return func() {
		uctx, cancel := persistCtx(ctx)
		defer cancel()
		if err := m.store.Unlock(uctx, name); err != nil {
			m.log.Error("releasing instance lock failed", logInst(id), logErr(err))
		}
	}, nil
}

// pendingDestroy returns a copy of a non-final destroy operation for id
// this process knows, or nil.
func (m *Manager) pendingDestroy(id int64) *Operation {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, op := range m.ops {
		if op.Kind == KindDestroy && op.InstanceID == id && !op.Final() {
			return op.clone()
		}
	}
	return nil
}

// runDestroy drains if asked, then issues DELETE and verifies absence until
// it is confirmed, with capped exponential backoff. After
// DestroyVerifyAttempts failed verifications the operation and the record
// become "destroy_failed" (logged at error level and counted), and retrying
// goes on. limit > 0 returns after that many rounds; 0 never gives up
// while ctx lives. It reports whether the destruction was confirmed.
func (m *Manager) runDestroy(ctx context.Context, h *opHandle, limit int) bool {
	op := h.get()
	if op.Final() {
		return op.State == StateSucceeded
	}
	id := op.InstanceID
	draining := op.Drain && (op.State == StatePending || op.State == StateDraining)
	// Also when resuming another process's destruction: this process's
	// routing side must not send new requests to it either.
	if !(op.Autoscale && draining) {
		m.fleet.Exclude(id, RoutingReasonDestroying)
	}
	if draining {
		if !m.drain(ctx, h, op) {
			return false // the next owner drains again, or the scale-down was given up
		}
		m.fleet.Exclude(id, RoutingReasonDestroying)
	}
	if op.State != StateDestroyFailed {
		_ = h.update(ctx, func(op *Operation) { op.State = StateDestroying })
	}
	backoff := m.cfg.DestroyBackoff
	for rounds := 1; ; rounds++ {
		if !h.mayCall(ctx) {
			if h.crashed.Load() || ctxutil.Sleep(ctx, backoff) != nil {
				return false
			}
			continue
		}
		err := m.api.DestroyInstance(ctx, id)
		if ctx.Err() != nil {
			return false
		}
		if err != nil && !errors.Is(err, vastclient.ErrNotFound) {
			// Keep going: verification decides, and a 5xx or 429 DELETE
			// may still have been applied.
			m.log.Warn("DELETE failed", logInst(id), logOp(op.ID), logErr(err))
		}
		if ctxutil.Sleep(ctx, backoff) != nil {
			return false
		}
		gone, verr := m.verifyGone(ctx, id)
		if ctx.Err() != nil {
			return false
		}
		if gone {
			m.destroyConfirmed(ctx, h)
			return true
		}
		msg := "still visible after DELETE"
		if verr != nil {
			msg = "could not verify: " + verr.Error()
		}
		m.noteUnverified(ctx, h, id, msg)
		if limit > 0 && rounds >= limit {
			return false
		}
		backoff = min(backoff*2, m.cfg.DestroyBackoffMax)
	}
}

// drain stops routing to the instance and waits, at most DrainTimeout,
// for its requests in flight. false means the worker is stopping, or (a
// scale-down, Operation.Autoscale) that the drain timed out and the
// scale-down was given up (giveUpScaleDown).
func (m *Manager) drain(ctx context.Context, h *opHandle, op *Operation) bool {
	_ = h.update(ctx, func(op *Operation) { op.State = StateDraining })
	timeout := m.cfg.DrainTimeout
	if op.Autoscale {
		timeout = m.autoscaleSpec(op.Pool).DrainTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	err := m.fleet.Drain(dctx, op.InstanceID)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	if err != nil && op.Autoscale {
		m.giveUpScaleDown(ctx, h, err)
		return false
	}
	if err != nil {
		m.log.Warn("drain incomplete; destroying anyway", logInst(op.InstanceID), logOp(op.ID), logErr(err))
	}
	return true
}

// noteUnverified counts a round whose destruction could not be verified;
// after DestroyVerifyAttempts the operation and the record are marked
// "destroy_failed" (the instance may still bill), and retrying goes on.
func (m *Manager) noteUnverified(ctx context.Context, h *opHandle, id int64, msg string) {
	markFailed := false
	_ = h.update(ctx, func(op *Operation) {
		op.DestroyAttempts++
		op.Error = msg
		if op.DestroyAttempts >= m.cfg.DestroyVerifyAttempts && op.State != StateDestroyFailed {
			op.State = StateDestroyFailed
			markFailed = true
		}
	})
	if !markFailed {
		return
	}
	m.stats.destroyFailed.Add(1)
	cur := h.get()
	m.log.Error("destruction not verified; the instance may still bill. Retrying until confirmed",
		logInst(id), logOp(cur.ID), zap.Int("verifications", cur.DestroyAttempts), logReason(msg))
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	_, _ = m.updateInst(pctx, id, func(rec *InstanceRecord) *InstanceRecord {
		if rec == nil {
			rec = &InstanceRecord{ID: id, Pool: cur.Pool, Label: cur.Label, DestroyOp: cur.ID}
		}
		rec.State = InstanceDestroyFailed
		return rec
	})
}

// verifyGone reports whether the instance is destroyed: the show endpoint
// says not found AND a successful listing does not have it. "Not running"
// is not destroyed: stopped and exited instances still bill.
func (m *Manager) verifyGone(ctx context.Context, id int64) (bool, error) {
	_, err := m.api.ShowInstance(ctx, id)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, vastclient.ErrNotFound) {
		return false, fmt.Errorf("show: %w", err)
	}
	start := m.now()
	res, err := m.api.ListInstances(ctx, vastclient.ListOptions{})
	if err != nil {
		return false, fmt.Errorf("list: %w", err)
	}
	m.noteListing(res, start)
	if res.Skipped > 0 {
		// An undecodable row could be this very instance: such a listing
		// never proves absence (the watcher and reconcile agree).
		return false, fmt.Errorf("list: %d rows could not be decoded; absence not proven", res.Skipped)
	}
	for _, in := range res.Instances {
		if in.ID == id {
			return false, nil
		}
	}
	return true, nil
}

// destroyConfirmed closes a verified destruction.
func (m *Manager) destroyConfirmed(ctx context.Context, h *opHandle) {
	op := h.get()
	// The record is marked destroyed before the operation succeeds, so
	// whoever sees the operation finished also sees the record final. A
	// crash in between leaves the operation running; its resumption
	// verifies the absence again.
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	if _, err := m.updateInst(pctx, op.InstanceID, func(rec *InstanceRecord) *InstanceRecord {
		if rec == nil {
			rec = &InstanceRecord{ID: op.InstanceID, Pool: op.Pool, Label: op.Label}
		}
		rec.State = InstanceDestroyed
		rec.DestroyOp = op.ID
		return rec
	}); err != nil {
		m.log.Error("could not record a confirmed destruction", logInst(op.InstanceID), logErr(err))
	}
	m.finishDestroy(ctx, h)
	m.stats.destroysConfirmed.Add(1)
	if op.Autoscale {
		m.stats.scaleDowns.Add(1)
	}
	m.log.Info("destruction verified", logInst(op.InstanceID), logOp(op.ID),
		zap.Int("verifications", op.DestroyAttempts+1))
}

func (m *Manager) finishDestroy(ctx context.Context, h *opHandle) {
	_ = h.update(ctx, func(op *Operation) {
		op.State = StateSucceeded
		op.Error = ""
		op.Ended = m.now()
	})
}
