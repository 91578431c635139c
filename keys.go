package vastai

// The vastai_keys handler: a client's key is checked on the request path
// against the registry's in-memory snapshot (wire_keys.go, package keys),
// never storage. It refuses a missing, unknown, revoked or expired key
// (401), a pool or model the key may not use (403), and a request over
// the key's rpm, tpm, max_parallel or budget (429, with Retry-After), all
// before anything is sent upstream. An admitted request reserves its worst
// case (prompt estimate + max_tokens) against the budget, is prepared and
// watched for usage (keys_usage.go), and settles with what it used.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-vastai/caddy-vastai/keys"
	"github.com/caddy-vastai/caddy-vastai/routing"
)

func init() {
	caddy.RegisterModule(KeysHandler{})
}

// DefaultKeysMaxBody bounds the request body the keys handler reads to
// prepare it (stream_options injection) and to estimate its prompt.
const DefaultKeysMaxBody = 4 << 20

// KeysHandler checks client API keys, enforces their limits and budgets,
// and accounts each request's tokens and spend to its key. Keys are
// defined in the vastai app's keys block or created through the admin API
// (POST /vastai/keys). The client's Authorization header is replaced by
// the instance's token in the vastai transport, as without keys.
type KeysHandler struct {
	// The pool this route sends to, for keys limited to some pools. When
	// a vastai_models handler ran before this one its choice is used; when
	// neither names it, a key limited to pools is checked against the pool
	// of the instance the request is sent to, still before any byte goes
	// upstream.
	Pool string `json:"pool,omitempty"`

	// Bytes of a request body read to prepare it and estimate its prompt;
	// a larger body is passed on unprepared (its usage then comes only
	// from the response, or an estimate). Default: 4 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Do not add stream_options.include_usage to streamed completions
	// whose client did not ask for usage (for engines that refuse the
	// field; vLLM and SGLang accept it). Their tokens are then estimated.
	NoUsageInjection bool `json:"no_usage_injection,omitempty"`

	st *state
}

// CaddyModule returns the Caddy module information.
func (KeysHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.vastai_keys",
		New: func() caddy.Module { return new(KeysHandler) },
	}
}

// Provision finds the vastai app.
func (h *KeysHandler) Provision(ctx caddy.Context) error {
	app, err := lookupApp(ctx)
	if err != nil {
		return err
	}
	h.st = app.state
	if h.MaxBody <= 0 {
		h.MaxBody = DefaultKeysMaxBody
	}
	return nil
}

// keyCtxKey holds an admitted key limited to pools or models in the
// request context, for the transport's pool check and the model list.
type keyCtxKey struct{}

type admittedKey struct {
	entry *keys.Entry
}

// ServeHTTP checks the key, admits the request and accounts for it.
func (h *KeysHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	reg, pricing := h.st.keyRegistry()
	if reg == nil {
		return writeAPIError(w, http.StatusServiceUnavailable, "service_unavailable", "keys_not_ready", "The gateway's keys are not loaded yet; retry shortly.")
	}
	now := time.Now()
	e, err := reg.Snapshot().Lookup(clientSecret(r), now)
	if err != nil {
		h.st.keyStats.request("", "", http.StatusUnauthorized)
		return writeKeyRefusal(w, err)
	}
	name := e.Key.Name
	r, info, err := h.prepare(r)
	if err != nil {
		return err
	}
	pool, poolKnown := chosenPool(r) // set when a route runs vastai_models first
	if !poolKnown && h.Pool != "" {
		pool, poolKnown = h.Pool, true
	}
	err = e.AllowsPool(pool)
	// A key limited to models may still list them (GET /v1/models); the
	// body is parsed only for such keys.
	if err == nil && len(e.Key.Models) > 0 && r.Method == http.MethodPost {
		var rinfo *routing.Request
		r, rinfo = withRequestInfo(r, h.MaxBody)
		err = e.AllowsModel(rinfo.Model)
	}
	if err != nil {
		h.st.keyStats.request(name, pool, http.StatusForbidden)
		return writeKeyRefusal(w, err)
	}
	ticket, err := e.Admit(pricing.demand(pool, info), now)
	if err != nil {
		h.st.keyStats.request(name, pool, http.StatusTooManyRequests)
		return writeKeyRefusal(w, err)
	}
	defer ticket.Release()
	// A limited key travels in the context: for the transport's pool
	// check, and for vastai_models to list only what the key may use.
	if len(e.Key.Pools) > 0 || len(e.Key.Models) > 0 {
		r = r.WithContext(context.WithValue(r.Context(), keyCtxKey{}, &admittedKey{entry: e}))
	}
	uw := newUsageWriter(w, info.Injected)
	err = next.ServeHTTP(uw, r)
	h.settle(ticket, name, pool, pricing, uw, info, err)
	return err
}

// prepare reads the body (bounded), lets the usage seam prepare it (the
// include_usage injection) and puts the result back with its length.
func (h *KeysHandler) prepare(r *http.Request) (*http.Request, usageInfo, error) {
	if r.Body == nil || r.Body == http.NoBody || r.Method != http.MethodPost {
		return r, usageInfo{}, nil
	}
	head, err := readBody(r, h.MaxBody+1)
	if err != nil {
		return r, usageInfo{}, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err))
	}
	if int64(len(head)) > h.MaxBody {
		// Too large to prepare: passed on as is, its prompt estimated.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
		return r, usageInfo{PromptEstimate: int(max(r.ContentLength, h.MaxBody) / 4)}, nil
	}
	out, info := prepareUsage(r.URL.Path, head, !h.NoUsageInjection)
	rb := &replayBody{}
	rb.Reset(out)
	r.Body = rb
	if info.Injected || r.ContentLength != int64(len(out)) {
		r.ContentLength = int64(len(out))
		r.Header.Set("Content-Length", strconv.Itoa(len(out)))
		r.TransferEncoding = nil
	}
	return r, info, nil
}

// readBody reads at most limit bytes of r's body, in one buffer of the
// declared length when there is one.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength <= 0 || r.ContentLength >= limit {
		return io.ReadAll(io.LimitReader(r.Body, limit))
	}
	buf := make([]byte, r.ContentLength, r.ContentLength+1)
	n, err := io.ReadFull(r.Body, buf)
	if err != nil {
		return buf[:n], err
	}
	var probe [1]byte
	if m, _ := io.ReadFull(r.Body, probe[:]); m == 0 {
		return buf, nil
	}
	// A body longer than it said is read on, still bounded.
	rest, err := io.ReadAll(io.LimitReader(r.Body, limit-int64(n)-1))
	return append(append(buf, probe[0]), rest...), err
}

// replayBody is a prepared body handed on to the upstream.
type replayBody struct{ bytes.Reader }

func (*replayBody) Close() error { return nil }

// demand is the worst case a request may cost: its prompt estimate plus
// its max_tokens (or the default), at the pool's price, at the reserve
// price for a pool charged by instance time, or at the dearest of these
// over every pool when the pool is not known yet.
func (p *keyPricing) demand(pool string, info usageInfo) keys.Demand {
	out := info.MaxTokens
	if out <= 0 {
		out = p.maxTokens
	}
	d := keys.Demand{Tokens: info.PromptEstimate + out}
	rate, ok := p.rate(pool)
	switch {
	case pool == "":
		rate = p.worst
	case !ok:
		rate = keys.TokenRate{In: p.reserve, Out: p.reserve}
	}
	d.Dollars = rate.Cost(info.PromptEstimate, out)
	return d
}

// settle charges the request what it used, or releases its reservation
// when no response came from upstream. A response that failed (status >=
// 400) is counted as an error and charged nothing.
func (h *KeysHandler) settle(t *keys.Ticket, name, pool string, p *keyPricing, uw usageCapture, info usageInfo, err error) {
	u := uw.Finish(info.PromptEstimate) // also writes out what the writer held
	now := time.Now()
	status := uw.Status()
	if status == 0 {
		status = http.StatusBadGateway
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		}
		h.st.keyStats.request(name, pool, status)
		return // the deferred Release frees the reservation
	}
	o := keys.Outcome{Duration: now.Sub(t.Start()), Failed: status >= 400}
	instancePool, perHour, sharing := h.instanceShare(uw.Header())
	if pool == "" {
		pool = instancePool
	}
	if !o.Failed {
		o.TokensIn, o.TokensOut, o.Estimated = u.PromptTokens, u.CompletionTokens, u.Estimated
		if rate, ok := p.rate(pool); ok {
			o.Dollars = rate.Cost(o.TokensIn, o.TokensOut)
		} else if sharing > 0 {
			o.Dollars = perHour * o.Duration.Hours() / float64(sharing)
		}
	}
	if t.Settle(o, now) {
		h.st.keyStats.finished(name, pool, status, o)
	}
}

// instanceShare finds the instance that served the response (the
// transport's X-Vastai-Instance header): its pool, its $/h and how many
// requests it was serving, this one included.
func (h *KeysHandler) instanceShare(hdr http.Header) (pool string, perHour float64, sharing int64) {
	v := hdr.Get(InstanceHeader)
	if v == "" {
		return "", 0, 0
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return "", 0, 0
	}
	m, ok := h.st.watcher.Snapshot().Member(id)
	if !ok {
		return "", 0, 0
	}
	// The response body is closed by now, so this request has been
	// counted out of the instance: add it back.
	return m.Pool, m.Instance.DPHTotal, h.st.inflight.count(id) + 1
}

// clientSecret reads the key from "Authorization: Bearer <key>", else
// from x-api-key.
func clientSecret(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		if scheme, tok, ok := strings.Cut(a, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return strings.TrimSpace(r.Header.Get("X-Api-Key"))
}

// writeKeyRefusal answers a refusal of the key check in OpenAI's error
// shape. It never echoes the key.
func writeKeyRefusal(w http.ResponseWriter, err error) error {
	var le *keys.LimitError
	switch {
	case errors.Is(err, keys.ErrMissingKey):
		return writeAPIError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
			"You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
	case errors.Is(err, keys.ErrUnknownKey), errors.Is(err, keys.ErrRevoked), errors.Is(err, keys.ErrExpired):
		msg := "Incorrect API key provided."
		if errors.Is(err, keys.ErrExpired) {
			msg = "The API key has expired."
		} else if errors.Is(err, keys.ErrRevoked) {
			msg = "The API key has been revoked."
		}
		return writeAPIError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", msg)
	case errors.Is(err, keys.ErrPoolNotAllowed):
		return writeAPIError(w, http.StatusForbidden, "invalid_request_error", "pool_not_allowed", "This API key may not use this endpoint's pool.")
	case errors.Is(err, keys.ErrModelNotAllowed):
		return writeAPIError(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", "This API key may not use the requested model.")
	case errors.As(err, &le):
		w.Header().Set("Retry-After", retryAfterSeconds(le.RetryAfter))
		if errors.Is(err, keys.ErrBudgetExceeded) {
			return writeAPIError(w, http.StatusTooManyRequests, "budget_exceeded", "budget_exceeded",
				fmt.Sprintf("This API key's %s budget is spent (or reserved by requests in flight).", le.Limit))
		}
		return writeAPIError(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded",
			fmt.Sprintf("This API key's %s limit is reached; retry after %s.", le.Limit, w.Header().Get("Retry-After")+"s"))
	}
	return writeAPIError(w, http.StatusInternalServerError, "server_error", "", "The key check failed.")
}

// keyPoolRefusal is the transport's check of a key limited to pools when
// the handler did not know the pool: a 403 answered in place of the
// upstream's, so nothing is sent to the instance.
func keyPoolRefusal(req *http.Request, pool string) *http.Response {
	ak, ok := req.Context().Value(keyCtxKey{}).(*admittedKey)
	if !ok || ak.entry.AllowsPool(pool) == nil {
		return nil
	}
	rec := httptestRecorder{header: http.Header{}}
	_ = writeKeyRefusal(&rec, keys.ErrPoolNotAllowed)
	return &http.Response{
		StatusCode: rec.status, Status: http.StatusText(rec.status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())), ContentLength: int64(rec.body.Len()), Request: req,
	}
}

// httptestRecorder collects a response written by writeKeyError.
type httptestRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *httptestRecorder) Header() http.Header         { return r.header }
func (r *httptestRecorder) WriteHeader(s int)           { r.status = s }
func (r *httptestRecorder) Write(p []byte) (int, error) { return r.body.Write(p) }

// Interface guards
var (
	_ caddy.Provisioner           = (*KeysHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*KeysHandler)(nil)
)
