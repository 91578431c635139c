package vastai

// Wiring of the SSH side: the reload-surviving sshpool.Pool shared by
// GPU metrics and tunnels, the loop that feeds the collector's endpoints,
// and the per-instance HTTP pools of tunnel routes.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/gpumetrics"
	"github.com/caddy-vastai/caddy-vastai/sshpool"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// sshRuntime is the reload-surviving SSH side: one connection pool shared by
// metrics and tunnels, and the metrics collector.
type sshRuntime struct {
	cfg       SSHConfig
	pool      *sshpool.Pool
	collector *gpumetrics.Collector
	// tunnelPools are the per-instance connection pools of tunnel routes.
	tunnelPools *tunnelPools
	cancel      context.CancelFunc
	done        chan struct{}
}

// applySSHLocked (re)starts the SSH side when its configuration changed. Called
// with s.mu held.
func (s *state) applySSHLocked(log *zap.Logger, cfg *SSHConfig, hostKeys sshpool.HostKeyStore) error {
	if cfg == nil {
		s.stopSSHLocked()
		return nil
	}
	if cur := s.ssh.Load(); cur != nil && reflect.DeepEqual(cur.cfg, *cfg) {
		return nil
	}
	pools := &tunnelPools{}
	pool, err := sshpool.NewPool(sshpool.PoolConfig{
		User:                   "root",
		KeyFiles:               cfg.Keys,
		UseAgent:               true,
		HostKeys:               hostKeys,
		InsecureIgnoreHostKeys: cfg.KnownHosts == KnownHostsInsecure,
		ConnectTimeout:         time.Duration(cfg.ConnectTimeout),
		Logger:                 log.Named("ssh"),
		// Pooled keep-alive connections would keep using a retired SSH
		// path (and keep it open) after a move to direct; closing the idle
		// ones makes the next request dial the new path, while requests in
		// flight finish on the old one. Only that instance's pools are
		// touched, and none in direct mode (see tunnelPools).
		OnConnChange: func(id int64, _ string) { pools.closeIdle(id) },
	})
	if err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	// A changed SSH configuration replaces the pool; the old one's
	// connections close once their tunnels have finished.
	s.stopSSHLocked()
	interval := time.Duration(cfg.MetricsInterval)
	if interval <= 0 {
		interval = DefaultMetricsInterval
	}
	rt := &sshRuntime{cfg: *cfg, pool: pool, tunnelPools: pools, collector: gpumetrics.NewCollector(pool, interval, log.Named("gpumetrics")), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	rt.cancel = cancel
	go func() {
		defer close(rt.done)
		go rt.collector.Run(ctx)
		rt.syncEndpoints(ctx, s.watcher, s.liveBaseTransports)
	}()
	s.ssh.Store(rt)
	return nil
}

func (s *state) stopSSHLocked() {
	rt := s.ssh.Swap(nil)
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
	rt.tunnelPools.prune(func(int64) bool { return false }, nil)
	rt.pool.Close()
}

// syncEndpoints keeps the collector's endpoints in line with the fleet:
// pooled, running instances with an SSH address. It also drops the tunnel
// pools of instances that left the fleet and of unloaded transports.
func (rt *sshRuntime) syncEndpoints(ctx context.Context, w *fleet.Watcher, liveBases func() map[*http.Transport]bool) {
	var gen uint64
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if snap := w.Snapshot(); snap.Generation != gen {
			gen = snap.Generation
			eps := make([]sshpool.Endpoint, 0, len(snap.Members))
			for i := range snap.Members {
				m := &snap.Members[i]
				if m.Pool == "" || m.Instance.ActualStatus != "running" || m.State == fleet.StateGone {
					continue
				}
				if ep, ok := sshEndpoint(&m.Instance); ok {
					eps = append(eps, ep)
				}
			}
			rt.collector.SetEndpoints(eps)
		}
		rt.tunnelPools.prune(func(id int64) bool { _, ok := w.Snapshot().Member(id); return ok }, liveBases())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sshEndpoint(in *vastclient.Instance) (sshpool.Endpoint, bool) {
	d, p := fleet.SSHEndpoints(in)
	return sshpool.Endpoint{ID: in.ID, Direct: d, Proxy: p}, d != "" || p != ""
}

// tunnelPools gives each (vastai transport, instance) pair its own
// connection pool for tunnel routes, a clone of the transport's
// http.Transport with the same settings. An instance's SSH connection
// change then closes the idle connections of that instance only: one
// shared pool could only be flushed for every instance at once. Direct
// routes keep the transport's own pool, which SSH changes never touch.
//
// HTTP/2 over TLS through a tunnel is the exception: a clone shares the
// original's HTTP/2 connection pool, so those connections stay until their
// idle timeout.
type tunnelPools struct {
	byID sync.Map // int64 → *sync.Map (*http.Transport base → *http.Transport)
}

// get returns the pool for base and instance id; lock-free once it exists.
func (p *tunnelPools) get(base *http.Transport, id int64) *http.Transport {
	v, ok := p.byID.Load(id)
	if !ok {
		v, _ = p.byID.LoadOrStore(id, new(sync.Map))
	}
	m := v.(*sync.Map)
	if t, ok := m.Load(base); ok {
		return t.(*http.Transport)
	}
	t, _ := m.LoadOrStore(base, base.Clone())
	return t.(*http.Transport)
}

// closeIdle closes the idle connections of instance id's pools and
// returns how many pools it touched.
func (p *tunnelPools) closeIdle(id int64) int {
	v, ok := p.byID.Load(id)
	if !ok {
		return 0
	}
	n := 0
	v.(*sync.Map).Range(func(_, t any) bool {
		t.(*http.Transport).CloseIdleConnections()
		n++
		return true
	})
	return n
}

// prune closes and forgets the pools of instances for which live is false
// and of base transports missing from bases (nil keeps every base).
func (p *tunnelPools) prune(live func(int64) bool, bases map[*http.Transport]bool) {
	p.byID.Range(func(k, v any) bool {
		id, m := k.(int64), v.(*sync.Map)
		keep := live(id)
		m.Range(func(b, t any) bool {
			if !keep || (bases != nil && !bases[b.(*http.Transport)]) {
				m.Delete(b)
				t.(*http.Transport).CloseIdleConnections()
			}
			return true
		})
		if !keep {
			p.byID.Delete(id)
		}
		return true
	})
}

// roundTrip sends req for route through h: over the instance's own tunnel
// pool for a tunnel route (HTTP/3 aside, which cannot use a tunnel), else
// through h as usual.
func (s *state) roundTrip(h *reverseproxy.HTTPTransport, route fleet.Route, req *http.Request) (*http.Response, error) {
	rt := s.ssh.Load()
	if !route.Tunnel || rt == nil || h.Transport == nil || slices.Contains(h.Versions, "3") {
		return h.RoundTrip(req)
	}
	h.SetScheme(req)
	return rt.tunnelPools.get(h.Transport, route.ID).RoundTrip(req)
}

// liveBaseTransports returns the http.Transports of the provisioned vastai
// transports.
func (s *state) liveBaseTransports() map[*http.Transport]bool {
	out := map[*http.Transport]bool{}
	s.transports.Range(func(k, _ any) bool {
		if h := k.(*Transport).HTTPTransport; h != nil && h.Transport != nil {
			out[h.Transport] = true
		}
		return true
	})
	return out
}

// dialTunnel opens a connection to 127.0.0.1:port inside an instance over
// its SSH connection.
func (s *state) dialTunnel(ctx context.Context, id int64, port int) (net.Conn, error) {
	rt := s.ssh.Load()
	if rt == nil {
		return nil, fmt.Errorf("tunnel to instance %d: SSH is not configured (vastai { ssh { key ... } })", id)
	}
	m, ok := s.watcher.Snapshot().Member(id)
	if !ok {
		return nil, fmt.Errorf("tunnel to instance %d: %w", id, errNoRoute)
	}
	ep, ok := sshEndpoint(&m.Instance)
	if !ok {
		return nil, fmt.Errorf("tunnel to instance %d: no SSH endpoint", id)
	}
	return rt.pool.DialContext(ctx, ep, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}
