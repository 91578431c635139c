package vastai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestProvisioningThroughTheAdminAPIBringsAnInstanceIntoRouting(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: time.Second})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))

	op := provisionOne(t, "llm")
	done := waitOperation(t, 30*time.Second, op.ID, "succeeded")
	if done.InstanceID == 0 || len(done.Attempts) != 1 {
		t.Fatalf("operation %+v", done)
	}
	live := ours(sim)
	if len(live) != 1 || live[0].ID != done.InstanceID || !strings.HasPrefix(live[0].Label, "cv:default:llm:") {
		t.Fatalf("simulator instances with our label: %+v", live)
	}
	waitRoutable(t, 10*time.Second, []int64{done.InstanceID})
	resp, body := completion(t, http.DefaultClient)
	if resp.StatusCode != http.StatusOK || resp.Header.Get(InstanceHeader) != fmt.Sprint(done.InstanceID) {
		t.Fatalf("request: %d from %q: %s", resp.StatusCode, resp.Header.Get(InstanceHeader), body)
	}
	if u := sim.Engine(done.InstanceID).Unauthorized; u != 0 {
		t.Errorf("the engine refused %d requests: the generated WEB_PASSWORD was not used", u)
	}
	// The generated token is secret: not in the operation, nor in the
	// instance view.
	_, opBody := adminDo(t, http.MethodGet, "/vastai/operations/"+op.ID, "")
	_, instBody := adminDo(t, http.MethodGet, fmt.Sprintf("/vastai/instances/%d", done.InstanceID), "")
	for _, b := range [][]byte{opBody, instBody} {
		if bytes.Contains(b, []byte("WEB_PASSWORD")) || bytes.Contains(b, []byte(live[0].JupyterToken)) {
			t.Fatalf("a token leaked into the admin API: %s", b)
		}
	}

	// Verified destroy through the admin API.
	code, body := adminDo(t, http.MethodDelete, fmt.Sprintf("/vastai/instances/%d", done.InstanceID), "")
	if code != http.StatusAccepted {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	waitFor(t, 30*time.Second, "the instance to be destroyed", func() bool { return len(ours(sim)) == 0 })
}

func TestAnExitedHostIsDestroyedAndReplacedFromAnotherMachine(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 2 * time.Second})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))

	op := provisionOne(t, "llm")
	var first int64
	waitFor(t, 20*time.Second, "the first instance", func() bool {
		if l := ours(sim); len(l) == 1 {
			first = l[0].ID
			return true
		}
		return false
	})
	sim.SetStatus(first, "exited") // the host gives up while loading
	done := waitOperation(t, 60*time.Second, op.ID, "succeeded")
	if len(done.Attempts) < 2 {
		t.Fatalf("attempts %+v, want the failed one and its replacement", done.Attempts)
	}
	a0, last := done.Attempts[0], done.Attempts[len(done.Attempts)-1]
	if a0.InstanceID != first || a0.Error == "" || last.MachineID == a0.MachineID || last.InstanceID != done.InstanceID {
		t.Errorf("attempts %+v", done.Attempts)
	}
	waitFor(t, 30*time.Second, "the exited instance destroyed", func() bool {
		for _, in := range sim.Instances() {
			if in.ID == first {
				return in.Destroyed
			}
		}
		return true
	})
	if l := ours(sim); len(l) != 1 || l[0].ID != done.InstanceID {
		t.Fatalf("live instances %+v, want only the replacement", l)
	}
}

func TestAdminAPIRefusesBadInput(t *testing.T) {
	sim := newSim(t, vastsim.Options{Credit: 100})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))

	huge := `{"count": 1, "pad": "` + strings.Repeat("x", 70<<10) + `"}`
	cases := []struct {
		method, path, body string
		code               int
		mention            string
	}{
		{"POST", "/vastai/pools/llm/instances", `{"count": "two"}`, 400, "count"},
		{"POST", "/vastai/pools/llm/instances", `{"offer_id": 1.5}`, 400, "offer_id"},
		{"POST", "/vastai/pools/llm/instances", `{"count": 1, "gpu": "a100"}`, 400, "unknown field"},
		{"POST", "/vastai/pools/llm/instances", `{"count": 1}{"count": 2}`, 400, "after the JSON"},
		{"POST", "/vastai/pools/llm/instances", `[1, 2]`, 400, "must be a JSON object"},
		{"POST", "/vastai/pools/llm/instances", `{not json`, 400, "not valid JSON"},
		{"POST", "/vastai/pools/llm/instances", `{"count": -1}`, 400, "count"},
		{"POST", "/vastai/pools/llm/instances", `{"count": 99}`, 400, "count"},
		{"POST", "/vastai/pools/llm/instances", huge, 413, "larger than"},
		{"POST", "/vastai/pools/llm/instances", `{"count": 4}`, 409, "max_instances"},
		{"POST", "/vastai/pools/nope/instances", ``, 404, "unknown pool"},
		{"GET", "/vastai/operations/does-not-exist", ``, 404, "not found"},
		{"DELETE", "/vastai/instances/999999999", ``, 404, ""},
		{"DELETE", "/vastai/instances/-3", ``, 400, "positive integer"},
		{"POST", "/vastai/instances/abc/drain", ``, 400, "positive integer"},
		{"GET", "/vastai/offers", ``, 400, "pool"},
		{"GET", "/vastai/offers?pool=nope", ``, 404, "unknown pool"},
		{"GET", "/vastai/offers?pool=llm&max_dph=cheap", ``, 400, "max_dph"},
		{"GET", "/vastai/offers?pool=llm&colour=red", ``, 400, "colour"},
		{"PUT", "/vastai/reconcile", ``, 405, "not allowed"},
		{"DELETE", "/vastai/operations", ``, 405, "not allowed"},
	}
	for _, c := range cases {
		code, body := adminDo(t, c.method, c.path, c.body)
		var e struct {
			Error string `json:"error"`
		}
		if code != c.code || json.Unmarshal(body, &e) != nil || e.Error == "" || !strings.Contains(e.Error, c.mention) {
			t.Errorf("%s %s %.40q: %d %s; want %d with a JSON error mentioning %q", c.method, c.path, c.body, code, body, c.code, c.mention)
		}
	}
	if n := len(ours(sim)); n != 0 {
		t.Errorf("bad requests created %d instances", n)
	}

	// Offers come live from vast.ai, filtered by the pool and overrides.
	code, body := adminDo(t, http.MethodGet, "/vastai/offers?pool=llm&max_dph=5", "")
	var offers []struct {
		ID      int64   `json:"id"`
		GPUName string  `json:"gpu_name"`
		DPH     float64 `json:"dph_total"`
	}
	if code != 200 || json.Unmarshal(body, &offers) != nil || len(offers) == 0 {
		t.Fatalf("offers: %d %s", code, body)
	}
	for _, o := range offers {
		if o.GPUName != "RTX 4090" || o.DPH > 5 {
			t.Errorf("offer outside the pool's filter: %+v", o)
		}
	}
	// The reconciliation report.
	code, body = adminDo(t, http.MethodPost, "/vastai/reconcile", "")
	if code != 200 || !bytes.Contains(body, []byte(`"listed":true`)) {
		t.Errorf("reconcile: %d %s", code, body)
	}
}

func TestBudgetRefusalIsAConflictWithTheFigures(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	// A gateway budget below any offer's price.
	pool := strings.Replace(strings.Replace(provisionPool, "\t\t\t\tmax_price_per_hour 2\n", "", 1), "lease_ttl 3s", "lease_ttl 3s\n\t\tmax_spend_per_hour 0.01", 1)
	startCaddy(t, lifecycleConfig(t, sim.URL(), pool, `	vastai_proxy llm`))
	code, body := adminDo(t, http.MethodPost, "/vastai/pools/llm/instances", "")
	var out struct {
		Error  string `json:"error"`
		Budget struct {
			Scope     string  `json:"scope"`
			Limit     float64 `json:"limit"`
			Requested float64 `json:"requested"`
		} `json:"budget"`
	}
	if code != http.StatusConflict || json.Unmarshal(body, &out) != nil || out.Budget.Limit != 0.01 || out.Budget.Requested <= 0.01 || out.Error == "" {
		t.Fatalf("budget refusal: %d %s", code, body)
	}
	if n := len(ours(sim)); n != 0 {
		t.Errorf("a refused provisioning created %d instances", n)
	}
}

func TestReloadAndUnloadDestroyNothing(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 500 * time.Millisecond})
	storageCfg := lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`)
	tc := startCaddy(t, storageCfg)
	op := provisionOne(t, "llm")
	done := waitOperation(t, 30*time.Second, op.ID, "succeeded")

	for i := 0; i < 3; i++ {
		tc.InitServer(strings.Replace(storageCfg, "disk 20", fmt.Sprintf("disk %d", 21+i), 1), "caddyfile")
	}
	// Unloading the app entirely (what a clean stop does) destroys nothing.
	tc.InitServer(idleConfig, "caddyfile")
	// The unload is synchronous: when /load returned, the old app's state
	// was released and its lifecycle manager had stopped.
	live := ours(sim)
	if len(live) != 1 || live[0].ID != done.InstanceID {
		t.Fatalf("after reloads and an unload, live instances %+v; want instance %d untouched", live, done.InstanceID)
	}
	for _, c := range sim.APICalls() {
		if c.Method == http.MethodDelete {
			t.Fatalf("a DELETE was sent: %+v", c)
		}
	}
}

func TestDrainWaitsForInFlightStreamsThenDestroys(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 500 * time.Millisecond, TokenInterval: 100 * time.Millisecond})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))
	op := provisionOne(t, "llm")
	id := waitOperation(t, 30*time.Second, op.ID, "succeeded").InstanceID
	waitRoutable(t, 10*time.Second, []int64{id})

	// A 3-second stream is in flight when the drain starts.
	type result struct {
		status int
		events []time.Duration
	}
	streamDone := make(chan result, 1)
	go func() {
		st, ev := streamEvents(t, "/v1/completions", `{"model":"vastsim/tiny-llm","prompt":"long","stream":true,"max_tokens":30}`)
		streamDone <- result{st, ev}
	}()
	waitFor(t, 5*time.Second, "the stream to start", func() bool { return sim.Engine(id).InFlight == 1 })

	code, body := adminDo(t, http.MethodPost, fmt.Sprintf("/vastai/instances/%d/drain", id), "")
	if code != http.StatusAccepted {
		t.Fatalf("drain: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "the drained instance out of routing", func() bool { return !routableIDs(t)[id] })
	for _, in := range sim.Instances() {
		if in.ID == id && in.Destroyed {
			t.Fatal("destroyed while a stream was still in flight")
		}
	}
	r := <-streamDone
	if r.status != http.StatusOK || len(r.events) < 30 {
		t.Fatalf("the in-flight stream was cut: status %d, %d events", r.status, len(r.events))
	}
	waitFor(t, 30*time.Second, "the destroy after the drain", func() bool { return len(ours(sim)) == 0 })
}

// TestDestroyTakesTheInstanceOutOfRoutingAtOnce (issue 7, defect 12):
// right after DELETE /vastai/instances/{id} answered, the instance is not
// routable (reason "destroying") and no new request reaches it, although
// the listing still shows it running for a while.
func TestDestroyTakesTheInstanceOutOfRoutingAtOnce(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 500 * time.Millisecond, DestroyDelay: 3 * time.Second})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))
	op := provisionOne(t, "llm")
	id := waitOperation(t, 30*time.Second, op.ID, "succeeded").InstanceID
	waitRoutable(t, 10*time.Second, []int64{id})

	code, body := adminDo(t, http.MethodDelete, fmt.Sprintf("/vastai/instances/%d", id), "")
	if code != http.StatusAccepted {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	completions := sim.Engine(id).Completions
	code, body = adminDo(t, http.MethodGet, fmt.Sprintf("/vastai/instances/%d", id), "")
	var view struct {
		Routable bool   `json:"routable"`
		Reason   string `json:"reason"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &view) != nil {
		t.Fatalf("GET instance after DELETE: %d %s", code, body)
	}
	if view.Routable || view.Reason != "destroying" {
		t.Fatalf("right after DELETE: routable %v, reason %q; want routable false, reason destroying", view.Routable, view.Reason)
	}
	for i := 0; i < 3; i++ {
		completion(t, http.DefaultClient)
	}
	if n := sim.Engine(id).Completions - completions; n != 0 {
		t.Errorf("%d new requests reached the instance being destroyed", n)
	}
	waitFor(t, 30*time.Second, "the instance to be destroyed", func() bool { return len(ours(sim)) == 0 })
}

// TestRestartWithABrokenProbeKeepsTheReadyFleet: after a restart whose new
// config probes a path the engine does not serve, the instance that was
// ready before is kept (not destroyed, not replaced), and /vastai/status
// and the metrics say loudly that the whole pool fails its probe.
func TestRestartWithABrokenProbeKeepsTheReadyFleet(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 300 * time.Millisecond})
	cfg := lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`)
	tc := startCaddy(t, cfg)
	done := waitOperation(t, 30*time.Second, provisionOne(t, "llm").ID, "succeeded")
	waitRoutable(t, 10*time.Second, []int64{done.InstanceID})

	// A clean stop, then a start with a probe that can never pass and a
	// fast reconcile: the old code destroyed the instance as dead.
	tc.InitServer(idleConfig, "caddyfile")
	broken := strings.Replace(cfg, "interval 200ms", "interval 200ms\n\t\t\t\tpath /no-such-health\n\t\t\t\tgrace 1s", 1)
	broken = strings.Replace(broken, "lease_ttl 3s", "lease_ttl 3s\n\t\treconcile_interval 500ms", 1)
	if broken == cfg {
		t.Fatal("the broken config is the same as the original")
	}
	tc.InitServer(broken, "caddyfile")

	var st struct {
		ProbeFailingPools []string `json:"probe_failing_pools"`
		Problem           string   `json:"problem"`
	}
	waitFor(t, 60*time.Second, "status to report pool llm failing its probe", func() bool {
		adminGET(t, "/vastai/status", &st)
		return len(st.ProbeFailingPools) == 1 && st.ProbeFailingPools[0] == "llm"
	})
	if !strings.Contains(st.Problem, "health probe") {
		t.Errorf("status problem %q does not explain the failing probes", st.Problem)
	}
	_, metrics := adminGET(t, "/metrics", nil)
	if !bytes.Contains(metrics, []byte(`caddy_vastai_pool_probe_failing{pool="llm"} 1`)) {
		t.Errorf("metrics lack caddy_vastai_pool_probe_failing{pool=\"llm\"} 1")
	}
	// Reconcile rounds are the events that used to destroy it: wait for
	// three more of them after the pool was reported.
	reconciles := func() float64 {
		_, m := adminGET(t, "/metrics", nil)
		var n float64
		for _, line := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(line, `caddy_vastai_lifecycle_events_total{event="reconcile"}`) {
				fmt.Sscanf(strings.Fields(line)[1], "%g", &n)
			}
		}
		return n
	}
	base := reconciles()
	waitFor(t, 60*time.Second, "three more reconcile rounds", func() bool { return reconciles() >= base+3 })
	live := ours(sim)
	if len(live) != 1 || live[0].ID != done.InstanceID {
		t.Fatalf("live instances %+v; want instance %d kept and nothing new", live, done.InstanceID)
	}
	creates := 0
	for _, c := range sim.APICalls() {
		if c.Method == http.MethodDelete {
			t.Fatalf("a destroy was sent: %+v", c)
		}
		if c.Method == http.MethodPut && strings.Contains(c.Path, "/asks/") {
			creates++
		}
	}
	if creates != 1 {
		t.Fatalf("%d creates, want only the first one (no replacement)", creates)
	}
}
