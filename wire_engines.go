package vastai

// Wiring of the engine-state scraper: one loop per reload-surviving state
// reads every routable instance's /metrics (queue, running batch, KV-cache
// use) through the same path as traffic (the instance's Bearer token, and
// its SSH tunnel when the pool's routes use one), so that the selection
// policies (policy.go) read engine load from a snapshot, never from the
// network. It is started by state.apply and stopped by state.Destruct;
// a reload with unchanged settings keeps the running loop and its figures.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/enginestate"
	"github.com/caddy-vastai/caddy-vastai/fleet"
)

// engineSettings is what a scraper is built from; a change restarts it.
type engineSettings struct {
	disabled      bool
	path          string
	interval      time.Duration
	timeout       time.Duration
	staleAfter    time.Duration
	maxConcurrent int
}

// engineRuntime is the state's running scraper. scraper is read lock-free
// by the request path; the other fields are guarded by state.mu.
type engineRuntime struct {
	settings engineSettings
	cancel   context.CancelFunc
	done     chan struct{}
	client   *http.Client
}

// applyEnginesLocked starts the scraper, or restarts it when its settings
// changed. The caller holds s.mu.
func (s *state) applyEnginesLocked(log *zap.Logger, es engineSettings) {
	if s.engRT != nil && s.engRT.settings == es {
		return
	}
	s.stopEnginesLocked()
	if es.disabled {
		return
	}
	client := &http.Client{Transport: s.engineTransport(), CheckRedirect: noRedirects}
	sc := &enginestate.Scraper{
		Interval:      es.interval,
		Timeout:       es.timeout,
		StaleAfter:    es.staleAfter,
		MaxConcurrent: es.maxConcurrent,
		Client:        client,
		Log:           log.Named("engines"),
	}
	sc.Targets = func() []enginestate.Target { return s.engineTargets(es.path, client) }
	sc.OnState = func(id int64, st enginestate.State) {
		s.speeds.Observe(id, st.At, st.GenerationTokens, st.Running, st.Waiting)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rt := &engineRuntime{settings: es, cancel: cancel, done: make(chan struct{}), client: client}
	s.engRT = rt
	s.engines.Store(sc)
	go func() {
		defer close(rt.done)
		sc.Run(ctx)
	}()
}

// stopEnginesLocked stops the scraper and waits for its scrapes. The
// caller holds s.mu; the scraper never takes it.
func (s *state) stopEnginesLocked() {
	rt := s.engRT
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
	rt.client.CloseIdleConnections()
	s.engRT = nil
	s.engines.Store(nil)
}

// engineTransport dials engines like the vastai transport does: tunnel
// addresses through the instance's SSH connection, others directly. Its
// pool is small and separate from traffic's, so a scrape never waits for
// a connection a stream holds.
func (s *state) engineTransport() *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if id, port, ok := fleet.ParseTunnelAddr(addr); ok {
				return s.dialTunnel(ctx, id, port)
			}
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		DisableCompression:    false,
	}
}

// noRedirects keeps a scrape on the instance: a redirect could carry the
// token elsewhere.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// engineTargets lists the routable instances of every pool with their
// metrics URL and token, from the current snapshot.
func (s *state) engineTargets(path string, client *http.Client) []enginestate.Target {
	snap := s.watcher.Snapshot()
	s.speeds.Retain(func(id int64) bool { _, ok := snap.Member(id); return ok })
	var out []enginestate.Target
	for _, pv := range snap.Pools {
		for _, t := range pv.Targets {
			route, ok := snap.Route(t.Dial)
			if !ok {
				continue
			}
			token := route.Token
			out = append(out, enginestate.Target{
				ID:  t.ID,
				URL: "http://" + t.Dial + path,
				Do: func(req *http.Request) (*http.Response, error) {
					req.Header.Set("Authorization", "Bearer "+token)
					return client.Do(req)
				},
			})
		}
	}
	return out
}

// engineState returns instance id's engine figures if they are fresh.
// Lock-free; safe on the request path.
func (s *state) engineState(id int64) (enginestate.State, bool) {
	sc := s.engines.Load()
	if sc == nil {
		return enginestate.State{}, false
	}
	return sc.Get(id)
}

// engineResult returns the last scrape of instance id, fresh or not, for
// display.
func (s *state) engineResult(id int64) (enginestate.Result, bool) {
	sc := s.engines.Load()
	if sc == nil {
		return enginestate.Result{}, false
	}
	r, ok := sc.Snapshot()[id]
	return r, ok
}

// engineKind names the engine an instance runs (enginestate.EngineSGLang,
// ...), as its last readable /metrics page showed; "" when unknown.
func (s *state) engineKind(id int64) string {
	if r, ok := s.engineResult(id); ok && r.OK {
		return r.State.Engine
	}
	return ""
}

// settings resolves the defaults. A nil config scrapes with the defaults.
func (c *EnginesConfig) settings() engineSettings {
	es := engineSettings{
		path:          "/metrics",
		interval:      enginestate.DefaultInterval,
		staleAfter:    enginestate.DefaultStaleAfter,
		maxConcurrent: enginestate.DefaultMaxConcurrent,
	}
	if c == nil {
		return es
	}
	es.disabled = c.Disabled
	if c.MetricsPath != "" {
		es.path = c.MetricsPath
	}
	if c.ScrapeInterval > 0 {
		es.interval = time.Duration(c.ScrapeInterval)
	}
	es.timeout = time.Duration(c.ScrapeTimeout)
	if c.StaleAfter > 0 {
		es.staleAfter = time.Duration(c.StaleAfter)
	}
	if c.MaxConcurrentScrapes > 0 {
		es.maxConcurrent = c.MaxConcurrentScrapes
	}
	return es
}

// validate names the bad field.
func (c *EnginesConfig) validate() error {
	if c == nil {
		return nil
	}
	switch {
	case c.MetricsPath != "" && !strings.HasPrefix(c.MetricsPath, "/"):
		return fmt.Errorf("engines: metrics_path: %q must start with /", c.MetricsPath)
	case c.ScrapeInterval < 0 || c.ScrapeTimeout < 0 || c.StaleAfter < 0:
		return errors.New("engines: scrape_interval, scrape_timeout and stale_after must not be negative")
	case c.ScrapeInterval > 0 && time.Duration(c.ScrapeInterval) < 100*time.Millisecond:
		return fmt.Errorf("engines: scrape_interval: %s is below the minimum of 100ms", time.Duration(c.ScrapeInterval))
	case c.MaxConcurrentScrapes < 0:
		return errors.New("engines: max_concurrent_scrapes: must not be negative")
	}
	es := c.settings()
	if es.staleAfter <= es.interval {
		return fmt.Errorf("engines: stale_after (%s) must exceed scrape_interval (%s), or every figure would be ignored", es.staleAfter, es.interval)
	}
	return nil
}

// addTraffic adds the gateway's request counters and the engine's last
// scrape to an instance's admin view.
func (s *state) addTraffic(v *adminapi.Instance) {
	if s.inflight.loads.Tracks(v.ID) {
		n := s.inflight.count(v.ID)
		v.InFlight = &n
	}
	if n := s.inflight.requestsStarted(v.ID); n > 0 || v.InFlight != nil {
		v.RequestsTotal = &n
	}
	r, ok := s.engineResult(v.ID)
	if !ok {
		return
	}
	e := &adminapi.Engine{}
	if r.Err != nil {
		e.Error = r.Err.Error()
	}
	if r.OK {
		e.Kind, e.Waiting, e.Running = r.State.Engine, r.State.Waiting, r.State.Running
		at := r.State.At
		e.At = &at
		if r.State.HasKVCacheUse() {
			kv := r.State.KVCacheUse
			e.KVCacheUse = &kv
		}
		_, e.Fresh = s.engineState(v.ID)
	}
	v.Engine = e
}
