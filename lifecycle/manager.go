package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/internal/ctxutil"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// API is the subset of *vastclient.Client the Manager calls.
type API interface {
	ListInstances(ctx context.Context, opts vastclient.ListOptions) (*vastclient.ListResult, error)
	ShowInstance(ctx context.Context, id int64) (*vastclient.Instance, error)
	SearchOffers(ctx context.Context, q vastclient.OfferQuery) ([]vastclient.Offer, error)
	CreateInstance(ctx context.Context, offerID int64, req vastclient.CreateRequest) (*vastclient.CreateResult, error)
	DestroyInstance(ctx context.Context, id int64) error
	// SetState stops ("stopped") or starts ("running") an instance: the
	// warm pool of autoscaled pools.
	SetState(ctx context.Context, id int64, state string) error
	CurrentUser(ctx context.Context) (*vastclient.User, error)
}

// *vastclient.Client is the production API.
var _ API = (*vastclient.Client)(nil)

// Health states reported by Fleet.State. Their home is package fleet, the
// routing side that assigns them; the names here keep the Fleet interface
// readable without it.
const (
	FleetProvisioning = fleet.StateProvisioning
	FleetLoading      = fleet.StateLoading
	FleetStarting     = fleet.StateStarting
	FleetReady        = fleet.StateReady
	FleetUnhealthy    = fleet.StateUnhealthy
	FleetFailed       = fleet.StateFailed
	FleetStopped      = fleet.StateStopped
	FleetGone         = fleet.StateGone
)

// Fleet is the routing side's view of the instances, implemented by the
// health-checking watcher.
type Fleet interface {
	// State returns an instance's health state (one of the Fleet*
	// constants) and when it entered it; ok is false for an unknown id.
	State(id int64) (state string, since time.Time, ok bool)
	// Drain stops routing new requests to the instance and returns when its
	// in-flight requests finished or ctx is done.
	Drain(ctx context.Context, id int64) error
	// Undrain returns a drained instance to routing (a scale-down given
	// up, a warm instance started again).
	Undrain(id int64)
	// Instances returns the latest successful listing of the account and
	// when it was taken; ok is false before the first one.
	Instances() (rows []vastclient.Instance, listedAt time.Time, ok bool)
	// Listing returns the routing side's latest successful listing of the
	// whole account, exactly as listed (not instances kept from earlier
	// listings); ok is false before the first one. Reconciliation acts on
	// it instead of listing itself when it is fresh (FleetListingMaxAge).
	Listing() (l Listing, ok bool)
	// Exclude takes the instance out of routing at once (routable false,
	// with reason), for good: it is being destroyed. Requests in flight
	// are not affected.
	Exclude(id int64, reason string)
}

// Listing is one successful listing of the account.
type Listing struct {
	Rows []vastclient.Instance
	// Started is when the listing began (an upper bound is acceptable:
	// instances recorded after it are not counted missing from it).
	Started time.Time
	// Skipped counts rows that could not be decoded: such a listing never
	// proves that an instance is absent.
	Skipped int
}

// Stats are cumulative counters and gauges for metrics.
type Stats struct {
	// DestroyFailed counts destructions that could not be verified after
	// DestroyVerifyAttempts (they keep being retried).
	DestroyFailed uint64 `json:"destroy_failed"`
	// DestroyFailedNow is the number of destructions currently in
	// "destroy_failed": instances that may still bill. Alert on it.
	DestroyFailedNow    int    `json:"destroy_failed_now"`
	DestroysConfirmed   uint64 `json:"destroys_confirmed"`
	ProvisionsStarted   uint64 `json:"provisions_started"`
	ProvisionsSucceeded uint64 `json:"provisions_succeeded"`
	ProvisionsFailed    uint64 `json:"provisions_failed"`
	AttemptsFailed      uint64 `json:"attempts_failed"`
	OrphansAdopted      uint64 `json:"orphans_adopted"`
	OrphansDestroyed    uint64 `json:"orphans_destroyed"`
	Ghosts              uint64 `json:"ghosts"`
	// DuplicatesDestroyed counts second instances of one operation (a lost
	// create answer, or two processes that both created) destroyed.
	DuplicatesDestroyed uint64 `json:"duplicates_destroyed"`
	BudgetRefusals      uint64 `json:"budget_refusals"`
	Reconciles          uint64 `json:"reconciles"`
	ReconcileErrors     uint64 `json:"reconcile_errors"`
	// WarmStarts counts warm (stopped) instances started to ready;
	// WarmStartFailures those given up after the warm start_timeout.
	WarmStarts        uint64 `json:"warm_starts"`
	WarmStartFailures uint64 `json:"warm_start_failures"`
	// ScaleDowns counts completed scale-downs of autoscaled pools (stops
	// and destructions); Stops the stops among them.
	ScaleDowns uint64 `json:"scale_downs"`
	Stops      uint64 `json:"stops"`
}

type counters struct {
	destroyFailed, destroysConfirmed, provisionsStarted, provisionsSucceeded,
	provisionsFailed, attemptsFailed, orphansAdopted, orphansDestroyed, ghosts,
	budgetRefusals, reconciles, reconcileErrors, duplicatesDestroyed,
	warmStarts, warmStartFailures, scaleDowns, stops atomic.Uint64
}

// Manager provisions, destroys and reconciles a gateway's instances. Create
// one with New; call Run to reconcile periodically. Its methods are safe for
// concurrent use.
type Manager struct {
	cfg   Config
	api   API
	store Store
	fleet Fleet
	log   *zap.Logger
	owner string // identifies this Manager in operation leases

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	ops        map[string]*Operation      // latest known copy of each operation
	insts      map[int64]*InstanceRecord  // latest known copy of each record
	instMu     map[int64]*sync.Mutex      // serialises read-modify-write per record
	active     map[string]*opHandle       // operations worked on by this process
	reserved   map[int64]string           // offer id -> op id, creates in flight
	offerCache map[string]offerCacheEntry // offer searches by query
	lastList   []vastclient.Instance      // own latest successful listing
	lastListAt time.Time
	running    bool
	stopped    bool
	// probeFailing: pools whose previously ready instances all fail their
	// probes (see Report.ProbeFailing).
	probeFailing map[string]bool
	// desired: autoscaled pools' target counts (SetDesired); kick wakes Run.
	desired map[string]int
	kick    chan struct{}
	// scale: autoscaled pools' latest refusals; scalePending is set while
	// a pool is not at its desired count (Run then retries).
	scale        map[string]*scaleInfo
	scalePending atomic.Bool

	lockMu sync.Mutex // in-process serialisation of the Store lock

	stats counters

	// hook, when set by tests, runs at named points of a provisioning; a
	// non-nil error makes the worker vanish as if the process had died.
	hook func(op *Operation, step string) error
}

// New validates cfg and returns a Manager. api, store and fleet are
// required.
func New(cfg Config, api API, store Store, fleet Fleet) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if api == nil || store == nil || fleet == nil {
		return nil, fmt.Errorf("%w: api, store and fleet are required", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	host, _ := os.Hostname()
	m := &Manager{
		cfg:        cfg,
		api:        api,
		store:      store,
		fleet:      fleet,
		log:        cfg.Logger.With(zap.String("gateway", cfg.GatewayID)),
		owner:      fmt.Sprintf("%s/%d/%s", host, os.Getpid(), newOpID()),
		ops:        map[string]*Operation{},
		insts:      map[int64]*InstanceRecord{},
		instMu:     map[int64]*sync.Mutex{},
		active:     map[string]*opHandle{},
		reserved:   map[int64]string{},
		offerCache: map[string]offerCacheEntry{},
		kick:       make(chan struct{}, 1),
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

func (m *Manager) now() time.Time { return m.cfg.Now() }

// Owner returns the identifier this Manager writes into operation leases.
func (m *Manager) Owner() string { return m.owner }

// Config returns a copy of the configuration in effect, defaults applied.
func (m *Manager) Config() Config { return m.cfg.withDefaults() }

// Run reconciles at once (resuming the operations a previous process left
// unfinished), then every ReconcileInterval, on every Kick (coalesced),
// and every ScaleRetryInterval while an autoscaled pool is not at its
// desired count, until ctx is cancelled. It
// then stops the Manager's background work, which persists its progress,
// and returns nil. Stopping never destroys anything: the next Manager over
// the same Store picks the fleet up where this one left it.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running || m.stopped {
		m.mu.Unlock()
		return errors.New("Run called twice or after Close")
	}
	m.running = true
	m.mu.Unlock()
	defer m.Close()

	m.awaitFleetListing(ctx)
	m.reconcileAndLog(ctx)
	rt := time.NewTicker(m.cfg.ReconcileInterval)
	defer rt.Stop()
	// Expired leases of operations another process abandoned are checked
	// more often than the full reconciliation: it costs no API call.
	lt := time.NewTicker(max(m.cfg.LeaseTTL/2, 10*time.Millisecond))
	defer lt.Stop()
	// While an autoscaled pool is not at its desired count, reconcile at
	// ScaleRetryInterval; kicks (SetDesired, a failed start) at once.
	st := time.NewTicker(m.cfg.ScaleRetryInterval)
	defer st.Stop()
	for {
		select {
		case <-ctx.Done():
			m.log.Info("lifecycle manager stopping; instances are left as they are")
			return nil
		case <-rt.C:
			m.reconcileAndLog(ctx)
		case <-m.kick:
			m.reconcileAndLog(ctx)
		case <-st.C:
			if m.scalePending.Load() {
				m.reconcileAndLog(ctx)
			}
		case <-lt.C:
			if err := m.resume(ctx); err != nil && ctx.Err() == nil {
				m.log.Warn("resuming abandoned operations failed", logErr(err))
			}
		}
	}
}

// awaitFleetListing, when reconciliation may use the routing side's
// listing, resumes abandoned operations at once and then waits (at most
// one ReconcileInterval) for the routing side's first listing, instead of
// making a second, equally paced listing of the account concurrently.
func (m *Manager) awaitFleetListing(ctx context.Context) {
	if m.cfg.FleetListingMaxAge <= 0 {
		return
	}
	if _, ok := m.fleet.Listing(); ok {
		return
	}
	if err := m.resume(ctx); err != nil && ctx.Err() == nil {
		m.log.Warn("resuming abandoned operations failed", logErr(err))
	}
	deadline := time.NewTimer(m.cfg.ReconcileInterval)
	defer deadline.Stop()
	t := time.NewTicker(max(min(m.cfg.FleetListingMaxAge/10, 100*time.Millisecond), time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-t.C:
			if _, ok := m.fleet.Listing(); ok {
				return
			}
		}
	}
}

func (m *Manager) reconcileAndLog(ctx context.Context) {
	rep, err := m.Reconcile(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("reconciliation incomplete", logErr(err))
		}
		return
	}
	if rep.acted() {
		m.log.Info("reconciliation acted", zap.Any("report", rep))
	}
}

// Close stops background work (provisionings and destructions persist their
// progress and release their leases) and waits for it. It destroys nothing.
// The Manager accepts no new work afterwards.
func (m *Manager) Close() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// Stats returns the counters.
// ProbeFailing reports whether every instance of pool that was ready
// before fails its health probe now (see Report.ProbeFailing).
// The answer is as of the last successful reconciliation.
func (m *Manager) ProbeFailing(pool string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.probeFailing[pool]
}

func (m *Manager) Stats() Stats {
	s := Stats{
		DestroyFailed:       m.stats.destroyFailed.Load(),
		DestroysConfirmed:   m.stats.destroysConfirmed.Load(),
		ProvisionsStarted:   m.stats.provisionsStarted.Load(),
		ProvisionsSucceeded: m.stats.provisionsSucceeded.Load(),
		ProvisionsFailed:    m.stats.provisionsFailed.Load(),
		AttemptsFailed:      m.stats.attemptsFailed.Load(),
		OrphansAdopted:      m.stats.orphansAdopted.Load(),
		OrphansDestroyed:    m.stats.orphansDestroyed.Load(),
		Ghosts:              m.stats.ghosts.Load(),
		DuplicatesDestroyed: m.stats.duplicatesDestroyed.Load(),
		BudgetRefusals:      m.stats.budgetRefusals.Load(),
		Reconciles:          m.stats.reconciles.Load(),
		ReconcileErrors:     m.stats.reconcileErrors.Load(),
		WarmStarts:          m.stats.warmStarts.Load(),
		WarmStartFailures:   m.stats.warmStartFailures.Load(),
		ScaleDowns:          m.stats.scaleDowns.Load(),
		Stops:               m.stats.stops.Load(),
	}
	m.mu.Lock()
	for _, op := range m.ops {
		if op.Kind == KindDestroy && op.State == StateDestroyFailed {
			s.DestroyFailedNow++
		}
	}
	m.mu.Unlock()
	return s
}

// Operations returns copies of the operations this Manager knows (its own,
// and every process's as of the last reconciliation), newest first.
func (m *Manager) Operations() []Operation {
	m.mu.Lock()
	out := make([]Operation, 0, len(m.ops))
	for _, op := range m.ops {
		out = append(out, *op.clone())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID > out[j].ID
	})
	return out
}

// Operation returns a copy of one operation, reading the Store so that
// another process's progress is current. The error wraps
// ErrOperationNotFound for an unknown id.
func (m *Manager) Operation(ctx context.Context, id string) (Operation, error) {
	if !validOpID(id) {
		return Operation{}, fmt.Errorf("%w: %q", ErrOperationNotFound, id)
	}
	op, err := m.loadOp(ctx, id)
	if err != nil {
		return Operation{}, err
	}
	if op == nil {
		return Operation{}, fmt.Errorf("%w: %q", ErrOperationNotFound, id)
	}
	return *op, nil
}

// Instances returns copies of the instance records this Manager knows,
// by id.
func (m *Manager) Instances() []InstanceRecord {
	m.mu.Lock()
	out := make([]InstanceRecord, 0, len(m.insts))
	for _, r := range m.insts {
		out = append(out, *r)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// withLock runs fn while holding the Store lock that serialises
// provisioning decisions and reconciliation across processes. Waiting is
// bounded by LockTimeout; a holder that died leaves a stale lock that the
// Store treats as free.
func (m *Manager) withLock(ctx context.Context, fn func(ctx context.Context) error) error {
	m.lockMu.Lock()
	defer m.lockMu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, m.cfg.LockTimeout)
	defer cancel()
	if err := m.store.Lock(lctx, m.lockName()); err != nil {
		return fmt.Errorf("acquiring store lock %s: %w", m.lockName(), err)
	}
	defer func() {
		uctx, cancel := persistCtx(ctx)
		defer cancel()
		if err := m.store.Unlock(uctx, m.lockName()); err != nil {
			m.log.Error("releasing store lock failed", logErr(err))
		}
	}()
	return fn(ctx)
}

// ErrLeaseLost means another process took the operation over (this one
// stalled past its lease): the worker stops and writes nothing more.
var ErrLeaseLost = errors.New("operation leased to another process")

// opHandle is a running operation: the worker's copy of the record, kept
// leased to this process.
type opHandle struct {
	m      *Manager
	id     string
	ctx    context.Context
	mu     sync.Mutex
	op     *Operation
	cancel context.CancelFunc
	// crashed is set when a test hook simulated the death of the process,
	// or when the lease was lost: nothing more may be written.
	crashed atomic.Bool
	// leaseUntil (unix nanoseconds) is the lease this worker last wrote
	// successfully. Past it another process may own the operation.
	leaseUntil atomic.Int64
}

func newHandle(m *Manager, op *Operation, ctx context.Context, cancel context.CancelFunc) *opHandle {
	h := &opHandle{m: m, id: op.ID, ctx: ctx, op: op.clone(), cancel: cancel}
	if op.Owner == m.owner {
		h.leaseUntil.Store(op.LeaseUntil.UnixNano())
	}
	return h
}

// get returns a copy of the operation.
func (h *opHandle) get() *Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.op.clone()
}

// fence stops the worker for good: it lost (or may have lost) its lease.
func (h *opHandle) fence(why string) {
	if h.crashed.Swap(true) {
		return
	}
	h.m.log.Warn("stopping work on an operation: "+why, logOp(h.id))
	h.cancel()
}

// mayCall reports whether the worker may make a vast.ai call that acts on
// the account: its lease must have at least half its TTL left (so it
// cannot expire while the call is in flight), and the stored operation
// must still be owned by this process. A worker that fails either check is
// fenced.
func (h *opHandle) mayCall(ctx context.Context) bool {
	if h.crashed.Load() {
		return false
	}
	if h.m.now().Add(h.m.cfg.LeaseTTL / 2).After(time.Unix(0, h.leaseUntil.Load())) {
		h.fence("its lease was not renewed in time")
		return false
	}
	cur, err := h.m.loadOp(ctx, h.id)
	switch {
	case err != nil:
		h.m.log.Warn("could not re-check the operation's owner; not calling vast.ai", logOp(h.id), logErr(err))
		return false
	case cur == nil || cur.Owner != h.m.owner:
		h.fence("another process owns it now")
		return false
	}
	return true
}

// update changes the operation and persists it with a renewed lease, as a
// compare-and-set on owner and version: if another process took the
// operation over, nothing is written and the worker is fenced. Writes
// survive the cancellation of ctx: progress (above all an instance id)
// must reach the Store even when the manager is stopping.
func (h *opHandle) update(ctx context.Context, fn func(op *Operation)) error {
	if h.crashed.Load() {
		return ErrLeaseLost
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	fn(h.op)
	next := h.op.clone()
	next.Owner = h.m.owner
	next.LeaseUntil = h.m.now().Add(h.m.cfg.LeaseTTL)
	expect := h.op.Version
	pctx, cancel := persistCtx(ctx)
	defer cancel()
	var err error
	for i := 0; i < 3; i++ {
		retry := i > 0
		err = h.m.casOp(pctx, next, h.m.cfg.LockTimeout, func(cur *Operation) error {
			if cur == nil {
				return nil
			}
			// A retry may find its previous, failed-looking write applied.
			if cur.Owner != h.m.owner || (cur.Version != expect && !(retry && cur.Version == expect+1)) {
				return fmt.Errorf("%w: stored owner %q version %d, this worker holds version %d",
					ErrLeaseLost, cur.Owner, cur.Version, expect)
			}
			return nil
		})
		if err == nil {
			h.op.Owner, h.op.LeaseUntil, h.op.Version, h.op.Updated = next.Owner, next.LeaseUntil, next.Version, next.Updated
			h.leaseUntil.Store(next.LeaseUntil.UnixNano())
			return nil
		}
		if errors.Is(err, ErrLeaseLost) {
			h.crashed.Store(true)
			h.m.log.Warn("operation taken over by another process; stopping here", logOp(h.id), logErr(err))
			h.cancel()
			return err
		}
		if ctxutil.Sleep(pctx, 200*time.Millisecond) != nil {
			break
		}
	}
	h.m.log.Error("could not persist operation", logOp(h.op.ID), logErr(err))
	return err
}

// renew keeps the lease fresh until stop is called. A renewal that fails
// is not ignored: once the lease written last has expired, the worker is
// fenced (another process may be resuming the operation).
func (h *opHandle) renew(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(max(h.m.cfg.LeaseTTL/3, 5*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if h.crashed.Load() {
				return
			}
			err := h.update(ctx, func(*Operation) {})
			if err != nil && !h.crashed.Load() && !h.m.now().Before(time.Unix(0, h.leaseUntil.Load())) {
				h.fence("renewing its lease failed past the lease's end: " + err.Error())
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// startWorker runs op in the background unless this process already works
// on it. The operation must already be leased to this Manager.
func (m *Manager) startWorker(op *Operation) bool {
	h, ok := m.register(op)
	if !ok {
		return false
	}
	go func() {
		defer m.wg.Done()
		m.runHandle(h)
	}()
	return true
}

// register makes op active in this process. The caller must call m.wg.Done
// and m.runHandle (or unregister) afterwards.
func (m *Manager) register(op *Operation) (*opHandle, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.active[op.ID] != nil {
		return nil, false
	}
	ctx, cancel := context.WithCancel(m.base)
	h := newHandle(m, op, ctx, cancel)
	m.active[op.ID] = h
	m.wg.Add(1)
	return h, true
}

// runHandle works on a registered operation until it ends, fails over, or
// the Manager stops, then releases the lease.
func (m *Manager) runHandle(h *opHandle) {
	ctx := h.ctx
	defer h.cancel()
	stop := h.renew(ctx)
	switch h.get().Kind {
	case KindProvision:
		m.runProvision(ctx, h)
	case KindDestroy:
		m.runDestroy(ctx, h, 0)
	case KindStop:
		m.runStop(ctx, h)
	case KindStart:
		m.runStart(ctx, h)
	}
	stop()
	m.release(h)
}

// release clears the lease so that another process (or the next Manager)
// can resume the operation at once instead of waiting for LeaseTTL.
func (m *Manager) release(h *opHandle) {
	if !h.crashed.Load() {
		h.mu.Lock()
		op := h.op.clone()
		op.LeaseUntil = time.Time{}
		expect := h.op.Version
		h.mu.Unlock()
		pctx, cancel := persistCtx(context.Background())
		if err := m.casOp(pctx, op, m.cfg.LockTimeout, func(cur *Operation) error {
			if cur != nil && (cur.Owner != m.owner || cur.Version != expect) {
				return fmt.Errorf("%w: not releasing", ErrLeaseLost)
			}
			return nil
		}); err != nil {
			m.log.Warn("could not release operation lease", logOp(op.ID), logErr(err))
		}
		cancel()
	}
	m.mu.Lock()
	delete(m.active, h.id)
	m.mu.Unlock()
}

func (m *Manager) isActive(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active[id] != nil
}

func (m *Manager) isStopped() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopped
}

// runHook runs the test hook; true means "the process died here".
func (m *Manager) runHook(h *opHandle, step string) bool {
	if m.hook == nil {
		return false
	}
	if err := m.hook(h.get(), step); err != nil {
		h.crashed.Store(true)
		return true
	}
	return false
}

// noteListing keeps the Manager's own latest successful listing.
func (m *Manager) noteListing(res *vastclient.ListResult, at time.Time) {
	rows := append([]vastclient.Instance(nil), res.Instances...)
	m.mu.Lock()
	if at.After(m.lastListAt) {
		m.lastList, m.lastListAt = rows, at
	}
	m.mu.Unlock()
}

// latestListing returns the freshest listing: the routing side's or the
// Manager's own.
func (m *Manager) latestListing() ([]vastclient.Instance, time.Time, bool) {
	rows, at, ok := m.fleet.Instances()
	m.mu.Lock()
	own, ownAt := m.lastList, m.lastListAt
	m.mu.Unlock()
	if own != nil && (!ok || ownAt.After(at)) {
		return own, ownAt, true
	}
	return rows, at, ok
}
