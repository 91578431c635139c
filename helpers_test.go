package vastai

// Shared helpers of the root package's tests: a real Caddy (in-process,
// through caddytest's admin /load), real HTTP over loopback, and vastsim
// standing in for vast.ai with a real OpenAI-compatible engine per
// instance.
//
// caddytest runs one Caddy per test binary on fixed ports (admin 2999, HTTP
// 9080), so these tests must not run in parallel; each one loads its own
// config and unloads the vastai app when it ends, so no fleet state leaks
// from one test into the next.
//
// Every wait is waitFor(t, within, what, cond) or built on it, with the
// deadline right after t.

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const (
	testAPIKey   = "sim-test-key-0123456789"
	testProxyURL = "http://localhost:9080"
	testAdminURL = "http://localhost:2999"
	testPoll     = "500ms"
)

// e2eRuns counts end-to-end tests that got a running Caddy; TestMain fails
// the binary if caddytest silently skipped all of them.
var (
	e2eMu   sync.Mutex
	e2eRuns int
)

// e2eStorage is the Caddy storage folder of this test binary: tests never
// read or write the developer's own Caddy data (host keys, records).
var e2eStorage string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-vastai-e2e-storage-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e2eStorage = dir
	// caddytest waits 5s for a config load and a request: a budget for an
	// idle machine. On a busy 2-core one a load took 8s (the tests then
	// failed on the timeout, not on what they check); these limits only
	// bound a hang.
	caddytest.Default.LoadRequestTimeout = time.Minute
	caddytest.Default.TestRequestTimeout = time.Minute
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 && !testing.Short() && runFlagEmpty() {
		e2eMu.Lock()
		n := e2eRuns
		e2eMu.Unlock()
		if n == 0 {
			fmt.Fprintln(os.Stderr, "FAIL: no end-to-end test ran: caddytest skipped them (missing test certificates or admin endpoint?)")
			code = 1
		}
	}
	os.Exit(code)
}

func runFlagEmpty() bool {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.run") || strings.HasPrefix(a, "-test.bench") {
			return false
		}
	}
	return true
}

// newSim starts a simulator that is closed when the test ends.
func newSim(t testing.TB, opts vastsim.Options) *vastsim.Sim {
	t.Helper()
	if opts.APIKey == "" {
		opts.APIKey = testAPIKey
	}
	sim := vastsim.New(opts)
	if _, err := sim.Start(""); err != nil {
		t.Fatalf("starting vastsim: %v", err)
	}
	t.Cleanup(sim.Close)
	return sim
}

func launch(t testing.TB, sim *vastsim.Sim, n int, labelPrefix string) []int64 {
	t.Helper()
	ids := make([]int64, 0, n)
	for i := 1; i <= n; i++ {
		id, err := sim.Launch(vastsim.LaunchSpec{Label: fmt.Sprintf("%s%d", labelPrefix, i), GPUName: "RTX 4090", NumGPUs: 1, DPH: 0.4, Running: true})
		if err != nil {
			t.Fatalf("launch: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// caddyfile renders a test config; site is the body of the :9080 site.
func testConfig(simURL, pools, site string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	storage file_system %s
	vastai {
		api_key {env.VASTAI_E2E_KEY}
		api_url %s
		poll_interval %s
%s
	}
}

:9080 {
%s
}
`, e2eStorage, simURL, testPoll, pools, site)
}

const llmPool = `		pool llm {
			label_prefix llm-
			port 8000
			token jupyter_token
		}`

// idleConfig is loaded between tests: no vastai app, so the shared state is
// released (what a clean stop does, too).
const idleConfig = `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
:9080 {
	respond "idle"
}`

// startCaddy loads cfg into the in-process Caddy and arranges for the
// vastai app to be unloaded at the end of the test.
func startCaddy(t testing.TB, cfg string) *caddytest.Tester {
	t.Helper()
	t.Setenv("VASTAI_E2E_KEY", testAPIKey)
	tc := caddytest.NewTester(t)
	tc.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	// A keep-alive connection to the previous config's :9080 server is
	// closed by that server's shutdown; a POST sent on it fails with EOF
	// (Go retries only idempotent requests), as TestKeysInstanceTimePricing
	// did once. Each config starts with no idle client connection.
	http.DefaultClient.CloseIdleConnections()
	e2eMu.Lock()
	e2eRuns++
	e2eMu.Unlock()
	t.Cleanup(func() {
		// Unloading the vastai app releases the shared state, so the next
		// test starts with an empty fleet.
		tc.InitServer(idleConfig, "caddyfile")
	})
	return tc
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type adminInstance struct {
	ID           int64   `json:"id"`
	Pool         *string `json:"pool"`
	Label        string  `json:"label"`
	ActualStatus *string `json:"actual_status"`
	Upstream     *string `json:"upstream"`
	Routable     bool    `json:"routable"`
	GPUName      string  `json:"gpu_name"`
	NumGPUs      int     `json:"num_gpus"`
	DPHTotal     float64 `json:"dph_total"`
}

func adminGET(t testing.TB, path string, out any) (int, []byte) {
	t.Helper()
	resp, err := http.Get(testAdminURL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: decoding %s: %v", path, body, err)
		}
	}
	return resp.StatusCode, body
}

func routableIDs(t testing.TB) map[int64]bool {
	var list []adminInstance
	adminGET(t, "/vastai/instances", &list)
	out := map[int64]bool{}
	for _, in := range list {
		if in.Routable {
			out[in.ID] = true
		}
	}
	return out
}

// waitRoutable waits until every instance of ids is routable.
func waitRoutable(t testing.TB, within time.Duration, ids []int64) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("instances %v routable", ids), func() bool {
		r := routableIDs(t)
		for _, id := range ids {
			if !r[id] {
				return false
			}
		}
		return true
	})
}

// streamEvents posts a streaming request through the proxy and returns the
// status and the arrival time of each "data:" event after the request was
// sent.
func streamEvents(t testing.TB, path, body string) (int, []time.Duration) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var arrivals []time.Duration
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			arrivals = append(arrivals, time.Since(start))
		}
	}
	return resp.StatusCode, arrivals
}

// completion sends a non-streaming completion through the proxy with a
// client Authorization header that must never reach an engine.
func completion(t testing.TB, client *http.Client) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+"/v1/completions",
		strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer client-secret-must-not-leak")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("request through the proxy: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// healthPool is llmPool with fast probes, for the health tests.
const healthPool = `		pool llm {
			label_prefix llm-
			health {
				path /health
				interval 200ms
				timeout 500ms
				unhealthy_threshold 2
				grace 1m
			}
		}`

func instanceState(t testing.TB, id int64) adminInstance2 {
	t.Helper()
	var in adminInstance2
	adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
	return in
}

type adminInstance2 struct {
	ID         int64      `json:"id"`
	State      string     `json:"state"`
	StateSince *time.Time `json:"state_since"`
	Ready      bool       `json:"ready"`
	Routable   bool       `json:"routable"`
	LastProbe  *struct {
		Time      time.Time `json:"time"`
		Status    int       `json:"status"`
		LatencyMS float64   `json:"latency_ms"`
		Error     string    `json:"error"`
		OK        bool      `json:"ok"`
	} `json:"last_probe"`
}

// waitInstanceState waits until instance id is in state.
func waitInstanceState(t testing.TB, within time.Duration, id int64, state string) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("instance %d in state %s", id, state), func() bool {
		return instanceState(t, id).State == state
	})
}

func adminError(t testing.TB, body []byte) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Errorf("not a JSON error: %s", body)
	}
	return e.Error
}

// lifecycleConfig is testConfig with a storage folder of the test's own:
// records and the machine blocklist must not carry over between tests.
func lifecycleConfig(t testing.TB, simURL, pools, site string) string {
	return strings.Replace(testConfig(simURL, pools, site), "storage file_system "+e2eStorage, "storage file_system "+t.TempDir(), 1)
}

// provisionPool is a pool that provisions RTX 4090s, with fast probes.
const provisionPool = `		lease_ttl 3s
		provision_poll_interval 300ms
		pool llm {
			health {
				interval 200ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				env HF_HOME /data
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 3
				max_price_per_hour 2
				ready_timeout 20s
			}
		}`

type operation struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"`
	Pool       string `json:"pool"`
	State      string `json:"state"`
	Error      string `json:"error"`
	InstanceID int64  `json:"instance_id"`
	Attempts   []struct {
		OfferID    int64  `json:"offer_id"`
		MachineID  int64  `json:"machine_id"`
		InstanceID int64  `json:"instance_id"`
		State      string `json:"state"`
		Error      string `json:"error"`
	} `json:"attempts"`
}

func adminDo(t testing.TB, method, path, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, testAdminURL+path, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// provisionOne asks the admin API for one instance and returns the operation.
func provisionOne(t testing.TB, pool string) operation {
	t.Helper()
	code, body := adminDo(t, http.MethodPost, "/vastai/pools/"+pool+"/instances", "")
	if code != http.StatusAccepted {
		t.Fatalf("POST /vastai/pools/%s/instances: %d %s", pool, code, body)
	}
	var out struct {
		Operations []operation `json:"operations"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out.Operations) != 1 {
		t.Fatalf("provision answer %s: %v", body, err)
	}
	return out.Operations[0]
}

// waitOperation waits until operation id is in state, failing at once if
// it fails when another state was expected.
func waitOperation(t testing.TB, within time.Duration, id, state string) operation {
	t.Helper()
	var op operation
	waitFor(t, within, "operation "+id+" "+state, func() bool {
		code, body := adminDo(t, http.MethodGet, "/vastai/operations/"+id, "")
		if code != http.StatusOK {
			return false
		}
		_ = json.Unmarshal(body, &op)
		if op.State == "failed" && state != "failed" {
			t.Fatalf("operation failed: %s", body)
		}
		return op.State == state
	})
	return op
}

// ours lists the simulator's live instances carrying this gateway's label.
func ours(sim *vastsim.Sim) []vastsim.InstanceInfo {
	var out []vastsim.InstanceInfo
	for _, in := range sim.Instances() {
		if strings.HasPrefix(in.Label, "cv:default:") && !in.Destroyed {
			out = append(out, in)
		}
	}
	return out
}

// writeSSHKey writes a fresh ed25519 private key in OpenSSH format and
// returns its path and public key.
func writeSSHKey(t testing.TB, dir string) (string, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "caddy-vastai test")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return path, sshPub
}

// sshConfig renders a test config with an ssh block and a storage folder
// of the test's own (host keys are remembered there).
func sshConfig(simURL, keyFile, storage, pools, site string) string {
	cfg := testConfig(simURL, pools+fmt.Sprintf(`
		ssh {
			key %s
			known_hosts storage
			connect_timeout 5s
			metrics_interval 300ms
		}`, keyFile), site)
	return strings.Replace(cfg, "storage file_system "+e2eStorage, "storage file_system "+storage, 1)
}

type gpuInstance struct {
	ID   int64 `json:"id"`
	GPUs []struct {
		Index          int       `json:"index"`
		Name           string    `json:"name"`
		UtilizationGPU *float64  `json:"utilization_gpu"`
		MemoryTotalMiB *float64  `json:"memory_total_mib"`
		TemperatureC   *float64  `json:"temperature_c"`
		CollectedAt    time.Time `json:"collected_at"`
	} `json:"gpus"`
	SSH *struct {
		Path      string `json:"path"`
		LastError string `json:"last_error"`
	} `json:"ssh"`
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
