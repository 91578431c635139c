package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/internal/ctxutil"
	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// The warm pool's operations. A stop (KindStop) drains an instance and
// stops it: its disk and model stay, only storage bills, and vast.ai
// releases the GPU, which someone else may then rent. A start (KindStart)
// starts it again; vast.ai makes it wait in "scheduling" while its
// machine's GPU is taken, possibly forever, so a start is bounded by the
// pool's warm start_timeout and then stopped again. Each step persists
// before it acts, and an instance id is never forgotten: whatever cannot
// be stopped or verified stopped is destroyed with verification instead.

// setStateTries bounds the PUTs of one stop or start whose failure is not
// vast.ai's refusal (5xx, transport): the client already retried each.
const setStateTries = 3

// runScaleOp drives a stop or a start to a final state: each step reads
// the instance record afresh (a storage error is retried a poll interval
// later) and hands it to step, which returns true once the operation has
// ended or the worker must stop.
func (m *Manager) runScaleOp(ctx context.Context, h *opHandle, step func(op *Operation, rec *InstanceRecord) (done bool)) {
	for ctx.Err() == nil && !h.crashed.Load() {
		op := h.get()
		if op.Final() {
			return
		}
		rec, err := m.loadInst(ctx, op.InstanceID)
		if err != nil {
			if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
				return
			}
			continue
		}
		if step(op, rec) {
			return
		}
	}
}

// runStop drives a stop to a final state.
func (m *Manager) runStop(ctx context.Context, h *opHandle) {
	m.runScaleOp(ctx, h, func(op *Operation, rec *InstanceRecord) bool {
		switch {
		case rec != nil && rec.State == InstanceStopped:
			m.finishScale(ctx, h, StateSucceeded, "")
			return true
		case rec == nil || rec.State != InstanceActive:
			m.finishScale(ctx, h, StateFailed, "the instance is no longer active ("+recState(rec)+")")
			return true
		}
		switch op.State {
		case StatePending, StateDraining:
			return !m.drainForStop(ctx, h, op)
		default:
			m.stopInstance(ctx, h, op, rec, "")
			return true
		}
	})
}

func recState(rec *InstanceRecord) string {
	if rec == nil {
		return "no record"
	}
	return rec.State
}

// drainForStop drains the instance within the pool's drain timeout. One
// still serving requests then is not stopped: the scale-down is given up
// and the instance returned to routing. false means the operation ended
// or the worker is stopping.
func (m *Manager) drainForStop(ctx context.Context, h *opHandle, op *Operation) bool {
	if h.update(ctx, func(op *Operation) { op.State = StateDraining }) != nil || m.runHook(h, "stop-draining") {
		return false
	}
	dctx, cancel := context.WithTimeout(ctx, m.autoscaleSpec(op.Pool).DrainTimeout)
	err := m.fleet.Drain(dctx, op.InstanceID)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	if err != nil {
		m.giveUpScaleDown(ctx, h, err)
		return false
	}
	return h.update(ctx, func(op *Operation) { op.State = StateStopping }) == nil
}

// giveUpScaleDown ends a scale-down whose drain timed out: the instance
// goes back to routing and stays active (its record restored first, so a
// crash in between leaves an operation that drains again, never a lost
// instance).
func (m *Manager) giveUpScaleDown(ctx context.Context, h *opHandle, err error) {
	op := h.get()
	msg := fmt.Sprintf("drain_timeout: requests still in flight after %s (%v); the instance stays",
		m.autoscaleSpec(op.Pool).DrainTimeout, err)
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	if _, uerr := m.updateInst(pctx, op.InstanceID, func(rec *InstanceRecord) *InstanceRecord {
		if rec == nil {
			return nil
		}
		if rec.DestroyOp == op.ID && rec.destroying() {
			rec.State, rec.DestroyOp, rec.DestroyReason = InstanceActive, "", ""
		}
		if rec.ScaleOp == op.ID {
			rec.ScaleOp = ""
		}
		return rec
	}); uerr != nil {
		m.log.Error("could not restore the record of a scale-down given up", logInst(op.InstanceID), logErr(uerr))
		return // the next owner drains again
	}
	m.fleet.Undrain(op.InstanceID)
	m.log.Warn("scale-down given up: the instance still serves requests", logInst(op.InstanceID),
		logOp(op.ID), logPool(op.Pool), logReason(msg))
	_ = h.update(ctx, func(op *Operation) {
		op.State, op.Error, op.Ended = StateFailed, msg, m.now()
	})
}

// stopInstance stops the instance and verifies it stopped, then records it
// stopped (keeping the first StoppedAt when given, for a start given up).
// A stop vast.ai refuses, or one that cannot be verified, is replaced by
// a verified destruction. why is the failed start's message, or "".
func (m *Manager) stopInstance(ctx context.Context, h *opHandle, op *Operation, rec *InstanceRecord, why string) {
	id := op.InstanceID
	if m.runHook(h, "before-stop") {
		return
	}
	err := m.setState(ctx, h, id, vastclient.StateStopped)
	if ctx.Err() != nil || h.crashed.Load() {
		return
	}
	if err != nil {
		m.replaceByDestroy(ctx, h, why, "stop refused: "+err.Error())
		return
	}
	if m.runHook(h, "after-stop") {
		return
	}
	row, err := m.awaitStopped(ctx, id, m.autoscaleSpec(op.Pool).Warm.StartTimeout)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		m.replaceByDestroy(ctx, h, why, err.Error())
		return
	}
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	if _, err := m.updateInst(pctx, id, func(r *InstanceRecord) *InstanceRecord {
		if r == nil || r.destroying() || !r.Live() {
			return nil
		}
		r.State, r.ScaleOp, r.StoppedRate = InstanceStopped, "", ledger.Rate(row)
		if why == "" || r.StoppedAt.IsZero() {
			r.StoppedAt = m.now()
		}
		if why != "" {
			r.StartFailures++
			r.StartFailedAt = m.now()
		}
		return r
	}); err != nil {
		m.log.Error("could not record a stopped instance; will retry", logInst(id), logErr(err))
		_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		return
	}
	if why != "" {
		m.finishScale(ctx, h, StateFailed, why+"; stopped again")
		return
	}
	m.stats.stops.Add(1)
	m.stats.scaleDowns.Add(1)
	m.log.Info("instance stopped (warm pool)", logInst(id), logOp(op.ID), logPool(op.Pool),
		zap.Float64("storage_per_hour", ledger.Rate(row)))
	m.finishScale(ctx, h, StateSucceeded, "")
}

// setState PUTs the state, after the fencing check. vast.ai's refusal (a
// 4xx, such as missing_billing, or not found) is returned at once; other
// failures are retried a poll interval apart, setStateTries times.
func (m *Manager) setState(ctx context.Context, h *opHandle, id int64, state string) error {
	var err error
	for try := 0; try < setStateTries; try++ {
		if !h.mayCall(ctx) {
			if h.crashed.Load() {
				return ErrLeaseLost
			}
		} else {
			err = m.api.SetState(ctx, id, state)
			var ae *vastclient.APIError
			if err == nil || ctx.Err() != nil || errors.Is(err, vastclient.ErrNotFound) ||
				(errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != 429) {
				return err
			}
			m.log.Warn("PUT state failed; retrying", logInst(id), zap.String("state", state), logErr(err))
		}
		if e := ctxutil.Sleep(ctx, m.cfg.PollInterval); e != nil {
			return e
		}
	}
	if err == nil {
		err = errors.New("the operation's owner could not be checked")
	}
	return err
}

// awaitStopped polls the show endpoint until it shows the instance
// stopped, at most timeout.
func (m *Manager) awaitStopped(ctx context.Context, id int64, timeout time.Duration) (*vastclient.Instance, error) {
	deadline := m.now().Add(timeout)
	last := "no answer"
	for {
		row, err := m.api.ShowInstance(ctx, id)
		switch {
		case errors.Is(err, vastclient.ErrNotFound):
			return nil, errors.New("the instance disappeared while stopping")
		case err == nil && rowStopped(row):
			return row, nil
		case err == nil:
			last = fmt.Sprintf("actual_status %q, cur_state %q", row.ActualStatus, row.CurState)
		default:
			last = err.Error()
		}
		if m.now().After(deadline) {
			return nil, fmt.Errorf("stop not verified within %s (%s)", timeout, last)
		}
		if err := ctxutil.Sleep(ctx, m.cfg.PollInterval); err != nil {
			return nil, err
		}
	}
}

// replaceByDestroy destroys (verified, by a child operation) an instance
// that could not be stopped, and ends the operation failed.
func (m *Manager) replaceByDestroy(ctx context.Context, h *opHandle, why, problem string) {
	op := h.get()
	msg := problem
	if why != "" {
		msg = why + "; " + problem
	}
	dop, err := m.startDestroy(ctx, op.InstanceID, destroyParams{reason: "autoscale: " + problem, pool: op.Pool,
		label: op.Label, parent: op.ID, autoscale: op.Kind == KindStop})
	if err != nil {
		m.log.Error("could not start destroying an instance that could not be stopped; retrying",
			logInst(op.InstanceID), logOp(op.ID), logErr(err))
		_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		return
	}
	m.log.Warn("could not stop the instance; destroying it instead", logInst(op.InstanceID), logOp(op.ID),
		zap.String("destroy_op", dop.ID), logReason(msg))
	m.finishScale(ctx, h, StateFailed, msg+"; destroying it instead (operation "+dop.ID+")")
}

// finishScale ends a stop or start; a failed start (or a stop given up)
// asks for a reconciliation, which tries the next warm instance or a
// create.
func (m *Manager) finishScale(ctx context.Context, h *opHandle, state, msg string) {
	_ = h.update(ctx, func(op *Operation) {
		op.State, op.Ended = state, m.now()
		op.Error = msg
	})
	op := h.get()
	if op.Kind == KindStart && state == StateFailed {
		m.stats.warmStartFailures.Add(1)
		m.log.Warn("warm start failed", logInst(op.InstanceID), logOp(op.ID), logPool(op.Pool), logReason(msg))
	}
	if state == StateFailed {
		m.Kick()
	}
}

// runStart drives a warm start to a final state.
func (m *Manager) runStart(ctx context.Context, h *opHandle) {
	m.runScaleOp(ctx, h, func(op *Operation, rec *InstanceRecord) bool {
		switch {
		case rec != nil && rec.State == InstanceActive && op.State == StateStarting:
			m.finishScale(ctx, h, StateSucceeded, "") // recorded ready before a crash
			return true
		case rec != nil && rec.State == InstanceStopped && op.State == StateStopping:
			m.finishScale(ctx, h, StateFailed, op.Error+"; stopped again")
			return true
		case rec == nil || (rec.State != InstanceStopped && rec.State != InstanceStarting):
			m.finishScale(ctx, h, StateFailed, "the instance is no longer stopped ("+recState(rec)+")")
			return true
		}
		if op.State == StateStopping {
			m.stopFailedStart(ctx, h, op, rec)
			return true
		}
		m.startInstance(ctx, h, op)
		return false
	})
}

// startInstance marks the record starting, returns the instance to
// routing, PUTs running and waits for ready (awaitStarted). A start that
// does not reach ready goes on to stopFailedStart.
func (m *Manager) startInstance(ctx context.Context, h *opHandle, op *Operation) {
	id := op.InstanceID
	pctx, cancel := persistCtx(ctx)
	_, err := m.updateInst(pctx, id, func(r *InstanceRecord) *InstanceRecord {
		if r == nil || r.State == InstanceStarting && r.ScaleOp == op.ID {
			return nil
		}
		r.State, r.ScaleOp = InstanceStarting, op.ID
		return r
	})
	cancel()
	if err != nil {
		_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		return
	}
	// The instance stays out of routing (drained since its stop) until
	// it is ready again: the routing side may still list it as it was
	// before the stop, at an address it no longer serves.
	if m.runHook(h, "before-start") {
		return
	}
	putAt := m.now()
	err = m.setState(ctx, h, id, vastclient.StateRunning)
	if ctx.Err() != nil || h.crashed.Load() {
		return
	}
	var why string
	if err != nil {
		why = "start refused: " + err.Error()
	} else {
		if m.runHook(h, "after-start") {
			return
		}
		var ok bool
		if ok, why = m.awaitStarted(ctx, op, putAt); ok {
			m.startSucceeded(ctx, h, op, putAt)
			return
		}
		if ctx.Err() != nil || h.crashed.Load() {
			return
		}
	}
	_ = h.update(ctx, func(o *Operation) { o.State, o.Error = StateStopping, why })
}

// awaitStarted waits, at most the pool's warm start_timeout, until the
// routing side reports the instance ready since the start and its row
// shows it running. It
// returns why it is not, for the operation's error.
func (m *Manager) awaitStarted(ctx context.Context, op *Operation, putAt time.Time) (bool, string) {
	timeout := m.autoscaleSpec(op.Pool).Warm.StartTimeout
	deadline := putAt.Add(timeout)
	status := "not ready"
	var lastObs time.Time
	for {
		state, since, ok := m.fleet.State(op.InstanceID)
		now := m.now()
		if now.Sub(lastObs) >= m.cfg.StatusPollInterval || (ok && state == FleetReady) {
			lastObs = now
			if row, err := m.api.ShowInstance(ctx, op.InstanceID); err == nil {
				status = row.ActualStatus
				// Ready from before the stop does not count: that was
				// another container, maybe at other ports.
				// (The operation is created after the stop was verified,
				// so readiness since then is this container's, even when
				// the start is resumed by another process.)
				if ok && state == FleetReady && status == "running" && !since.Before(op.Created) {
					return true, ""
				}
			} else if errors.Is(err, vastclient.ErrNotFound) {
				return false, "the instance disappeared while starting"
			}
		}
		if now.After(deadline) {
			msg := fmt.Sprintf("start_timeout: still %s after %s", status, timeout)
			if status == "scheduling" {
				msg += " (the GPU was rented by someone else)"
			}
			return false, msg
		}
		if ctxutil.Sleep(ctx, m.cfg.PollInterval) != nil {
			return false, ""
		}
	}
}

// startSucceeded records the instance active and ready.
func (m *Manager) startSucceeded(ctx context.Context, h *opHandle, op *Operation, putAt time.Time) {
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	if _, err := m.updateInst(pctx, op.InstanceID, func(r *InstanceRecord) *InstanceRecord {
		if r == nil || r.State != InstanceStarting {
			return nil
		}
		r.State, r.ReadyAt, r.ScaleOp = InstanceActive, m.now(), ""
		r.StartFailures, r.StartFailedAt, r.StoppedAt = 0, time.Time{}, time.Time{}
		return r
	}); err != nil {
		m.log.Error("could not record a started instance; will retry", logInst(op.InstanceID), logErr(err))
		_ = ctxutil.Sleep(ctx, m.cfg.PollInterval)
		return
	}
	m.fleet.Undrain(op.InstanceID)
	m.stats.warmStarts.Add(1)
	m.log.Info("warm instance started", logInst(op.InstanceID), logOp(op.ID), logPool(op.Pool),
		logDuration(m.now().Sub(putAt)))
	m.finishScale(ctx, h, StateSucceeded, "")
}

// stopFailedStart stops a start that did not reach ready, so that it goes
// back to storage billing; after maxStartFailures failed starts it is
// destroyed (with verification) instead: its machine is busy, it is no
// warm instance any more.
func (m *Manager) stopFailedStart(ctx context.Context, h *opHandle, op *Operation, rec *InstanceRecord) {
	why := op.Error
	if rec.StartFailures+1 < maxStartFailures {
		m.stopInstance(ctx, h, op, rec, why)
		return
	}
	pctx, cancel := persistCtx(ctx)
	_, _ = m.updateInst(pctx, op.InstanceID, func(r *InstanceRecord) *InstanceRecord {
		if r == nil {
			return nil
		}
		r.StartFailures++
		r.StartFailedAt = m.now()
		return r
	})
	cancel()
	m.replaceByDestroy(ctx, h, why, fmt.Sprintf("%d failed warm starts", rec.StartFailures+1))
}
