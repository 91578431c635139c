package vastai

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

type staticLister struct{ res *vastclient.ListResult }

func (s staticLister) ListInstances(context.Context, vastclient.ListOptions) (*vastclient.ListResult, error) {
	return s.res, nil
}

// upstreamsOver returns a vastai upstream source over n ready instances:
// n real loopback listeners answer the health probes, so the instances
// become ready the way they do in production.
func upstreamsOver(tb testing.TB, n int) *Upstreams {
	tb.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	res := &vastclient.ListResult{}
	for i := 1; i <= n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		res.Instances = append(res.Instances, vastclient.Instance{
			ID: int64(1000 + i), Label: fmt.Sprintf("llm-%d", i), ActualStatus: "running",
			PublicIPAddr: "127.0.0.1", JupyterToken: "t" + strconv.Itoa(i),
			Ports: vastclient.Ports{"8000/tcp": {{HostIP: "0.0.0.0", HostPort: strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)}}},
		})
	}
	tb.Cleanup(func() { _ = srv.Close() })
	w := fleet.NewWatcher(nil)
	w.Configure(staticLister{res}, fleet.Config{
		Pools:        []fleet.PoolSpec{{Name: "llm", LabelPrefix: "llm-", Health: fleet.HealthSpec{Interval: jsondur.Duration(time.Hour)}}},
		PollInterval: time.Hour,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	waitFor(tb, 10*time.Second, "instances ready", func() bool {
		return len(w.Snapshot().Pools["llm"].Targets) == n
	})
	return &Upstreams{Pool: "llm", st: &state{watcher: w}}
}

func TestGetUpstreamsReturnsFreshSortedValues(t *testing.T) {
	u := upstreamsOver(t, 100)
	a, err := u.GetUpstreams(nil)
	if err != nil || len(a) != 100 {
		t.Fatalf("got %d upstreams, err %v", len(a), err)
	}
	snap := u.st.watcher.Snapshot()
	for i := 1; i < len(a); i++ {
		prev, _ := snap.Route(a[i-1].Dial)
		cur, _ := snap.Route(a[i].Dial)
		if prev.ID >= cur.ID {
			t.Fatalf("not sorted by instance id at %d: %d, %d", i, prev.ID, cur.ID)
		}
	}
	b, _ := u.GetUpstreams(nil)
	if a[0] == b[0] {
		t.Fatal("GetUpstreams returned the same *Upstream twice; Caddy mutates them")
	}
	empty := &Upstreams{Pool: "none", st: u.st}
	if ups, err := empty.GetUpstreams(nil); ups != nil || err != nil {
		t.Fatalf("unknown/empty pool: %v, %v; want nil, nil", ups, err)
	}
	allocs := testing.AllocsPerRun(100, func() { _, _ = u.GetUpstreams(nil) })
	if allocs > 2 {
		t.Errorf("GetUpstreams allocates %.0f times per call, want the result only (2)", allocs)
	}
}

// BenchmarkGetUpstreams100 measures the request path's upstream lookup over
// a pool of 100 routable instances.
func BenchmarkGetUpstreams100(b *testing.B) {
	u := upstreamsOver(b, 100)
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ups, _ := u.GetUpstreams(req); len(ups) != 100 {
			b.Fatal("wrong count")
		}
	}
}

// BenchmarkProxy compares requests through vastai_proxy with a static
// reverse_proxy to the same engine, in the same Caddy process.
func BenchmarkProxy(b *testing.B) {
	sim := newSim(b, vastsim.Options{})
	ids := launch(b, sim, 1, "llm-")
	var addr, token string
	for _, in := range sim.Instances() {
		if in.ID == ids[0] {
			addr, token = in.EngineAddr, in.JupyterToken
		}
	}
	site := fmt.Sprintf(`	handle_path /static/* {
		reverse_proxy %s {
			header_up Authorization "Bearer %s"
		}
	}
	handle_path /vastai/* {
		vastai_proxy llm
	}
	handle_path /least_load/* {
		vastai_proxy llm {
			lb_policy vastai_least_load
		}
	}
	handle_path /cache_aware/* {
		vastai_proxy llm {
			lb_policy vastai_cache_aware
		}
	}`, addr, token)
	startCaddy(b, testConfig(sim.URL(), llmPool, site))
	waitRoutable(b, 10*time.Second, ids)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, route := range []string{"static", "vastai", "least_load", "cache_aware"} {
		url := testProxyURL + "/" + route + "/health"
		b.Run(route, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("%s: status %d", url, resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// BenchmarkCaddyAllNew100 is the baseline: what Caddy's own dynamic sources
// (allNew in reverseproxy/upstreams.go) allocate for 100 upstreams, one
// Upstream per call. GetUpstreams allocates one array instead.
func BenchmarkCaddyAllNew100(b *testing.B) {
	u := upstreamsOver(b, 100)
	pv := u.st.watcher.Snapshot().Pools["llm"]
	ups := make([]reverseproxy.Upstream, len(pv.Targets))
	for i, t := range pv.Targets {
		ups[i].Dial = t.Dial
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		results := make([]*reverseproxy.Upstream, len(ups))
		for j := range ups {
			results[j] = &reverseproxy.Upstream{Dial: ups[j].Dial}
		}
		if len(results) != 100 {
			b.Fatal("wrong count")
		}
	}
}

// BenchmarkKeepAlivePool sends requests from 32 and 256 concurrent clients
// through a real Caddy to one loopback engine, with the vastai transport's
// default keep-alive pool and with Caddy's old default of 32 idle
// connections per host. It reports the upstream connections the engine
// accepted per 1000 requests: a pool smaller than the concurrency keeps
// opening new ones.
func BenchmarkKeepAlivePool(b *testing.B) {
	sim := newSim(b, vastsim.Options{})
	ids := launch(b, sim, 1, "llm-")
	site := `	handle_path /default/* {
		vastai_proxy llm
	}
	handle_path /old/* {
		vastai_proxy llm {
			transport vastai {
				keepalive_idle_conns_per_host 32
			}
		}
	}`
	startCaddy(b, testConfig(sim.URL(), llmPool, site))
	waitRoutable(b, 10*time.Second, ids)

	for _, clients := range []int{32, 256} {
		// The client side must not be the bottleneck: one keep-alive
		// connection per client.
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients, MaxIdleConns: clients}}
		for _, pool := range []string{"default", "old"} {
			url := testProxyURL + "/" + pool + "/health"
			b.Run(fmt.Sprintf("clients=%d/pool=%s", clients, pool), func(b *testing.B) {
				before := sim.Engine(ids[0]).ConnsOpened
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for c := 0; c < clients; c++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							resp, err := client.Get(url)
							if err != nil {
								b.Error(err)
								return
							}
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							if resp.StatusCode != http.StatusOK {
								b.Errorf("%s: status %d", url, resp.StatusCode)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				opened := sim.Engine(ids[0]).ConnsOpened - before
				b.ReportMetric(float64(opened)*1000/float64(b.N), "upstream-conns/1000req")
			})
		}
		client.CloseIdleConnections()
	}
}

func TestTransportKeepAlivePoolDefaultsAndOverrides(t *testing.T) {
	def := &Transport{HTTPTransport: new(reverseproxy.HTTPTransport)}
	def.keepAliveDefaults()
	if k := def.KeepAlive; k.MaxIdleConnsPerHost != DefaultIdleConnsPerHost || k.MaxIdleConns != DefaultMaxIdleConns {
		t.Errorf("defaults: %+v, want %d per host and %d in all", k, DefaultIdleConnsPerHost, DefaultMaxIdleConns)
	}
	user := &Transport{HTTPTransport: &reverseproxy.HTTPTransport{KeepAlive: &reverseproxy.KeepAlive{MaxIdleConnsPerHost: 32, MaxIdleConns: 100}}}
	user.keepAliveDefaults()
	if k := user.KeepAlive; k.MaxIdleConnsPerHost != 32 || k.MaxIdleConns != 100 {
		t.Errorf("the user's values were replaced: %+v", k)
	}
}
