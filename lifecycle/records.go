package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Operation kinds.
const (
	// KindProvision creates one instance and waits until it is ready.
	KindProvision = "provision"
	// KindDestroy destroys one instance and verifies that it is gone.
	KindDestroy = "destroy"
	// KindStop drains an autoscaled pool's instance and stops it (the warm
	// pool): disk kept, storage billed, GPU released.
	KindStop = "stop"
	// KindStart starts a stopped (warm) instance and waits until it is
	// ready, or stops it again after the pool's warm start_timeout.
	KindStart = "start"
)

// Operation states. Only StateSucceeded and StateFailed are final;
// StateDestroyFailed is retried until the destruction is confirmed.
const (
	StatePending       = "pending"
	StateCreating      = "creating"
	StateWaiting       = "waiting"
	StateCleaningUp    = "cleaning_up" // destroying a failed attempt's instance
	StateDraining      = "draining"
	StateDestroying    = "destroying"
	StateDestroyFailed = "destroy_failed"
	// StateStopping: a stop (or the stop after a failed start) was asked
	// and is being verified. StateStarting: a warm start is waiting for
	// the instance to be ready.
	StateStopping  = "stopping"
	StateStarting  = "starting"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
)

// Attempt states.
const (
	AttemptCreating      = "creating"
	AttemptLoading       = "loading"
	AttemptReady         = "ready"
	AttemptDestroying    = "destroying"
	AttemptFailed        = "failed"
	AttemptDestroyFailed = "destroy_failed"
)

// Instance record states. Records in the first six states are "live":
// the instance may exist and bill.
const (
	InstanceProvisioning  = "provisioning"
	InstanceActive        = "active"
	InstanceDestroying    = "destroying"
	InstanceDestroyFailed = "destroy_failed"
	// InstanceStopped is a warm instance: stopped, its disk (and model)
	// kept and billed as storage. It does not serve and does not count
	// against max_instances.
	InstanceStopped = "stopped"
	// InstanceStarting is a warm instance being started (KindStart): it
	// counts against max_instances and budgets at its full price.
	InstanceStarting  = "starting"
	InstanceDestroyed = "destroyed"
	InstanceGone      = "gone"
)

// Provisioning triggers, in Operation.Reason.
const (
	TriggerAPI          = "api"
	TriggerMinInstances = "min_instances"
	TriggerMaxLifetime  = "max_lifetime"
	// TriggerAutoscale: an autoscaled pool below its desired count.
	TriggerAutoscale = "autoscale"
)

// Attempt is one try of a provisioning on one offer.
type Attempt struct {
	OfferID    int64     `json:"offer_id"`
	MachineID  int64     `json:"machine_id"`
	GPUName    string    `json:"gpu_name,omitempty"`
	Price      float64   `json:"price"`
	InstanceID int64     `json:"instance_id,omitempty"`
	Started    time.Time `json:"started"`
	Ended      time.Time `json:"ended,omitzero"`
	State      string    `json:"state"`
	Error      string    `json:"error,omitempty"`
}

// Operation is the durable record of a provisioning or a destruction. It is
// stored as JSON under vastai/<gateway>/operations/<id>.json and holds
// nothing secret.
type Operation struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Pool    string    `json:"pool,omitempty"`
	State   string    `json:"state"`
	Reason  string    `json:"reason,omitempty"`
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Ended is when the operation reached a final state.
	Ended time.Time `json:"ended,omitzero"`
	// Label is the label given to the instances a provisioning creates.
	Label string `json:"label,omitempty"`
	// InstanceID is the instance provisioned (once ready) or destroyed.
	InstanceID int64 `json:"instance_id,omitempty"`
	// OfferID is the offer the caller asked for (first attempt only).
	OfferID int64 `json:"offer_id,omitempty"`
	// EstimatedPrice is the $/hour counted against budgets until an attempt
	// picks a real offer.
	EstimatedPrice float64 `json:"estimated_price,omitempty"`
	// Replaces is the instance a max_lifetime replacement takes over from.
	Replaces int64 `json:"replaces,omitempty"`
	// Parent is the operation that started this one.
	Parent   string    `json:"parent,omitempty"`
	Attempts []Attempt `json:"attempts,omitempty"`
	// Drain and Force are a destruction's options.
	Drain bool `json:"drain,omitempty"`
	Force bool `json:"force,omitempty"`
	// DestroyAttempts counts DELETE-and-verify rounds.
	DestroyAttempts int `json:"destroy_attempts,omitempty"`
	// Autoscale marks a scale-down's destruction: its drain is bounded by
	// the pool's autoscale drain_timeout, and one that times out (requests
	// still in flight) gives the scale-down up instead of destroying.
	Autoscale bool `json:"autoscale,omitempty"`
	// Owner and LeaseUntil say which process works on the operation; an
	// expired lease lets another process resume it.
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// Version increases with every write of the record. Writes of an
	// existing operation are compare-and-set on Owner and Version (see
	// casOp), so a worker that lost its lease cannot overwrite the record
	// of the process that took the operation over.
	Version int64 `json:"version,omitempty"`
}

// Final reports whether the operation reached a final state.
func (o *Operation) Final() bool {
	return o.State == StateSucceeded || o.State == StateFailed
}

func (o *Operation) clone() *Operation {
	c := *o
	c.Attempts = append([]Attempt(nil), o.Attempts...)
	return &c
}

// current returns the attempt in progress, or nil.
func (o *Operation) current() *Attempt {
	if n := len(o.Attempts); n > 0 && o.Attempts[n-1].Ended.IsZero() {
		return &o.Attempts[n-1]
	}
	return nil
}

// knownInstances returns the instance ids of all attempts.
func (o *Operation) knownInstances() map[int64]bool {
	ids := map[int64]bool{}
	for _, a := range o.Attempts {
		if a.InstanceID > 0 {
			ids[a.InstanceID] = true
		}
	}
	return ids
}

// InstanceRecord is the durable record of an instance this gateway manages,
// stored under vastai/<gateway>/instances/<id>.json. It is kept until the
// instance is confirmed destroyed or gone (and then for Retention).
type InstanceRecord struct {
	ID        int64   `json:"id"`
	Pool      string  `json:"pool"`
	Label     string  `json:"label,omitempty"`
	OpID      string  `json:"op_id,omitempty"`
	OfferID   int64   `json:"offer_id,omitempty"`
	MachineID int64   `json:"machine_id,omitempty"`
	Price     float64 `json:"price,omitempty"`
	State     string  `json:"state"`
	Adopted   bool    `json:"adopted,omitempty"`
	// Created is when the record was written; Started is the instance's
	// start_date when known.
	Created time.Time `json:"created"`
	Started time.Time `json:"started,omitzero"`
	ReadyAt time.Time `json:"ready_at,omitzero"`
	Updated time.Time `json:"updated"`
	// ReplacedBy is the max_lifetime replacement operation.
	ReplacedBy    string `json:"replaced_by,omitempty"`
	DestroyOp     string `json:"destroy_op,omitempty"`
	DestroyReason string `json:"destroy_reason,omitempty"`
	// ScaleOp is the stop or start operation working on the instance.
	ScaleOp string `json:"scale_op,omitempty"`
	// StoppedAt is when the instance was last verified stopped (warm
	// pool); StoppedRate what it bills then ($/hour, storage).
	StoppedAt   time.Time `json:"stopped_at,omitzero"`
	StoppedRate float64   `json:"stopped_rate,omitempty"`
	// StartFailures counts consecutive warm starts that did not reach
	// ready (reset by a successful one); StartFailedAt is the latest.
	StartFailures int       `json:"start_failures,omitempty"`
	StartFailedAt time.Time `json:"start_failed_at,omitzero"`
}

// Live reports whether the instance may still exist and bill.
func (r *InstanceRecord) Live() bool {
	switch r.State {
	case InstanceProvisioning, InstanceActive, InstanceDestroying, InstanceDestroyFailed,
		InstanceStopped, InstanceStarting:
		return true
	}
	return false
}

// destroying reports whether a destruction was requested.
func (r *InstanceRecord) destroying() bool {
	return r.State == InstanceDestroying || r.State == InstanceDestroyFailed
}

// age returns how long the instance has existed.
func (r *InstanceRecord) age(now time.Time) time.Duration {
	start := r.Started
	if start.IsZero() {
		start = r.Created
	}
	return now.Sub(start)
}

// reconcileState is what reconciliation remembers between runs, shared by
// all processes through the Store (it is only written under the lock).
type reconcileState struct {
	// Orphans counts consecutive reconciliations that saw each orphan.
	Orphans map[int64]int `json:"orphans,omitempty"`
	// Misses counts consecutive successful listings without each recorded
	// instance.
	Misses map[int64]int `json:"misses,omitempty"`
	// DeadSince is when each active instance was first seen dead.
	DeadSince map[int64]time.Time `json:"dead_since,omitempty"`
	// Duplicates counts consecutive reconciliations that saw each
	// duplicate (an instance labelled for an operation bound to another).
	Duplicates map[int64]int `json:"duplicates,omitempty"`
	// ListedAt is when the listing last used was taken; sightings and
	// misses are counted once per listing, even when two reconciliations
	// use the same listing of the routing side.
	ListedAt  time.Time `json:"listed_at,omitzero"`
	LastRun   time.Time `json:"last_run,omitzero"`
	LastOwner string    `json:"last_owner,omitempty"`
}

// blockEntry is one blocklisted machine.
type blockEntry struct {
	MachineID int64     `json:"machine_id"`
	Until     time.Time `json:"until"`
	Reason    string    `json:"reason,omitempty"`
	OpID      string    `json:"op_id,omitempty"`
}

// records is a consistent-enough read of every record.
type records struct {
	ops   map[string]*Operation
	insts map[int64]*InstanceRecord
}

// servingOps names the operations that a live record of an instance being
// provisioned or active belongs to. recordCreated writes that record before
// the operation's attempt learns the id, so a count in between must find
// the instance through it, not count it twice (see countedOp).
func (recs *records) servingOps() map[string]bool {
	ops := map[string]bool{}
	for _, rec := range recs.insts {
		if rec.OpID != "" && rec.Live() && (rec.State == InstanceProvisioning || rec.State == InstanceActive) {
			ops[rec.OpID] = true
		}
	}
	return ops
}

// countedOp reports whether a provisioning's instance is counted already:
// the instance it is bound to or its current attempt's instance is among
// counted, or the attempt has no id yet and a record serving the operation
// exists (servingOps).
func countedOp(op *Operation, counted map[int64]bool, serving map[string]bool) bool {
	if op.InstanceID > 0 && counted[op.InstanceID] {
		// Ready and bound (markReady), not yet finished.
		return true
	}
	cur := op.current()
	return cur != nil && ((cur.InstanceID > 0 && counted[cur.InstanceID]) || (cur.InstanceID == 0 && serving[op.ID]))
}

// persistCtx returns a context for writes that must happen even when ctx
// was just cancelled: losing an instance id because the manager was
// stopping would leak a billing instance.
func persistCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
}

func (m *Manager) saveOp(ctx context.Context, op *Operation) error {
	op.Updated = m.now()
	b, err := json.Marshal(op)
	if err != nil {
		return fmt.Errorf("encoding operation %s: %w", op.ID, err)
	}
	if err := m.store.Store(ctx, m.opKey(op.ID), b); err != nil {
		return fmt.Errorf("storing operation %s: %w", op.ID, err)
	}
	m.mu.Lock()
	m.ops[op.ID] = op.clone()
	m.mu.Unlock()
	return nil
}

// casOp writes op under the operation's storage lock after check accepted
// the stored copy (nil when there is none), with the stored version plus
// one. Storage has no compare-and-set; the lock makes read-check-write
// atomic between processes sharing it. wait bounds waiting for the lock.
func (m *Manager) casOp(ctx context.Context, op *Operation, wait time.Duration, check func(cur *Operation) error) error {
	name := m.keyBase() + "/operation_locks/" + op.ID
	lctx, cancel := context.WithTimeout(ctx, wait)
	err := m.store.Lock(lctx, name)
	cancel()
	if err != nil {
		return fmt.Errorf("locking operation %s: %w", op.ID, err)
	}
	defer func() {
		uctx, cancel := persistCtx(ctx)
		defer cancel()
		if err := m.store.Unlock(uctx, name); err != nil {
			m.log.Error("releasing operation lock failed", logOp(op.ID), logErr(err))
		}
	}()
	cur, err := m.loadOp(ctx, op.ID)
	if err != nil {
		return err
	}
	if err := check(cur); err != nil {
		return err
	}
	op.Version = 1
	if cur != nil {
		op.Version = cur.Version + 1
	}
	return m.saveOp(ctx, op)
}

// loadOp reads an operation; (nil, nil) when it does not exist.
func (m *Manager) loadOp(ctx context.Context, id string) (*Operation, error) {
	b, err := m.store.Load(ctx, m.opKey(id))
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("loading operation %s: %w", id, err)
	}
	var op Operation
	if err := json.Unmarshal(b, &op); err != nil {
		return nil, fmt.Errorf("decoding operation %s: %w", id, err)
	}
	m.mu.Lock()
	m.ops[op.ID] = op.clone()
	m.mu.Unlock()
	return &op, nil
}

func (m *Manager) saveInst(ctx context.Context, rec *InstanceRecord) error {
	rec.Updated = m.now()
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encoding instance record %d: %w", rec.ID, err)
	}
	if err := m.store.Store(ctx, m.instKey(rec.ID), b); err != nil {
		return fmt.Errorf("storing instance record %d: %w", rec.ID, err)
	}
	c := *rec
	m.mu.Lock()
	m.insts[rec.ID] = &c
	m.mu.Unlock()
	return nil
}

// loadInst reads an instance record; (nil, nil) when it does not exist.
func (m *Manager) loadInst(ctx context.Context, id int64) (*InstanceRecord, error) {
	b, err := m.store.Load(ctx, m.instKey(id))
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("loading instance record %d: %w", id, err)
	}
	var rec InstanceRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("decoding instance record %d: %w", id, err)
	}
	c := rec
	m.mu.Lock()
	m.insts[rec.ID] = &c
	m.mu.Unlock()
	return &rec, nil
}

// updateInst reads, modifies and writes an instance record under a
// per-instance mutex, so that this process's writers never lose each
// other's changes. fn receives nil when there is no record; it returns the
// record to write, or nil to write nothing.
func (m *Manager) updateInst(ctx context.Context, id int64, fn func(rec *InstanceRecord) *InstanceRecord) (*InstanceRecord, error) {
	mu := m.instLock(id)
	mu.Lock()
	defer mu.Unlock()
	rec, err := m.loadInst(ctx, id)
	if err != nil {
		return nil, err
	}
	out := fn(rec)
	if out == nil {
		return rec, nil
	}
	if out.Created.IsZero() {
		out.Created = m.now()
	}
	if err := m.saveInst(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

func (m *Manager) instLock(id int64) *sync.Mutex {
	m.mu.Lock()
	defer m.mu.Unlock()
	mu, ok := m.instMu[id]
	if !ok {
		mu = &sync.Mutex{}
		m.instMu[id] = mu
	}
	return mu
}

// loadAll reads every operation and instance record. A storage error fails
// the whole read: acting on a partial view could adopt or destroy wrongly.
// An undecodable record is logged and skipped (its instance, if any, will
// show up as an orphan and be handled by the orphan policy).
func (m *Manager) loadAll(ctx context.Context) (*records, error) {
	recs := &records{ops: map[string]*Operation{}, insts: map[int64]*InstanceRecord{}}
	keys, err := listJSON(ctx, m.store, m.opsPrefix())
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		id := strings.TrimSuffix(k[strings.LastIndex(k, "/")+1:], ".json")
		op, err := m.loadOp(ctx, id)
		if err != nil {
			var se *json.SyntaxError
			var te *json.UnmarshalTypeError
			if errors.As(err, &se) || errors.As(err, &te) {
				m.log.Error("skipping undecodable operation record", logKey(k), logErr(err))
				continue
			}
			return nil, err
		}
		if op != nil {
			recs.ops[op.ID] = op
		}
	}
	keys, err = listJSON(ctx, m.store, m.instPrefix())
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		id, perr := strconv.ParseInt(strings.TrimSuffix(k[strings.LastIndex(k, "/")+1:], ".json"), 10, 64)
		if perr != nil || id <= 0 {
			continue
		}
		rec, err := m.loadInst(ctx, id)
		if err != nil {
			var se *json.SyntaxError
			var te *json.UnmarshalTypeError
			if errors.As(err, &se) || errors.As(err, &te) {
				m.log.Error("skipping undecodable instance record", logKey(k), logErr(err))
				continue
			}
			return nil, err
		}
		if rec != nil {
			recs.insts[rec.ID] = rec
		}
	}
	// Forget cached entries whose records were deleted (retention).
	m.mu.Lock()
	for id := range m.ops {
		if _, ok := recs.ops[id]; !ok {
			delete(m.ops, id)
		}
	}
	for id := range m.insts {
		if _, ok := recs.insts[id]; !ok {
			delete(m.insts, id)
		}
	}
	m.mu.Unlock()
	return recs, nil
}

func (m *Manager) loadState(ctx context.Context) (*reconcileState, error) {
	st := &reconcileState{}
	b, err := m.store.Load(ctx, m.stateKey())
	if err != nil {
		if !isNotExist(err) {
			return nil, fmt.Errorf("loading reconcile state: %w", err)
		}
	} else if err := json.Unmarshal(b, st); err != nil {
		// Losing the counters only delays orphan destruction and ghost
		// marking; it never causes an action.
		m.log.Warn("reconcile state undecodable; starting afresh", logErr(err))
		st = &reconcileState{}
	}
	if st.Orphans == nil {
		st.Orphans = map[int64]int{}
	}
	if st.Misses == nil {
		st.Misses = map[int64]int{}
	}
	if st.DeadSince == nil {
		st.DeadSince = map[int64]time.Time{}
	}
	if st.Duplicates == nil {
		st.Duplicates = map[int64]int{}
	}
	return st, nil
}

func (m *Manager) saveState(ctx context.Context, st *reconcileState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding reconcile state: %w", err)
	}
	if err := m.store.Store(ctx, m.stateKey(), b); err != nil {
		return fmt.Errorf("storing reconcile state: %w", err)
	}
	return nil
}

// loadBlocklist returns the machines blocked now, sorted.
func (m *Manager) loadBlocklist(ctx context.Context) ([]int64, error) {
	keys, err := listJSON(ctx, m.store, m.blockPrefix())
	if err != nil {
		return nil, err
	}
	now := m.now()
	var out []int64
	for _, k := range keys {
		b, err := m.store.Load(ctx, k)
		if err != nil {
			if isNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("loading blocklist entry %s: %w", k, err)
		}
		var e blockEntry
		if json.Unmarshal(b, &e) != nil || e.MachineID <= 0 {
			continue
		}
		if now.Before(e.Until) {
			out = append(out, e.MachineID)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// blockMachine adds a machine to the persisted blocklist.
func (m *Manager) blockMachine(ctx context.Context, machine int64, opID, reason string) {
	if machine <= 0 {
		return
	}
	e := blockEntry{MachineID: machine, Until: m.now().Add(m.cfg.BlocklistTTL), Reason: reason, OpID: opID}
	b, _ := json.Marshal(e)
	if err := m.store.Store(ctx, m.blockKey(machine), b); err != nil {
		m.log.Error("could not persist blocklist entry", logMachine(machine), logErr(err))
		return
	}
	m.log.Info("machine blocklisted", logMachine(machine), logOp(opID),
		logReason(reason), logUntil(e.Until))
}

// pruneBlocklist deletes expired entries.
func (m *Manager) pruneBlocklist(ctx context.Context) {
	keys, err := listJSON(ctx, m.store, m.blockPrefix())
	if err != nil {
		return
	}
	now := m.now()
	for _, k := range keys {
		b, err := m.store.Load(ctx, k)
		if err != nil {
			continue
		}
		var e blockEntry
		if json.Unmarshal(b, &e) == nil && !now.Before(e.Until) {
			_ = m.store.Delete(ctx, k)
		}
	}
}
