package fleet

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Dialer opens a connection to an instance's engine for a probe: addr is
// the member's upstream address. The SSH tunnel transport supplies one so
// probes take the same path as traffic.
type Dialer func(ctx context.Context, id int64, addr string) (net.Conn, error)

// DefaultMaxConcurrentProbes bounds probes in flight when the config does not.
const DefaultMaxConcurrentProbes = 64

type probeOutcome struct {
	id     int64
	result ProbeResult
}

// prober runs the active health probes. One loop owns the schedule; each
// probe runs in its own goroutine, bounded by a semaphore, with its own
// timeout, so one slow or hung engine never delays the others.
type prober struct {
	w      *Watcher
	client *http.Client
}

type probeDialKey struct{}

type probeDialInfo struct {
	id   int64
	dial Dialer
}

func newProber(w *Watcher) *prober {
	p := &prober{w: w}
	base := &net.Dialer{Timeout: DefaultProbeTimeout, KeepAlive: 30 * time.Second}
	p.client = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if di, ok := ctx.Value(probeDialKey{}).(probeDialInfo); ok && di.dial != nil {
					return di.dial(ctx, di.id, addr)
				}
				return base.DialContext(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		// A probe judges the engine's own answer; a redirect is an answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p
}

func (p *prober) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	results := make(chan probeOutcome, 256)
	next := map[int64]time.Time{}
	inflight := map[int64]bool{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			delete(inflight, r.id)
			res := r.result
			p.w.observe(r.id, res.OK, &res)
		case now := <-tick.C:
			p.schedule(ctx, now, next, inflight, results, &wg)
			p.passive()
		}
	}
}

// schedule starts the probes that are due. When the concurrency limit is
// reached the rest wait for the next tick instead of blocking the loop.
func (p *prober) schedule(ctx context.Context, now time.Time, next map[int64]time.Time, inflight map[int64]bool, results chan<- probeOutcome, wg *sync.WaitGroup) {
	p.w.mu.Lock()
	limit, dial := p.w.cfg.MaxConcurrentProbes, p.w.cfg.Dial
	if !p.w.tunnel {
		dial = nil // direct: probes dial the public address like traffic
	}
	pools := p.w.cfg.Pools
	p.w.mu.Unlock()
	if limit <= 0 {
		limit = DefaultMaxConcurrentProbes
	}
	snap := p.w.Snapshot()
	seen := make(map[int64]bool, len(snap.Members))
	for i := range snap.Members {
		m := &snap.Members[i]
		seen[m.Instance.ID] = true
		if !p.wants(m) || inflight[m.Instance.ID] || now.Before(next[m.Instance.ID]) {
			continue
		}
		if len(inflight) >= limit {
			break
		}
		spec := HealthSpec{}.WithDefaults()
		for _, ps := range pools {
			if ps.Name == m.Pool {
				spec = ps.Health.WithDefaults()
			}
		}
		id, addr, token := m.Instance.ID, m.Upstream, m.token
		inflight[id] = true
		next[id] = now.Add(spec.Interval.D())
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := p.probe(ctx, id, addr, token, spec, dial)
			select {
			case results <- probeOutcome{id: id, result: res}:
			case <-ctx.Done():
			}
		}()
	}
	for id := range next {
		if !seen[id] {
			delete(next, id)
		}
	}
}

// passive turns runs of failed live requests into state changes, and
// forgets the counters of instances that left the fleet.
func (p *prober) passive() {
	snap := p.w.Snapshot()
	p.w.traffic.Range(func(k, v any) bool {
		id, n := k.(int64), v.(*atomic.Int64)
		m, ok := snap.Member(id)
		if !ok {
			p.w.traffic.Delete(id)
			return true
		}
		if m.State != StateReady {
			n.Store(0) // failures before the drain do not count later
			return true
		}
		if f := n.Load(); f > 0 {
			spec := HealthSpec{}.WithDefaults()
			if pv := snap.Pools[m.Pool]; pv != nil {
				spec = pv.Spec.Health.WithDefaults()
			}
			if f >= int64(spec.UnhealthyThreshold) {
				n.Store(0)
				p.w.observeTraffic(id, int(f))
			}
		}
		return true
	})
}

// wants reports whether a member's engine should be probed now.
func (p *prober) wants(m *Member) bool {
	if m.Pool == "" || m.Upstream == "" || m.token == "" {
		return false
	}
	if probing(m.State) {
		return true
	}
	// An engine that missed its start-up grace keeps being probed: a big
	// model may still come up, and then it should serve.
	return m.State == StateFailed && m.Instance.ActualStatus == "running"
}

// probe sends one request the way traffic would: same address, same token.
func (p *prober) probe(ctx context.Context, id int64, addr, token string, spec HealthSpec, dial Dialer) ProbeResult {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout.D())
	defer cancel()
	ctx = context.WithValue(ctx, probeDialKey{}, probeDialInfo{id: id, dial: dial})
	res := p.probePath(ctx, addr, token, spec, spec.Path)
	if res.Status == http.StatusNotFound && spec.fallbackPath != "" {
		// The engine has no /health: judge it by its model list.
		res = p.probePath(ctx, addr, token, spec, spec.fallbackPath)
	}
	res.Time, res.Latency = start, time.Since(start)
	return res
}

func (p *prober) probePath(ctx context.Context, addr, token string, spec HealthSpec, path string) ProbeResult {
	var res ProbeResult
	var body io.Reader
	if spec.Body != "" {
		body = strings.NewReader(spec.Body)
	}
	req, err := http.NewRequestWithContext(ctx, spec.Method, "http://"+addr+path, body)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "caddy-vastai-health")
	if di, ok := ctx.Value(probeDialKey{}).(probeDialInfo); ok && di.dial != nil {
		// Through a tunnel a probe costs one SSH channel, no handshake, so
		// it keeps no idle connection: none can pin a retired SSH path, and
		// no instance's connection change needs to flush the prober.
		req.Close = true
	}
	if spec.Body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		res.Error = scrubToken(err.Error(), token)
		return res
	}
	// Read a bounded amount so the connection can be reused, and so a
	// probe that is a generation really completes.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	res.Status = resp.StatusCode
	switch {
	case resp.Header.Get(PlaceholderHeader) != "":
		res.Error = "engine not ready (" + PlaceholderHeader + ")"
	case !spec.expects(resp.StatusCode):
		res.Error = "unexpected status " + strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
	default:
		res.OK = true
	}
	return res
}

func scrubToken(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "[REDACTED]")
}
