package vastai

// End-to-end tests of routing, health and the admin API; the harness
// (a real Caddy, vastsim, the wait helpers) is in helpers_test.go.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestProxySpreadsRequestsWithEachInstancesOwnToken(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	launch(t, sim, 1, "training-") // not selected by the pool: must get nothing
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm {
		lb_policy round_robin
	}`))
	waitRoutable(t, 10*time.Second, ids)

	client := &http.Client{Timeout: 10 * time.Second}
	perInstance := map[string]int{}
	const n = 30
	for i := 0; i < n; i++ {
		resp, body := completion(t, client)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, body)
		}
		got := resp.Header.Get(InstanceHeader)
		if got == "" || got != resp.Header.Get("X-Vastsim-Instance") {
			t.Fatalf("X-Vastai-Instance %q does not name the engine that answered (%q)", got, resp.Header.Get("X-Vastsim-Instance"))
		}
		perInstance[got]++
	}
	for _, id := range ids {
		key := fmt.Sprint(id)
		if perInstance[key] != n/3 {
			t.Errorf("round_robin: instance %d served %d of %d requests, want %d (%v)", id, perInstance[key], n, n/3, perInstance)
		}
		st := sim.Engine(id)
		if st.Unauthorized != 0 {
			t.Errorf("instance %d answered %d requests with 401: a wrong or client token reached it", id, st.Unauthorized)
		}
	}
	for _, in := range sim.Instances() {
		if strings.HasPrefix(in.Label, "training-") && sim.Engine(in.ID).Requests != 0 {
			t.Errorf("unselected instance %d got traffic", in.ID)
		}
	}
}

func TestClientAuthorizationIsReplacedNotForwarded(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, ids)

	// The engine answers 401 unless the header is exactly its token; a
	// forwarded or appended client credential would fail.
	for _, auth := range []string{"", "Bearer client-secret", "Basic dXNlcjpwYXNz"} {
		req, _ := http.NewRequest(http.MethodGet, testProxyURL+"/v1/models", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"data"`)) {
			t.Errorf("client Authorization %q: status %d body %s", auth, resp.StatusCode, body)
		}
	}
	if u := sim.Engine(ids[0]).Unauthorized; u != 0 {
		t.Errorf("%d requests reached the engine with the wrong credentials", u)
	}
}

func TestStreamedCompletionArrivesEventByEvent(t *testing.T) {
	const interval = 40 * time.Millisecond
	sim := newSim(t, vastsim.Options{TokenInterval: interval})
	ids := launch(t, sim, 1, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, ids)

	req, _ := http.NewRequest(http.MethodPost, testProxyURL+"/v1/chat/completions",
		strings.NewReader(`{"model":"vastsim/tiny-llm","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"count"}]}`))
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var arrivals []time.Duration
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		arrivals = append(arrivals, time.Since(start))
		if line == "data: [DONE]" {
			done = true
		}
	}
	if !done {
		t.Fatalf("stream ended without [DONE] after %d events", len(arrivals))
	}
	if len(arrivals) < 20 {
		t.Fatalf("got %d events, want at least 20", len(arrivals))
	}
	first, last := arrivals[0], arrivals[len(arrivals)-1]
	// Buffering would deliver everything at once; unbuffered streaming
	// spreads the events over the engine's ~19 token intervals.
	if spread := last - first; spread < 10*interval {
		t.Errorf("events arrived within %s of each other (first %s, last %s): the stream was buffered", spread, first, last)
	}
}

func TestDestroyedInstanceStopsReceivingTraffic(t *testing.T) {
	sim := newSim(t, vastsim.Options{DestroyDelay: 3 * time.Second})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm {
		lb_policy round_robin
		lb_try_duration 5s
	}`))
	waitRoutable(t, 10*time.Second, ids)

	victim := ids[1]
	sim.Remove(victim)
	// Two poll intervals, plus the list endpoint's 1s pacing per poll.
	waitFor(t, 2*(500*time.Millisecond+time.Second)+time.Second, "destroyed instance out of routing", func() bool {
		return !routableIDs(t)[victim]
	})
	before := sim.Engine(victim).Requests
	client := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < 12; i++ {
		resp, body := completion(t, client)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		if resp.Header.Get(InstanceHeader) == fmt.Sprint(victim) {
			t.Fatalf("request %d was served by the destroyed instance", i)
		}
	}
	if after := sim.Engine(victim).Requests; after != before {
		t.Errorf("destroyed instance received %d requests", after-before)
	}
}

// outageDeadline bounds a wait for the watcher to observe an API fault or
// its end. A listing that fails is retried up to vastclient's
// DefaultMaxAttempts with jittered backoff (up to 10s apart), after the
// list endpoint's own pacing: generous, since waits end at the event.
const outageDeadline = 90 * time.Second

func TestAPIOutageKeepsRoutingOnTheLastSnapshot(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm {
		lb_policy round_robin
	}`))
	waitRoutable(t, 10*time.Second, ids)

	for _, fault := range []vastsim.Faults{{Status: 503}, {RateLimit: true}, {Status: 500}, {MalformedJSON: true}} {
		sim.SetFaults(fault)
		var status struct {
			ConsecutiveFailures int     `json:"consecutive_failures"`
			LastError           string  `json:"last_error"`
			StaleSeconds        float64 `json:"stale_seconds"`
		}
		// The event is the watcher's failed listing: the client first
		// retries with backoff (429s for longer), so on a loaded machine it
		// can take a while; the deadline only bounds a hang.
		waitFor(t, outageDeadline, fmt.Sprintf("the watcher to see fault %+v", fault), func() bool {
			adminGET(t, "/vastai/status", &status)
			return status.ConsecutiveFailures >= 1
		})
		if strings.Contains(status.LastError, testAPIKey) {
			t.Fatalf("the API key leaked into the status: %q", status.LastError)
		}
		served := map[string]bool{}
		for i := 0; i < 9; i++ {
			resp, body := completion(t, http.DefaultClient)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("fault %+v: request %d: %d %s", fault, i, resp.StatusCode, body)
			}
			served[resp.Header.Get(InstanceHeader)] = true
		}
		if len(served) != 3 {
			t.Errorf("fault %+v: traffic reached %d instances, want all 3", fault, len(served))
		}
		sim.SetFaults(vastsim.Faults{})
		waitFor(t, outageDeadline, "the watcher to recover", func() bool {
			adminGET(t, "/vastai/status", &status)
			return status.ConsecutiveFailures == 0
		})
	}
}

func TestThirtyInstancesAcrossTwoPagesAreAllFound(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 30, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 15*time.Second, ids)

	var pool struct {
		Routable []int64 `json:"routable"`
	}
	if code, body := adminGET(t, "/vastai/pools/llm", &pool); code != http.StatusOK {
		t.Fatalf("GET /vastai/pools/llm: %d %s", code, body)
	}
	if len(pool.Routable) != 30 {
		t.Errorf("pool has %d routable instances, want 30", len(pool.Routable))
	}
	pages := 0
	for _, c := range sim.APICalls() {
		if c.Path == "/api/v0/instances/" {
			t.Errorf("the retired v0 list endpoint was called")
		}
		if c.Path == "/api/v1/instances/" && strings.Contains(c.Query, "after_token") {
			pages++
		}
	}
	if pages == 0 {
		t.Errorf("next_token was never followed")
	}
}

func TestReloadKeepsStateAndRunsExactlyOneWatcher(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	tc := startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, ids)

	for i := 0; i < 4; i++ {
		// Each reload changes the config, so Caddy really swaps apps.
		site := fmt.Sprintf("\tvastai_proxy llm {\n\t\theader_down X-Reload %d\n\t}", i)
		tc.InitServer(testConfig(sim.URL(), llmPool, site), "caddyfile")
		// State survives the reload: the instances are routable at once,
		// before any new poll.
		r := routableIDs(t)
		for _, id := range ids {
			if !r[id] {
				t.Fatalf("reload %d: instance %d not routable right after the reload", i, id)
			}
		}
		resp, body := completion(t, http.DefaultClient)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Reload") != fmt.Sprint(i) {
			t.Fatalf("reload %d: status %d X-Reload %q: %s", i, resp.StatusCode, resp.Header.Get("X-Reload"), body)
		}
		var status struct {
			WatchersRunning int `json:"watchers_running"`
		}
		adminGET(t, "/vastai/status", &status)
		if status.WatchersRunning != 1 {
			t.Fatalf("reload %d: %d watcher loops running, want exactly 1", i, status.WatchersRunning)
		}
	}
	if n, _ := states.References(stateKey); n != 1 {
		t.Errorf("shared state has %d references after the reloads, want 1", n)
	}
}

func TestAdminAPIListsInstancesWithoutSecrets(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 2, "llm-")
	other := launch(t, sim, 1, "batch-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, ids)

	var list []adminInstance
	_, raw := adminGET(t, "/vastai/instances", &list)
	for _, in := range sim.Instances() {
		if strings.Contains(string(raw), in.JupyterToken) {
			t.Fatalf("instance %d's token appears in the admin API", in.ID)
		}
	}
	if strings.Contains(string(raw), testAPIKey) {
		t.Fatal("the API key appears in the admin API")
	}
	byID := map[int64]adminInstance{}
	for _, in := range list {
		byID[in.ID] = in
	}
	for _, id := range ids {
		in := byID[id]
		if in.Pool == nil || *in.Pool != "llm" || in.Upstream == nil || in.ActualStatus == nil || *in.ActualStatus != "running" ||
			in.GPUName != "RTX 4090" || in.NumGPUs != 1 || in.DPHTotal <= 0 {
			t.Errorf("instance %d: %+v", id, in)
		}
	}
	if in, ok := byID[other[0]]; !ok || in.Pool != nil || in.Routable {
		t.Errorf("unpooled instance: %+v (present %v), want pool null and not routable", in, ok)
	}

	var one adminInstance
	if code, body := adminGET(t, fmt.Sprintf("/vastai/instances/%d", ids[0]), &one); code != http.StatusOK || one.ID != ids[0] {
		t.Errorf("GET one: %d %s", code, body)
	}
	cases := []struct {
		path string
		code int
	}{
		{"/vastai/instances/999999999", http.StatusNotFound},
		{"/vastai/instances/abc", http.StatusBadRequest},
		{"/vastai/pools/nope", http.StatusNotFound},
		{"/vastai/nothing", http.StatusNotFound},
	}
	for _, c := range cases {
		code, body := adminGET(t, c.path, nil)
		var e struct {
			Error string `json:"error"`
		}
		if code != c.code || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("GET %s: %d %s, want %d with a JSON error", c.path, code, body, c.code)
		}
	}
	// Metrics: the fleet is visible, secrets are not.
	_, metrics := adminGET(t, "/metrics", nil)
	for _, want := range []string{`caddy_vastai_pool_routable_instances{pool="llm"} 2`, `caddy_vastai_instances{pool="llm",state="ready"} 2`, `caddy_vastai_watchers_running 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, in := range sim.Instances() {
		if strings.Contains(string(metrics), in.JupyterToken) {
			t.Fatalf("instance %d's token appears in the metrics", in.ID)
		}
	}
	if strings.Contains(string(metrics), testAPIKey) {
		t.Fatal("the API key appears in the metrics")
	}

	req, _ := http.NewRequest(http.MethodDelete, testAdminURL+"/vastai/instances", nil)
	req.Header.Set("Origin", testAdminURL)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /vastai/instances: %d, want 405", resp.StatusCode)
	}
}

func TestEngineStillLoadingGetsNoTrafficUntilReady(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	sim.SetEngineReady(ids[0], false) // "loading weights": the portal answers with placeholders
	startCaddy(t, testConfig(sim.URL(), healthPool, `	vastai_proxy llm`))

	waitFor(t, 10*time.Second, "probes of the loading engine", func() bool {
		in := instanceState(t, ids[0])
		return in.LastProbe != nil && !in.LastProbe.OK
	})
	in := instanceState(t, ids[0])
	if in.State != "starting" || in.Routable || in.Ready || !strings.Contains(in.LastProbe.Error, "X-Portal-Placeholder") {
		t.Fatalf("loading engine: %+v, want starting, unroutable, placeholder probe error", in)
	}
	for i := 0; i < 3; i++ {
		resp, body := completion(t, http.DefaultClient)
		// No upstream: Caddy's own 503, not the engine's placeholder 502.
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Portal-Placeholder") != "" {
			t.Fatalf("request to a pool with only a loading engine: %d %q %s", resp.StatusCode, resp.Header.Get("X-Portal-Placeholder"), body)
		}
	}
	if c := sim.Engine(ids[0]).Completions; c != 0 {
		t.Fatalf("the loading engine accepted %d completions", c)
	}

	sim.SetEngineReady(ids[0], true)
	waitInstanceState(t, 10*time.Second, ids[0], "ready")
	resp, body := completion(t, http.DefaultClient)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after ready: %d %s", resp.StatusCode, body)
	}
}

func TestHangingEngineIsDrainedFromRouting(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), healthPool, `	vastai_proxy llm {
		lb_policy round_robin
		transport vastai {
			response_header_timeout 3s
		}
	}`))
	waitRoutable(t, 10*time.Second, ids)

	victim := ids[0]
	sim.HangEngine(victim, true)
	start := time.Now()
	// timeout + unhealthy_threshold × interval = 500ms + 2×200ms, plus a
	// probe tick and the admin read.
	waitInstanceState(t, 3*time.Second, victim, "unhealthy")
	t.Logf("hung engine marked unhealthy after %s (bound 900ms)", time.Since(start))
	for i := 0; i < 9; i++ {
		resp, body := completion(t, &http.Client{Timeout: 5 * time.Second})
		if resp.StatusCode != http.StatusOK || resp.Header.Get(InstanceHeader) == fmt.Sprint(victim) {
			t.Fatalf("request %d after drain: %d from %s: %s", i, resp.StatusCode, resp.Header.Get(InstanceHeader), body)
		}
	}
	sim.HangEngine(victim, false)
	waitInstanceState(t, 5*time.Second, victim, "ready")
}

func TestClientCancellationsNeverMarkAnInstanceUnhealthy(t *testing.T) {
	sim := newSim(t, vastsim.Options{TokenInterval: 100 * time.Millisecond})
	ids := launch(t, sim, 1, "llm-")
	// Probes are rare here, so only the passive signals could change
	// the state during the test.
	startCaddy(t, testConfig(sim.URL(), `		pool llm {
			label_prefix llm-
			health {
				interval 1h
				unhealthy_threshold 2
			}
		}`, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, ids)

	for i := 0; i < 6; i++ {
		// A non-streaming completion of 20 tokens takes 2s; the client
		// gives up after 150ms, before the response headers.
		client := &http.Client{Timeout: 150 * time.Millisecond}
		req, _ := http.NewRequest(http.MethodPost, testProxyURL+"/v1/completions",
			strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"slow","max_tokens":20}`))
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("request %d finished; the test needs it cancelled", i)
		}
	}
	// A streaming client that leaves mid-stream.
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+"/v1/completions",
		strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"slow","max_tokens":20,"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _ = resp.Body.Read(buf)
	resp.Body.Close()

	waitFor(t, 5*time.Second, "the engine to see the cancellations", func() bool { return sim.Engine(ids[0]).InFlight == 0 })
	if in := instanceState(t, ids[0]); in.State != "ready" || !in.Routable {
		t.Fatalf("after client cancellations the instance is %+v, want ready", in)
	}
	resp2, body := completion(t, http.DefaultClient)
	if resp2.StatusCode != http.StatusOK {
		t.Fatalf("after cancellations: %d %s", resp2.StatusCode, body)
	}
}

func TestPlaceholderResponsesTakeAReadyInstanceOutOfRotation(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 2, "llm-")
	startCaddy(t, testConfig(sim.URL(), healthPool, `	vastai_proxy llm {
		lb_policy round_robin
		lb_try_duration 2s
	}`))
	waitRoutable(t, 10*time.Second, ids)

	victim := ids[1]
	sim.SetEngineReady(victim, false) // the engine restarts behind the portal
	waitInstanceState(t, 5*time.Second, victim, "unhealthy")
	for i := 0; i < 6; i++ {
		resp, body := completion(t, http.DefaultClient)
		if resp.StatusCode != http.StatusOK || resp.Header.Get(InstanceHeader) != fmt.Sprint(ids[0]) {
			t.Fatalf("request %d: %d from %q: %s", i, resp.StatusCode, resp.Header.Get(InstanceHeader), body)
		}
	}
	sim.SetEngineReady(victim, true)
	waitInstanceState(t, 5*time.Second, victim, "ready")
}

// withLogFile adds a JSON log file to a test config and returns its path:
// Caddy's own logs, as an operator would read them.
func withLogFile(t testing.TB, cfg string) (string, string) {
	t.Helper()
	path := t.TempDir() + "/caddy.log"
	logOpt := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", path)
	return strings.Replace(cfg, "\tadmin localhost:2999\n", "\tadmin localhost:2999\n"+logOpt, 1), path
}

type logEntry struct {
	Level  string `json:"level"`
	Logger string `json:"logger"`
	Msg    string `json:"msg"`
	Field  string `json:"field"`
}

func readLog(t testing.TB, path string) ([]logEntry, string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []logEntry
	for _, line := range strings.Split(string(raw), "\n") {
		var e logEntry
		if json.Unmarshal([]byte(line), &e) == nil {
			out = append(out, e)
		}
	}
	return out, string(raw)
}

func TestProvisionCountZeroIsRefusedAndAbsentMeansOne(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 200 * time.Millisecond})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))

	code, body := adminDo(t, http.MethodPost, "/vastai/pools/llm/instances", `{"count": 0}`)
	if code != http.StatusBadRequest || adminError(t, body) != "count: 0 is out of range 1-32" {
		t.Fatalf(`{"count": 0}: %d %s; want 400 "count: 0 is out of range 1-32"`, code, body)
	}
	var ops []operation
	if code, body := adminGET(t, "/vastai/operations", &ops); code != http.StatusOK || len(ops) != 0 {
		t.Fatalf("after the refused request: operations %d %s, want none", code, body)
	}
	for _, absent := range []string{``, `{}`, `{"offer_id": 0}`} {
		code, body := adminDo(t, http.MethodPost, "/vastai/pools/llm/instances", absent)
		var out struct {
			Operations []operation `json:"operations"`
		}
		if code != http.StatusAccepted || json.Unmarshal(body, &out) != nil || len(out.Operations) != 1 {
			t.Fatalf("body %q: %d %s; want 202 with exactly one operation", absent, code, body)
		}
	}
}

func TestLiteralSecretsInTheConfigAreWarnedAboutByField(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	t.Setenv("VASTAI_E2E_HOME", "/data")
	const staticToken, hfToken = "sk-literal-static-4711", "hf_literal_secret_0815"
	pools := `		pool llm {
			label_prefix llm-
			token static ` + staticToken + `
		}
		pool gen {
			provision {
				image vllm/vllm-openai:latest
				env HF_TOKEN ` + hfToken + `
				env HF_HOME {env.VASTAI_E2E_HOME}
			}
		}`
	// {$VAR} is expanded when the Caddyfile is adapted, so the key ends
	// up in the JSON config as a literal.
	cfg := strings.Replace(lifecycleConfig(t, sim.URL(), pools, `	vastai_proxy llm`), "api_key {env.VASTAI_E2E_KEY}", "api_key {$VASTAI_E2E_KEY}", 1)
	cfg, logPath := withLogFile(t, cfg)
	startCaddy(t, cfg)

	want := map[string]bool{"api_key": false, "pools.llm.token.value": false, "pools.gen.provision.env.HF_TOKEN": false}
	var raw string
	waitFor(t, 30*time.Second, "literal-secret warnings in the log", func() bool {
		var entries []logEntry
		entries, raw = readLog(t, logPath)
		for _, e := range entries {
			if e.Level == "warn" && strings.Contains(e.Msg, "literal secret") {
				if _, ok := want[e.Field]; !ok {
					t.Fatalf("warning about field %q, which holds no literal secret: %+v", e.Field, e)
				}
				want[e.Field] = true
			}
		}
		for _, seen := range want {
			if !seen {
				return false
			}
		}
		return true
	})
	for _, secret := range []string{testAPIKey, staticToken, hfToken} {
		if strings.Contains(raw, secret) {
			t.Errorf("the log contains the secret %q", secret)
		}
	}
	// The warning is right: the literal values are served back.
	_, conf := adminGET(t, "/config/", nil)
	if !strings.Contains(string(conf), hfToken) || strings.Contains(string(conf), "/data") {
		t.Errorf("GET /config/ should hold the literal HF_TOKEN and not the resolved HF_HOME: %s", conf)
	}
}

func TestReloadsLeaveIdleUpstreamConnectionsFlat(t *testing.T) {
	sim := newSim(t, vastsim.Options{TokenInterval: 10 * time.Millisecond})
	ids := launch(t, sim, 1, "llm-")
	cfgFor := func(i int) string {
		return testConfig(sim.URL(), llmPool, fmt.Sprintf("\tvastai_proxy llm {\n\t\theader_down X-Reload %d\n\t}", i))
	}
	tc := startCaddy(t, cfgFor(0))
	waitRoutable(t, 10*time.Second, ids)

	// burst sends 8 overlapping completions, so the current transport
	// holds about 8 idle connections afterwards.
	burst := func(round int) {
		var wg sync.WaitGroup
		errs := make(chan string, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, body := completion(t, &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{}})
				if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Reload") != fmt.Sprint(round) {
					errs <- fmt.Sprintf("round %d: %d %q %s", round, resp.StatusCode, resp.Header.Get("X-Reload"), body)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
	}
	burst(0)
	base := sim.Engine(ids[0]).OpenConns
	t.Logf("open engine connections after the first burst: %d", base)
	for i := 1; i <= 8; i++ {
		tc.InitServer(cfgFor(i), "caddyfile")
		burst(i)
		// Closing idle connections is asynchronous at the engine's end;
		// a transport that never closes them stays above the bound.
		var open int64
		waitFor(t, 10*time.Second, fmt.Sprintf("reload %d: at most %d upstream connections open at the engine (%d after the first burst; old transports keep theirs)", i, base+2, base), func() bool {
			open = sim.Engine(ids[0]).OpenConns
			return open <= base+2
		})
		t.Logf("reload %d: %d open engine connections", i, open)
	}
}

func TestDrainIsAllowedWhereDestroyIsAndHonoursForce(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	pooled := launch(t, sim, 2, "llm-")
	unpooled := launch(t, sim, 2, "batch-")
	startCaddy(t, lifecycleConfig(t, sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, pooled)

	// Each pair: the same request as drain and as DELETE, on two instances
	// alike; both must answer the same.
	cases := []struct {
		name           string
		drain, destroy int64
		query          string
		want           int
	}{
		{"routing-only pool", pooled[0], pooled[1], "", http.StatusAccepted},
		{"no pool, no force", unpooled[0], unpooled[1], "", http.StatusForbidden},
		{"no pool, force", unpooled[0], unpooled[1], "?force=1", http.StatusAccepted},
	}
	for _, c := range cases {
		dc, db := adminDo(t, http.MethodPost, fmt.Sprintf("/vastai/instances/%d/drain%s", c.drain, c.query), "")
		xc, xb := adminDo(t, http.MethodDelete, fmt.Sprintf("/vastai/instances/%d%s", c.destroy, c.query), "")
		if dc != c.want || xc != c.want {
			t.Errorf("%s: drain %d %s, DELETE %d %s; want both %d", c.name, dc, db, xc, xb, c.want)
		}
	}
	waitFor(t, 60*time.Second, "all four instances destroyed", func() bool {
		n := 0
		for _, in := range sim.Instances() {
			if in.Destroyed {
				n++
			}
		}
		return n == 4
	})
}

// TestAdminAPIAnswersMistakesWithTheRightStatus goes through a real admin
// endpoint: what is wrong decides the status, and the message says it.
func TestAdminAPIAnswersMistakesWithTheRightStatus(t *testing.T) {
	sim := newSim(t, vastsim.Options{Credit: 100})
	pools := provisionPool + `
		pool static {
			label_prefix static-
		}`
	startCaddy(t, lifecycleConfig(t, sim.URL(), pools, `	vastai_proxy llm`))

	const obj = `the body must be a JSON object like {"count": 1}`
	cases := []struct {
		method, path, body string
		code               int
		mention, allow     string
	}{
		{"POST", "/vastai/pools/llm/instances", `{"offer_id": 5, "count": 2}`, 400, "offer_id", ""},
		{"POST", "/vastai/pools/llm/instances", `{"COUNT": 40}`, 400, `unknown field "COUNT"`, ""},
		{"POST", "/vastai/pools/llm/instances", `{"Count": 1}`, 400, `unknown field "Count"`, ""},
		{"POST", "/vastai/pools/llm/instances", `{"count": 1, "count": 2}`, 400, `"count" appears twice`, ""},
		{"POST", "/vastai/pools/llm/instances", `[1, 2]`, 400, obj, ""},
		{"POST", "/vastai/pools/llm/instances", `"two"`, 400, obj, ""},
		{"POST", "/vastai/pools/llm/instances", `null`, 400, obj, ""},
		{"POST", "/vastai/pools/static/instances", ``, 409, `pool "static" has no provision block`, ""},
		{"POST", "/vastai/pools/nope/instances", ``, 404, `unknown pool "nope"`, ""},
		{"GET", "/vastai/offers?pool=static", ``, 409, `pool "static" has no provision block`, ""},
		{"GET", "/vastai/offers?pool=nope", ``, 404, `unknown pool "nope"`, ""},
		{"GET", "/vastai/offers?pool=llm&verified=maybe", ``, 400, "verified", ""},
		{"GET", "/vastai/offers?pool=llm&num_gpus=1&num_gpus=2", ``, 400, "num_gpus", ""},
		{"GET", "/vastai/offers?pool=llm&countries=US,,CA", ``, 400, "countries", ""},
		{"GET", "/vastai/offers?pool=llm&gpu_name=", ``, 400, "gpu_name", ""},
		{"DELETE", "/vastai/instances/5?force=yes", ``, 400, "force", ""},
		{"POST", "/vastai/instances/5/drain?force=2", ``, 400, "force", ""},
		{"GET", "/vastai/operations/abc/extra", ``, 404, "no such endpoint", ""},
		{"POST", "/vastai/reconcile/now", ``, 404, "no such endpoint", ""},
		{"GET", "/vastai/pools/llm/nothing", ``, 404, "no such endpoint", ""},
		{"GET", "/vastai/instances/5/drain", ``, 405, "not allowed", "POST"},
		{"GET", "/vastai/pools/llm/instances", ``, 405, "not allowed", "POST"},
		{"PUT", "/vastai/instances/5", ``, 405, "not allowed", "DELETE, GET"},
		{"POST", "/vastai/status", ``, 405, "not allowed", "GET"},
		{"DELETE", "/vastai/operations", ``, 405, "not allowed", "GET"},
		{"GET", "/vastai/reconcile", ``, 405, "not allowed", "POST"},
		{"POST", "/vastai/pools", ``, 405, "not allowed", "GET"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, testAdminURL+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		msg := adminError(t, body)
		if resp.StatusCode != c.code || !strings.Contains(msg, c.mention) || resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s %s: %d %s (Allow %q); want %d mentioning %q (Allow %q)",
				c.method, c.path, c.body, resp.StatusCode, body, resp.Header.Get("Allow"), c.code, c.mention, c.allow)
		}
	}
	if n := len(ours(sim)); n != 0 {
		t.Errorf("bad requests created %d instances", n)
	}
}

// TestAdminErrorsAndLoggerNamesSayThingsOnce checks exact messages: no
// "lifecycle:" prefixes in admin answers, no doubled logger name.
func TestAdminErrorsAndLoggerNamesSayThingsOnce(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	other := launch(t, sim, 1, "batch-")
	pooled := launch(t, sim, 1, "llm-")
	cfg, logPath := withLogFile(t, lifecycleConfig(t, sim.URL(), llmPool, `	vastai_proxy llm`))
	startCaddy(t, cfg)
	waitRoutable(t, 10*time.Second, pooled)

	cases := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/vastai/operations/nope", ``, 404, `operation not found: "nope"`},
		{"DELETE", fmt.Sprintf("/vastai/instances/%d", other[0]), ``, 403,
			fmt.Sprintf(`instance %d is labelled "batch-1": not created or adopted by this gateway; add ?force=1 to destroy it anyway`, other[0])},
		{"DELETE", "/vastai/instances/999999999", ``, 404, "instance not found: 999999999"},
	}
	for _, c := range cases {
		code, body := adminDo(t, c.method, c.path, c.body)
		if got := adminError(t, body); code != c.code || got != c.want {
			t.Errorf("%s %s: %d %q; want %d %q", c.method, c.path, code, got, c.code, c.want)
		}
	}
	// A destroy makes the lifecycle manager log.
	if code, body := adminDo(t, http.MethodDelete, fmt.Sprintf("/vastai/instances/%d", pooled[0]), ""); code != http.StatusAccepted {
		t.Fatalf("DELETE pooled: %d %s", code, body)
	}
	waitFor(t, 30*time.Second, "the lifecycle manager's log lines", func() bool {
		entries, _ := readLog(t, logPath)
		found := false
		for _, e := range entries {
			if strings.Contains(e.Logger, "lifecycle") && e.Logger != "vastai.lifecycle" {
				t.Fatalf("lifecycle logger named %q, want vastai.lifecycle", e.Logger)
			}
			found = found || (e.Logger == "vastai.lifecycle" && e.Msg == "destroying instance")
		}
		return found
	})
}
