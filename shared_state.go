package vastai

// What survives config reloads: one state per process, held in a
// caddy.UsagePool, owns the watcher loop, the vast.ai client and the
// runtimes of wire_*.go. See the package comment for who starts and stops
// each loop.

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/autoscale"
	"github.com/caddy-vastai/caddy-vastai/enginestate"
	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/routing"
	"github.com/caddy-vastai/caddy-vastai/sshpool"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// states holds the reload-surviving state. During a reload the new app
// starts before the old one stops, so both configs hold a reference; the
// state (and its one watcher loop) goes away only when the last reference
// is released.
var states = caddy.NewUsagePool()

const stateKey = "vastai"

// state is everything that must survive a config reload: the watcher with
// its known instances, the vast.ai client with its pacing, and the metrics
// collectors. Exactly one watcher loop runs per state.
type state struct {
	watcher  *fleet.Watcher
	metrics  *collector
	inflight inflightCounter
	ssh      atomic.Pointer[sshRuntime] // nil without an ssh block
	tunnels  atomic.Int32               // provisioned transports with tunnel ssh
	// transports are the provisioned vastai transports (*Transport keys).
	transports sync.Map
	lifecycle  atomic.Pointer[lifecycleRuntime]
	dash       dashboard                                // the web dashboard's sampler and streams (wire_dashboard.go)
	ledger     atomic.Pointer[ledgerRuntime]            // wire_ledger.go
	engines    atomic.Pointer[enginestate.Scraper]      // wire_engines.go; nil when disabled
	models     atomic.Pointer[enginestate.ModelLearner] // wire_models.go; nil without vastai_models
	prefixes   sync.Map                                 // prefixIndexKey → *prefixIndexEntry (policy.go)
	routes     routeDecisions                           // routes_metrics.go
	speeds     routing.Speeds                           // engines' measured speeds (wire_engines.go), for capacity throughput
	aborts     abortCounters                            // abort.go
	keys       atomic.Pointer[keysRuntime]              // wire_keys.go
	keyStats   keyMetrics                               // keys.go
	scalers    atomic.Pointer[map[string]*poolScaler]   // wire_autoscale.go; autoscaled pools only
	asWake     chan struct{}                            // a held request wakes the autoscale loop
	asLoops    atomic.Int32                             // running autoscale loops: 0 or 1

	mu       sync.Mutex // guards the fields below
	settings clientSettings
	client   *vastclient.Client
	cancel   context.CancelFunc
	done     chan struct{}
	engRT    *engineRuntime
	modRT    *modelRuntime
	keyRT    *keysRuntime
	asRT     *autoscaleRuntime
	// asLease makes one process of those sharing the storage the one whose
	// autoscaler acts (wire_autoscale.go).
	asLease    *autoscale.Lease
	asLeaseKey string
	asStore    lifecycle.Store
}

func newState() *state {
	s := &state{watcher: fleet.NewWatcher(nil), asWake: make(chan struct{}, 1)}
	s.metrics = newCollector(s)
	return s
}

// applied is one started config's settings for the shared state.
type applied struct {
	client    clientSettings
	fleet     fleet.Config
	ssh       *SSHConfig
	hostKeys  sshpool.HostKeyStore
	lifecycle lifecycle.Config
	store     lifecycle.Store
	engines   engineSettings
	models    bool // a vastai_models handler is loaded: learn the engines' models
	keys      keySettings
	autoscale map[string]scalerConfig // autoscaled pools
}

// apply installs a started config: it (re)creates the vast.ai client only if
// its settings changed, reconfigures the watcher, and starts the loop if it
// is not running yet. It never starts a second loop.
func (s *state) apply(log *zap.Logger, c applied) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.applySSHLocked(log, c.ssh, c.hostKeys); err != nil {
		return err
	}
	settings, cfg := c.client, c.fleet
	cfg.Dial = func(ctx context.Context, id int64, addr string) (net.Conn, error) {
		_, port, ok := fleet.ParseTunnelAddr(addr)
		if !ok {
			return nil, fmt.Errorf("probe of instance %d: %s is not a tunnel address", id, addr)
		}
		return s.dialTunnel(ctx, id, port)
	}
	if s.client == nil || settings != s.settings {
		c, err := settings.newClient(log.Named("api"))
		if err != nil {
			return fmt.Errorf("creating the vast.ai client: %w", err)
		}
		s.client, s.settings = c, settings
	}
	s.watcher.SetLogger(log.Named("watcher"))
	s.watcher.Configure(s.client, cfg)
	s.watcher.SetTunnel(s.tunnels.Load() > 0)
	if err := s.applyLifecycleLocked(log, c.lifecycle, c.store); err != nil {
		return err
	}
	if err := s.applyAutoscaleLocked(log, c.autoscale, c.lifecycle.GatewayID, c.store); err != nil {
		return err
	}
	s.applyLedgerLocked(log, c.lifecycle.GatewayID, c.store)
	if s.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		s.cancel, s.done = cancel, done
		go func() {
			defer close(done)
			s.watcher.Run(ctx)
		}()
	}
	s.startDashboardLocked()
	s.applyEnginesLocked(log, c.engines)
	s.applyModelsLocked(log, c.models)
	s.applyKeysLocked(log, c.keys, c.store)
	return nil
}

// Destruct stops the watcher loop and waits for it. It runs when the last
// config using the vastai app is unloaded. It never destroys instances.
func (s *state) Destruct() error {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	s.mu.Lock()
	s.stopAutoscaleLocked()
	s.releaseHoldsLocked()
	s.releaseLeaseLocked()
	s.stopEnginesLocked()
	s.stopModelsLocked()
	s.stopKeysLocked() // flushes the key spend
	s.stopDashboardLocked()
	s.stopLedgerLocked() // flushes the cost ledger
	s.stopLifecycleLocked()
	s.stopSSHLocked()
	s.mu.Unlock()
	return nil
}

// registerMetrics adds the state's collectors to this config's registry.
func (s *state) registerMetrics(ctx caddy.Context) error {
	if err := s.metrics.register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := s.routes.register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := s.keyStats.register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := s.registerAbortMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := s.registerAutoscaleMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	return s.registerCostMetrics(ctx.GetMetricsRegistry())
}

// caddyStorage is the part of Caddy's storage the plugin uses: host keys,
// provisioning records and the reconciliation lock.
type caddyStorage interface {
	lifecycle.Store
}

// prefixedStore keeps the plugin's keys under one folder of Caddy's storage.
type prefixedStore struct {
	s      caddyStorage
	prefix string
}

func (p prefixedStore) Load(ctx context.Context, key string) ([]byte, error) {
	return p.s.Load(ctx, p.prefix+key)
}

func (p prefixedStore) Store(ctx context.Context, key string, value []byte) error {
	return p.s.Store(ctx, p.prefix+key, value)
}

// clientSettings identify a vast.ai client; the client (and its per-endpoint
// pacing) is reused across reloads while they do not change.
type clientSettings struct {
	baseURL string
	apiKey  string
}

func (c clientSettings) newClient(log *zap.Logger) (*vastclient.Client, error) {
	return vastclient.New(vastclient.Config{BaseURL: c.baseURL, APIKey: c.apiKey, Logger: log})
}

// Interface guards
var _ caddy.Destructor = (*state)(nil)
