package fleet

// Test helpers shared by the package's tests: a scripted lister, instance
// rows, a fake engine, watchers, and the one polling helper (waitFor).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// waitFor polls cond until it holds, failing the test after timeout. It is
// the package's only polling loop; the timeout comes right after t, as in
// every wait helper here.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scriptedLister answers ListInstances from a queue of results; the last
// one repeats.
type scriptedLister struct {
	mu    sync.Mutex
	steps []listStep
	calls int
}

type listStep struct {
	res *vastclient.ListResult
	err error
}

func (s *scriptedLister) ListInstances(ctx context.Context, _ vastclient.ListOptions) (*vastclient.ListResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.calls
	if i >= len(s.steps) {
		i = len(s.steps) - 1
	}
	s.calls++
	return s.steps[i].res, s.steps[i].err
}

func (s *scriptedLister) push(res *vastclient.ListResult, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, listStep{res, err})
}

func running(id int64, label string, hostPort int) vastclient.Instance {
	return vastclient.Instance{
		ID: id, Label: label, ActualStatus: "running", PublicIPAddr: "127.0.0.1",
		JupyterToken: "tok-" + strconv.FormatInt(id, 10),
		ExtraEnv:     vastclient.Env{"WEB_PASSWORD": "pw-" + strconv.FormatInt(id, 10)},
		Ports: vastclient.Ports{"8000/tcp": {
			{HostIP: "::", HostPort: strconv.Itoa(hostPort)},
			{HostIP: "0.0.0.0", HostPort: strconv.Itoa(hostPort)},
		}},
	}
}

func result(ins ...vastclient.Instance) *vastclient.ListResult {
	return &vastclient.ListResult{Instances: ins, Pages: 1}
}

func newTestWatcher(l Lister, pools ...PoolSpec) *Watcher {
	w := NewWatcher(nil)
	w.Configure(l, Config{Pools: pools, PollInterval: time.Hour})
	return w
}

// pollReady polls once and then marks every running instance's engine as
// having passed a probe, standing in for the prober in tests of listing
// semantics (the prober itself is tested in prober_test.go).
func pollReady(t *testing.T, w *Watcher) error {
	t.Helper()
	err := w.Poll(context.Background())
	for _, m := range w.Snapshot().Members {
		if m.Instance.ActualStatus == "running" && m.State != StateReady {
			w.observe(m.Instance.ID, true, nil)
		}
	}
	return err
}

func targets(s *Snapshot, pool string) []Target {
	if pv := s.Pools[pool]; pv != nil {
		return pv.Targets
	}
	return nil
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// engine is a fake inference engine on loopback whose behaviour tests change.
type engine struct {
	srv      *httptest.Server
	mode     atomic.Value // "ok", "placeholder", "fail", "hang"
	requests atomic.Int64
	mu       sync.Mutex
	auth     []string
	bodies   []string
	methods  []string
	release  chan struct{}
}

func newEngine(t *testing.T, mode string) *engine {
	e := &engine{release: make(chan struct{})}
	e.mode.Store(mode)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		b, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.auth = append(e.auth, r.Header.Get("Authorization"))
		e.bodies = append(e.bodies, string(b))
		e.methods = append(e.methods, r.Method)
		e.mu.Unlock()
		switch e.mode.Load().(string) {
		case "ok":
			w.WriteHeader(http.StatusOK)
		case "placeholder":
			w.Header().Set(PlaceholderHeader, "true")
			w.WriteHeader(http.StatusOK) // even a 200 placeholder is not ready
		case "fail":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "hang":
			select {
			case <-r.Context().Done():
			case <-e.release:
			}
		}
	}))
	t.Cleanup(func() { close(e.release); e.srv.Close() })
	return e
}

func (e *engine) port() int {
	_, p, _ := net.SplitHostPort(e.srv.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

func engineInstance(id int64, e *engine) vastclient.Instance {
	in := running(id, "llm-"+strconv.FormatInt(id, 10), e.port())
	in.PublicIPAddr = "127.0.0.1"
	return in
}

// runWatcher starts a watcher over fixed instances with the given health
// settings and stops it when the test ends.
func runWatcher(t *testing.T, health HealthSpec, ins ...vastclient.Instance) *Watcher {
	t.Helper()
	l := &scriptedLister{}
	l.push(result(ins...), nil)
	w := NewWatcher(nil)
	w.Configure(l, Config{Pools: []PoolSpec{{Name: "llm", LabelPrefix: "llm-", Health: health}}, PollInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func stateOf(w *Watcher, id int64) string {
	m, _ := w.Snapshot().Member(id)
	return m.State
}

// waitState waits until instance id is in state want and returns how long
// that took. The states passed on the way are logged.
func waitState(t *testing.T, within time.Duration, w *Watcher, id int64, want string) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	waitFor(t, within, fmt.Sprintf("instance %d in state %q", id, want), func() bool {
		m, _ := w.Snapshot().Member(id)
		if m.State != last {
			last = m.State
			t.Logf("instance %d: state %q (%s) after %s", id, m.State, m.Reason, time.Since(start))
		}
		return m.State == want
	})
	return time.Since(start)
}
