package vastai

// Wiring of the lifecycle manager: its configuration from the app's, the
// reload-surviving runtime that runs Manager.Run, and fleetAdapter, the
// routing side as the manager sees it.

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// lifecycleConfig builds the lifecycle manager's configuration.
func (a *App) lifecycleConfig(repl *caddy.Replacer) lifecycle.Config {
	cfg := lifecycle.Config{
		GatewayID:         a.gatewayID(),
		Pools:             map[string]lifecycle.PoolTemplate{},
		Orphans:           a.Orphans,
		ReconcileInterval: time.Duration(a.ReconcileInterval),
		MaxSpendPerHour:   a.MaxSpendPerHour,
		MinCredit:         a.MinCredit,
		LeaseTTL:          time.Duration(a.LeaseTTL),
		PollInterval:      time.Duration(a.ProvisionPollInterval),
	}
	// One listing feeds routing and reconciliation: reconcile acts on the
	// watcher's latest successful listing while it is at most two poll
	// intervals old, and lists the account itself only otherwise.
	watchEvery := time.Duration(a.PollInterval)
	if watchEvery <= 0 {
		watchEvery = fleet.DefaultPollInterval
	}
	cfg.FleetListingMaxAge = 2 * watchEvery
	if cfg.PollInterval > 0 {
		// The instance row is read directly at least every few polls.
		cfg.StatusPollInterval = 3 * cfg.PollInterval
	}
	for name, p := range a.Pools {
		if p != nil && p.Provision != nil {
			tpl := p.Provision.template(p.Port, repl)
			if p.Autoscale != nil {
				tpl.Autoscale = p.Autoscale.spec()
			}
			cfg.Pools[name] = tpl
		}
	}
	return cfg
}

// lifecycleRuntime is the running lifecycle manager and what identifies its
// configuration, so a reload that changes nothing keeps it running.
type lifecycleRuntime struct {
	fingerprint string
	mgr         *lifecycle.Manager
	cancel      context.CancelFunc
	done        chan struct{}
}

// applyLifecycleLocked (re)starts the lifecycle manager when its
// configuration changed. Stopping a manager never destroys anything; the
// new one resumes the stored operations. Called with s.mu held.
func (s *state) applyLifecycleLocked(log *zap.Logger, cfg lifecycle.Config, store lifecycle.Store) error {
	// The client is part of the identity: a new API key or URL means a
	// new client, and the manager must use it.
	cfg.Logger, cfg.Now = nil, nil
	fp := fmt.Sprintf("%#v|%p", cfg, s.client)
	if cur := s.lifecycle.Load(); cur != nil && cur.fingerprint == fp {
		return nil
	}
	cfg.Logger = log.Named("lifecycle")
	mgr, err := lifecycle.New(cfg, s.client, store, fleetAdapter{s})
	if err != nil {
		return fmt.Errorf("starting the lifecycle manager: %w", err)
	}
	s.stopLifecycleLocked()
	ctx, cancel := context.WithCancel(context.Background())
	rt := &lifecycleRuntime{fingerprint: fp, mgr: mgr, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rt.done)
		if err := mgr.Run(ctx); err != nil {
			log.Error("lifecycle manager stopped", zap.Error(err))
		}
	}()
	s.lifecycle.Store(rt)
	return nil
}

func (s *state) stopLifecycleLocked() {
	rt := s.lifecycle.Swap(nil)
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
	rt.mgr.Close()
}

// fleetAdapter is the routing side as the lifecycle manager sees it.
type fleetAdapter struct{ s *state }

func (f fleetAdapter) State(id int64) (string, time.Time, bool) {
	m, ok := f.s.watcher.Snapshot().Member(id)
	if !ok {
		return "", time.Time{}, false
	}
	return m.State, m.StateSince, true
}

// Drain stops routing to the instance and waits until its in-flight
// requests (streams included) have finished.
func (f fleetAdapter) Drain(ctx context.Context, id int64) error {
	f.s.watcher.SetDraining(id, true)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for f.s.inflight.count(id) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Undrain returns a drained instance to routing.
func (f fleetAdapter) Undrain(id int64) { f.s.watcher.SetDraining(id, false) }

// Exclude takes the instance out of routing at once, for good (it is
// being destroyed); requests in flight finish on their own.
func (f fleetAdapter) Exclude(id int64, reason string) {
	f.s.watcher.Exclude(id, reason)
}

// Listing is the watcher's latest successful listing: the members listed
// by it (LastSeen is that listing's time), not those kept from earlier
// listings. The watcher records when a listing finished, not when it
// began, so Started is that time (see lifecycle.Listing).
func (f fleetAdapter) Listing() (lifecycle.Listing, bool) {
	snap := f.s.watcher.Snapshot()
	at := snap.Poll.LastSuccess
	// A listing narrowed to the pools' exact labels lacks the cv: rows
	// reconcile must see; offering it would make every record whose
	// instance it omits look like a ghost.
	if at.IsZero() || snap.Poll.LabelFilter != nil {
		return lifecycle.Listing{}, false
	}
	rows := make([]vastclient.Instance, 0, len(snap.Members))
	for i := range snap.Members {
		if snap.Members[i].LastSeen.Equal(at) {
			rows = append(rows, snap.Members[i].Instance)
		}
	}
	started := snap.Poll.DataTime
	if started.IsZero() {
		started = at
	}
	return lifecycle.Listing{Rows: rows, Started: started, Skipped: snap.Poll.Skipped}, true
}

func (f fleetAdapter) Instances() ([]vastclient.Instance, time.Time, bool) {
	snap := f.s.watcher.Snapshot()
	if snap.Poll.LastSuccess.IsZero() {
		return nil, time.Time{}, false
	}
	rows := make([]vastclient.Instance, len(snap.Members))
	for i := range snap.Members {
		rows[i] = snap.Members[i].Instance
	}
	return rows, snap.Poll.LastSuccess, true
}

// Interface guards
var _ lifecycle.Fleet = fleetAdapter{}

// probeFailingPools lists, sorted, the configured pools whose every
// instance fails its probe (lifecycle.Manager.ProbeFailing); none without
// a lifecycle manager.
func (s *state) probeFailingPools(snap *fleet.Snapshot) []string {
	rt := s.lifecycle.Load()
	if rt == nil {
		return nil
	}
	var out []string
	for name := range snap.Pools {
		if rt.mgr.ProbeFailing(name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
