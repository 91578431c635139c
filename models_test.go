package vastai

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// routerOver returns a vastai_models handler over one pool "llm" of three
// ready instances whose model lists have not been read (no learner runs),
// and the by-model upstream source over the same watcher.
func routerOver(t testing.TB) (*ModelRouter, *Upstreams) {
	u := upstreamsOver(t, 3)
	m := &ModelRouter{
		Pools: []string{"llm"}, Aliases: map[string]string{"alias-m": "llm"}, Default: "llm",
		st: u.st, watcher: u.st.watcher, retryAfter: "10", poolNames: "llm",
	}
	return m, &Upstreams{Pool: ByModelPool, st: u.st}
}

// nextRecorder is the handler after vastai_models: it records what it saw
// and does what the test says.
type nextRecorder struct {
	called      bool
	pool        string
	placeholder string
	write       bool
	err         error
}

func (n *nextRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	n.pool, _ = chosenPool(r)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	n.placeholder, _ = repl.GetString(poolPlaceholder)
	if n.write {
		w.WriteHeader(http.StatusOK)
	}
	return n.err
}

func serveRouter(m *ModelRouter, next caddyhttp.Handler, body string) (*httptest.ResponseRecorder, error) {
	r := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(body))
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	return w, m.ServeHTTP(w, r, next)
}

// TestModelRouterDecisions covers the handler's choices without Caddy:
// aliases, the default pool, instances whose lists are still being read,
// and the 503 answered only when the proxy wrote nothing.
func TestModelRouterDecisions(t *testing.T) {
	m, _ := routerOver(t)
	noUpstream := caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams available"))
	cases := []struct {
		name       string
		body       string
		next       nextRecorder
		wantStatus int
		wantPool   string // "" when next must not run
		wantCode   string
		wantErr    bool
	}{
		{"alias", `{"model":"alias-m"}`, nextRecorder{write: true}, 200, "llm", "", false},
		{"no model goes to the default pool", `{"prompt":"x"}`, nextRecorder{write: true}, 200, "llm", "", false},
		{"unknown model while lists are read", `{"model":"org/x"}`, nextRecorder{}, 503, "", "model_list_pending", false},
		{"proxy found no upstream", `{"model":"alias-m"}`, nextRecorder{err: noUpstream}, 503, "llm", "model_not_ready", false},
		{"proxy failed after writing", `{"model":"alias-m"}`, nextRecorder{write: true, err: noUpstream}, 200, "llm", "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next := c.next
			w, err := serveRouter(m, &next, c.body)
			if (err != nil) != c.wantErr || w.Code != c.wantStatus {
				t.Fatalf("status %d, err %v; want %d, error %v", w.Code, err, c.wantStatus, c.wantErr)
			}
			if next.called != (c.wantPool != "") || next.pool != c.wantPool || next.placeholder != c.wantPool {
				t.Errorf("next called %v with pool %q (placeholder %q), want pool %q", next.called, next.pool, next.placeholder, c.wantPool)
			}
			if c.wantCode == "" {
				return
			}
			var body apiError
			if json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error.Code == nil || *body.Error.Code != c.wantCode {
				t.Errorf("body %s, want code %s", w.Body, c.wantCode)
			}
			if w.Header().Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
		})
	}
}

// TestByModelUpstreamsReadTheChoice: pool "*" returns the chosen pool's
// instances, and without a choice an error that names vastai_models.
func TestByModelUpstreamsReadTheChoice(t *testing.T) {
	_, u := routerOver(t)
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	if _, err := u.GetUpstreams(r); err == nil || !strings.Contains(err.Error(), "add vastai_models") {
		t.Errorf("without a choice: err %v, want one naming vastai_models", err)
	}
	r = r.WithContext(context.WithValue(r.Context(), poolChoiceKey{}, "llm"))
	if ups, err := u.GetUpstreams(r); err != nil || len(ups) != 3 {
		t.Errorf("with pool llm chosen: %d upstreams, err %v; want 3", len(ups), err)
	}
	r = r.WithContext(context.WithValue(r.Context(), poolChoiceKey{}, "other"))
	if ups, err := u.GetUpstreams(r); err != nil || len(ups) != 0 {
		t.Errorf("with an empty pool chosen: %d upstreams, err %v; want none, no error", len(ups), err)
	}
}

// TestModelRouterConfigNamesTheField provisions JSON configs and checks
// that every bad pool reference names its field.
func TestModelRouterConfigNamesTheField(t *testing.T) {
	const app = `"vastai":{"api_key":"k","pools":{"a":{},"b":{}}}`
	site := func(handler string) string {
		return `"http":{"servers":{"s":{"listen":[":0"],"routes":[{"handle":[` + handler + `,
			{"handler":"reverse_proxy","dynamic_upstreams":{"source":"vastai","pool":"*"},"transport":{"protocol":"vastai"}}]}]}}}`
	}
	cases := []struct{ name, apps, want string }{
		{"valid", app + "," + site(`{"handler":"vastai_models","aliases":{"m":"b"}}`), ""},
		{"unknown pool in pools", app + "," + site(`{"handler":"vastai_models","pools":["a","c"]}`), `pools: unknown pool "c" (configured pools: a, b)`},
		{"alias to a pool not served", app + "," + site(`{"handler":"vastai_models","pools":["a"],"aliases":{"m":"b"}}`), `aliases: "m": unknown pool "b" (this handler's pools: a)`},
		{"default not served", app + "," + site(`{"handler":"vastai_models","pools":["a"],"default":"b"}`), `default: unknown pool "b"`},
		{"negative max_body", app + "," + site(`{"handler":"vastai_models","max_body":-1}`), "max_body: must not be negative"},
		{"without the app", site(`{"handler":"vastai_models"}`), "vastai app is not configured"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{`+c.apps+`}}`), &cfg); err != nil {
				t.Fatalf("test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// BenchmarkGetUpstreams100ByModel is BenchmarkGetUpstreams100 through the
// by-model source: one context lookup more.
func BenchmarkGetUpstreams100ByModel(b *testing.B) {
	u := upstreamsOver(b, 100)
	u.Pool = ByModelPool
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req = req.WithContext(context.WithValue(req.Context(), poolChoiceKey{}, "llm"))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ups, _ := u.GetUpstreams(req); len(ups) != 100 {
			b.Fatal("wrong count")
		}
	}
}

// TestModelLearnerBelongsToTheState: applying a config with vastai_models
// again keeps the running learner (and what it learned); a config without
// it stops the learner, and Destruct stops a running one.
func TestModelLearnerBelongsToTheState(t *testing.T) {
	s := newState()
	apply := func(enabled bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.applyModelsLocked(zap.NewNop(), enabled)
	}
	apply(true)
	first := s.models.Load()
	if first == nil {
		t.Fatal("no learner after a config with vastai_models")
	}
	apply(true)
	if s.models.Load() != first {
		t.Error("a reload with vastai_models replaced the running learner")
	}
	apply(false)
	if s.models.Load() != nil || s.modRT != nil {
		t.Error("a config without vastai_models left the learner running")
	}
	apply(true)
	if err := s.Destruct(); err != nil || s.models.Load() != nil {
		t.Errorf("Destruct: %v; learner still set: %v", err, s.models.Load() != nil)
	}
}

// TestModelErrorsClipTheModelName: a client's model name is repeated in
// an error only up to maxEchoedModel bytes.
func TestModelErrorsClipTheModelName(t *testing.T) {
	m, _ := routerOver(t)
	long := strings.Repeat("m", 5000)
	w, _ := serveRouter(m, &nextRecorder{}, `{"model":"`+long+`"}`)
	var body apiError
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
	if n := len(body.Error.Message); n > maxEchoedModel+200 || !strings.Contains(body.Error.Message, strings.Repeat("m", maxEchoedModel)+"...") {
		t.Errorf("message of %d bytes does not hold the clipped name", n)
	}
}

// BenchmarkModelRouter measures the handler's work on a request: the
// bounded body read, the pool choice (an alias here) and the context.
// "baseline" builds the same test request and recorder without the
// handler, to subtract.
func BenchmarkModelRouter(b *testing.B) {
	m, _ := routerOver(b)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	const body = `{"model":"alias-m","prompt":"hello there","max_tokens":16}`
	repl := caddy.NewReplacer()
	for _, through := range []bool{false, true} {
		name := map[bool]string{false: "baseline", true: "router"}[through]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(body))
				r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
				w := httptest.NewRecorder()
				if through {
					if err := m.ServeHTTP(w, r, next); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
