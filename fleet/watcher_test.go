package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

func TestPoolAssignmentPrefersTheMostSpecificSelector(t *testing.T) {
	pools := []PoolSpec{
		{Name: "all"},
		{Name: "llm", LabelPrefix: "llm-"},
		{Name: "llm-big", LabelPrefix: "llm-big-"},
		{Name: "exact", Label: "llm-big-1"},
	}
	SortPools(pools)
	cases := []struct{ label, want string }{
		{"llm-big-1", "exact"},
		{"llm-big-2", "llm-big"},
		{"llm-small", "llm"},
		{"training", "all"},
		{"", "all"},
	}
	for _, c := range cases {
		if got, _ := assignPool(pools, c.label); got != c.want {
			t.Errorf("label %q: pool %q, want %q", c.label, got, c.want)
		}
	}
	if got, _ := assignPool([]PoolSpec{{Name: "llm", LabelPrefix: "llm-"}}, "other"); got != "" {
		t.Errorf("unselected label got pool %q", got)
	}
}

func TestTokenSources(t *testing.T) {
	in := running(7, "x", 1)
	cases := []struct {
		src  TokenSource
		want string
	}{
		{TokenSource{}, "tok-7"},
		{TokenSource{Kind: TokenJupyter}, "tok-7"},
		{TokenSource{Kind: TokenEnv, Value: "WEB_PASSWORD"}, "pw-7"},
		{TokenSource{Kind: TokenEnv, Value: "MISSING"}, ""},
		{TokenSource{Kind: TokenStatic, Value: "s3cret"}, "s3cret"},
	}
	for _, c := range cases {
		if got := c.src.Resolve(&in); got != c.want {
			t.Errorf("%+v: got %q want %q", c.src, got, c.want)
		}
	}
	if err := (TokenSource{Kind: "cookie"}).Validate(); !errors.Is(err, ErrUnknownTokenSource) {
		t.Errorf("unknown kind: err = %v", err)
	}
}

func TestPoolSpecValidateNamesTheField(t *testing.T) {
	cases := []struct {
		spec PoolSpec
		want string
	}{
		{PoolSpec{Name: "p", Port: 70000}, "port"},
		{PoolSpec{Name: "p", Port: -1}, "port"},
		{PoolSpec{Name: "p", Label: "a", LabelPrefix: "b"}, "label_prefix"},
		{PoolSpec{Name: "p", Token: TokenSource{Kind: "bogus"}}, "token"},
		{PoolSpec{Name: "p", Token: TokenSource{Kind: TokenEnv}}, "variable name"},
	}
	for _, c := range cases {
		err := c.spec.Validate()
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want mention of %q", c.spec, err, c.want)
		}
	}
	if err := (PoolSpec{Name: "ok", LabelPrefix: "llm-", Port: 8000}).Validate(); err != nil {
		t.Errorf("valid spec: %v", err)
	}
}

func TestRoutabilityRules(t *testing.T) {
	loading := running(2, "llm-b", 4002)
	loading.ActualStatus = "loading"
	noPort := running(3, "llm-c", 4003)
	noPort.Ports = nil
	noToken := running(4, "llm-d", 4004)
	noToken.JupyterToken = ""
	noIP := running(5, "llm-e", 4005)
	noIP.PublicIPAddr = ""

	l := &scriptedLister{}
	l.push(result(running(1, "llm-a", 4001), loading, noPort, noToken, noIP, running(6, "other", 4006)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "llm", LabelPrefix: "llm-"})
	if err := pollReady(t, w); err != nil {
		t.Fatal(err)
	}
	s := w.Snapshot()
	got := targets(s, "llm")
	if len(got) != 1 || got[0].ID != 1 || got[0].Dial != "127.0.0.1:4001" {
		t.Fatalf("targets = %+v, want only instance 1 at 127.0.0.1:4001", got)
	}
	reasons := map[int64]string{2: "loading", 3: "not mapped", 4: "no token", 5: "public_ipaddr", 6: "no pool"}
	for id, want := range reasons {
		m, ok := s.Member(id)
		if !ok {
			t.Fatalf("member %d missing", id)
		}
		if m.Routable || !contains(m.Reason, want) {
			t.Errorf("member %d: routable=%v reason=%q, want reason with %q", id, m.Routable, m.Reason, want)
		}
	}
	r, ok := s.Route("127.0.0.1:4001")
	if !ok || r.Token != "tok-1" || r.ID != 1 || r.Pool != "llm" {
		t.Errorf("route = %+v %v", r, ok)
	}
	if _, ok := s.Route("127.0.0.1:4002"); ok {
		t.Error("a loading instance must have no route")
	}
}

func TestFailedPollKeepsTheFleetAndRecordsStaleness(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "a", 4001), running(2, "b", 4002)), nil)
	l.push(nil, errors.New("vast.ai GET /api/v1/instances/: HTTP 503"))
	l.push(nil, errors.New("vast.ai GET /api/v1/instances/: HTTP 429"))
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	clock := time.Unix(1_700_000_000, 0)
	w.now = func() time.Time { return clock }

	if err := pollReady(t, w); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		clock = clock.Add(10 * time.Second)
		if err := w.Poll(context.Background()); err == nil {
			t.Fatal("expected an error")
		}
	}
	s := w.Snapshot()
	if n := len(targets(s, "all")); n != 2 {
		t.Fatalf("after failed polls %d targets, want the 2 known ones", n)
	}
	if s.Poll.ConsecutiveFailures != 2 || !contains(s.Poll.LastError, "429") {
		t.Errorf("poll status = %+v", s.Poll)
	}
	if stale := s.Poll.Stale(clock); stale != 20*time.Second {
		t.Errorf("stale = %s, want 20s", stale)
	}
}

func TestAbsentInstanceIsRemovedOnlyAfterTwoConsecutiveMisses(t *testing.T) {
	a, b := running(1, "a", 4001), running(2, "b", 4002)
	l := &scriptedLister{}
	l.push(result(a, b), nil)
	l.push(result(a), nil)    // miss 1
	l.push(result(a, b), nil) // back: counter resets
	l.push(result(a), nil)    // miss 1
	l.push(nil, errors.New("boom"))
	l.push(result(a), nil) // miss 2 (a failure in between does not reset)
	w := newTestWatcher(l, PoolSpec{Name: "all"})

	wantTargets := []int{2, 2, 2, 2, 2, 1}
	for i, want := range wantTargets {
		_ = pollReady(t, w)
		if got := len(targets(w.Snapshot(), "all")); got != want {
			t.Fatalf("after poll %d: %d targets, want %d", i+1, got, want)
		}
	}
	if _, ok := w.Snapshot().Member(2); ok {
		t.Error("instance 2 should be forgotten")
	}
}

func TestListingWithUndecodableRowsCountsNoAbsence(t *testing.T) {
	a, b := running(1, "a", 4001), running(2, "b", 4002)
	l := &scriptedLister{}
	l.push(result(a, b), nil)
	l.push(&vastclient.ListResult{Instances: []vastclient.Instance{a}, Skipped: 1}, nil)
	l.push(&vastclient.ListResult{Instances: []vastclient.Instance{a}, Skipped: 1}, nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	for i := 0; i < 3; i++ {
		_ = pollReady(t, w)
	}
	if m, ok := w.Snapshot().Member(2); !ok || m.Misses != 0 {
		t.Fatalf("instance 2 = %+v, %v; want kept with no misses", m, ok)
	}
}

func TestFieldsAreRefreshedWhileRunning(t *testing.T) {
	a := running(1, "a", 4001)
	moved := running(1, "a", 5001)
	moved.JupyterToken = "rotated"
	l := &scriptedLister{}
	l.push(result(a), nil)
	l.push(result(moved), nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	_ = pollReady(t, w)
	_ = pollReady(t, w)
	s := w.Snapshot()
	if _, ok := s.Route("127.0.0.1:4001"); ok {
		t.Error("old address still routable")
	}
	if r, ok := s.Route("127.0.0.1:5001"); !ok || r.Token != "rotated" {
		t.Errorf("new route = %+v %v", r, ok)
	}
}

func TestConfigureRepublishesWithoutPolling(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "llm-1", 4001), running(2, "emb-1", 4002)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "llm", LabelPrefix: "llm-"})
	_ = pollReady(t, w)
	gen := w.Snapshot().Generation

	w.Configure(l, Config{Pools: []PoolSpec{{Name: "llm", LabelPrefix: "llm-"}, {Name: "emb", LabelPrefix: "emb-"}}, PollInterval: time.Hour})
	s := w.Snapshot()
	if m, _ := s.Member(2); m.State != StateReady {
		t.Errorf("moving to a new pool reset the health state to %q", m.State)
	}
	if s.Generation <= gen {
		t.Errorf("generation did not advance")
	}
	if got := targets(s, "emb"); len(got) != 1 || got[0].ID != 2 {
		t.Errorf("emb targets = %+v", got)
	}
	if l.calls != 1 {
		t.Errorf("configure polled the API (%d calls)", l.calls)
	}
}

func TestDuplicateAddressIsNeverRoutedTwice(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "a", 4001), running(2, "b", 4001)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	_ = pollReady(t, w)
	got := targets(w.Snapshot(), "all")
	if len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("targets = %+v, want only the older instance", got)
	}
}

func TestRunStopsOnCancelAndPollsOnKick(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "a", 4001)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()

	waitFor(t, 5*time.Second, "first poll", func() bool { return len(w.Snapshot().Members) == 1 })
	if w.Running() != 1 {
		t.Errorf("running = %d", w.Running())
	}
	l.mu.Lock()
	before := l.calls
	l.mu.Unlock()
	w.PollSoon()
	waitFor(t, 5*time.Second, "kicked poll", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.calls > before })

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if w.Running() != 0 {
		t.Errorf("running = %d after stop", w.Running())
	}
}

func TestDrainingTakesAnInstanceOutOfRoutingOnly(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "a", 4001), running(2, "b", 4002)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	_ = pollReady(t, w)
	w.SetDraining(2, true)
	s := w.Snapshot()
	if got := targets(s, "all"); len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("targets while draining 2: %+v", got)
	}
	if m, _ := s.Member(2); !m.Draining || m.Routable || m.Reason != "draining" || m.State != StateReady {
		t.Errorf("drained member = %+v", m)
	}
	if _, ok := s.Route("127.0.0.1:4002"); ok {
		t.Error("drained instance still has a route")
	}
	w.SetDraining(2, false)
	if got := targets(w.Snapshot(), "all"); len(got) != 2 {
		t.Fatalf("targets after undrain: %+v", got)
	}
}

func TestManagedInstancesJoinTheirPoolWithTheirGeneratedToken(t *testing.T) {
	managed := running(7, "cv:gw:llm:0a1b2c", 4007)
	managed.ExtraEnv["WEB_PASSWORD"] = "generated-secret"
	other := running(8, "cv:gw:embed:ffff", 4008)
	adopted := running(9, "llm-old", 4009)
	l := &scriptedLister{}
	l.push(result(managed, other, adopted), nil)
	w := newTestWatcher(l,
		PoolSpec{Name: "llm", LabelPrefix: "llm-", ManagedPrefix: "cv:gw:llm:"},
		PoolSpec{Name: "embed", ManagedPrefix: "cv:gw:embed:"},
		PoolSpec{Name: "all"})
	_ = pollReady(t, w)
	s := w.Snapshot()
	want := map[int64]string{7: "llm", 8: "embed", 9: "llm"}
	for id, pool := range want {
		if m, _ := s.Member(id); m.Pool != pool {
			t.Errorf("instance %d in pool %q, want %q", id, m.Pool, pool)
		}
	}
	if r, ok := s.Route("127.0.0.1:4007"); !ok || r.Token != "generated-secret" {
		t.Errorf("managed route = %+v %v, want the WEB_PASSWORD token", r, ok)
	}
	if r, _ := s.Route("127.0.0.1:4009"); r.Token != "tok-9" {
		t.Errorf("adopted route token %q, want the pool's token source", r.Token)
	}
	// A pool that only provisions does not take unrelated instances.
	l2 := &scriptedLister{}
	l2.push(result(running(10, "training", 4010)), nil)
	w2 := newTestWatcher(l2, PoolSpec{Name: "embed", ManagedPrefix: "cv:gw:embed:"})
	_ = pollReady(t, w2)
	if m, _ := w2.Snapshot().Member(10); m.Pool != "" {
		t.Errorf("provision-only pool took an unrelated instance")
	}
}
