package vastai

// Model routing: one site in front of several pools. The vastai_models
// handler reads the request's model (a bounded read; the body is passed on
// intact), picks the pool that serves it from the ids the engines report
// (wire_models.go) and from configured aliases, and leaves the choice in
// the request context for the vastai upstream source in by-model mode
// (pool "*", upstreams.go). It answers GET /v1/models itself with the
// union of the ready pools' models, and gives OpenAI-shaped errors.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-vastai/caddy-vastai/fleet"
)

func init() {
	caddy.RegisterModule(ModelRouter{})
}

// DefaultRetryAfter is the Retry-After of a 503 for a known model with no
// ready instance: about the time a scale-up's first step takes to show.
const DefaultRetryAfter = 10 * time.Second

// learningRetryAfter is the Retry-After while the model lists of new
// instances are being read (a fraction of a second, normally).
const learningRetryAfter = time.Second

// Placeholders the handler sets for the handlers and logs after it.
const (
	poolPlaceholder  = "http.vastai.pool"
	modelPlaceholder = "http.vastai.model"
)

// ModelRouter is the http.handlers.vastai_models handler: it routes each
// request to the pool that serves its JSON "model" field. Put it before a
// reverse_proxy whose vastai upstream source has pool "*" (the Caddyfile's
// `vastai_proxy *`).
//
//   - GET /v1/models answers the union of the models of the served pools
//     that have a ready instance (aliases included), sorted, in OpenAI's
//     list shape; GET /v1/models/<id> answers one model or a 404.
//   - A model no served pool knows gets a 404 with OpenAI's error shape
//     and code model_not_found; one whose pool has no ready instance waits
//     for lb_try_duration in the proxy, then gets a 503 with Retry-After.
//   - A request that names no model goes to the default pool; without one
//     it gets a 400. Only JSON bodies are read: a multipart upload's model
//     field is not seen.
//   - While the first read of a new instance's model list is under way
//     (a fraction of a second after it becomes routable), an unknown
//     model gets a 503 with Retry-After: 1 rather than a 404.
//
// A pool knows the models its engines report on GET /v1/models, read when
// an instance becomes routable and every 30s; a pool scaled to zero keeps
// the ids it last saw. Requests never wait on those reads.
type ModelRouter struct {
	// The pools this handler routes to. A model served by several is sent
	// to the first of them, in this order, that has a ready instance
	// serving it. Default: every pool of the vastai app, by name.
	Pools []string `json:"pools,omitempty"`
	// Aliases maps a model name to the pool that serves it. An alias wins
	// over the ids the engines report, and makes a model known before any
	// instance of its pool ever ran (a pool that scales from zero). The
	// body is passed on unchanged, so the engine must accept the name.
	Aliases map[string]string `json:"aliases,omitempty"`
	// Default is the pool of requests that name no model (a GET, a body
	// without "model"). Default: the only pool when exactly one is served;
	// otherwise such requests get a 400.
	Default string `json:"default,omitempty"`
	// MaxBody bounds the bytes of a body read to find its model; a model
	// named after them is not seen. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`
	// RetryAfter is the Retry-After of the 503 for a known model with no
	// ready instance. Default: 10s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	st         *state
	watcher    *fleet.Watcher
	poolNames  string
	retryAfter string
	created    int64
}

// CaddyModule returns the Caddy module information.
func (ModelRouter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.vastai_models",
		New: func() caddy.Module { return new(ModelRouter) },
	}
}

// Provision checks every pool name against the vastai app and turns on
// the app's model learning.
func (m *ModelRouter) Provision(ctx caddy.Context) error {
	app, err := lookupApp(ctx)
	if err != nil {
		return err
	}
	if len(m.Pools) == 0 {
		m.Pools = slices.Sorted(maps.Keys(app.Pools))
	}
	if err := m.checkPools(app); err != nil {
		return err
	}
	if m.Default == "" && len(m.Pools) == 1 {
		m.Default = m.Pools[0]
	}
	if m.MaxBody < 0 {
		return fmt.Errorf("max_body: must not be negative, got %d", m.MaxBody)
	}
	if m.RetryAfter < 0 {
		return fmt.Errorf("retry_after: must not be negative, got %s", time.Duration(m.RetryAfter))
	}
	retry := time.Duration(m.RetryAfter)
	if retry == 0 {
		retry = DefaultRetryAfter
	}
	m.retryAfter = retryAfterSeconds(retry)
	m.st, m.watcher = app.state, app.state.watcher
	m.poolNames = strings.Join(m.Pools, ", ")
	m.created = time.Now().Unix()
	app.modelRouting = true
	return nil
}

// checkPools names the field that names a pool the app lacks, or a pool
// outside this handler's pools.
func (m *ModelRouter) checkPools(app *App) error {
	if len(m.Pools) == 0 {
		return fmt.Errorf("pools: the vastai app has no pools to route to")
	}
	for _, p := range m.Pools {
		if _, ok := app.Pools[p]; !ok {
			return fmt.Errorf("pools: %w %q (configured pools: %s)", ErrUnknownPool, p, app.poolNames())
		}
	}
	for _, model := range slices.Sorted(maps.Keys(m.Aliases)) {
		p := m.Aliases[model]
		if !slices.Contains(m.Pools, p) {
			return fmt.Errorf("aliases: %q: %w %q (this handler's pools: %s)", model, ErrUnknownPool, p, strings.Join(m.Pools, ", "))
		}
	}
	if m.Default != "" && !slices.Contains(m.Pools, m.Default) {
		return fmt.Errorf("default: %w %q (this handler's pools: %s)", ErrUnknownPool, m.Default, strings.Join(m.Pools, ", "))
	}
	return nil
}

// retryAfterSeconds renders d as whole seconds, rounded up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

type poolChoiceKey struct{}

// chosenPool returns the pool a vastai_models handler chose for r.
func chosenPool(r *http.Request) (string, bool) {
	if r == nil {
		return "", false
	}
	p, ok := r.Context().Value(poolChoiceKey{}).(string)
	return p, ok
}

// Reasons of the route-decision metric (policy label vastai_models).
const (
	reasonModel      = "model"   // a ready instance of the pool reports the model
	reasonKnown      = "known"   // the pool served it, and has no ready instance of it now
	reasonAlias      = "alias"   // a configured alias
	reasonDefault    = "default" // no model: the default pool
	reasonUnknown    = "unknown_model"
	reasonMissing    = "missing_model"
	reasonPending    = "model_list_pending"
	reasonNotReady   = "no_ready_instance" // chosen, but the proxy found no instance in lb_try_duration
	modelsPolicyName = "vastai_models"
)

// ServeHTTP answers the model list, or routes the request by its model.
func (m *ModelRouter) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if r.URL.Path == modelsPath {
			return m.serveList(w, r)
		}
		if id, ok := strings.CutPrefix(r.URL.Path, modelsPath+"/"); ok && id != "" {
			return m.serveOne(w, r, id)
		}
	}
	r, info := withRequestInfo(r, m.MaxBody)
	pool, reason, model := m.Default, reasonDefault, info.Model
	switch {
	case model != "":
		var done bool
		if pool, reason, done = m.route(w, model); done {
			m.st.routes.decided(pool, modelsPolicyName, reason)
			return nil
		}
	case pool == "":
		m.st.routes.decided("", modelsPolicyName, reasonMissing)
		return writeAPIError(w, http.StatusBadRequest, "invalid_request_error", "",
			fmt.Sprintf("you must provide a model parameter (this endpoint serves several pools: %s)", m.poolNames))
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(poolPlaceholder, pool)
		repl.Set(modelPlaceholder, clip(model))
	}
	r = r.WithContext(context.WithValue(r.Context(), poolChoiceKey{}, pool))
	tw := &writeTracker{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err := next.ServeHTTP(tw, r)
	var he caddyhttp.HandlerError
	if err != nil && !tw.wrote && errors.As(err, &he) && he.StatusCode == http.StatusServiceUnavailable {
		m.st.routes.decided(pool, modelsPolicyName, reasonNotReady)
		w.Header().Set("Retry-After", m.retryAfter)
		msg := fmt.Sprintf("The model `%s` has no ready instance yet (pool %s); retry later.", clip(model), pool)
		if model == "" {
			msg = fmt.Sprintf("Pool %s has no ready instance yet; retry later.", pool)
		}
		return writeAPIError(w, http.StatusServiceUnavailable, "service_unavailable", "model_not_ready", msg)
	}
	m.st.routes.decided(pool, modelsPolicyName, reason)
	return err
}

// route picks the pool of model, or answers the request itself (done).
func (m *ModelRouter) route(w http.ResponseWriter, model string) (pool, reason string, done bool) {
	pool, reason, pending := m.poolFor(model)
	if pool != "" {
		return pool, reason, false
	}
	if pending > 0 {
		w.Header().Set("Retry-After", retryAfterSeconds(learningRetryAfter))
		_ = writeAPIError(w, http.StatusServiceUnavailable, "service_unavailable", "model_list_pending",
			fmt.Sprintf("The model `%s` is not known yet: the model lists of %d new instance(s) are being read; retry shortly.", clip(model), pending))
		return "", reasonPending, true
	}
	_ = writeAPIError(w, http.StatusNotFound, "invalid_request_error", "model_not_found",
		fmt.Sprintf("The model `%s` does not exist. Available models: %s.", clip(model), m.someModels(5)))
	return "", reasonUnknown, true
}

// poolFor returns the pool that should serve model: an alias, else the
// first served pool with a ready instance serving it, else the first that
// knows it. When none does, pending counts the routable instances whose
// model list has not been read yet. Lock-free, no I/O.
func (m *ModelRouter) poolFor(model string) (pool, reason string, pending int) {
	if p, ok := m.Aliases[model]; ok {
		return p, reasonAlias, 0
	}
	ms := m.st.modelSnapshot()
	for _, p := range m.Pools {
		if ms.Pool(p).Serves(model) {
			return p, reasonModel, 0
		}
	}
	for _, p := range m.Pools {
		if ms.Pool(p).Knows(model) {
			return p, reasonKnown, 0
		}
	}
	snap := m.watcher.Snapshot()
	for _, p := range m.Pools {
		pv := snap.Pools[p]
		if pv == nil {
			continue
		}
		for _, t := range pv.Targets {
			if in, ok := ms.Instance(t.ID); !ok || (!in.Learned && in.Fetched.IsZero()) {
				pending++
			}
		}
	}
	return "", "", pending
}

// modelEntry is one model of OpenAI's GET /v1/models.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// readyModels lists the models of the served pools that have a ready
// instance, with the pool each routes to, sorted by id.
func (m *ModelRouter) readyModels() []modelEntry {
	snap, ms := m.watcher.Snapshot(), m.st.modelSnapshot()
	seen := map[string]bool{}
	var out []modelEntry
	add := func(id, pool string) {
		if !seen[id] {
			seen[id] = true
			out = append(out, modelEntry{ID: id, Object: "model", Created: m.created, OwnedBy: pool})
		}
	}
	ready := func(p string) bool { pv := snap.Pools[p]; return pv != nil && len(pv.Targets) > 0 }
	for _, model := range slices.Sorted(maps.Keys(m.Aliases)) {
		if p := m.Aliases[model]; ready(p) {
			add(model, p)
		}
	}
	for _, p := range m.Pools {
		pm := ms.Pool(p)
		if pm == nil || !ready(p) {
			continue
		}
		for _, id := range pm.Ready {
			add(id, p)
		}
	}
	slices.SortFunc(out, func(a, b modelEntry) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (m *ModelRouter) serveList(w http.ResponseWriter, r *http.Request) error {
	data := m.modelsFor(r)
	if data == nil {
		data = []modelEntry{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// modelsFor is readyModels as the request's client key sees them: a key
// limited to pools or models (vastai_keys before this handler) lists only
// what it may use.
func (m *ModelRouter) modelsFor(r *http.Request) []modelEntry {
	all := m.readyModels()
	ak, ok := r.Context().Value(keyCtxKey{}).(*admittedKey)
	if !ok {
		return all
	}
	out := all[:0:0]
	for _, e := range all {
		if ak.entry.AllowsPool(e.OwnedBy) == nil && ak.entry.AllowsModel(e.ID) == nil {
			out = append(out, e)
		}
	}
	return out
}

func (m *ModelRouter) serveOne(w http.ResponseWriter, r *http.Request, id string) error {
	for _, e := range m.modelsFor(r) {
		if e.ID == id {
			return writeJSON(w, http.StatusOK, e)
		}
	}
	return writeAPIError(w, http.StatusNotFound, "invalid_request_error", "model_not_found",
		fmt.Sprintf("The model `%s` does not exist. Available models: %s.", clip(id), m.someModels(5)))
}

// someModels names up to n ready models for an error message.
func (m *ModelRouter) someModels(n int) string {
	var ids []string
	for _, e := range m.readyModels() {
		ids = append(ids, e.ID)
	}
	switch {
	case len(ids) == 0:
		return "none is ready"
	case len(ids) > n:
		return strings.Join(ids[:n], ", ") + fmt.Sprintf(" and %d more", len(ids)-n)
	}
	return strings.Join(ids, ", ")
}

// maxEchoedModel bounds the client's model name repeated in an error (and
// in the {http.vastai.model} placeholder), which could be as long as the
// body read.
const maxEchoedModel = 256

// clip cuts a client-supplied model name for messages and logs.
func clip(model string) string {
	if len(model) <= maxEchoedModel {
		return model
	}
	return strings.ToValidUTF8(model[:maxEchoedModel], "") + "..."
}

// apiError is OpenAI's error body.
type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeAPIError writes an OpenAI-shaped error; code "" is null.
func writeAPIError(w http.ResponseWriter, status int, typ, code, msg string) error {
	body := apiErrorBody{Message: msg, Type: typ}
	if code != "" {
		body.Code = &code
	}
	return writeJSON(w, status, apiError{Error: body})
}

// writeTracker records whether the handlers after vastai_models started a
// response, so that a proxy's 503 can be answered only when none did. It
// unwraps for http.ResponseController (flushes, hijacks).
type writeTracker struct {
	*caddyhttp.ResponseWriterWrapper
	wrote bool
}

func (w *writeTracker) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.wrote = true
	}
	w.ResponseWriterWrapper.WriteHeader(code)
}

func (w *writeTracker) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriterWrapper.Write(b)
}

func (w *writeTracker) ReadFrom(r io.Reader) (int64, error) {
	w.wrote = true
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ModelRouter)(nil)
	_ caddyhttp.MiddlewareHandler = (*ModelRouter)(nil)
)
