package vastai

// End-to-end tests of model routing (vastai_models with vastai_proxy *):
// a real Caddy in front of vastsim pools whose engines serve different
// models. vastsim's engine refuses a request for a model it does not
// serve (404), so a request routed to the wrong pool cannot pass.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/enginestate"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// modelPools are three pools; pool-c has no instance until a test adds one.
const modelPools = `		pool pool-a {
			label_prefix pool-a-
			token jupyter_token
		}
		pool pool-b {
			label_prefix pool-b-
			token jupyter_token
		}
		pool pool-c {
			label_prefix pool-c-
			token jupyter_token
		}`

const modelSite = `	vastai_models {
		alias org/model-c pool-c
		max_body 1KiB
		retry_after 7s
	}
	vastai_proxy * {
		lb_policy vastai_cache_aware
		lb_try_duration 1s
	}`

func launchModel(t *testing.T, sim *vastsim.Sim, label, model string) int64 {
	t.Helper()
	id, err := sim.Launch(vastsim.LaunchSpec{Label: label, Model: model, GPUName: "RTX 4090", NumGPUs: 1, DPH: 0.4, Running: true})
	if err != nil {
		t.Fatalf("launch %s: %v", label, err)
	}
	return id
}

type proxyAnswer struct {
	status int
	header http.Header
	body   []byte
}

func proxyDo(t *testing.T, method, path, body string) proxyAnswer {
	t.Helper()
	req, _ := http.NewRequest(method, testProxyURL+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return proxyAnswer{resp.StatusCode, resp.Header, b}
}

type modelList struct {
	Object string `json:"object"`
	Data   []struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		OwnedBy string `json:"owned_by"`
	} `json:"data"`
}

func listModels(t *testing.T) (modelList, map[string]string) {
	t.Helper()
	a := proxyDo(t, http.MethodGet, "/v1/models", "")
	var l modelList
	if a.status != http.StatusOK || json.Unmarshal(a.body, &l) != nil {
		t.Fatalf("GET /v1/models: %d %s", a.status, a.body)
	}
	owners := map[string]string{}
	for _, m := range l.Data {
		owners[m.ID] = m.OwnedBy
	}
	return l, owners
}

// checkAPIError checks an OpenAI error body exactly: the four keys, the
// type and code, and what the message must name.
func checkAPIError(t *testing.T, a proxyAnswer, status int, typ string, code any, mentions ...string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
	var body map[string]map[string]any
	if err := json.Unmarshal(a.body, &body); err != nil || len(body) != 1 || body["error"] == nil {
		t.Fatalf("body %s is not {\"error\": {...}}", a.body)
	}
	e := body["error"]
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range e {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Equal(keys, []string{"code", "message", "param", "type"}) || e["type"] != typ || e["code"] != code || e["param"] != nil {
		t.Errorf("error = %v, want exactly message/type %q/param null/code %v", e, typ, code)
	}
	msg, _ := e["message"].(string)
	for _, m := range mentions {
		if !strings.Contains(msg, m) {
			t.Errorf("message %q does not mention %q", msg, m)
		}
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
}

// modelDecisions reads vastai_models' route-decision counter of a pool and
// reason from /metrics.
func modelDecisions(t *testing.T, pool, reason string) int {
	t.Helper()
	_, metrics := adminGET(t, "/metrics", nil)
	prefix := fmt.Sprintf(`caddy_vastai_route_decisions_total{policy="vastai_models",pool=%q,reason=%q} `, pool, reason)
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestModelRoutingSendsEachModelToItsPool: two pools with different
// models behind one site; routing, the model list, the errors and the
// bounded body read.
func TestModelRoutingSendsEachModelToItsPool(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	a1 := launchModel(t, sim, "pool-a-1", "org/model-a")
	a2 := launchModel(t, sim, "pool-a-2", "org/model-a")
	b1 := launchModel(t, sim, "pool-b-1", "org/model-b")
	startCaddy(t, testConfig(sim.URL(), modelPools, modelSite))
	waitRoutable(t, 10*time.Second, []int64{a1, a2, b1})
	waitFor(t, 10*time.Second, "both models in GET /v1/models", func() bool {
		_, owners := listModels(t)
		return owners["org/model-a"] != "" && owners["org/model-b"] != ""
	})

	l, owners := listModels(t)
	if l.Object != "list" || len(l.Data) != 2 || l.Data[0].ID != "org/model-a" || l.Data[0].Object != "model" {
		t.Errorf("model list = %+v, want org/model-a and org/model-b, sorted (org/model-c's pool has no instance)", l)
	}
	if owners["org/model-a"] != "pool-a" || owners["org/model-b"] != "pool-b" {
		t.Errorf("owned_by = %v, want each model's pool", owners)
	}
	var view struct {
		Models []string `json:"models"`
	}
	adminGET(t, fmt.Sprintf("/vastai/instances/%d", b1), &view)
	if !slices.Equal(view.Models, []string{"org/model-b"}) {
		t.Errorf("admin view of instance %d: models %v, want [org/model-b]", b1, view.Models)
	}

	routes := []struct {
		name, path, body string
		instances        []int64
	}{
		{"completion of model a", "/v1/completions", `{"model":"org/model-a","prompt":"hi","max_tokens":2}`, []int64{a1, a2}},
		{"completion of model b", "/v1/completions", `{"prompt":"hi","model":"org/model-b","max_tokens":2}`, []int64{b1}},
		{"chat of model b", "/v1/chat/completions", `{"model":"org/model-b","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, []int64{b1}},
	}
	for _, c := range routes {
		t.Run(c.name, func(t *testing.T) {
			for range 4 {
				a := proxyDo(t, http.MethodPost, c.path, c.body)
				got := a.header.Get(InstanceHeader)
				if a.status != http.StatusOK || !slices.ContainsFunc(c.instances, func(id int64) bool { return fmt.Sprint(id) == got }) {
					t.Fatalf("status %d from instance %q, want 200 from one of %v: %s", a.status, got, c.instances, a.body)
				}
			}
		})
	}

	t.Run("streamed completion", func(t *testing.T) {
		status, events := streamEvents(t, "/v1/completions", `{"model":"org/model-a","prompt":"hi","max_tokens":5,"stream":true}`)
		if status != http.StatusOK || len(events) < 5 {
			t.Errorf("stream: status %d with %d events, want 200 with at least 5", status, len(events))
		}
	})
	t.Run("unknown model", func(t *testing.T) {
		a := proxyDo(t, http.MethodPost, "/v1/completions", `{"model":"org/nope","prompt":"hi"}`)
		checkAPIError(t, a, http.StatusNotFound, "invalid_request_error", "model_not_found", "org/nope", "org/model-a", "org/model-b")
		if n := modelDecisions(t, "", "unknown_model"); n != 1 {
			t.Errorf("route decisions unknown_model = %d, want 1", n)
		}
	})
	t.Run("no model with several pools", func(t *testing.T) {
		a := proxyDo(t, http.MethodPost, "/v1/completions", `{"prompt":"hi"}`)
		checkAPIError(t, a, http.StatusBadRequest, "invalid_request_error", nil, "model")
	})
	t.Run("one model", func(t *testing.T) {
		a := proxyDo(t, http.MethodGet, "/v1/models/org/model-b", "")
		var m struct{ ID, OwnedBy string }
		if a.status != http.StatusOK || json.Unmarshal(a.body, &m) != nil || m.ID != "org/model-b" {
			t.Errorf("GET /v1/models/org/model-b: %d %s", a.status, a.body)
		}
		checkAPIError(t, proxyDo(t, http.MethodGet, "/v1/models/org/nope", ""), http.StatusNotFound, "invalid_request_error", "model_not_found", "org/nope")
	})
	t.Run("body beyond max_body passed on intact", checkBodyPassedOnIntact)
}

// checkBodyPassedOnIntact: a body ten times max_body reaches the engine
// whole, and a model named only after the bound is not seen.
func checkBodyPassedOnIntact(t *testing.T) {
	prompt := strings.Repeat("word ", 2000) // 10 kB, ten times max_body
	a := proxyDo(t, http.MethodPost, "/v1/completions", `{"model":"org/model-b","max_tokens":1,"prompt":"`+prompt+`"}`)
	var out struct {
		Model string `json:"model"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if a.status != http.StatusOK || json.Unmarshal(a.body, &out) != nil {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	if out.Usage.PromptTokens != 2000 || out.Model != "org/model-b" {
		t.Errorf("engine saw %d prompt tokens of %s, want 2000 of org/model-b: the body was not passed on whole", out.Usage.PromptTokens, out.Model)
	}
	// A model named only after the bound is not seen.
	a = proxyDo(t, http.MethodPost, "/v1/completions", `{"prompt":"`+prompt+`","model":"org/model-b"}`)
	checkAPIError(t, a, http.StatusBadRequest, "invalid_request_error", nil, "model")
}

// TestModelRoutingWaitsForAnInstanceThen503: a known model (an alias, or
// a pool's learned model after its last instance left) with no ready
// instance waits for lb_try_duration, then gets a 503 with Retry-After;
// once an instance is ready, the same request is served by it.
func TestModelRoutingWaitsForAnInstanceThen503(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	b1 := launchModel(t, sim, "pool-b-1", "org/model-b")
	startCaddy(t, testConfig(sim.URL(), modelPools, modelSite))
	waitRoutable(t, 10*time.Second, []int64{b1})
	waitFor(t, 10*time.Second, "org/model-b learned", func() bool { _, o := listModels(t); return o["org/model-b"] != "" })

	const reqC = `{"model":"org/model-c","prompt":"hi","max_tokens":2}`
	start := time.Now()
	a := proxyDo(t, http.MethodPost, "/v1/completions", reqC)
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("answered after %s, before lb_try_duration (1s)", waited)
	}
	checkAPIError(t, a, http.StatusServiceUnavailable, "service_unavailable", "model_not_ready", "org/model-c", "pool-c")
	if got := a.header.Get("Retry-After"); got != "7" {
		t.Errorf("Retry-After = %q, want 7 (retry_after 7s)", got)
	}

	if n := modelDecisions(t, "pool-c", "no_ready_instance"); n != 1 {
		t.Errorf("route decisions no_ready_instance for pool-c = %d, want 1", n)
	}

	c1 := launchModel(t, sim, "pool-c-1", "org/model-c")
	waitRoutable(t, 10*time.Second, []int64{c1})
	a = proxyDo(t, http.MethodPost, "/v1/completions", reqC)
	if a.status != http.StatusOK || a.header.Get(InstanceHeader) != fmt.Sprint(c1) {
		t.Fatalf("after pool-c got an instance: status %d from %q, want 200 from %d: %s", a.status, a.header.Get(InstanceHeader), c1, a.body)
	}
	if n := modelDecisions(t, "pool-c", "alias"); n != 1 {
		t.Errorf("route decisions alias for pool-c = %d, want 1", n)
	}
	if _, owners := listModels(t); owners["org/model-c"] != "pool-c" {
		t.Errorf("GET /v1/models owners = %v, want the alias org/model-c listed for pool-c", owners)
	}

	// pool-b loses its only instance: its model stays known and waits.
	sim.Remove(b1)
	waitFor(t, 15*time.Second, "instance b1 no longer routable", func() bool { return !routableIDs(t)[b1] })
	a = proxyDo(t, http.MethodPost, "/v1/completions", `{"model":"org/model-b","prompt":"hi"}`)
	checkAPIError(t, a, http.StatusServiceUnavailable, "service_unavailable", "model_not_ready", "org/model-b")
	if _, owners := listModels(t); owners["org/model-b"] != "" {
		t.Errorf("GET /v1/models still lists org/model-b with no instance: %v", owners)
	}
}

// TestModelRoutingThroughTheSSHTunnel: under tunnel addresses the engines
// are reachable only over SSH, so the model lists are learned through the
// tunnel too, and requests reach the right pool over it.
func TestModelRoutingThroughTheSSHTunnel(t *testing.T) {
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	a1 := launchModel(t, sim, "pool-a-1", "org/model-a")
	b1 := launchModel(t, sim, "pool-b-1", "org/model-b")
	startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), modelPools, `	vastai_models
	vastai_proxy * {
		transport vastai {
			tunnel ssh
		}
	}`))
	waitRoutable(t, 15*time.Second, []int64{a1, b1})
	waitFor(t, 15*time.Second, "both models learned through the tunnel", func() bool {
		_, owners := listModels(t)
		return owners["org/model-a"] == "pool-a" && owners["org/model-b"] == "pool-b"
	})
	for model, id := range map[string]int64{"org/model-a": a1, "org/model-b": b1} {
		a := proxyDo(t, http.MethodPost, "/v1/completions", `{"model":"`+model+`","prompt":"hi","max_tokens":2}`)
		if a.status != http.StatusOK || a.header.Get(InstanceHeader) != fmt.Sprint(id) {
			t.Errorf("%s: status %d from %q, want 200 from %d: %s", model, a.status, a.header.Get(InstanceHeader), id, a.body)
		}
	}
	for _, id := range []int64{a1, b1} {
		if u := sim.Engine(id).Unauthorized; u != 0 {
			t.Errorf("instance %d answered %d requests with 401: a model read went without the token", id, u)
		}
	}
}

// runningLearner returns the shared state's model learner (this test
// binary runs Caddy in process); Range does not take a reference.
func runningLearner(t *testing.T) *enginestate.ModelLearner {
	t.Helper()
	var l *enginestate.ModelLearner
	states.Range(func(_, v any) bool {
		l = v.(*state).models.Load()
		return false
	})
	if l == nil {
		t.Fatal("no model learner is running")
	}
	return l
}

// TestModelRoutingSurvivesAReload: a reload keeps the running learner and
// what it learned, so a request right after it is routed at once instead
// of waiting for the model lists to be read again.
func TestModelRoutingSurvivesAReload(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	b1 := launchModel(t, sim, "pool-b-1", "org/model-b")
	tc := startCaddy(t, testConfig(sim.URL(), modelPools, modelSite))
	waitRoutable(t, 10*time.Second, []int64{b1})
	waitFor(t, 10*time.Second, "org/model-b learned", func() bool { _, o := listModels(t); return o["org/model-b"] != "" })
	before := runningLearner(t)
	tc.InitServer(testConfig(sim.URL(), modelPools, strings.Replace(modelSite, "retry_after 7s", "retry_after 8s", 1)), "caddyfile")
	if after := runningLearner(t); after != before {
		t.Errorf("the reload replaced the model learner (%p, then %p)", before, after)
	}
	a := proxyDo(t, http.MethodPost, "/v1/completions", `{"model":"org/model-b","prompt":"hi","max_tokens":2}`)
	if a.status != http.StatusOK || a.header.Get(InstanceHeader) != fmt.Sprint(b1) {
		t.Fatalf("right after the reload: status %d from %q, want 200 from %d: %s", a.status, a.header.Get(InstanceHeader), b1, a.body)
	}
}
