package fleet

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Lister lists the instances of a vast.ai account. *vastclient.Client
// implements it.
type Lister interface {
	ListInstances(ctx context.Context, opts vastclient.ListOptions) (*vastclient.ListResult, error)
}

// Config is the watcher's configuration; it can be replaced at any time.
type Config struct {
	Pools        []PoolSpec
	PollInterval time.Duration
	// MaxConcurrentProbes bounds the active probes in flight (default 64).
	MaxConcurrentProbes int
	// Dial opens probe connections in tunnel mode (see SetTunnel); in
	// direct mode probes dial the public address over TCP.
	Dial Dialer
	// IncludePrefixes are label prefixes whose instances every listing
	// must return although no pool may select them: the lifecycle's "cv:"
	// when reconcile reads the watcher's listing. The list API has no
	// prefix operator, so any prefix means listing the whole account.
	IncludePrefixes []string
	// SelectColumns asks vast.ai only for the columns the client decodes
	// (select_cols), which shrinks pages but not their number. Off by
	// default: whether computed columns such as dph_total are served under
	// select_cols is unverified on the real API.
	SelectColumns bool
}

// listOptions is the narrowest listing that still returns every instance
// the pools (and IncludePrefixes) select. Only exact labels can be asked
// for ("label in [...]"): a prefix could be written as a range on label,
// but the server's string order (its collation) is unknown, and a row
// missed by a wrong range is an instance billing unseen. So any prefix, a
// provisioning pool or a catch-all pool lists the whole account.
func listOptions(cfg Config) vastclient.ListOptions {
	var o vastclient.ListOptions
	if cfg.SelectColumns {
		o.Columns = vastclient.InstanceColumns
	}
	if len(cfg.IncludePrefixes) > 0 || len(cfg.Pools) == 0 {
		return o
	}
	set := map[string]bool{}
	for _, p := range cfg.Pools {
		if p.Label == "" || p.LabelPrefix != "" || p.ManagedPrefix != "" {
			return o
		}
		set[p.Label] = true
	}
	for l := range set {
		o.Labels = append(o.Labels, l)
	}
	sort.Strings(o.Labels)
	return o
}

// DefaultPollInterval is used when Config.PollInterval is not positive.
const DefaultPollInterval = 10 * time.Second

// MissesBeforeRemoval is how many consecutive successful listings must omit
// an instance before it is forgotten: the list endpoint transiently omits
// rows, and one odd answer must never tear routing down.
const MissesBeforeRemoval = 2

// Watcher polls the vast.ai list endpoint and publishes snapshots.
//
// One Watcher runs one loop (Run); configuration changes go through
// Configure, so a config reload never starts a second loop.
type Watcher struct {
	log atomic.Pointer[zap.Logger]
	now func() time.Time

	mu     sync.Mutex // guards everything below except snap
	lister Lister
	cfg    Config
	known  map[int64]*tracked
	drain  map[int64]bool
	tunnel bool
	poll   PollStatus
	gen    uint64

	snap    atomic.Pointer[Snapshot]
	kick    chan struct{}
	changed chan struct{} // signalled (coalesced) after every publish
	running atomic.Int32
	// traffic holds, per instance id, the consecutive failures of live
	// requests (*atomic.Int64): the request path only touches an atomic.
	traffic sync.Map
	prober  *prober

	// excluded: instances out of routing for good (exclude.go); guarded by mu.
	excluded map[int64]*exclusion
}

// NewWatcher returns a watcher with an empty snapshot and no configuration.
func NewWatcher(log *zap.Logger) *Watcher {
	w := &Watcher{now: time.Now, known: map[int64]*tracked{}, drain: map[int64]bool{},
		kick: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	w.prober = newProber(w)
	w.SetLogger(log)
	w.snap.Store(emptySnapshot(nil))
	return w
}

// SetLogger replaces the logger (a reloaded config brings its own).
func (w *Watcher) SetLogger(log *zap.Logger) {
	if log == nil {
		log = zap.NewNop()
	}
	w.log.Store(log)
}

func (w *Watcher) logger() *zap.Logger { return w.log.Load() }

// Snapshot returns the current immutable snapshot. It never blocks.
func (w *Watcher) Snapshot() *Snapshot { return w.snap.Load() }

// Running reports how many Run loops are active (0 or 1 in a healthy process).
func (w *Watcher) Running() int { return int(w.running.Load()) }

// Configure installs a lister and a configuration, republishes the snapshot
// for the new pools at once (without waiting for the network), and asks the
// loop to poll soon.
func (w *Watcher) Configure(l Lister, cfg Config) {
	pools := append([]PoolSpec(nil), cfg.Pools...)
	SortPools(pools)
	cfg.Pools = pools
	w.mu.Lock()
	w.lister, w.cfg = l, cfg
	w.publishLocked()
	w.mu.Unlock()
	w.PollSoon()
}

// PollSoon asks the loop to poll now instead of at the next tick.
func (w *Watcher) PollSoon() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Run polls until ctx is cancelled. It polls at once, then every
// PollInterval or when PollSoon is called.
func (w *Watcher) Run(ctx context.Context) {
	w.running.Add(1)
	defer w.running.Add(-1)
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		w.prober.run(ctx)
	}()
	defer func() { <-probesDone }()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.kick:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		_ = w.Poll(ctx)
		w.mu.Lock()
		interval := w.cfg.PollInterval
		w.mu.Unlock()
		if interval <= 0 {
			interval = DefaultPollInterval
		}
		timer.Reset(interval)
	}
}

// Poll lists the account once and publishes the result. On failure it keeps
// every known instance and records the error: a failed list is never "no
// instances".
func (w *Watcher) Poll(ctx context.Context) error {
	w.mu.Lock()
	lister, opts := w.lister, listOptions(w.cfg)
	w.mu.Unlock()
	if lister == nil {
		return nil
	}
	start := w.now()
	res, err := lister.ListInstances(ctx, opts)
	if ctx.Err() != nil {
		// Shutting down: an aborted poll says nothing about the fleet.
		return ctx.Err()
	}
	now := w.now()

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.poll.FirstAttempt.IsZero() {
		w.poll.FirstAttempt = start
	}
	w.poll.LastAttempt = now
	if err != nil {
		w.failedLocked(err, now)
		w.publishLocked()
		return err
	}
	if w.poll.AuthError {
		w.logger().Info("the vast.ai API key is accepted again")
	} else if w.poll.ConsecutiveFailures > 0 {
		w.logger().Info("listing vast.ai instances recovered", zap.Int("after_failures", w.poll.ConsecutiveFailures))
	}
	w.poll.LastError, w.poll.ConsecutiveFailures, w.poll.AuthError = "", 0, false
	w.poll.LastSuccess, w.poll.Skipped, w.poll.Pages = now, res.Skipped, res.Pages
	w.poll.DataTime, w.poll.ListingDuration = start, now.Sub(start)
	w.poll.LabelFilter = opts.Labels

	seen := make(map[int64]bool, len(res.Instances))
	for _, in := range res.Instances {
		if !in.Valid() {
			continue
		}
		seen[in.ID] = true
		t := w.known[in.ID]
		if t == nil {
			t = &tracked{firstSeen: now}
			w.known[in.ID] = t
			w.logger().Info("instance discovered", zap.Int64("id", in.ID), zap.String("label", in.Label), zap.String("status", in.ActualStatus))
		}
		// Every field is refreshed on every poll: tokens, addresses and
		// ports can change while an instance stays running.
		t.inst, t.lastSeen, t.misses = in, now, 0
	}
	// Rows were refreshed: advance health states (status changes, grace
	// expiry) for every known instance.
	for id, t := range w.known {
		w.stepLocked(id, t, now)
	}
	// Rows without a usable id could be any instance: count no absences
	// from such a listing.
	if res.Skipped == 0 {
		for id, t := range w.known {
			if seen[id] {
				continue
			}
			t.misses++
			if t.misses >= MissesBeforeRemoval {
				delete(w.known, id)
				w.logger().Info("instance gone from the account", zap.Int64("id", id), zap.Int("missed_listings", t.misses))
			}
		}
	}
	w.publishLocked()
	return nil
}

// failedLocked records a failed listing. A rejected API key is an
// operator's problem that no retry solves: it is logged at error level
// once per change, not as a warning on every poll.
func (w *Watcher) failedLocked(err error, now time.Time) {
	w.poll.LastError = err.Error()
	w.poll.ConsecutiveFailures++
	auth := errors.Is(err, vastclient.ErrAuth)
	wasAuth := w.poll.AuthError
	w.poll.AuthError = auth
	switch {
	case auth && !wasAuth:
		w.logger().Error("the vast.ai API key was rejected",
			zap.Error(err), zap.Bool("listing_ever_succeeded", !w.poll.NeverSucceeded()))
	case auth:
		w.logger().Debug("the vast.ai API key is still rejected", zap.Int("consecutive_failures", w.poll.ConsecutiveFailures))
	case w.poll.NeverSucceeded():
		w.logger().Warn("listing vast.ai instances failed; no listing has succeeded yet, so nothing is routed",
			zap.Error(err),
			zap.Int("consecutive_failures", w.poll.ConsecutiveFailures),
			zap.Duration("failing_for", w.poll.Stale(now)))
	default:
		w.logger().Warn("listing vast.ai instances failed; keeping the last known fleet",
			zap.Error(err),
			zap.Int("consecutive_failures", w.poll.ConsecutiveFailures),
			zap.Duration("stale_for", w.poll.Stale(now)))
	}
}

// stepLocked advances one instance's health state and logs transitions.
func (w *Watcher) stepLocked(id int64, t *tracked, now time.Time) bool {
	if t.health.cell == nil {
		t.health.cell = new(probeCell)
	}
	prev := t.health.state
	if !t.health.step(now, t.inst.ActualStatus, t.inst.CurState, t.inst.NextState, w.healthSpecLocked(&t.inst)) {
		return false
	}
	w.logger().Info("instance state changed",
		zap.Int64("id", id), zap.String("from", prev), zap.String("to", t.health.state), zap.String("reason", t.health.reason))
	return true
}

// healthSpecLocked returns the health settings of the instance's pool.
func (w *Watcher) healthSpecLocked(in *vastclient.Instance) HealthSpec {
	if _, idx := assignPool(w.cfg.Pools, in.Label); idx >= 0 {
		return w.cfg.Pools[idx].Health.WithDefaults()
	}
	return HealthSpec{}.WithDefaults()
}

// observe applies one probe result to an instance and republishes the
// snapshot if its state changed.
func (w *Watcher) observe(id int64, ok bool, probe *ProbeResult) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.known[id]
	if t == nil {
		return
	}
	if probe != nil && t.health.cell != nil {
		t.health.cell.p.Store(probe)
	}
	t.health.observe(ok)
	if w.stepLocked(id, t, w.now()) {
		w.publishLocked()
	}
}

// observeTraffic marks a ready instance unhealthy after failures consecutive
// failed requests (its pool's unhealthy_threshold or more).
func (w *Watcher) observeTraffic(id int64, failures int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.known[id]
	if t == nil || t.health.state != StateReady {
		return
	}
	if failures > t.health.failStreak {
		t.health.failStreak, t.health.okStreak = failures, 0
	}
	if w.stepLocked(id, t, w.now()) {
		w.publishLocked()
	}
}

// ReportTraffic records the outcome of a proxied request: a connection
// failure or a 5xx is a failure, anything else a success, which resets the
// count. unhealthy_threshold consecutive failures make a ready instance
// unhealthy; only probes bring it back. Callers must not report requests
// the client cancelled. It is lock-free: one atomic operation.
func (w *Watcher) ReportTraffic(id int64, ok bool) {
	c, found := w.traffic.Load(id)
	if !found {
		c, _ = w.traffic.LoadOrStore(id, new(atomic.Int64))
	}
	n := c.(*atomic.Int64)
	if ok {
		if n.Load() != 0 {
			n.Store(0)
		}
		return
	}
	n.Add(1)
}

// CloseIdleConnections closes the prober's idle connections, so the next
// probes dial afresh (after an SSH path change, for example).
func (w *Watcher) CloseIdleConnections() {
	w.prober.client.CloseIdleConnections()
}

// SetTunnel switches tunnel mode: every instance is then reached through
// its SSH connection (upstream addresses from TunnelAddr), and probes use
// Config.Dial, so they take the same path as traffic.
func (w *Watcher) SetTunnel(enabled bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tunnel == enabled {
		return
	}
	w.tunnel = enabled
	w.publishLocked()
}

// SetDraining takes an instance out of routing (draining true) or puts it
// back. In-flight requests are not affected; new ones go elsewhere.
func (w *Watcher) SetDraining(id int64, draining bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.drain[id] == draining {
		return
	}
	if draining {
		w.drain[id] = true
	} else {
		delete(w.drain, id)
	}
	w.publishLocked()
}

func (w *Watcher) publishLocked() {
	w.gen++
	for id := range w.drain {
		if w.known[id] == nil {
			delete(w.drain, id) // forgotten instances need no drain mark
		}
	}
	w.snap.Store(buildSnapshot(w.gen, w.cfg.Pools, w.known, w.drain, w.excludedLocked(), w.tunnel, w.poll))
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// Changed is signalled after a new snapshot is published; signals
// coalesce, so its one reader reads Snapshot after each. The autoscaler
// (wire_autoscale.go) uses it to release held requests as soon as an
// instance becomes routable, without polling.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
