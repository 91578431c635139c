package ledger

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// memStore is a Store whose Load can be made to fail.
type memStore struct {
	mu      sync.Mutex
	data    map[string][]byte
	loadErr error
	stores  int
	locked  map[string]bool
}

func newMemStore() *memStore { return &memStore{data: map[string][]byte{}, locked: map[string]bool{}} }

func (s *memStore) Store(_ context.Context, k string, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.locked[strings.TrimSuffix(k, ".json")] {
		return fmt.Errorf("store of %s without its lock", k)
	}
	s.data[k] = append([]byte(nil), v...)
	s.stores++
	return nil
}

func (s *memStore) Load(_ context.Context, k string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	v, ok := s.data[k]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return append([]byte(nil), v...), nil
}

func (s *memStore) Lock(_ context.Context, n string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locked[n] {
		return errors.New("already locked")
	}
	s.locked[n] = true
	return nil
}

func (s *memStore) Unlock(_ context.Context, n string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.locked, n)
	return nil
}

func (s *memStore) storeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stores
}

// clock is a settable fake clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func newLoaded(t *testing.T, st Store, c *clock, gw string) *Ledger {
	t.Helper()
	l := New(Options{Gateway: gw, Store: st, Now: c.now})
	if err := l.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return l
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func obs(id int64, pool, status string, rate float64, when time.Time) Observation {
	return Observation{ID: id, Pool: pool, Status: status, Rate: rate, At: when}
}

func TestRateByStatus(t *testing.T) {
	tests := []struct {
		name string
		in   vastclient.Instance
		want float64
	}{
		{"running bills dph_total", vastclient.Instance{ActualStatus: "running", CurState: "running"}, 1.0},
		{"loading bills storage only", vastclient.Instance{ActualStatus: "loading"}, 0.01},
		{"created bills storage only", vastclient.Instance{ActualStatus: "created"}, 0.01},
		{"null (provisioning) bills storage only", vastclient.Instance{}, 0.01},
		{"stopped bills storage", vastclient.Instance{ActualStatus: "stopped", CurState: "stopped"}, 0.01},
		{"stopping (cur_state stopped) bills storage", vastclient.Instance{ActualStatus: "running", CurState: "stopped"}, 0.01},
		{"exited bills storage", vastclient.Instance{ActualStatus: "exited"}, 0.01},
		{"destroyed (unloaded) bills nothing", vastclient.Instance{ActualStatus: "running", CurState: "unloaded"}, 0},
		{"frozen keeps the GPU", vastclient.Instance{ActualStatus: "frozen"}, 1.0},
		{"unknown values count in full", vastclient.Instance{ActualStatus: "scheduling"}, 1.0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.DPHTotal, in.StorageTotalCost = 1.0, 0.01
			if got := Rate(&in); got != tc.want {
				t.Fatalf("Rate = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAnIntervalAcrossMidnightIsSplitIntoDaysAndMonths(t *testing.T) {
	c := &clock{t: at("2026-12-31T23:30:00Z")}
	l := newLoaded(t, newMemStore(), c, "gw")
	o := obs(7, "gen", "running", 2.0, c.now())
	o.Started = at("2026-12-31T23:00:00Z")
	l.Observe([]Observation{o}, true)
	l.Observe([]Observation{obs(7, "gen", "running", 2.0, c.add(90*time.Minute))}, true) // 01:00 next day

	days := l.Report(Query{By: ByPool, Period: Day})
	want := []Row{{Period: "2026-12-31", Pool: "gen", Dollars: 2, Hours: 1}, {Period: "2027-01-01", Pool: "gen", Dollars: 2, Hours: 1}}
	assertRows(t, "by day", days, want, 4)

	months := l.Report(Query{By: ByInstance, Period: Month})
	want = []Row{{Period: "2026-12", Pool: "gen", InstanceID: 7, Dollars: 2, Hours: 1}, {Period: "2027-01", Pool: "gen", InstanceID: 7, Dollars: 2, Hours: 1}}
	assertRows(t, "by month", months, want, 4)

	since := l.Report(Query{By: ByPool, Period: Day, Since: at("2027-01-01T00:00:00Z")})
	assertRows(t, "since", since, []Row{{Period: "2027-01-01", Pool: "gen", Dollars: 2, Hours: 1}}, 2)
}

func assertRows(t *testing.T, what string, got Report, want []Row, total float64) {
	t.Helper()
	if len(got.Rows) != len(want) {
		t.Fatalf("%s: rows %+v, want %+v", what, got.Rows, want)
	}
	for i := range want {
		g := got.Rows[i]
		if g.Period != want[i].Period || g.Pool != want[i].Pool || g.InstanceID != want[i].InstanceID ||
			!near(g.Dollars, want[i].Dollars) || !near(g.Hours, want[i].Hours) {
			t.Fatalf("%s: row %d = %+v, want %+v", what, i, g, want[i])
		}
	}
	if !near(got.TotalDollars, total) {
		t.Fatalf("%s: total %v, want %v", what, got.TotalDollars, total)
	}
}

func TestAChangeCountsFromHalfwayBetweenTheListings(t *testing.T) {
	c := &clock{t: at("2026-06-01T10:00:00Z")}
	l := newLoaded(t, newMemStore(), c, "gw")
	start := c.now()
	steps := []struct {
		after  time.Duration
		status string
		rate   float64
	}{
		{0, "loading", 0.5},
		{time.Hour, "running", 2},     // loading until +30m: $0.25, running: $1
		{2 * time.Hour, "stopped", 0}, // running until +2h: $2
		{time.Hour, "running", 2},     // stopped until +3h30: $0, running: $1
		{time.Hour, "gone", 0},        // running until +4h30: $1
		{time.Hour, "gone", 0},        // gone: nothing more
	}
	for _, s := range steps {
		l.Observe([]Observation{obs(1, "gen", s.status, s.rate, c.add(s.after))}, true)
	}
	inst, ok := l.Instance(1)
	if !ok || !near(inst.Dollars, 5.25) || !near(inst.Hours, 3) {
		t.Fatalf("instance %+v, want $5.25 over 3 billed hours", inst)
	}
	wantAt := []time.Duration{0, 30 * time.Minute, 2 * time.Hour, 210 * time.Minute, 270 * time.Minute}
	if len(inst.History) != len(wantAt) || inst.History[4].Status != "gone" {
		t.Fatalf("history %+v, want loading, running, stopped, running, gone", inst.History)
	}
	for i, d := range wantAt {
		if !inst.History[i].At.Equal(start.Add(d)) {
			t.Errorf("history[%d] at %s, want %s", i, inst.History[i].At, start.Add(d))
		}
	}
}

func TestTheLedgerSurvivesARestartAndFillsTheGapAtTheLastRate(t *testing.T) {
	st := newMemStore()
	c := &clock{t: at("2026-03-01T08:00:00Z")}
	l := newLoaded(t, st, c, "gw")
	l.Observe([]Observation{obs(1, "gen", "running", 1.0, c.now()), obs(2, "gen", "running", 3.0, c.now())}, true)
	l.Observe([]Observation{obs(1, "gen", "running", 1.0, c.add(time.Hour)), obs(2, "gen", "gone", 0, c.now())}, true) // 2 ran 30m
	if err := l.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := l.Report(Query{By: ByInstance, Period: Day})

	// A new process on the same storage.
	l2 := newLoaded(t, st, c, "gw")
	assertRows(t, "reloaded", l2.Report(Query{By: ByInstance, Period: Day}), before.Rows, 2.5)
	// Instance 2 (destroyed) no longer appears; instance 1 ran through the
	// 30 minutes the gateway was down.
	l2.Observe([]Observation{obs(1, "gen", "running", 1.0, c.add(30*time.Minute))}, true)
	got, _ := l2.Instance(1)
	if !near(got.Dollars, 1.5) {
		t.Fatalf("instance 1 after restart: $%v, want $1.50", got.Dollars)
	}
	gone, _ := l2.Instance(2)
	if !gone.Closed || !near(gone.Dollars, 1.5) {
		t.Fatalf("instance 2 after restart: %+v, want closed at $1.50", gone)
	}
	// Another gateway on the same storage has its own ledger.
	other := newLoaded(t, st, c, "other")
	if r := other.Report(Query{}); len(r.Rows) != 0 {
		t.Fatalf("gateway other sees %+v", r.Rows)
	}
}

func TestAClosedInstanceAccruesNothingUntilItReappears(t *testing.T) {
	c := &clock{t: at("2026-03-01T08:00:00Z")}
	l := newLoaded(t, newMemStore(), c, "gw")
	l.Observe([]Observation{obs(1, "gen", "running", 1.0, c.now())}, true)
	l.Observe(nil, false) // a failed listing says nothing
	if inst, _ := l.Instance(1); inst.Closed {
		t.Fatal("closed by an incomplete listing")
	}
	l.Observe(nil, true)
	c.add(time.Hour)
	l.Observe(nil, true)
	if inst, _ := l.Instance(1); !inst.Closed || inst.Dollars != 0 {
		t.Fatalf("after a listing without it: %+v, want closed at $0", inst)
	}
}

// source is a Source the tests change between steps.
type source struct {
	obs []Observation
	v   uint64
}

func (s *source) set(o ...Observation) { s.obs, s.v = o, s.v+1 }
func (s *source) get() ([]Observation, bool, uint64) {
	return s.obs, true, s.v
}

func TestStepSavesOnEveryStateChangeAndOtherwiseOnceAMinute(t *testing.T) {
	st := newMemStore()
	c := &clock{t: at("2026-03-01T08:00:00Z")}
	l := New(Options{Gateway: "gw", Store: st, Now: c.now})
	src := &source{}
	var last uint64
	ctx := context.Background()
	step := func(what string, wantStores int) {
		t.Helper()
		l.Step(ctx, src.get, &last)
		if n := st.storeCount(); n != wantStores {
			t.Fatalf("%s: %d saves, want %d", what, n, wantStores)
		}
	}
	src.set(obs(1, "gen", "loading", 0.1, c.now()))
	step("new instance", 1)
	src.set(obs(1, "gen", "loading", 0.1, c.add(10*time.Second)))
	step("same state 10s later", 1)
	src.set(obs(1, "gen", "running", 1, c.add(10*time.Second)))
	step("loading -> running", 2)
	src.set(obs(1, "gen", "running", 1, c.add(30*time.Second)))
	step("30s of accrual", 2)
	src.set(obs(1, "gen", "running", 1, c.add(31*time.Second)))
	step("a minute of accrual", 3)
	src.set()
	step("gone from the listing", 4)

	l2 := newLoaded(t, st, c, "gw")
	inst, _ := l2.Instance(1)
	want := 0.1*15/3600 + 66.0/3600 // the switch to running counts from +15s
	if !inst.Closed || !near(inst.Dollars, want) || inst.Status != "running" {
		t.Fatalf("stored %+v, want closed at $%v", inst, want)
	}
}

func TestAStorageErrorOnLoadNeverOverwritesTheStoredLedger(t *testing.T) {
	st := newMemStore()
	c := &clock{t: at("2026-03-01T08:00:00Z")}
	l := newLoaded(t, st, c, "gw")
	l.Observe([]Observation{obs(1, "gen", "running", 1, c.now())}, true)
	l.Observe([]Observation{obs(1, "gen", "running", 1, c.add(time.Hour))}, true)
	if err := l.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	st.loadErr = errors.New("disk on fire")
	l2 := New(Options{Gateway: "gw", Store: st, Now: c.now})
	src := &source{}
	src.set(obs(1, "gen", "running", 1, c.add(time.Minute)))
	var last uint64
	l2.Step(context.Background(), src.get, &last)
	if err := l2.Save(context.Background()); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Save before a successful Load: %v, want ErrNotLoaded", err)
	}
	if n := st.storeCount(); n != 1 {
		t.Fatalf("%d stores, want only the first", n)
	}
	st.loadErr = nil
	l2.Step(context.Background(), src.get, &last)
	inst, _ := l2.Instance(1)
	if !near(inst.Dollars, 1+1.0/60) {
		t.Fatalf("after storage recovered: $%v, want $%v", inst.Dollars, 1+1.0/60)
	}
}

func TestRunFlushesOnStop(t *testing.T) {
	st := newMemStore()
	c := &clock{t: at("2026-03-01T08:00:00Z")}
	l := New(Options{Gateway: "gw", Store: st, Now: c.now})
	var mu sync.Mutex
	src := &source{}
	src.set(obs(1, "gen", "running", 1, c.now()))
	get := func() ([]Observation, bool, uint64) { mu.Lock(); defer mu.Unlock(); return src.get() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, get, time.Hour) }()
	deadline := time.Now().Add(30 * time.Second)
	for st.storeCount() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first observation was never saved")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	src.set(obs(1, "gen", "running", 1, c.add(10*time.Second))) // not a state change
	mu.Unlock()
	cancel()
	<-done
	l2 := newLoaded(t, st, c, "gw")
	if inst, _ := l2.Instance(1); !near(inst.Dollars, 10.0/3600) {
		t.Fatalf("after stop the store holds $%v, want the last 10s ($%v)", inst.Dollars, 10.0/3600)
	}
}

func TestParseQueryNamesTheBadParameter(t *testing.T) {
	tests := []struct {
		by, period, since string
		wantParam         string
	}{
		{"", "", "", ""},
		{"instance", "month", "2026-12-01", ""},
		{"gpu", "", "", "by"},
		{"pool", "week", "", "period"},
		{"pool", "day", "yesterday", "since"},
		{"pool", "day", "2026-13-01", "since"},
	}
	for _, tc := range tests {
		q, err := ParseQuery(tc.by, tc.period, tc.since)
		if tc.wantParam == "" {
			if err != nil || q.By == "" || q.Period == "" {
				t.Errorf("ParseQuery(%q,%q,%q) = %+v, %v", tc.by, tc.period, tc.since, q, err)
			}
			continue
		}
		var qe *QueryError
		if !errors.As(err, &qe) || qe.Param != tc.wantParam || !errors.Is(err, ErrBadQuery) || !strings.HasPrefix(err.Error(), tc.wantParam+":") {
			t.Errorf("ParseQuery(%q,%q,%q) error %v, want one naming %s", tc.by, tc.period, tc.since, err, tc.wantParam)
		}
	}
}
