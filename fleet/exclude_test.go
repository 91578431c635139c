package fleet

import "testing"

// TestExcludeTakesAnInstanceOutOfRoutingUntilItIsGone: an excluded
// instance (one being destroyed) leaves targets and routes at once with
// its reason, stays excluded while listed, also when excluded before its
// first listing, and the exclusion ends once the instance is forgotten.
func TestExcludeTakesAnInstanceOutOfRoutingUntilItIsGone(t *testing.T) {
	l := &scriptedLister{}
	l.push(result(running(1, "a", 4001), running(2, "b", 4002)), nil)
	w := newTestWatcher(l, PoolSpec{Name: "all"})
	_ = pollReady(t, w)
	w.Exclude(2, "destroying")
	w.Exclude(3, "destroying") // not listed yet
	check := func(when string) {
		t.Helper()
		s := w.Snapshot()
		if got := targets(s, "all"); len(got) != 1 || got[0].ID != 1 {
			t.Fatalf("%s: targets %+v, want only 1", when, got)
		}
		if m, _ := s.Member(2); m.Routable || m.Reason != "destroying" {
			t.Errorf("%s: excluded member = routable %v reason %q", when, m.Routable, m.Reason)
		}
		if _, ok := s.Route("127.0.0.1:4002"); ok {
			t.Errorf("%s: excluded instance still has a route", when)
		}
	}
	check("at once")
	_ = pollReady(t, w)
	check("after a poll")

	l.push(result(running(1, "a", 4001), running(3, "c", 4003)), nil)
	_ = pollReady(t, w)
	if m, ok := w.Snapshot().Member(3); !ok || m.Routable || m.Reason != "destroying" {
		t.Errorf("instance excluded before its first listing: %+v", m)
	}
	_ = pollReady(t, w) // 2 missed twice: forgotten
	if _, ok := w.Snapshot().Member(2); ok {
		t.Fatal("instance 2 still known")
	}
	w.mu.Lock()
	_, kept := w.excluded[2]
	w.mu.Unlock()
	if kept {
		t.Error("the exclusion of a forgotten instance was kept")
	}
}
