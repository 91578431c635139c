package vastai

// Wiring of the autoscaler (issue #11): each autoscaled pool's Decider and
// Hold (package autoscale), the one loop per process that samples the
// pools' load, decides, hands the desired count to the lifecycle manager
// and opens or closes the holds as instances come and go. The request
// path's side, the hold itself, is in hold.go.

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/autoscale"
	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// Autoscale defaults that are the app's, not the Decider's.
const (
	DefaultDecisionInterval = 10 * time.Second
	DefaultScaleDrain       = 2 * time.Minute
	// DefaultHoldRetryAfter is the Retry-After of a held request's 503.
	DefaultHoldRetryAfter = 10 * time.Second
)

// scalerConfig is one autoscaled pool's settings, comparable so that a
// reload that changes nothing keeps the pool's scaler as it is.
type scalerConfig struct {
	decider  autoscale.Config
	maxWait  time.Duration
	pending  int
	interval time.Duration
}

// deciderConfig converts the JSON block. The bucket follows the windows:
// six per panic window, and never more than the Decider's 3600 per
// stable window, so time-compressed settings work without a knob.
func (c *AutoscaleConfig) scaler() scalerConfig {
	dc := autoscale.Config{
		Min: c.Min, Max: c.Max, TargetPerInstance: c.TargetLoad,
		StableWindow: time.Duration(c.StableWindow), PanicWindow: time.Duration(c.PanicWindow),
		PanicThreshold: c.PanicThreshold,
		ScaleUpDelay:   time.Duration(c.ScaleUpDelay), ScaleDownDelay: time.Duration(c.ScaleDownDelay),
		IdleToZero: time.Duration(c.IdleToZero),
	}.WithDefaults()
	dc.Bucket = max(dc.PanicWindow/6, (dc.StableWindow+3599)/3600, time.Millisecond)
	sc := scalerConfig{decider: dc, pending: c.MaxPending, maxWait: time.Duration(c.MaxWait),
		interval: time.Duration(c.DecisionInterval)}
	if sc.pending == 0 {
		sc.pending = autoscale.DefaultMaxPending
	}
	if sc.maxWait == 0 {
		sc.maxWait = autoscale.DefaultMaxWait
	}
	if sc.interval == 0 {
		sc.interval = DefaultDecisionInterval
	}
	return sc
}

// spec is the lifecycle manager's part of the block.
func (c *AutoscaleConfig) spec() lifecycle.AutoscaleSpec {
	s := lifecycle.AutoscaleSpec{Enabled: true, DrainTimeout: time.Duration(c.DrainTimeout)}
	if s.DrainTimeout == 0 {
		s.DrainTimeout = DefaultScaleDrain
	}
	if c.Warm != nil {
		s.Warm = lifecycle.WarmSpec{Stopped: c.Warm.Stopped,
			StartTimeout: time.Duration(c.Warm.StartTimeout), MaxStoppedAge: time.Duration(c.Warm.MaxStoppedAge)}
	}
	return s
}

// validate names the faulty field of pool name's autoscale block.
func (c *AutoscaleConfig) validate(name string, p *Pool) error {
	in := "pools." + name + ".autoscale"
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%s.%s: %s", in, field, fmt.Sprintf(format, args...))
	}
	durations := map[string]caddy.Duration{
		"decision_interval": c.DecisionInterval, "stable_window": c.StableWindow, "panic_window": c.PanicWindow,
		"scale_up_delay": c.ScaleUpDelay, "scale_down_delay": c.ScaleDownDelay, "idle_to_zero": c.IdleToZero,
		"drain_timeout": c.DrainTimeout, "max_wait": c.MaxWait,
	}
	if c.Warm != nil {
		durations["warm.start_timeout"], durations["warm.max_stopped_age"] = c.Warm.StartTimeout, c.Warm.MaxStoppedAge
	}
	for _, f := range slices.Sorted(maps.Keys(durations)) {
		if durations[f] < 0 {
			return bad(f, "must not be negative, got %s", time.Duration(durations[f]))
		}
	}
	switch {
	case p.Provision == nil:
		return fmt.Errorf("%s: needs a provision block (the autoscaler creates and starts instances)", in)
	case p.Provision.MinInstances > 0:
		return fmt.Errorf("pools.%s.provision.min_instances: not used with autoscale; set autoscale min instead", name)
	case c.Min < 0:
		return bad("min", "must not be negative, got %d", c.Min)
	case c.Max < 1:
		return bad("max", "is required: at least 1, got %d", c.Max)
	case c.Max < c.Min:
		return bad("max", "(%d) must be at least min (%d)", c.Max, c.Min)
	case p.Provision.MaxInstances > 0 && c.Max > p.Provision.MaxInstances:
		return bad("max", "(%d) exceeds provision max_instances (%d)", c.Max, p.Provision.MaxInstances)
	case c.TargetLoad < 0 || math.IsNaN(c.TargetLoad) || math.IsInf(c.TargetLoad, 0):
		return bad("target_load", "must be a positive number, got %v", c.TargetLoad)
	case c.PanicThreshold != 0 && !(c.PanicThreshold >= 1):
		return bad("panic_threshold", "must be at least 1, got %v", c.PanicThreshold)
	case c.MaxPending < 0:
		return bad("max_pending", "must not be negative, got %d", c.MaxPending)
	case c.DecisionInterval > 0 && time.Duration(c.DecisionInterval) < 10*time.Millisecond:
		return bad("decision_interval", "%s is below the minimum of 10ms", time.Duration(c.DecisionInterval))
	case c.Warm != nil && c.Warm.Stopped < 1:
		return bad("warm.stopped", "must be at least 1 with a warm block, got %d", c.Warm.Stopped)
	}
	sc := c.scaler()
	if sc.decider.StableWindow < sc.decider.PanicWindow {
		return bad("stable_window", "(%s) must be at least panic_window (%s)", sc.decider.StableWindow, sc.decider.PanicWindow)
	}
	if err := sc.decider.Validate(); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	return nil
}

// poolScaler is one autoscaled pool's runtime. The Decider and the
// sampling fields belong to the autoscale loop; the Hold is shared with
// the request path; view is what the admin API, metrics and dashboard
// read.
type poolScaler struct {
	pool string
	cfg  scalerConfig
	hold *autoscale.Hold

	dec        *autoscale.Decider
	nextDecide time.Time
	started    map[int64]uint64 // requests started per instance of the pool, last sample
	mgr        *lifecycle.Manager

	syncMu  sync.Mutex
	syncGen uint64 // snapshot generation the hold state was set from

	view     atomic.Pointer[scaleView]
	rejected [2]atomic.Uint64 // by holdReason
	admitted atomic.Uint64    // requests that were held, then sent on
}

// scaleView is a pool's latest autoscale decision, for display.
type scaleView struct {
	Decision autoscale.Decision
	At       time.Time
	// ChangedAt is when Decision.Desired last changed.
	ChangedAt time.Time
	// Waiting is set until the lifecycle manager has read its records:
	// no decision is made before (a restart resumes from what it sees).
	Waiting string
}

// autoscaleRuntime is the running loop.
type autoscaleRuntime struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// scalerFor returns pool's scaler, or nil when the pool is not
// autoscaled. Lock-free.
func (s *state) scalerFor(pool string) *poolScaler {
	m := s.scalers.Load()
	if m == nil {
		return nil
	}
	return (*m)[pool]
}

// applyAutoscaleLocked installs a started config's autoscaled pools. A
// pool whose settings did not change keeps its scaler; one that changed
// gets a new Decider restored from the old one's windows, so a reload
// never resets the averages. A replaced Hold is released: its requests
// go back to GetUpstreams and wait on the new one. Called with s.mu held;
// the loop is stopped meanwhile, so there is never a second one.
func (s *state) applyAutoscaleLocked(log *zap.Logger, cfgs map[string]scalerConfig, gateway string, store lifecycle.Store) error {
	s.stopAutoscaleLocked()
	if key := "vastai/" + gateway + "/autoscale_leader"; s.asLease == nil || s.asLeaseKey != key || s.asStore != store {
		s.releaseLeaseLocked()
		s.asLease, s.asLeaseKey, s.asStore = autoscale.NewLease(store, key, leaseOwner(), leaseTTL, nil), key, store
	}
	old := map[string]*poolScaler{}
	if m := s.scalers.Load(); m != nil {
		old = *m
	}
	next := make(map[string]*poolScaler, len(cfgs))
	for pool, cfg := range cfgs {
		prev := old[pool]
		if prev != nil && prev.cfg == cfg {
			next[pool] = prev
			continue
		}
		sc, err := s.newScaler(pool, cfg, prev)
		if err != nil {
			return fmt.Errorf("pools.%s.autoscale: %w", pool, err)
		}
		next[pool] = sc
	}
	s.scalers.Store(&next)
	for pool, prev := range old {
		if next[pool] != prev {
			prev.hold.Release()
		}
	}
	if len(next) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	rt := &autoscaleRuntime{cancel: cancel, done: make(chan struct{})}
	s.asRT = rt
	go func() {
		defer close(rt.done)
		s.runAutoscale(ctx, log.Named("autoscale"), next)
	}()
	return nil
}

// newScaler builds a pool's scaler, carrying prev's windows and streaks.
func (s *state) newScaler(pool string, cfg scalerConfig, prev *poolScaler) (*poolScaler, error) {
	dec, err := autoscale.NewDecider(cfg.decider)
	if err != nil {
		return nil, err
	}
	sc := &poolScaler{pool: pool, cfg: cfg, dec: dec}
	if prev != nil {
		dec.Restore(prev.dec.Snapshot())
		sc.mgr, sc.started = prev.mgr, prev.started
		// Counters run on across reloads.
		sc.admitted.Store(prev.admitted.Load())
		for i := range sc.rejected {
			sc.rejected[i].Store(prev.rejected[i].Load())
		}
		if v := prev.view.Load(); v != nil {
			sc.view.Store(v)
		}
	}
	sc.hold, err = autoscale.NewHold(autoscale.HoldConfig{
		MaxPending: cfg.pending, MaxWait: cfg.maxWait,
		Wake: s.wakeAutoscale,
	})
	if err != nil {
		return nil, err
	}
	return sc, nil
}

// wakeAutoscale asks the loop to sample and decide now: a request was
// held at an empty pool. It only signals.
func (s *state) wakeAutoscale() {
	select {
	case s.asWake <- struct{}{}:
	default:
	}
}

func (s *state) stopAutoscaleLocked() {
	if rt := s.asRT; rt != nil {
		rt.cancel()
		<-rt.done
		s.asRT = nil
	}
}

// runAutoscale samples every pool's load each bucket, decides each
// decision interval (and at once when a held request wakes it), and
// follows every published snapshot to open and close the holds.
func (s *state) runAutoscale(ctx context.Context, log *zap.Logger, scalers map[string]*poolScaler) {
	s.asLoops.Add(1)
	defer s.asLoops.Add(-1)
	tick := time.Hour
	for _, sc := range scalers {
		tick = min(tick, max(sc.cfg.decider.Bucket/2, 5*time.Millisecond))
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	s.scaleTick(log, scalers, false)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.scaleTick(log, scalers, false)
		case <-s.asWake:
			s.scaleTick(log, scalers, true)
		case <-s.watcher.Changed():
			snap := s.watcher.Snapshot()
			for _, sc := range scalers {
				sc.syncHold(s, snap)
			}
		}
	}
}

// scaleTick samples each pool, and decides where due (or forced).
func (s *state) scaleTick(log *zap.Logger, scalers map[string]*poolScaler, force bool) {
	now := time.Now()
	snap := s.watcher.Snapshot()
	for _, sc := range sortedScalers(scalers) {
		sc.syncHold(s, snap)
		load, ready := s.poolLoad(snap, sc)
		sc.dec.Observe(now, load, ready)
		if force || !now.Before(sc.nextDecide) {
			sc.decide(log, s, now)
		}
	}
}

// poolLoad is the pool's load (in flight plus fresh engine waiting, plus
// the held requests) and its ready count. A request that started and
// ended between two samples still counts as 1, so short requests reset
// the idle clock.
func (s *state) poolLoad(snap *fleet.Snapshot, sc *poolScaler) (float64, int) {
	var load float64
	active := false
	seen := make(map[int64]uint64, len(sc.started))
	for i := range snap.Members {
		m := &snap.Members[i]
		if m.Pool != sc.pool {
			continue
		}
		id := m.Instance.ID
		load += float64(s.inflight.count(id))
		// Activity is a rise of one instance's own count: an instance that
		// leaves takes its count with it, which is no request.
		n := s.inflight.requestsStarted(id)
		if prev, ok := sc.started[id]; ok && n > prev {
			active = true
		}
		seen[id] = n
		if m.Routable {
			if es, ok := s.engineState(m.Instance.ID); ok {
				load += es.Waiting
			}
		}
	}
	held := sc.hold.Len()
	load += float64(held)
	if active && load < 1 {
		load = 1
	}
	sc.started = seen
	ready := 0
	if pv := snap.Pools[sc.pool]; pv != nil {
		ready = len(pv.Targets)
	}
	return load, ready
}

// decide runs the Decider and hands its count to the lifecycle manager.
// The first decision waits for the manager to have read its records, and
// starts from the instances it sees (serving, provisioning, starting), so
// a restart neither scales to zero nor forgets a scale-up in progress.
func (sc *poolScaler) decide(log *zap.Logger, s *state, now time.Time) {
	sc.nextDecide = now.Add(sc.cfg.interval)
	rt := s.lifecycle.Load()
	if rt == nil || !managerLoaded(rt.mgr) {
		sc.view.Store(&scaleView{At: now, Waiting: "waiting for the lifecycle manager's first reconciliation"})
		return
	}
	if sc.mgr != rt.mgr {
		if st := sc.dec.Snapshot(); !st.Started {
			if ps, ok := rt.mgr.PoolScale(sc.pool); ok {
				st.Started, st.Desired = true, ps.Serving+ps.Provisioning+ps.Starting
				st.Seen, st.LastRequest = true, now // the idle clock starts now
				sc.dec.Restore(st)
			}
		}
		sc.mgr = rt.mgr
	}
	d := sc.dec.Decide(now)
	view := &scaleView{Decision: d, At: now, ChangedAt: now}
	if prev := sc.view.Load(); prev != nil && !d.Changed && !prev.ChangedAt.IsZero() {
		view.ChangedAt = prev.ChangedAt
	}
	if d.Changed {
		log.Info("autoscale decision", zap.String("pool", sc.pool), zap.Int("desired", d.Desired),
			zap.Int("previous", d.Previous), zap.Int("ready", d.Current), zap.String("reason", string(d.Reason)),
			zap.String("why", d.Explanation))
	}
	held, why := s.leadAutoscaling()
	view.Waiting = why
	sc.view.Store(view)
	if held {
		rt.mgr.SetDesired(sc.pool, d.Desired)
	}
}

// leadAutoscaling reports whether this process holds the autoscaler
// lease, and when not, says why for the admin API.
func (s *state) leadAutoscaling() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), leaseTTL/3)
	defer cancel()
	held, holder, until, err := s.asLease.Acquire(ctx)
	switch {
	case held:
		return true, ""
	case err != nil:
		return false, "standby: the autoscaler lease cannot be read or written (" + err.Error() + "); not acting"
	}
	return false, fmt.Sprintf("standby: %s leads autoscaling for this gateway (its lease runs until %s); this process decides but does not act",
		holder, until.UTC().Format(time.RFC3339))
}

// leaseTTL is how long the autoscaler lease outlives a holder that died.
const leaseTTL = 15 * time.Second

// leaseOwner names this process in the autoscaler lease.
func leaseOwner() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s/%d/%x", host, os.Getpid(), b)
}

// releaseLeaseLocked hands the autoscaler lease over at once (a clean stop).
func (s *state) releaseLeaseLocked() {
	if s.asLease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.asLease.Release(ctx) // it expires anyway
	s.asLease = nil
}

// managerLoaded reports whether the manager has finished a reconciliation
// (so its records are read).
func managerLoaded(m *lifecycle.Manager) bool {
	st := m.Stats()
	return st.Reconciles > st.ReconcileErrors
}

// syncHold opens the pool's Hold when the snapshot shows a routable
// instance and closes it when it shows none. Snapshots are applied in
// generation order, whoever calls (the loop, or a request that found the
// pool empty). A Block that leaves requests held (a release was under
// way) wakes the loop itself, since the Hold will not.
func (sc *poolScaler) syncHold(s *state, snap *fleet.Snapshot) {
	pv := snap.Pools[sc.pool]
	ready := pv != nil && len(pv.Targets) > 0
	sc.syncMu.Lock()
	defer sc.syncMu.Unlock()
	if snap.Generation < sc.syncGen {
		return
	}
	sc.syncGen = snap.Generation
	switch {
	case ready && !sc.hold.Open():
		sc.hold.Release()
	case !ready && sc.hold.Open():
		if sc.hold.Block() > 0 {
			s.wakeAutoscale()
		}
	}
}

func sortedScalers(m map[string]*poolScaler) []*poolScaler {
	out := make([]*poolScaler, 0, len(m))
	for _, sc := range m {
		out = append(out, sc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pool < out[j].pool })
	return out
}

// releaseHoldsLocked lets every held request go when the app is unloaded:
// they find no instance and get their 503 at once instead of at max_wait.
func (s *state) releaseHoldsLocked() {
	if m := s.scalers.Swap(nil); m != nil {
		for _, sc := range *m {
			sc.hold.Release()
		}
	}
}

// autoscaleView is pool's autoscale section of the admin API (nil when the
// pool is not autoscaled).
func (s *state) autoscaleView(pool string) *adminapi.Autoscale {
	sc := s.scalerFor(pool)
	if sc == nil {
		return nil
	}
	dc := sc.cfg.decider
	v := &adminapi.Autoscale{Min: dc.Min, Max: dc.Max, TargetLoad: dc.TargetPerInstance,
		Held: sc.hold.Len(), HeldTotal: sc.admitted.Load(), Rejected: map[string]uint64{}}
	for i, name := range holdReasonNames {
		v.Rejected[name] = sc.rejected[i].Load()
	}
	if sv := sc.view.Load(); sv != nil {
		d := sv.Decision
		v.Desired, v.Current, v.Reason, v.Explanation = d.Desired, d.Current, string(d.Reason), d.Explanation
		v.StableLoad, v.PanicLoad, v.Panicking, v.Waiting = d.StableLoad, d.PanicLoad, d.Panicking, sv.Waiting
		at, changed := sv.At.UTC(), sv.ChangedAt.UTC()
		v.DecidedAt = &at
		if !sv.ChangedAt.IsZero() {
			v.ChangedAt = &changed
		}
	}
	if rt := s.lifecycle.Load(); rt != nil {
		if ps, ok := rt.mgr.PoolScale(pool); ok {
			v.Scale = &ps
		}
	}
	return v
}
