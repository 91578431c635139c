package vastai

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/keys"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// Secrets of the config keys, passed through {env.*} placeholders.
const (
	keyTeamA   = "cvk_team-a-secret-0123456789abcdef"
	keyExpired = "cvk_expired-secret-0123456789abcdef"
	keyOther   = "cvk_other-pool-secret-0123456789ab"
	keyModel   = "cvk_model-limited-secret-012345678"
)

// keysSite is a site that checks keys before proxying to pool llm.
const keysSite = `	vastai_keys
	vastai_proxy llm`

// otherPool is a second pool, which key "other" is limited to.
const otherPool = `		pool elsewhere {
			label_prefix other-
		}`

// keysBlock defines the config keys of these tests; extra goes inside it.
func keysBlock(extra string) string {
	return `		keys {
			poll_interval 200ms
			flush_interval 1s
			key team-a {
				secret {env.TEST_KEY_TEAM_A}
			}
			key old {
				secret {env.TEST_KEY_EXPIRED}
				expires 2020-01-01
			}
			key other {
				secret {env.TEST_KEY_OTHER}
				pools elsewhere
			}
			key small {
				secret {env.TEST_KEY_MODEL}
				models vastsim/other-llm
			}
` + extra + `
		}`
}

func setKeyEnv(t *testing.T) {
	t.Setenv("TEST_KEY_TEAM_A", keyTeamA)
	t.Setenv("TEST_KEY_EXPIRED", keyExpired)
	t.Setenv("TEST_KEY_OTHER", keyOther)
	t.Setenv("TEST_KEY_MODEL", keyModel)
}

// keyedRequest posts body to path with the key (none when key is "")
// and returns the status, headers and body.
func keyedRequest(t testing.TB, path, key, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// keyedGet GETs path with the key (none when key is "").
func keyedGet(t testing.TB, path, key string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, testProxyURL+path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// apiErrorCode reads error.code of an OpenAI-shaped error.
func apiErrorCode(t testing.TB, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Type == "" || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error: %s", body)
	}
	return e.Error.Code
}

const tinyCompletion = `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4}`

// startKeysGateway starts one llm instance behind vastai_keys, with a
// fresh keys folder in the test storage and every log line (debug
// included) written to the returned file.
func startKeysGateway(t *testing.T, extraKeys, site string) (*vastsim.Sim, int64, string) {
	t.Helper()
	setKeyEnv(t)
	if err := os.RemoveAll(filepath.Join(e2eStorage, "vastai", "keys")); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	cfg := testConfig(sim.URL(), llmPool+"\n"+otherPool+"\n"+keysBlock(extraKeys), site)
	cfg = strings.Replace(cfg, "\tskip_install_trust\n", "\tskip_install_trust\n\tlog {\n\t\toutput file "+logFile+"\n\t\tlevel DEBUG\n\t}\n", 1)
	startCaddy(t, cfg)
	waitRoutable(t, 10*time.Second, ids)
	return sim, ids[0], logFile
}

func TestKeysRefusedBeforeUpstream(t *testing.T) {
	sim, id, _ := startKeysGateway(t, "", keysSite)
	cases := []struct {
		name, key  string
		get        bool // GET /v1/models instead of a completion
		status     int
		code       string
		reachesSim bool
	}{
		{"missing", "", false, http.StatusUnauthorized, "invalid_api_key", false},
		{"unknown", "cvk_not-a-key", false, http.StatusUnauthorized, "invalid_api_key", false},
		{"expired", keyExpired, false, http.StatusUnauthorized, "invalid_api_key", false},
		{"other pool", keyOther, false, http.StatusForbidden, "pool_not_allowed", false},
		{"other model", keyModel, false, http.StatusForbidden, "model_not_allowed", false},
		{"model list of a key limited to models", keyModel, true, http.StatusOK, "", true},
		{"model list without a key", "", true, http.StatusUnauthorized, "invalid_api_key", false},
		{"valid", keyTeamA, false, http.StatusOK, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := sim.Engine(id).Requests
			var status int
			var body []byte
			if tc.get {
				status, body = keyedGet(t, "/v1/models", tc.key)
			} else {
				status, _, body = keyedRequest(t, "/v1/completions", tc.key, tinyCompletion)
			}
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.code != "" {
				if got := apiErrorCode(t, body); got != tc.code {
					t.Errorf("code %q, want %q", got, tc.code)
				}
			}
			if reached := sim.Engine(id).Requests != before; reached != tc.reachesSim {
				t.Errorf("engine reached: %v, want %v", reached, tc.reachesSim)
			}
			if strings.Contains(string(body), tc.key) && tc.key != "" {
				t.Errorf("the answer echoes the key")
			}
		})
	}
}

// TestKeysAdminLifecycle: a key created through the admin API works at
// once; a second gateway (a registry over the same storage folder, as
// another Caddy would run) knows it after one poll; revoking it refuses it
// here at once, before any upstream request, and there after one poll.
// The secret appears only in the creation's answer: never in the list,
// the logs, the metrics, storage or /config/.
func TestKeysAdminLifecycle(t *testing.T) {
	sim, id, logFile := startKeysGateway(t, "", keysSite)
	status, body := adminDo(t, http.MethodPost, "/vastai/keys", `{"name":"team-b","models":["vastsim/tiny-llm"],"rpm":100,"budget":5,"period":"day"}`)
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, body)
	}
	var created adminapi.KeyCreated
	if err := json.Unmarshal(body, &created); err != nil || !strings.HasPrefix(created.Secret, keys.SecretPrefix) || created.Status != "active" {
		t.Fatalf("create answer %s (%v)", body, err)
	}
	secret := created.Secret
	if st, b := adminDo(t, http.MethodPost, "/vastai/keys", `{"name":"team-b"}`); st != http.StatusConflict {
		t.Errorf("second create of team-b: %d %s", st, b)
	}
	if st, _, b := keyedRequest(t, "/v1/completions", secret, tinyCompletion); st != http.StatusOK {
		t.Fatalf("request with the new key: %d %s", st, b)
	}
	other := keys.New(&certmagic.FileStorage{Path: e2eStorage}, "vastai/keys", "second-gateway")
	if err := other.Poll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Snapshot().Lookup(secret, time.Now()); err != nil {
		t.Fatalf("second gateway after a poll: %v", err)
	}
	if st, b := adminDo(t, http.MethodDelete, "/vastai/keys/team-b", ""); st != http.StatusOK || !strings.Contains(string(b), `"revoked"`) {
		t.Fatalf("revoke: %d %s", st, b)
	}
	before := sim.Engine(id).Requests
	st, _, b := keyedRequest(t, "/v1/completions", secret, tinyCompletion)
	if st != http.StatusUnauthorized || apiErrorCode(t, b) != "invalid_api_key" || sim.Engine(id).Requests != before {
		t.Fatalf("revoked key: %d %s (engine requests %d → %d)", st, b, before, sim.Engine(id).Requests)
	}
	if err := other.Poll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Snapshot().Lookup(secret, time.Now()); err == nil {
		t.Fatal("second gateway still accepts the revoked key after a poll")
	}
	if st, b := adminDo(t, http.MethodDelete, "/vastai/keys/team-a", ""); st != http.StatusBadRequest {
		t.Errorf("revoking a config key: %d %s", st, b)
	}
	if st, b := adminDo(t, http.MethodGet, "/vastai/keys/nope/usage", ""); st != http.StatusNotFound {
		t.Errorf("usage of an unknown key: %d %s", st, b)
	}
	assertNoSecrets(t, logFile, secret, keyTeamA, keyExpired, keyOther, keyModel)
}

// assertNoSecrets looks for every secret (and its hash, in the admin
// answers) in the admin API's answers, the metrics, the logs, the storage
// folder and /config/.
func assertNoSecrets(t *testing.T, logFile string, secrets ...string) {
	t.Helper()
	places := map[string]string{}
	for _, p := range []string{"/vastai/keys", "/vastai/keys/team-a", "/vastai/keys/team-a/usage?period=day", "/config/", "/metrics"} {
		_, b := adminDo(t, http.MethodGet, p, "")
		places["GET "+p] = string(b)
	}
	logs, err := os.ReadFile(logFile)
	if err != nil || len(logs) == 0 {
		t.Fatalf("reading the log %s: %v (%d bytes)", logFile, err, len(logs))
	}
	places["log"] = string(logs)
	_ = filepath.WalkDir(e2eStorage, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			places["storage "+p] = string(b)
		}
		return nil
	})
	for where, text := range places {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s holds a key secret", where)
			}
			if !strings.HasPrefix(where, "storage") && strings.Contains(text, keys.Hash(s)) {
				t.Errorf("%s holds a key hash", where)
			}
		}
	}
}

// keyUsage reads a key's usage over period from the admin API.
func keyUsage(t testing.TB, name, period string) adminapi.KeyUsage {
	t.Helper()
	var u adminapi.KeyUsage
	if st, b := adminGET(t, "/vastai/keys/"+name+"/usage?period="+period, &u); st != http.StatusOK {
		t.Fatalf("usage of %s: %d %s", name, st, b)
	}
	return u
}

// TestKeysStreamUsage: a stream whose client did not ask for usage gets
// none (the chunk the gateway asked for is stripped) and is otherwise
// what the engine sent, while its tokens are counted exactly, as the
// simulator counted them; a client that asked for usage keeps its chunk.
// Non-streamed answers are counted from their usage. The per-key metrics
// show the same figures.
func TestKeysStreamUsage(t *testing.T) {
	sim, id, _ := startKeysGateway(t, "", keysSite)
	cases := []struct {
		name, body string
		wantUsage  bool
		events     int // data: events the client gets (0: not a stream)
	}{
		// 7 tokens and [DONE]: no usage chunk.
		{"stream without include_usage", `{"model":"vastsim/tiny-llm","prompt":"count the tokens of this prompt","max_tokens":7,"stream":true}`, false, 8},
		// 5 tokens, the usage chunk the client asked for, [DONE].
		{"stream with include_usage", `{"model":"vastsim/tiny-llm","prompt":"and of this one","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`, true, 7},
		// the role chunk, 6 tokens, [DONE].
		{"chat stream without include_usage", `{"model":"vastsim/tiny-llm","messages":[{"role":"user","content":"hi there"}],"max_tokens":6,"stream":true}`, false, 8},
		{"whole answer", `{"model":"vastsim/tiny-llm","prompt":"not streamed","max_tokens":3}`, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, u0 := sim.Engine(id), keyUsage(t, "team-a", "day")
			path := "/v1/completions"
			if strings.Contains(tc.body, "messages") {
				path = "/v1/chat/completions"
			}
			status, _, body := keyedRequest(t, path, keyTeamA, tc.body)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			if got := strings.Contains(string(body), `"prompt_tokens"`); got != tc.wantUsage {
				t.Fatalf("usage in the answer: %v, want %v:\n%s", got, tc.wantUsage, body)
			}
			if tc.events > 0 && (!strings.HasSuffix(string(body), "data: [DONE]\n\n") || strings.Count(string(body), "data: ") != tc.events) {
				t.Fatalf("want %d events ending with [DONE], got %d:\n%s", tc.events, strings.Count(string(body), "data: "), body)
			}
			after, u1 := sim.Engine(id), keyUsage(t, "team-a", "day")
			wantIn, wantOut := after.PromptTokens-before.PromptTokens, after.GenerationTokens-before.GenerationTokens
			if in, out := u1.TokensIn-u0.TokensIn, u1.TokensOut-u0.TokensOut; in != wantIn || out != wantOut || wantOut == 0 {
				t.Errorf("counted %d in / %d out, the engine %d / %d", in, out, wantIn, wantOut)
			}
			if u1.Estimated != u0.Estimated || u1.Requests != u0.Requests+1 {
				t.Errorf("estimated %d → %d, requests %d → %d", u0.Estimated, u1.Estimated, u0.Requests, u1.Requests)
			}
		})
	}
	_, metrics := adminDo(t, http.MethodGet, "/metrics", "")
	for _, want := range []string{
		`caddy_vastai_key_requests_total{code="200",key="team-a",pool="llm"} 4`,
		`caddy_vastai_key_tokens_total{direction="out",key="team-a"}`,
		`caddy_vastai_key_spend_dollars_total{key="team-a"}`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestKeysBudgetUnderConcurrency: 50 concurrent requests against a
// budget that fits 10 worst cases spend no more than the budget plus one
// reservation; the refused ones get 429 budget_exceeded with Retry-After,
// and the spend is what the engine's tokens cost.
func TestKeysBudgetUnderConcurrency(t *testing.T) {
	// $0.01 per completion token, prompts free in pool llm: a request with
	// max_tokens 4 reserves $0.04 and a little more (the site names no
	// pool, so the prompt is reserved at the dearest pool's rate): the
	// budget fits 9 or 10.
	const reservation, budget = 0.04, 0.40
	t.Setenv("TEST_KEY_CAPPED", "cvk_capped-secret-0123456789abcdef")
	sim, id, _ := startKeysGateway(t, `			pool_price llm 0 10000
			key capped {
				secret {env.TEST_KEY_CAPPED}
				budget 0.40 day
			}`, keysSite)
	before := sim.Engine(id)
	codes := make(chan int, 50)
	retry := make(chan string, 50)
	start := make(chan struct{})
	for range 50 {
		go func() {
			<-start
			st, h, b := keyedRequest(t, "/v1/completions", "cvk_capped-secret-0123456789abcdef", tinyCompletion)
			if st == http.StatusTooManyRequests && apiErrorCode(t, b) != "budget_exceeded" {
				st = -1
			}
			codes <- st
			retry <- h.Get("Retry-After")
		}()
	}
	close(start)
	ok, refused := 0, 0
	for range 50 {
		switch st, ra := <-codes, <-retry; st {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			refused++
			if ra == "" {
				t.Error("a 429 without Retry-After")
			}
		default:
			t.Errorf("status %d", st)
		}
	}
	u := keyUsage(t, "capped", "day")
	engineOut := sim.Engine(id).GenerationTokens - before.GenerationTokens
	t.Logf("admitted %d, refused %d, spent $%.4f of $%.2f", ok, refused, u.Spend, budget)
	if ok == 0 || refused == 0 || u.Spend > budget+reservation+1e-9 {
		t.Fatalf("admitted %d refused %d spent %.4f: want spend <= %.2f", ok, refused, u.Spend, budget+reservation)
	}
	if want := float64(engineOut) * 0.01; u.Spend < want-1e-9 || u.Spend > want+1e-9 || u.TokensOut != engineOut {
		t.Errorf("spent $%.4f for %d tokens; the engine generated %d ($%.4f)", u.Spend, u.TokensOut, engineOut, want)
	}
	// The spend reaches storage within the flush interval.
	waitFor(t, 5*time.Second, "the spend record", func() bool {
		b, err := os.ReadFile(filepath.Join(e2eStorage, "vastai", "keys", "spend", "default.json"))
		return err == nil && strings.Contains(string(b), `"capped"`) && strings.Contains(string(b), fmt.Sprintf(`"requests":%d`, ok))
	})
	// The cost ledger by key has today's row for it, with the same figures.
	for _, period := range []string{"day", "month"} {
		var costs struct {
			By    string  `json:"by"`
			Total float64 `json:"total_dollars"`
			Rows  []struct {
				Period    string  `json:"period"`
				Key       string  `json:"key"`
				Requests  int     `json:"requests"`
				TokensOut int64   `json:"tokens_out"`
				Spend     float64 `json:"spend"`
			} `json:"rows"`
		}
		if code, body := adminGET(t, "/vastai/costs?by=key&period="+period, &costs); code != http.StatusOK {
			t.Fatalf("costs by key: %d %s", code, body)
		}
		found := false
		for _, r := range costs.Rows {
			if r.Key == "capped" {
				found = true
				if r.Requests != ok || r.TokensOut != engineOut || math.Abs(r.Spend-u.Spend) > 1e-9 {
					t.Errorf("costs by key (%s): %+v, want %d requests, %d tokens out, $%.4f", period, r, ok, engineOut, u.Spend)
				}
			}
		}
		if !found || costs.By != "key" || costs.Total < u.Spend-1e-9 {
			t.Errorf("costs by key (%s) lack the key or its spend: %+v", period, costs)
		}
	}
}

// TestKeysInstanceTimePricing: without a price per token, a request is
// charged its share of the instance's $/h: dph_total × its duration / the
// requests the instance served at once (one here), so never more than the
// instance cost over the request's wall time.
func TestKeysInstanceTimePricing(t *testing.T) {
	_, id, _ := startKeysGateway(t, "", keysSite)
	var in adminInstance
	adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
	dph := in.DPHTotal
	u0 := keyUsage(t, "team-a", "day")
	start := time.Now()
	body := `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":20}`
	if st, _, b := keyedRequest(t, "/v1/completions", keyTeamA, body); st != http.StatusOK {
		t.Fatalf("%d %s", st, b)
	}
	wall := time.Since(start)
	u1 := keyUsage(t, "team-a", "day")
	spent, charged := u1.Spend-u0.Spend, u1.Seconds-u0.Seconds
	if dph <= 0 || spent <= 0 || spent > dph*wall.Hours()+1e-12 || charged <= 0 || charged > wall.Seconds() {
		t.Fatalf("spent $%g over %.3fs charged (wall %s) at $%g/h; want 0 < spend <= dph × wall", spent, charged, wall, dph)
	}
	if want := dph * charged / 3600; spent < want*0.999 || spent > want*1.001 {
		t.Errorf("spent $%g, want dph × duration = $%g", spent, want)
	}
}

// TestKeysSurviveReload: a reload keeps the registry: keys created
// through the admin API, their spend, and the config keys of the new
// config at once.
func TestKeysSurviveReload(t *testing.T) {
	setKeyEnv(t)
	if err := os.RemoveAll(filepath.Join(e2eStorage, "vastai", "keys")); err != nil {
		t.Fatal(err)
	}
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	tc := startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+otherPool+"\n"+keysBlock(""), keysSite))
	waitRoutable(t, 10*time.Second, ids)
	status, body := adminDo(t, http.MethodPost, "/vastai/keys", `{"name":"kept"}`)
	var created adminapi.KeyCreated
	if status != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create: %d %s", status, body)
	}
	if st, _, b := keyedRequest(t, "/v1/completions", created.Secret, tinyCompletion); st != http.StatusOK {
		t.Fatalf("before the reload: %d %s", st, b)
	}
	t.Setenv("TEST_KEY_NEW", "cvk_new-after-reload-0123456789abcd")
	tc.InitServer(testConfig(sim.URL(), llmPool+"\n"+otherPool+"\n"+keysBlock(`			key new {
				secret {env.TEST_KEY_NEW}
			}`), keysSite), "caddyfile")
	if st, _, b := keyedRequest(t, "/v1/completions", "cvk_new-after-reload-0123456789abcd", tinyCompletion); st != http.StatusOK {
		t.Fatalf("the new config key: %d %s", st, b)
	}
	if st, _, b := keyedRequest(t, "/v1/completions", created.Secret, tinyCompletion); st != http.StatusOK {
		t.Fatalf("the API key after the reload: %d %s", st, b)
	}
	if u := keyUsage(t, "kept", "total"); u.Requests != 2 {
		t.Fatalf("the API key's requests across the reload: %d, want 2", u.Requests)
	}
}

// TestModelListShowsWhatTheKeyMayUse: behind vastai_keys, GET /v1/models
// lists, for a key limited to pools or models, only those; an unlimited
// key sees every model.
func TestModelListShowsWhatTheKeyMayUse(t *testing.T) {
	setKeyEnv(t)
	if err := os.RemoveAll(filepath.Join(e2eStorage, "vastai", "keys")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_KEY_POOL_B", "cvk_test-pool-b-only-0123456789")
	t.Setenv("TEST_KEY_MODEL_A", "cvk_test-model-a-only-012345678")
	sim := newSim(t, vastsim.Options{})
	ids := []int64{launchModel(t, sim, "pool-a-1", "org/model-a"), launchModel(t, sim, "pool-b-1", "org/model-b")}
	keysCfg := `		keys {
			key all {
				secret {env.TEST_KEY_TEAM_A}
			}
			key b-only {
				secret {env.TEST_KEY_POOL_B}
				pools pool-b
			}
			key a-only {
				secret {env.TEST_KEY_MODEL_A}
				models org/model-a
			}
		}`
	startCaddy(t, testConfig(sim.URL(), modelPools+"\n"+keysCfg, "\tvastai_keys\n"+modelSite))
	waitRoutable(t, 10*time.Second, ids)
	list := func(key string) []string {
		code, body := keyedGet(t, "/v1/models", key)
		if code != http.StatusOK {
			t.Fatalf("GET /v1/models with key %s: %d %s", key[:14], code, body)
		}
		var l modelList
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range l.Data {
			ids = append(ids, m.ID)
		}
		return ids
	}
	waitFor(t, 10*time.Second, "both models listed for an unlimited key", func() bool { return len(list(keyTeamA)) == 2 })
	if got := list("cvk_test-pool-b-only-0123456789"); !slices.Equal(got, []string{"org/model-b"}) {
		t.Errorf("key limited to pool-b lists %v, want [org/model-b]", got)
	}
	if got := list("cvk_test-model-a-only-012345678"); !slices.Equal(got, []string{"org/model-a"}) {
		t.Errorf("key limited to org/model-a lists %v, want [org/model-a]", got)
	}
	if code, _ := keyedGet(t, "/v1/models/org/model-b", "cvk_test-model-a-only-012345678"); code != http.StatusNotFound {
		t.Errorf("GET /v1/models/org/model-b with a key limited to model-a: %d, want 404", code)
	}
}
