package enginestate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// runScraper runs s until the test ends.
func runScraper(t *testing.T, s *Scraper) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// vllmPage renders a minimal vLLM page.
func vllmPage(waiting, running int64) string {
	return fmt.Sprintf("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} %d\n"+
		"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} %d\n"+
		"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n", waiting, running)
}

// countingServer answers vLLM pages whose waiting figure is the number of
// requests it has served, so a reader sees each scrape's freshness.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprint(w, vllmPage(n.Add(1), 1))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// hangingServer never answers until the test ends; it counts requests,
// tracks how many are open at once and reports each cancelled request.
type hangingServer struct {
	*httptest.Server
	requests, open, maxOpen atomic.Int64
	cancelled               chan struct{}
}

func newHangingServer(t *testing.T) *hangingServer {
	h := &hangingServer{cancelled: make(chan struct{}, 64)}
	release := make(chan struct{})
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.requests.Add(1)
		cur := h.open.Add(1)
		defer h.open.Add(-1)
		for {
			m := h.maxOpen.Load()
			if cur <= m || h.maxOpen.CompareAndSwap(m, cur) {
				break
			}
		}
		select {
		case <-r.Context().Done():
			select {
			case h.cancelled <- struct{}{}:
			default:
			}
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); h.Close() })
	return h
}

func staticTargets(ts ...Target) func() []Target {
	return func() []Target { return ts }
}

func TestScraperSlowTargetDoesNotDelayOthers(t *testing.T) {
	slow := newHangingServer(t)
	fast, _ := countingServer(t)
	s := &Scraper{
		Targets:  staticTargets(Target{ID: 1, URL: slow.URL}, Target{ID: 2, URL: fast.URL}),
		Interval: 20 * time.Millisecond, Timeout: time.Minute,
	}
	runScraper(t, s)
	waitFor(t, "five fresh scrapes of the fast target", func() bool {
		st, ok := s.Get(2)
		return ok && st.Waiting >= 5
	})
	if got := slow.requests.Load(); got != 1 {
		t.Errorf("slow target got %d requests, want 1 (no pile-up while its scrape is in flight)", got)
	}
	if _, ok := s.Get(1); ok {
		t.Error("slow target has figures though it never answered")
	}
	st, _ := s.Get(2)
	if st.Engine != EngineVLLM || st.Running != 1 || st.KVCacheUse != 0.5 || st.At.IsZero() {
		t.Errorf("fast target state %+v", st)
	}
}

func TestScraperIgnoresStaleFigures(t *testing.T) {
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprint(w, vllmPage(3, 2))
	}))
	defer srv.Close()
	var now atomic.Int64 // fake clock, ns
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	s := &Scraper{
		Targets:  staticTargets(Target{ID: 7, URL: srv.URL}),
		Interval: 10 * time.Millisecond, StaleAfter: 6 * time.Second,
		Now: func() time.Time { return time.Unix(0, now.Load()) },
	}
	runScraper(t, s)
	waitFor(t, "first figures", func() bool { _, ok := s.Get(7); return ok })
	fail.Store(true)
	waitFor(t, "a failed scrape", func() bool { return errors.Is(s.Snapshot()[7].Err, ErrStatus) })
	if st, ok := s.Get(7); !ok || st.Waiting != 3 {
		t.Fatalf("one failed scrape must keep fresh figures: %+v %v", st, ok)
	}
	now.Add(int64(6*time.Second + time.Millisecond))
	if st, ok := s.Get(7); ok {
		t.Fatalf("figures older than StaleAfter were returned: %+v", st)
	}
	if r := s.Snapshot()[7]; !r.OK || r.State.Waiting != 3 {
		t.Errorf("snapshot should still show the last figures for display: %+v", r)
	}
}

func TestScraperDropsDepartedTargets(t *testing.T) {
	a, _ := countingServer(t)
	b, _ := countingServer(t)
	var both atomic.Bool
	both.Store(true)
	s := &Scraper{
		Targets: func() []Target {
			if both.Load() {
				return []Target{{ID: 1, URL: a.URL}, {ID: 2, URL: b.URL}}
			}
			return []Target{{ID: 2, URL: b.URL}}
		},
		Interval: 10 * time.Millisecond,
	}
	runScraper(t, s)
	waitFor(t, "both targets", func() bool {
		_, ok1 := s.Get(1)
		_, ok2 := s.Get(2)
		return ok1 && ok2
	})
	both.Store(false)
	waitFor(t, "target 1 dropped", func() bool { _, ok := s.Snapshot()[1]; return !ok })
	if _, ok := s.Get(1); ok {
		t.Error("Get returns a departed target")
	}
	if _, ok := s.Get(2); !ok {
		t.Error("the remaining target lost its figures")
	}
}

func TestScraperBoundsConcurrency(t *testing.T) {
	h := newHangingServer(t)
	var ts []Target
	for i := range 5 {
		ts = append(ts, Target{ID: int64(i), URL: h.URL})
	}
	s := &Scraper{Targets: staticTargets(ts...), Interval: 20 * time.Millisecond, Timeout: 300 * time.Millisecond, MaxConcurrent: 2}
	runScraper(t, s)
	waitFor(t, "a scrape starved of a slot", func() bool {
		for _, r := range s.Snapshot() {
			if errors.Is(r.Err, ErrNoScrapeSlot) {
				return true
			}
		}
		return false
	})
	if m := h.maxOpen.Load(); m > 2 || m < 1 {
		t.Errorf("max concurrent scrapes = %d, want 1..2", m)
	}
}

func TestScraperStopsOnCancel(t *testing.T) {
	h := newHangingServer(t)
	s := &Scraper{Targets: staticTargets(Target{ID: 1, URL: h.URL}), Interval: 10 * time.Millisecond, Timeout: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	waitFor(t, "the scrape to start", func() bool { return h.open.Load() == 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case <-h.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the engine never saw the in-flight scrape cancelled")
	}
	if r := s.Snapshot()[1]; r.Err != nil {
		t.Errorf("shutdown recorded a failure: %v", r.Err)
	}
}

func TestScraperTransportAndErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") != "Bearer tok-secret":
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/caddy":
			_, _ = fmt.Fprint(w, "# TYPE go_goroutines gauge\ngo_goroutines 3\n")
		default:
			_, _ = fmt.Fprint(w, vllmPage(1, 1))
		}
	}))
	defer srv.Close()
	authed := func(req *http.Request) (*http.Response, error) {
		req.Header.Set("Authorization", "Bearer tok-secret")
		return http.DefaultClient.Do(req)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	s := &Scraper{
		Targets: staticTargets(
			Target{ID: 1, URL: srv.URL + "/metrics", Do: authed},
			Target{ID: 2, URL: srv.URL + "/metrics"}, // no token: 401
			Target{ID: 3, URL: srv.URL + "/caddy", Do: authed},
			Target{ID: 4, URL: deadURL + "/metrics?token=qs-secret", Do: authed},
		),
		Interval: 10 * time.Millisecond,
	}
	runScraper(t, s)
	waitFor(t, "all four outcomes", func() bool {
		snap := s.Snapshot()
		return snap[1].OK && snap[2].Err != nil && snap[3].Err != nil && snap[4].Err != nil
	})
	snap := s.Snapshot()
	if !errors.Is(snap[2].Err, ErrStatus) || !strings.Contains(snap[2].Err.Error(), "401") {
		t.Errorf("target 2: %v", snap[2].Err)
	}
	if !errors.Is(snap[3].Err, ErrUnknownEngine) {
		t.Errorf("target 3: %v", snap[3].Err)
	}
	for id, r := range snap {
		if r.Err != nil && (strings.Contains(r.Err.Error(), "secret")) {
			t.Errorf("target %d error leaks a secret: %v", id, r.Err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s := &Scraper{}
	m := make(map[int64]Result, 100)
	now := time.Now()
	for i := range int64(100) {
		m[i] = Result{OK: true, State: State{Engine: EngineVLLM, Waiting: float64(i), At: now.Add(time.Hour)}}
	}
	s.snap.Store(&m)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var id int64
		for pb.Next() {
			if _, ok := s.Get(id % 100); !ok {
				b.Fatal("missing")
			}
			id++
		}
	})
}
