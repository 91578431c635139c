package tui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// fakeAPI answers from canned JSON per path and records every call.
type fakeAPI struct {
	mu      sync.Mutex
	answers map[string]string // "GET /vastai/status" → JSON
	fail    map[string]error
	calls   []string
	bodies  []string
	block   chan struct{} // when set, GETs wait for it
}

func (f *fakeAPI) Do(ctx context.Context, method, path string, body, out any) error {
	f.mu.Lock()
	key := method + " " + path
	f.calls = append(f.calls, key)
	b, _ := json.Marshal(body)
	f.bodies = append(f.bodies, string(b))
	ans, err, block := f.answers[key], f.fail[key], f.block
	f.mu.Unlock()
	if block != nil && method == "GET" {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if ans == "" {
		return fmt.Errorf("fake: no answer for %s", key)
	}
	return json.Unmarshal([]byte(ans), out)
}

func (f *fakeAPI) called(key string) (int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, body := 0, ""
	for i, c := range f.calls {
		if c == key {
			n++
			body = f.bodies[i]
		}
	}
	return n, body
}

func (f *fakeAPI) set(key, json string) {
	f.mu.Lock()
	f.answers[key] = json
	f.mu.Unlock()
}

const fleetStatus = `{"generation":7,"last_success":"2026-12-02T09:59:59Z","stale_seconds":0.6,"instances":3,"watchers_running":1,"consecutive_failures":0}`

func fleetInstances(total1001 int) string {
	return fmt.Sprintf(`[
 {"id":1001,"pool":"gen","label":"cv:default:gen:a","actual_status":"running","upstream":"127.0.0.1:40101","routable":true,"state":"ready",
  "state_since":"2026-12-02T09:56:48Z","ssh":{"path":"direct","reconnects":0},"gpu_name":"RTX 4090","num_gpus":2,"dph_total":0.8,"accrued_dollars":1.5,
  "gpus":[{"index":0,"name":"RTX 4090","utilization_gpu":50,"memory_used_mib":12288,"memory_total_mib":24576,"temperature_c":61},
          {"index":1,"name":"RTX 4090","utilization_gpu":100,"memory_used_mib":24576,"memory_total_mib":24576,"temperature_c":77}],
  "in_flight":3,"requests_total":%d},
 {"id":1002,"pool":"gen","label":"cv:default:gen:b","actual_status":"loading","upstream":null,"routable":false,"state":"loading",
  "state_since":"2026-12-02T09:59:30Z","gpu_name":"RTX 4090","num_gpus":1,"dph_total":0.4,"accrued_dollars":0.01},
 {"id":2001,"pool":"embed","label":"cv:default:embed:a","actual_status":"running","upstream":"127.0.0.1:40201","routable":true,"state":"ready",
  "state_since":"2026-12-02T08:00:00Z","gpu_name":"RTX 3090","num_gpus":1,"dph_total":0.25,"accrued_dollars":0.5}
]`, total1001)
}

const fleetPools = `[
 {"name":"embed","members":[2001],"routable":[2001],"states":{"ready":1},"spend_rate_dollars_per_hour":0.25,"accrued_dollars":0.5},
 {"name":"gen","members":[1001,1002],"routable":[1001],"states":{"ready":1,"loading":1},"spend_rate_dollars_per_hour":1.2,"accrued_dollars":1.51,
  "provisioning":{"min_instances":1,"max_instances":4,"active":2,"spend_per_hour":1.2,"max_spend_per_hour":2}}
]`

const fleetOperations = `[
 {"id":"op-prov-2","kind":"provision","pool":"gen","state":"waiting","created":"2026-12-02T09:59:30Z","updated":"2026-12-02T09:59:40Z",
  "attempts":[{"offer_id":11,"machine_id":5,"price":0.4,"state":"failed","error":"no ssh"},{"offer_id":12,"machine_id":6,"price":0.4,"instance_id":1002,"state":"waiting"}]},
 {"id":"op-old","kind":"destroy","pool":"gen","state":"succeeded","instance_id":999,"created":"2026-12-02T08:00:00Z"}
]`

func newFake() *fakeAPI {
	return &fakeAPI{answers: map[string]string{
		"GET /vastai/status":     fleetStatus,
		"GET /vastai/instances":  fleetInstances(100),
		"GET /vastai/pools":      fleetPools,
		"GET /vastai/operations": fleetOperations,
	}, fail: map[string]error{}}
}

// testModel is a model with a fixed clock, loaded once from api.
func testModel(t *testing.T, api *fakeAPI, opts Options) *model {
	t.Helper()
	m := newModel(context.Background(), api, opts)
	m.now = func() time.Time { return t0 }
	m.Update(tea.WindowSizeMsg{Width: 160, Height: 45})
	refresh(t, m)
	return m
}

// refresh runs one fetch to completion and feeds its result to Update.
func refresh(t *testing.T, m *model) {
	t.Helper()
	cmd := m.startFetch()
	if cmd == nil {
		t.Fatal("no fetch started")
	}
	m.Update(cmd())
}

func press(m *model, keys ...string) tea.Cmd {
	var last tea.Cmd
	for _, k := range keys {
		var msg tea.KeyMsg
		switch k {
		case "enter":
			msg = tea.KeyMsg{Type: tea.KeyEnter}
		case "esc":
			msg = tea.KeyMsg{Type: tea.KeyEsc}
		case "down":
			msg = tea.KeyMsg{Type: tea.KeyDown}
		case "up":
			msg = tea.KeyMsg{Type: tea.KeyUp}
		case "ctrl+c":
			msg = tea.KeyMsg{Type: tea.KeyCtrlC}
		case "backspace":
			msg = tea.KeyMsg{Type: tea.KeyBackspace}
		default:
			msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		_, last = m.Update(msg)
	}
	return last
}

func mustContain(t *testing.T, view string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(view, w) {
			t.Errorf("view lacks %q:\n%s", w, view)
		}
	}
}

func mustNotContain(t *testing.T, view string, nots ...string) {
	t.Helper()
	for _, w := range nots {
		if strings.Contains(view, w) {
			t.Errorf("view shows %q:\n%s", w, view)
		}
	}
}

func TestViewShowsTheFleet(t *testing.T) {
	m := testModel(t, newFake(), Options{})
	v := m.View()
	mustContain(t, v,
		"3 instances (1 loading, 2 ready)", "routable 2", "spend $1.45/h", "accrued $2.01",
		"budget gen $1.20/h of $2.00/h (60%)", "listing 0s old, generation 7",
		"1001", "1002", "2001", "gen", "embed", "127.0.0.1:40101", "direct",
		"3m12s",                   // 1001 ready since 09:56:48
		"████░░░░ 50%",            // GPU 0 utilisation
		"███░░░ 12.0/24G", "61°C", // GPU 0 memory and temperature
		"████████ 100%", "77°C", // GPU 1 on its own line
		"$0.80/h", "$0.25/h",
		"INFL", "REQ/S",
		"Operations in progress (1)", "op-prov-2", "attempt 2: offer 12 machine 6 instance 1002 $0.40/h waiting",
	)
	mustNotContain(t, v, "op-old", "stale since")
}

func TestSpendPerHourFromStatusWins(t *testing.T) {
	api := newFake()
	api.set("GET /vastai/status", `{"generation":1,"spend_per_hour":3.5,"max_spend_per_hour":7}`)
	v := testModel(t, api, Options{}).View()
	mustContain(t, v, "spend $3.50/h", "gateway $3.50/h of $7.00/h (50%)")
}

func TestRequestRatesComeFromCountersBetweenRefreshes(t *testing.T) {
	api := newFake()
	m := testModel(t, api, Options{})
	if _, ok := m.rates[1001]; ok {
		t.Fatal("a rate from a single reading")
	}
	api.set("GET /vastai/instances", fleetInstances(150))
	m.now = func() time.Time { return t0.Add(2 * time.Second) }
	refresh(t, m)
	if got := m.rates[1001]; got != 25 {
		t.Fatalf("rate %v, want 25 (50 requests in 2s)", got)
	}
	mustContain(t, m.View(), "25.0")
}

func TestRequestColumnsAbsentWithoutCounters(t *testing.T) {
	api := newFake()
	api.set("GET /vastai/instances", strings.NewReplacer(`"in_flight":3,"requests_total":100`, `"num_gpus":2`).Replace(fleetInstances(100)))
	v := testModel(t, api, Options{}).View()
	mustNotContain(t, v, "INFL", "REQ/S")
	mustContain(t, v, "1001", "$/H")
}

func TestFailedRefreshShowsStaleSinceAndKeepsTheFigures(t *testing.T) {
	api := newFake()
	m := testModel(t, api, Options{})
	api.mu.Lock()
	api.fail["GET /vastai/instances"] = errors.New("dial tcp 127.0.0.1:2019: connection refused")
	api.mu.Unlock()
	m.now = func() time.Time { return t0.Add(5 * time.Second) }
	refresh(t, m)
	v := m.View()
	mustContain(t, v, "stale since 10:00:00 (5s ago)", "instances: dial tcp 127.0.0.1:2019: connection refused", "1001", "2001")
}

func TestOperationsErrorIsNotAnEmptyList(t *testing.T) {
	api := newFake()
	api.fail["GET /vastai/operations"] = errors.New("the lifecycle manager is not running")
	v := testModel(t, api, Options{}).View()
	mustContain(t, v, "Operations in progress (0)  the lifecycle manager is not running", "1001")
}

func TestSlowAPIDoesNotBlockAndIsNotPiledUp(t *testing.T) {
	api := newFake()
	api.block = make(chan struct{})
	m := newModel(context.Background(), api, Options{})
	now := t0
	m.now = func() time.Time { return now }
	fetched := make(chan tea.Msg, 1)
	cmd := m.startFetch()
	go func() { fetched <- cmd() }() // the way bubbletea runs a Cmd
	waitCalls(t, api, "GET /vastai/status", 1)

	// While the admin API hangs, Update answers at once and ticks start no
	// second fetch.
	done := make(chan tea.Cmd)
	go func() {
		_, c := m.Update(tickMsg(now))
		done <- c
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Update blocked on a slow admin API")
	}
	if m.startFetch() != nil {
		t.Fatal("a second fetch started while one is in flight")
	}
	now = t0.Add(3 * time.Second)
	mustContain(t, m.View(), "stale since start: waiting for the admin API (3s)")

	close(api.block)
	m.Update(<-fetched)
	v := m.View()
	mustContain(t, v, "1001", "2001")
	mustNotContain(t, v, "stale since")
	if n, _ := api.called("GET /vastai/status"); n != 1 {
		t.Fatalf("%d status requests, want 1", n)
	}
}

func waitCalls(t *testing.T, api *fakeAPI, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _ := api.called(key); got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not called %d time(s)", key, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFilterByPoolStateOrID(t *testing.T) {
	m := testModel(t, newFake(), Options{})
	press(m, "/", "e", "m", "b")
	mustContain(t, m.View(), "filter: emb█")
	press(m, "enter")
	v := m.View()
	mustContain(t, v, "> 2001 ", `filter: "emb"`)
	mustNotContain(t, v, "  1001 ", "  1002 ")

	press(m, "/", "backspace", "backspace", "backspace", "l", "o", "a", "d", "enter")
	v = m.View()
	mustContain(t, v, "> 1002 ")
	mustNotContain(t, v, "  1001 ", "  2001 ")

	press(m, "/", "esc")
	mustContain(t, m.View(), "1001", "1002", "2001")

	press(m, "/", "z", "z", "enter")
	mustContain(t, m.View(), `no instance matches "zz"`)
}

func TestSortCycles(t *testing.T) {
	m := testModel(t, newFake(), Options{})
	order := func() []int64 {
		var ids []int64
		for _, in := range m.visible() {
			ids = append(ids, in.ID)
		}
		return ids
	}
	want := map[string][]int64{
		"id": {1001, 1002, 2001}, "pool": {2001, 1001, 1002}, "state": {1002, 1001, 2001},
		"age": {2001, 1001, 1002}, "$/h": {1001, 1002, 2001}, "gpu": {1001, 1002, 2001},
	}
	for i := range sortKeys {
		key := sortKeys[m.sortIdx]
		if got := fmt.Sprint(order()); got != fmt.Sprint(want[key]) {
			t.Errorf("sort %s: %v, want %v", key, got, want[key])
		}
		mustContain(t, m.View(), "sort "+key)
		press(m, "s")
		if m.sortIdx != (i+1)%len(sortKeys) {
			t.Fatalf("s did not advance the sort")
		}
	}
}

func TestDrainNeedsConfirmation(t *testing.T) {
	api := newFake()
	m := testModel(t, api, Options{})
	press(m, "down") // 1002
	press(m, "d")
	mustContain(t, m.View(), "Drain instance 1002 (pool gen)", "[y/n]")
	press(m, "n")
	if n, _ := api.called("POST /vastai/instances/1002/drain"); n != 0 {
		t.Fatal("drained without a yes")
	}
	mustContain(t, m.View(), "cancelled")

	press(m, "d")
	cmd := press(m, "y")
	if cmd == nil {
		t.Fatal("y started nothing")
	}
	_, next := m.Update(cmd())
	if n, _ := api.called("POST /vastai/instances/1002/drain"); n != 1 {
		t.Fatalf("calls %v", api.calls)
	}
	mustContain(t, m.View(), "draining instance 1002")
	if next == nil {
		t.Fatal("no refresh after the action")
	}
}

func TestDestroyAndProvisionCallTheAPI(t *testing.T) {
	api := newFake()
	m := testModel(t, api, Options{})
	press(m, "x")
	mustContain(t, m.View(), "Destroy instance 1001 (pool gen)")
	m.Update(press(m, "y")())
	if n, _ := api.called("DELETE /vastai/instances/1001"); n != 1 {
		t.Fatalf("calls %v", api.calls)
	}

	press(m, "down", "down", "p") // 2001, pool embed
	mustContain(t, m.View(), "Provision one more instance into pool embed? [y/n]")
	m.Update(press(m, "y")())
	n, body := api.called("POST /vastai/pools/embed/instances")
	if n != 1 || body != `{"count":1}` {
		t.Fatalf("provision calls %d body %s; all %v", n, body, api.calls)
	}
}

func TestRefusedActionShowsTheAPIMessage(t *testing.T) {
	api := newFake()
	api.fail["POST /vastai/pools/gen/instances"] = errors.New("budget: gen would spend $2.40/h, over max_spend_per_hour $2.00/h")
	m := testModel(t, api, Options{})
	press(m, "p")
	m.Update(press(m, "y")())
	mustContain(t, m.View(), "provision failed: budget: gen would spend $2.40/h")
}

func TestDetailsPane(t *testing.T) {
	m := testModel(t, newFake(), Options{})
	press(m, "enter")
	mustContain(t, m.View(), "Instance 1001", "cv:default:gen:a", "ssh          direct", "gpu 1", "accrued $1.50")
	press(m, "down", "down")
	mustContain(t, m.View(), "Instance 2001")
	press(m, "enter")
	mustNotContain(t, m.View(), "Instance 2001")
}

func TestPoolOptionLimitsTheView(t *testing.T) {
	m := testModel(t, newFake(), Options{Pool: "embed"})
	v := m.View()
	mustContain(t, v, "2001", "1 instances", "spend $0.25/h")
	mustNotContain(t, v, "1001", "op-prov-2")
}

func TestQuitKeys(t *testing.T) {
	for _, keys := range [][]string{{"q"}, {"ctrl+c"}, {"/", "ctrl+c"}, {"d", "ctrl+c"}} {
		m := testModel(t, newFake(), Options{})
		cmd := press(m, keys...)
		if cmd == nil {
			t.Fatalf("%v: no command", keys)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Fatalf("%v: not a quit", keys)
		}
	}
	// In the filter, q is a letter.
	m := testModel(t, newFake(), Options{})
	if cmd := press(m, "/", "q"); cmd != nil {
		t.Fatal("q quit while typing a filter")
	}
}

func TestCursorFollowsTheInstanceAcrossRefreshes(t *testing.T) {
	api := newFake()
	m := testModel(t, api, Options{})
	press(m, "down", "down") // 2001
	press(m, "s", "s")       // state order: 1002, 1001, 2001
	if in := m.current(); in == nil || in.ID != 2001 {
		t.Fatalf("selected %+v after sorting, want 2001", in)
	}
	refresh(t, m)
	if in := m.current(); in == nil || in.ID != 2001 {
		t.Fatalf("selected %+v after a refresh, want 2001", in)
	}
}
