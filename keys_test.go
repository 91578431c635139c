package vastai

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/keys"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

func TestKeysLiteralSecretRefused(t *testing.T) {
	t.Setenv("K", "key")
	t.Setenv("TEAM", "cvk_from_env_0123456789")
	cases := []struct{ keys, want string }{
		{`{"keys":{"team-a":{"secret":"cvk_literal_0123456789"}}}`, "keys.keys.team-a.secret: a literal secret"},
		{`{"keys":{"team-a":{"secret":"{env.TEAM}"}}}`, ""},
		{`{"keys":{"team-a":{"secret":"{env.UNSET_KEY_VAR}"}}}`, "secret is empty"},
		{`{"keys":{"team-a":{"secret":"{env.TEAM}","budget_period":"week"}}}`, "period \"week\""},
		{`{"flush_interval":60000000000}`, "flush_interval"},
		{`{"keys":{"bad name":{"secret":"{env.TEAM}"}}}`, "name \"bad name\""},
		{`{"keys":{"team-a":{"secret":"{env.TEAM}","expires":"soon"}}}`, "expires \"soon\""},
		{`{"keys":{"team-a":{"secret":"{env.TEAM}","pools":["nope"]}}}`, "key team-a: pools: unknown pool \"nope\""},
		{`{"pool_prices":{"nope":{"in":1}}}`, "pool_prices: unknown pool \"nope\""},
	}
	for _, c := range cases {
		var cfg caddy.Config
		js := `{"admin":{"disabled":true},"apps":{"vastai":{"refuse_literal_secrets":true,"api_key":"{env.K}","keys":` + c.keys + `}}}`
		if err := json.Unmarshal([]byte(js), &cfg); err != nil {
			t.Fatalf("test config: %v", err)
		}
		err := caddy.Validate(&cfg)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v; want it accepted", c.keys, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v; want an error mentioning %q", c.keys, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "cvk_literal") || strings.Contains(err.Error(), "cvk_from_env")) {
			t.Errorf("the error reveals the secret: %v", err)
		}
	}
}

func TestKeysCaddyfileErrors(t *testing.T) {
	cases := []struct{ body, want string }{
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tkey a {\n\t\t\trpm many\n\t\t}\n\t}\n}", `rpm: "many" is not a positive integer`},
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tkey a {\n\t\t\tbudget 10 week\n\t\t}\n\t}\n}", `period "week"`},
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tkey a {\n\t\t\tpools\n\t\t}\n\t}\n}", "pools: at least one name"},
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tkey a {\n\t\t}\n\t\tkey a {\n\t\t}\n\t}\n}", "key a is defined more than once"},
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tpool_price llm 1\n\t}\n}", "pool_price: want"},
		{"vastai {\n\tapi_key x\n\tkeys {\n\t\tcolour red\n\t}\n}", `keys: unrecognized option "colour"`},
	}
	for _, c := range cases {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n"+c.body+"\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.body, err, c.want)
		}
	}
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":80 {\n\tvastai_keys {\n\t\tmax_body lots\n\t}\n}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "max_body") {
		t.Errorf("max_body lots: %v", err)
	}
}

func TestKeyRefusals(t *testing.T) {
	cases := []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{keys.ErrMissingKey, 401, "invalid_api_key", ""},
		{keys.ErrUnknownKey, 401, "invalid_api_key", ""},
		{keys.ErrRevoked, 401, "invalid_api_key", ""},
		{keys.ErrExpired, 401, "invalid_api_key", ""},
		{keys.ErrPoolNotAllowed, 403, "pool_not_allowed", ""},
		{keys.ErrModelNotAllowed, 403, "model_not_allowed", ""},
		{&keys.LimitError{Err: keys.ErrRateLimited, Limit: "rpm", RetryAfter: 1500 * time.Millisecond}, 429, "rate_limit_exceeded", "2"},
		{&keys.LimitError{Err: keys.ErrBudgetExceeded, Limit: "day", RetryAfter: time.Hour}, 429, "budget_exceeded", "3600"},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		_ = writeKeyRefusal(w, c.err)
		var body struct {
			Error struct{ Message, Type, Code string } `json:"error"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != c.status || body.Error.Code != c.code ||
			body.Error.Message == "" || body.Error.Type == "" || w.Header().Get("Retry-After") != c.retryAfter {
			t.Errorf("%v: %d %s (Retry-After %q); want %d %s %q", c.err, w.Code, w.Body, w.Header().Get("Retry-After"), c.status, c.code, c.retryAfter)
		}
	}
}

func TestClientSecret(t *testing.T) {
	cases := []struct{ auth, xkey, want string }{
		{"Bearer cvk_a", "", "cvk_a"},
		{"bearer  cvk_a ", "", "cvk_a"},
		{"Basic dXNlcjpwYXNz", "cvk_b", ""},
		{"", "cvk_b", "cvk_b"},
		{"", "", ""},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodPost, "/v1/completions", nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		if c.xkey != "" {
			r.Header.Set("x-api-key", c.xkey)
		}
		if got := clientSecret(r); got != c.want {
			t.Errorf("Authorization %q, x-api-key %q: %q, want %q", c.auth, c.xkey, got, c.want)
		}
	}
}

// benchKeysHandler is a keys handler over a registry with one key, in a
// state of its own.
func benchKeysHandler(tb testing.TB) (*KeysHandler, func()) {
	st := newState()
	ks, err := (&KeysConfig{PricePerMTokIn: 1, PricePerMTokOut: 2, Keys: map[string]*ClientKey{
		"bench": {Secret: "cvk_bench_0123456789abcdefghijklmnop", RPM: 1 << 30, TPM: 1 << 30, MaxParallel: 1 << 20, Budget: 1e12},
	}}).settings(caddy.NewReplacer(), "bench", []string{"llm"})
	if err != nil {
		tb.Fatal(err)
	}
	st.applyKeysLocked(zap.NewNop(), ks, lifecycle.NewMemoryStore())
	return &KeysHandler{Pool: "llm", MaxBody: DefaultKeysMaxBody, st: st}, st.stopKeysLocked
}

// sseChunks is a streamed answer of n chunks and a usage chunk.
func sseChunks(n int) [][]byte {
	var out [][]byte
	for i := range n {
		out = append(out, []byte(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" tok`+strconv.Itoa(i)+`","logprobs":null,"finish_reason":null}]}`+"\n\n"))
	}
	out = append(out, []byte(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":64,"total_tokens":76}}`+"\n\n"), []byte("data: [DONE]\n\n"))
	return out
}

// BenchmarkKeysHandler is a request through the keys handler (key
// check, body preparation, usage capture, settlement) against the same
// request with no handler: a JSON answer, and a stream of 1 and of 64
// chunks (the difference between those two is the cost per chunk).
func BenchmarkKeysHandler(b *testing.B) {
	h, stop := benchKeysHandler(b)
	defer stop()
	jsonAnswer := []byte(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"hi","finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`)
	for _, tc := range []struct {
		name   string
		chunks [][]byte
		stream bool
	}{{"json", [][]byte{jsonAnswer}, false}, {"sse1", sseChunks(1), true}, {"sse64", sseChunks(64), true}} {
		next := benchUpstream(tc.chunks, tc.stream)
		body := `{"model":"m","prompt":"Say something about the sea, in sixty-four tokens or so.","max_tokens":64,"stream":` + strconv.FormatBool(tc.stream) + `}`
		b.Run(tc.name+"/none", func(b *testing.B) { benchServe(b, body, next.ServeHTTP) })
		b.Run(tc.name+"/keys", func(b *testing.B) {
			benchServe(b, body, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, next) })
		})
	}
}

// benchUpstream answers with chunks, as reverse_proxy would write them.
func benchUpstream(chunks [][]byte, stream bool) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if stream {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		w.WriteHeader(http.StatusOK)
		for _, c := range chunks {
			if _, err := w.Write(c); err != nil {
				return err
			}
		}
		return nil
	})
}

func benchServe(b *testing.B, body string, serve func(w http.ResponseWriter, r *http.Request) error) {
	b.ReportAllocs()
	base := httptest.NewRequest(http.MethodPost, "/v1/completions", nil)
	base.Header.Set("Authorization", "Bearer cvk_bench_0123456789abcdefghijklmnop")
	for b.Loop() {
		r := base.Clone(base.Context())
		r.Body = io.NopCloser(strings.NewReader(body))
		r.ContentLength = int64(len(body))
		if err := serve(discardWriter{h: http.Header{}}, r); err != nil {
			b.Fatal(err)
		}
	}
}

type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) WriteHeader(int)             {}
func (d discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestKeysPrepareBody: the body reaches the upstream whole, with include
// usage spliced in for a completion stream and its Content-Length fixed;
// a body over max_body passes unprepared and intact.
func TestKeysPrepareBody(t *testing.T) {
	stream := `{"model":"m","prompt":"hi","stream":true}`
	big := `{"model":"m","prompt":"` + strings.Repeat("x", 100) + `","stream":true}`
	cases := []struct {
		name, path, body string
		length           int64 // -1: chunked
		maxBody          int64
		injected         bool
	}{
		{"stream", "/v1/completions", stream, int64(len(stream)), 1 << 20, true},
		{"chunked stream", "/v1/chat/completions", stream, -1, 1 << 20, true},
		{"other path", "/v1/embeddings", stream, int64(len(stream)), 1 << 20, false},
		{"over max_body", "/v1/completions", big, int64(len(big)), 64, false},
		{"over max_body, chunked", "/v1/completions", big, -1, 64, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &KeysHandler{MaxBody: c.maxBody}
			r := httptest.NewRequest(http.MethodPost, c.path, strings.NewReader(c.body))
			r.ContentLength = c.length
			r, info, err := h.prepare(r)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(r.Body)
			want := c.body
			if c.injected {
				want = strings.TrimSuffix(c.body, "}") + `,"stream_options":{"include_usage":true}}`
			}
			if string(got) != want || info.Injected != c.injected {
				t.Fatalf("upstream body %s (injected %v); want %s", got, info.Injected, want)
			}
			if c.injected && (r.ContentLength != int64(len(got)) || r.Header.Get("Content-Length") != strconv.Itoa(len(got))) {
				t.Errorf("Content-Length %d / %q for %d bytes", r.ContentLength, r.Header.Get("Content-Length"), len(got))
			}
		})
	}
}
