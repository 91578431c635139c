package lifecycle

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const testKey = "lifecycle-test-key"

// errCrash makes a hooked worker vanish as if its process had died.
var errCrash = errors.New("simulated crash")

// newClient returns a real vastclient talking to the simulator over
// loopback, with pacing off and tiny backoffs so tests stay fast.
func newClient(t *testing.T, base string) *vastclient.Client {
	t.Helper()
	pacing := vastclient.DefaultPacing()
	for ep := range pacing {
		pacing[ep] = 0
	}
	c, err := vastclient.New(vastclient.Config{
		BaseURL: base, APIKey: testKey, Pacing: pacing,
		MaxAttempts: 2, BackoffBase: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		RequestTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// simFleet is a Fleet over the simulator: it lists instances through the
// real client and health-checks running engines with the instance's token,
// as the routing side does. ready = running + /health 200 without the
// portal's placeholder.
type simFleet struct {
	api *vastclient.Client
	hc  *http.Client

	mu      sync.Mutex
	rows    []vastclient.Instance
	at      time.Time
	ok      bool
	states  map[int64]fleetState
	drained []int64
	// undrained are the ids given to Undrain, in order.
	undrained []int64
	drainFn   func(ctx context.Context, id int64) error
	// forced overrides the classified state of an instance.
	forced   map[int64]string
	excluded map[int64]string
	skipped  int

	paused atomic.Bool
	polls  atomic.Int64
	stop   chan struct{}
	done   chan struct{}
}

type fleetState struct {
	state string
	since time.Time
}

func newSimFleet(t *testing.T, api *vastclient.Client, every time.Duration) *simFleet {
	f := &simFleet{
		api: api, hc: &http.Client{Timeout: time.Second},
		states: map[int64]fleetState{}, stop: make(chan struct{}), done: make(chan struct{}),
	}
	go func() {
		defer close(f.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if !f.paused.Load() {
				f.poll()
			}
			select {
			case <-f.stop:
				return
			case <-t.C:
			}
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *simFleet) close() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	<-f.done
}

func (f *simFleet) poll() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	res, err := f.api.ListInstances(ctx, vastclient.ListOptions{})
	if err != nil {
		return // unknown: keep the previous view
	}
	next := map[int64]string{}
	for i := range res.Instances {
		next[res.Instances[i].ID] = f.classify(ctx, &res.Instances[i])
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range next {
		if st, ok := f.forced[id]; ok {
			next[id] = st
		}
	}
	for id, st := range next {
		if cur, ok := f.states[id]; !ok || cur.state != st {
			f.states[id] = fleetState{state: st, since: now}
		}
	}
	for id, cur := range f.states {
		if _, ok := next[id]; !ok && cur.state != FleetGone {
			f.states[id] = fleetState{state: FleetGone, since: now}
		}
	}
	f.rows, f.at, f.ok, f.skipped = res.Instances, start, true, res.Skipped
	f.polls.Add(1)
}

func (f *simFleet) classify(ctx context.Context, in *vastclient.Instance) string {
	if in.CurState == "unloaded" {
		return FleetGone
	}
	switch in.ActualStatus {
	case "", "created":
		return FleetProvisioning
	case "loading":
		return FleetLoading
	case "exited", "offline", "unknown":
		return FleetFailed
	case "stopped":
		return FleetStopped
	case "running":
	default:
		return FleetStarting
	}
	port, ok := in.Ports.HostPort(8000, "tcp")
	if !ok {
		return FleetStarting
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+"/health", nil)
	req.Header.Set("Authorization", "Bearer "+in.ExtraEnv[EnvToken])
	resp, err := f.hc.Do(req)
	if err != nil {
		return FleetStarting
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Portal-Placeholder") == "" {
		return FleetReady
	}
	return FleetStarting
}

func (f *simFleet) State(id int64) (string, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.states[id]
	return st.state, st.since, ok
}

func (f *simFleet) Drain(ctx context.Context, id int64) error {
	f.mu.Lock()
	f.drained = append(f.drained, id)
	fn := f.drainFn
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, id)
	}
	return nil
}

func (f *simFleet) Undrain(id int64) {
	f.mu.Lock()
	f.undrained = append(f.undrained, id)
	f.mu.Unlock()
}

func (f *simFleet) Instances() ([]vastclient.Instance, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]vastclient.Instance(nil), f.rows...), f.at, f.ok
}

func (f *simFleet) Listing() (Listing, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Listing{Rows: append([]vastclient.Instance(nil), f.rows...), Started: f.at, Skipped: f.skipped}, f.ok
}

func (f *simFleet) drainedIDs() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.drained...)
}

// waitPoll waits until the fleet has polled again after now.
func (f *simFleet) waitPoll(t *testing.T) {
	t.Helper()
	n := f.polls.Load()
	waitFor(t, 5*time.Second, "a fleet poll", func() bool { return f.polls.Load() >= n+2 })
}

// harness is one simulated account with a client, a fleet and a store.
type harness struct {
	t     *testing.T
	sim   *vastsim.Sim
	api   *vastclient.Client
	fleet *simFleet
	store Store
}

func fastSim(mod func(*vastsim.Options)) vastsim.Options {
	o := vastsim.Options{
		APIKey:        testKey,
		LoadingDelay:  150 * time.Millisecond,
		DestroyDelay:  60 * time.Millisecond,
		TokenInterval: time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	return o
}

func newHarness(t *testing.T, opts vastsim.Options) *harness {
	t.Helper()
	sim := vastsim.New(opts)
	base, err := sim.Start("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	api := newClient(t, base)
	h := &harness{t: t, sim: sim, api: api, store: NewMemoryStore()}
	h.fleet = newSimFleet(t, newClient(t, base), 15*time.Millisecond)
	return h
}

// testPool is a pool renting single RTX 4090s.
func testPool() PoolTemplate {
	return PoolTemplate{
		Image:        "vllm/vllm-openai:latest",
		Env:          map[string]string{"-p 8000:8000": "1", "VLLM_MODEL": "test/model"},
		Offer:        OfferFilter{GPUName: "RTX 4090", NumGPUs: 1, MinGPURAMGB: 24, MinDirectPorts: 1},
		ReadyTimeout: jsondur.Duration(3 * time.Second),
	}
}

func (h *harness) config(mod func(*Config)) Config {
	c := Config{
		GatewayID:          "gw",
		Pools:              map[string]PoolTemplate{"p": testPool()},
		ReconcileInterval:  time.Hour, // tests reconcile explicitly unless they say otherwise
		PollInterval:       15 * time.Millisecond,
		StatusPollInterval: 40 * time.Millisecond,
		DestroyBackoff:     15 * time.Millisecond,
		DestroyBackoffMax:  80 * time.Millisecond,
		LeaseTTL:           time.Second,
		LockTimeout:        20 * time.Second,
		Logger:             zaptest.NewLogger(h.t, zaptest.Level(zap.InfoLevel)),
	}
	if mod != nil {
		mod(&c)
	}
	return c
}

func (h *harness) manager(cfg Config) *Manager {
	h.t.Helper()
	m, err := New(cfg, h.api, h.store, h.fleet)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(m.Close)
	return m
}

// run starts m.Run and returns a function that stops it and waits.
func run(t *testing.T, m *Manager) (context.CancelFunc, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	wait := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(wait)
	return cancel, wait
}

// ours returns the simulator's instances labelled for gateway "gw".
func (h *harness) ours(aliveOnly bool) []vastsim.InstanceInfo {
	var out []vastsim.InstanceInfo
	for _, in := range h.sim.Instances() {
		if strings.HasPrefix(in.Label, "cv:gw:") && (!aliveOnly || !in.Destroyed) {
			out = append(out, in)
		}
	}
	return out
}

func (h *harness) simInstance(id int64) vastsim.InstanceInfo {
	for _, in := range h.sim.Instances() {
		if in.ID == id {
			return in
		}
	}
	h.t.Fatalf("instance %d unknown to the simulator", id)
	return vastsim.InstanceInfo{}
}

// deletes counts DELETE calls the simulator received.
func (h *harness) deletes() int {
	n := 0
	for _, c := range h.sim.APICalls() {
		if c.Method == http.MethodDelete {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds, failing the test after timeout. It is
// the package's only polling loop.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitOp waits until the operation is final (or in one of states). Like
// every wait helper of this package it is waitFor underneath, with the
// timeout right after t.
func waitOp(t *testing.T, timeout time.Duration, m *Manager, id string, states ...string) Operation {
	t.Helper()
	var op Operation
	waitFor(t, timeout, "operation "+id, func() bool {
		var err error
		op, err = m.Operation(context.Background(), id)
		if err != nil {
			return false
		}
		if len(states) == 0 {
			return op.Final()
		}
		for _, s := range states {
			if op.State == s {
				return true
			}
		}
		return false
	})
	return op
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func faults503() vastsim.Faults { return vastsim.Faults{Status: 503} }
func noFaults() vastsim.Faults  { return vastsim.Faults{} }

// force makes the fleet report state for id whatever the instance does
// (a probe that no longer passes, for example); "" removes the override.
func (f *simFleet) force(id int64, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.forced == nil {
		f.forced = map[int64]string{}
	}
	if state == "" {
		delete(f.forced, id)
		return
	}
	f.forced[id] = state
	f.states[id] = fleetState{state: state, since: time.Now()}
}

// Exclude records that the manager took an instance out of routing.
func (f *simFleet) Exclude(id int64, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.excluded == nil {
		f.excluded = map[int64]string{}
	}
	f.excluded[id] = reason
}

func (f *simFleet) exclusion(id int64) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.excluded[id]
	return r, ok
}

// creates counts create calls the simulator received.
func (h *harness) creates() int {
	n := 0
	for _, c := range h.sim.APICalls() {
		if strings.HasPrefix(c.Route, "PUT /api/v0/asks/") {
			n++
		}
	}
	return n
}

// lists counts full (unfiltered) list calls the simulator received.
func (h *harness) fullLists() int {
	n := 0
	for _, c := range h.sim.APICalls() {
		if c.Method == http.MethodGet && c.Route == "GET /api/v1/instances/" && !strings.Contains(c.Query, "label") {
			n++
		}
	}
	return n
}

// provisionOne provisions an instance and waits until it is ready.
func provisionOne(t *testing.T, m *Manager) Operation {
	t.Helper()
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded {
		t.Fatalf("provisioning %s: %s", op.State, op.Error)
	}
	return op
}

// recordOf returns the Manager's copy of an instance record, or nil.
func recordOf(m *Manager, id int64) *InstanceRecord {
	for _, r := range m.Instances() {
		if r.ID == id {
			return &r
		}
	}
	return nil
}

// launchForeign puts instances on the account that the gateway must never
// touch: another gateway's, an unlabelled one, and a label that only looks
// like ours.
func launchForeign(t *testing.T, h *harness) []int64 {
	t.Helper()
	var ids []int64
	for _, l := range []string{"cv:other:p:0123456789", "", "cv:gw:bad", "cv:gw2:p:0123456789", "training-job"} {
		id, err := h.sim.Launch(vastsim.LaunchSpec{Label: l, Running: true})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}
