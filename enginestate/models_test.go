package enginestate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// modelEngine is an engine whose /v1/models answer the test changes.
type modelEngine struct {
	*httptest.Server
	mu     sync.Mutex
	ids    []string
	status int
	reads  atomic.Int64
	auth   atomic.Value // last Authorization header
}

func newModelEngine(t *testing.T, ids ...string) *modelEngine {
	e := &modelEngine{ids: ids, status: http.StatusOK}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.reads.Add(1)
		e.auth.Store(r.Header.Get("Authorization"))
		e.mu.Lock()
		defer e.mu.Unlock()
		if r.URL.Path != "/v1/models" || e.status != http.StatusOK {
			w.WriteHeader(e.status)
			return
		}
		var data []string
		for _, id := range e.ids {
			data = append(data, fmt.Sprintf(`{"id":%q,"object":"model","owned_by":"test"}`, id))
		}
		fmt.Fprintf(w, `{"object":"list","data":[%s]}`, strings.Join(data, ","))
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *modelEngine) set(status int, ids ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status, e.ids = status, ids
}

func (e *modelEngine) target(id int64, pool string) ModelTarget {
	return ModelTarget{ID: id, Pool: pool, URL: e.URL + "/v1/models", Do: func(r *http.Request) (*http.Response, error) {
		r.Header.Set("Authorization", "Bearer tok")
		return http.DefaultClient.Do(r)
	}}
}

// targetSet is a target list the test changes while the learner runs.
type targetSet struct {
	mu sync.Mutex
	ts []ModelTarget
}

func (s *targetSet) set(ts ...ModelTarget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ts = ts
}

func (s *targetSet) get() []ModelTarget {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ts)
}

func runLearner(t *testing.T, ts *targetSet) *ModelLearner {
	t.Helper()
	l := &ModelLearner{Targets: ts.get, Tick: 10 * time.Millisecond, Retry: 20 * time.Millisecond, Refresh: 50 * time.Millisecond, Timeout: 2 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, "the first snapshot", func() bool { return l.Snapshot() != nil })
	return l
}

// TestModelLearnerLearnsPoolsAndKeepsIDsOnFailure walks one learner
// through an instance's life: first read, a failed read (ids kept), a
// model change, departure (ids dropped from Ready, remembered in Known).
func TestModelLearnerLearnsPoolsAndKeepsIDsOnFailure(t *testing.T) {
	a := newModelEngine(t, "org/a", "org/a")
	b := newModelEngine(t, "org/b", "org/b-lora")
	ts := &targetSet{}
	ts.set(a.target(1, "pa"), b.target(2, "pb"))
	l := runLearner(t, ts)

	waitFor(t, "both pools learned", func() bool {
		m := l.Snapshot()
		return m.Pool("pa").Serves("org/a") && m.Pool("pb").Serves("org/b-lora")
	})
	m := l.Snapshot()
	if got := m.Pool("pa").Ready; !slices.Equal(got, []string{"org/a"}) {
		t.Errorf("pool pa ready = %v, want [org/a] (duplicates dropped)", got)
	}
	if m.Pool("pa").Serves("org/b") || m.Pool("pb").Serves("org/a") {
		t.Error("a pool serves the other pool's model")
	}
	if got, _ := a.auth.Load().(string); got != "Bearer tok" {
		t.Errorf("Authorization = %q, want the target's token", got)
	}

	b.set(http.StatusInternalServerError)
	waitFor(t, "the failed read recorded", func() bool {
		return errors.Is(l.Snapshot().Instances[2].Err, ErrModelsStatus)
	})
	if !l.Snapshot().Pool("pb").Serves("org/b") {
		t.Error("a failed read dropped the instance's last known ids")
	}

	b.set(http.StatusOK, "org/c")
	waitFor(t, "the model change", func() bool { return l.Snapshot().Pool("pb").Serves("org/c") })
	if p := l.Snapshot().Pool("pb"); p.Knows("org/b") || !slices.Equal(p.Known, []string{"org/c"}) {
		t.Errorf("pool pb known = %v after its only instance changed model, want [org/c]", p.Known)
	}

	ts.set(a.target(1, "pa"))
	waitFor(t, "instance 2 dropped", func() bool { _, ok := l.Snapshot().Instances[2]; return !ok })
	p := l.Snapshot().Pool("pb")
	if p.Serves("org/c") || len(p.Ready) != 0 {
		t.Errorf("pool pb still serves %v with no instance", p.Ready)
	}
	if !p.Knows("org/c") {
		t.Error("pool pb forgot its model when scaled to zero; requests would be refused instead of waiting")
	}
}

// TestModelLearnerCountsPendingAndRetries: an instance whose first read
// fails is pending and read again at the retry interval, not the refresh.
func TestModelLearnerCountsPendingAndRetries(t *testing.T) {
	e := newModelEngine(t, "org/a")
	e.set(http.StatusServiceUnavailable)
	ts := &targetSet{}
	ts.set(e.target(7, "p"))
	l := runLearner(t, ts)
	waitFor(t, "a failed first read", func() bool { return l.Snapshot().Instances[7].Err != nil })
	if p := l.Snapshot().Pool("p"); p == nil || p.Pending != 1 || p.Knows("org/a") {
		t.Fatalf("pool view = %+v, want one pending instance and no models", p)
	}
	e.set(http.StatusOK, "org/a")
	waitFor(t, "the retry to learn the model", func() bool { return l.Snapshot().Pool("p").Serves("org/a") })
	if p := l.Snapshot().Pool("p"); p.Pending != 0 {
		t.Errorf("pending = %d after learning, want 0", p.Pending)
	}
}

// TestModelLearnerRefreshesAndStops: a learned instance is read again
// every Refresh, and Run returns on cancel.
func TestModelLearnerRefreshesAndStops(t *testing.T) {
	e := newModelEngine(t, "m")
	l := &ModelLearner{Targets: func() []ModelTarget { return []ModelTarget{e.target(1, "p")} },
		Tick: 5 * time.Millisecond, Refresh: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	waitFor(t, "three reads", func() bool { return e.reads.Load() >= 3 })
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestParseModelList(t *testing.T) {
	cases := []struct {
		name, body string
		limit      int64
		want       []string
		err        bool
	}{
		{"vllm", `{"object":"list","data":[{"id":"Qwen/Qwen3-8B","object":"model","root":"Qwen/Qwen3-8B"}]}`, 1 << 20, []string{"Qwen/Qwen3-8B"}, false},
		{"several, unsorted, duplicated, empty id", `{"data":[{"id":"b"},{"id":"a"},{"id":""},{"id":"b"}]}`, 1 << 20, []string{"a", "b"}, false},
		{"empty list", `{"object":"list","data":[]}`, 1 << 20, []string{}, false},
		{"no data", `{"object":"list"}`, 1 << 20, nil, true},
		{"not json", `<html>portal</html>`, 1 << 20, nil, true},
		{"over the bound", `{"data":[{"id":"a"}]}`, 10, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseModelList(strings.NewReader(c.body), c.limit)
			if (err != nil) != c.err {
				t.Fatalf("err = %v, want error %v", err, c.err)
			}
			if err != nil && !errors.Is(err, ErrModelsBody) {
				t.Errorf("err = %v, want ErrModelsBody", err)
			}
			if !c.err && !slices.Equal(got, c.want) {
				t.Errorf("ids = %v, want %v", got, c.want)
			}
		})
	}
}

// TestModelLearnerBacksOffFailingReads: an instance never learned is read
// again after Retry, doubled per failure, capped at Refresh; a learned
// one after Refresh.
func TestModelLearnerBacksOffFailingReads(t *testing.T) {
	l := &ModelLearner{Retry: time.Second, Refresh: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	cases := []struct {
		learned  bool
		failures int
		after    time.Duration
		due      bool
	}{
		{false, 0, 0, false},
		{false, 1, time.Second, true},
		{false, 2, 1500 * time.Millisecond, false},
		{false, 2, 2 * time.Second, true},
		{false, 3, 3 * time.Second, false},
		{false, 3, 4 * time.Second, true},
		{false, 50, 9 * time.Second, false},
		{false, 50, 10 * time.Second, true},
		{true, 0, 9 * time.Second, false},
		{true, 0, 10 * time.Second, true},
	}
	for _, c := range cases {
		r := &modelRec{InstanceModels: InstanceModels{Learned: c.learned, Fetched: t0}, failures: c.failures}
		if got := l.dueLocked(r, t0.Add(c.after)); got != c.due {
			t.Errorf("learned %v, %d failures, %s after: due %v, want %v", c.learned, c.failures, c.after, got, c.due)
		}
	}
	if !l.dueLocked(&modelRec{}, t0) {
		t.Error("a new instance is not read at once")
	}
}
