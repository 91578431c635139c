package fleet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

func TestHealthStateMachine(t *testing.T) {
	spec := HealthSpec{HealthyThreshold: 2, UnhealthyThreshold: 2, Grace: jsondur.Duration(time.Minute)}.WithDefaults()
	type step struct {
		status string // actual_status of the row ("-" keeps the previous)
		obs    string // "+" success, "-" failure, "" none
		after  time.Duration
		want   string
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"boot to ready", []step{
			{"", "", 0, StateProvisioning},
			{"created", "", 0, StateProvisioning},
			{"loading", "", 0, StateLoading},
			{"running", "", 0, StateStarting},
			{"-", "+", 0, StateStarting}, // healthy_threshold 2
			{"-", "+", 0, StateReady},
		}},
		{"ready to unhealthy and back", []step{
			{"running", "", 0, StateStarting},
			{"-", "+", 0, StateStarting},
			{"-", "+", 0, StateReady},
			{"-", "-", 0, StateReady},
			{"-", "+", 0, StateReady}, // a success resets the failure streak
			{"-", "-", 0, StateReady},
			{"-", "-", 0, StateUnhealthy},
			{"-", "+", 0, StateUnhealthy},
			{"-", "+", 0, StateReady},
		}},
		{"failures during the grace are not unhealthy", []step{
			{"running", "-", 0, StateStarting},
			{"-", "-", 30 * time.Second, StateStarting},
			{"-", "-", 31 * time.Second, StateFailed},
			{"-", "+", 0, StateFailed},
			{"-", "+", 0, StateReady}, // a late engine still comes in
		}},
		{"terminal statuses", []step{
			{"running", "+", 0, StateStarting},
			{"exited", "", 0, StateFailed},
			{"running", "", 0, StateStarting}, // restarted by vast.ai
			{"offline", "", 0, StateFailed},
			{"stopped", "", 0, StateStopped},
			{"unknown", "", 0, StateFailed},
			{"recycling", "", 0, StateLoading},
			{"scheduling-v2", "", 0, StateLoading}, // unknown values are "not ready"
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var h healthRec
			now := time.Unix(1_700_000_000, 0)
			status := ""
			for i, s := range c.steps {
				now = now.Add(s.after)
				if s.status != "-" {
					status = s.status
				}
				switch s.obs {
				case "+":
					h.observe(true)
				case "-":
					h.observe(false)
				}
				h.step(now, status, "", "", spec)
				if h.state != s.want {
					t.Fatalf("step %d (%+v): state %q (%s), want %q", i, s, h.state, h.reason, s.want)
				}
			}
		})
	}
	var h healthRec
	h.step(time.Now(), "running", "unloaded", "", spec)
	if h.state != StateGone {
		t.Errorf("cur_state unloaded: %q, want gone", h.state)
	}
}

func TestProbeCarriesTokenMethodAndBodyAndGatesRouting(t *testing.T) {
	e := newEngine(t, "placeholder")
	health := HealthSpec{Method: http.MethodPost, Path: "/v1/completions", Body: `{"model":"m","prompt":"hi","max_tokens":1}`, Interval: jsondur.Duration(50 * time.Millisecond), Timeout: jsondur.Duration(time.Second)}
	w := runWatcher(t, health, engineInstance(1, e))

	waitFor(t, 5*time.Second, "three probes", func() bool { return e.requests.Load() >= 3 })
	if s := stateOf(w, 1); s != StateStarting || len(targets(w.Snapshot(), "llm")) != 0 {
		t.Fatalf("placeholder engine: state %q, targets %v; want starting and unroutable", s, targets(w.Snapshot(), "llm"))
	}
	m, _ := w.Snapshot().Member(1)
	if lp := m.LastProbe(); lp == nil || lp.OK || !strings.Contains(lp.Error, PlaceholderHeader) {
		t.Errorf("last probe = %+v, want a placeholder failure", lp)
	}
	e.mode.Store("ok")
	waitState(t, 5*time.Second, w, 1, StateReady)
	if got := targets(w.Snapshot(), "llm"); len(got) != 1 {
		t.Fatalf("ready instance not routable: %v", got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range e.auth {
		if e.auth[i] != "Bearer tok-1" || e.methods[i] != http.MethodPost || e.bodies[i] != health.Body {
			t.Fatalf("probe %d: auth %q method %s body %q", i, e.auth[i], e.methods[i], e.bodies[i])
		}
	}
}

func TestHungEngineIsDrainedWithinTimeoutPlusThresholdIntervals(t *testing.T) {
	e := newEngine(t, "ok")
	health := HealthSpec{Interval: jsondur.Duration(100 * time.Millisecond), Timeout: jsondur.Duration(300 * time.Millisecond), UnhealthyThreshold: 2}
	w := runWatcher(t, health, engineInstance(1, e))
	waitState(t, 5*time.Second, w, 1, StateReady)

	e.mode.Store("hang") // accepts connections, never answers
	bound := health.Timeout.D() + time.Duration(health.UnhealthyThreshold)*health.Interval.D()
	took := waitState(t, bound+2*time.Second, w, 1, StateUnhealthy)
	t.Logf("hung engine drained after %s (bound %s)", took, bound)
	if len(targets(w.Snapshot(), "llm")) != 0 {
		t.Fatal("unhealthy instance still routable")
	}
	e.mode.Store("ok")
	waitState(t, 5*time.Second, w, 1, StateReady)
}

func TestGraceExpiryReportsFailedAndALateEngineRecovers(t *testing.T) {
	e := newEngine(t, "fail")
	w := runWatcher(t, HealthSpec{Interval: jsondur.Duration(30 * time.Millisecond), Timeout: jsondur.Duration(time.Second), Grace: jsondur.Duration(300 * time.Millisecond)}, engineInstance(1, e))
	waitState(t, 5*time.Second, w, 1, StateFailed)
	m, _ := w.Snapshot().Member(1)
	if !strings.Contains(m.Reason, "grace") {
		t.Errorf("reason %q does not mention the grace", m.Reason)
	}
	e.mode.Store("ok")
	waitState(t, 5*time.Second, w, 1, StateReady)
}

func TestPassiveFailuresMarkUnhealthyButSuccessesDoNotRecover(t *testing.T) {
	e := newEngine(t, "ok")
	w := runWatcher(t, HealthSpec{Interval: jsondur.Duration(time.Hour), Timeout: jsondur.Duration(time.Second), UnhealthyThreshold: 2}, engineInstance(1, e))
	waitState(t, 5*time.Second, w, 1, StateReady)

	w.ReportTraffic(1, false)
	w.ReportTraffic(1, true) // resets the streak
	w.ReportTraffic(1, false)
	time.Sleep(250 * time.Millisecond) // two passive-signal ticks: the state must not move
	if s := stateOf(w, 1); s != StateReady {
		t.Fatalf("state %q after non-consecutive failures, want ready", s)
	}
	w.ReportTraffic(1, false)
	waitState(t, 5*time.Second, w, 1, StateUnhealthy)
	for i := 0; i < 5; i++ {
		w.ReportTraffic(1, true)
	}
	time.Sleep(250 * time.Millisecond) // two ticks
	if s := stateOf(w, 1); s != StateUnhealthy {
		t.Fatalf("traffic successes revived an unhealthy instance: %q", s)
	}
}

func TestOneHungEngineDoesNotDelayTheOthers(t *testing.T) {
	hung := newEngine(t, "hang")
	var ins []vastclient.Instance
	ins = append(ins, engineInstance(1, hung))
	var good []*engine
	for id := int64(2); id <= 6; id++ {
		e := newEngine(t, "ok")
		good = append(good, e)
		ins = append(ins, engineInstance(id, e))
	}
	w := runWatcher(t, HealthSpec{Interval: jsondur.Duration(50 * time.Millisecond), Timeout: jsondur.Duration(10 * time.Second)}, ins...)
	// With a 10 s timeout the hung probe is still in flight; the others
	// must become ready long before it ends.
	for id := int64(2); id <= 6; id++ {
		waitState(t, 3*time.Second, w, id, StateReady)
	}
	if s := stateOf(w, 1); s != StateStarting {
		t.Errorf("hung engine state %q, want starting", s)
	}
}

func TestProbeConcurrencyIsBounded(t *testing.T) {
	var inflight, peak atomic.Int64
	release := make(chan struct{})
	srvs := make([]*httptest.Server, 0, 8)
	var ins []vastclient.Instance
	for id := int64(1); id <= 8; id++ {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := inflight.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
			inflight.Add(-1)
		}))
		srvs = append(srvs, srv)
		_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
		port, _ := strconv.Atoi(p)
		in := running(id, "llm-x", port)
		ins = append(ins, in)
	}
	defer func() {
		close(release)
		for _, s := range srvs {
			s.Close()
		}
	}()
	l := &scriptedLister{}
	l.push(result(ins...), nil)
	w := NewWatcher(nil)
	w.Configure(l, Config{Pools: []PoolSpec{{Name: "llm", LabelPrefix: "llm-", Health: HealthSpec{Interval: jsondur.Duration(20 * time.Millisecond), Timeout: jsondur.Duration(5 * time.Second)}}}, PollInterval: time.Hour, MaxConcurrentProbes: 3})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	waitFor(t, 5*time.Second, "three probes in flight", func() bool { return inflight.Load() == 3 })
	time.Sleep(200 * time.Millisecond) // ten more ticks: none may start a fourth probe
	cancel()
	<-done
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrent probes %d, want 3", p)
	}
}

func TestEngineWithoutHealthIsJudgedByItsModelList(t *testing.T) {
	var paths sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.URL.Path, true)
		if r.URL.Path == "/v1/models" && r.Header.Get("Authorization") == "Bearer tok-1" {
			_, _ = w.Write([]byte(`{"data":[{"id":"m"}]}`))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(p)
	in := running(1, "llm-1", port)
	w := runWatcher(t, HealthSpec{Interval: jsondur.Duration(50 * time.Millisecond), Timeout: jsondur.Duration(time.Second)}, in)
	waitState(t, 5*time.Second, w, 1, StateReady)
	if _, ok := paths.Load("/health"); !ok {
		t.Error("/health was not tried first")
	}

	// An explicitly configured path has no fallback: a 404 is a failure.
	w2 := runWatcher(t, HealthSpec{Path: "/health", Interval: jsondur.Duration(50 * time.Millisecond), Timeout: jsondur.Duration(time.Second), Grace: jsondur.Duration(200 * time.Millisecond)}, in)
	waitState(t, 5*time.Second, w2, 1, StateFailed)
}
