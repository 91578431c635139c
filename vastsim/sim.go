package vastsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Options configures a simulator. The zero value is usable: any non-empty
// bearer key is accepted, instances take 3 s to boot, and the default
// catalog is offered.
type Options struct {
	// APIKey is the bearer key every API call must carry
	// ("Authorization: Bearer <key>"). Empty accepts any non-empty bearer.
	APIKey string
	// AuthErrorStatus is the HTTP status of a bad-key answer, whose body is
	// always {"success":false,"error":"auth_error","msg":"Invalid user key"}.
	// Default 401 (documented); 404 reproduces what the list endpoint has
	// been observed to answer, so clients must detect auth_error by body.
	AuthErrorStatus int
	// LoadingDelay is how long a created instance takes to run:
	// actual_status is null for the first quarter, then "loading", then
	// "running". Default 3s.
	LoadingDelay time.Duration
	// StartDelay is how long a start of a stopped instance takes to run
	// (loading, then running): its image and model are on its disk
	// already, so on vast.ai it is usually much shorter than a create.
	// Default LoadingDelay.
	StartDelay time.Duration
	// EngineReadyDelay is how long the engine keeps answering the portal's
	// 502 placeholder after the instance reaches "running" (a model still
	// loading). Default 0.
	EngineReadyDelay time.Duration
	// DestroyDelay is how long a destroyed instance stays visible (show and
	// v1 list, with cur_state "unloaded") before it disappears. Default 1s.
	DestroyDelay time.Duration
	// TokenInterval is the pause between streamed tokens. Default 50ms.
	TokenInterval time.Duration
	// RateLimits enables vast.ai's per-endpoint minimum intervals (§3.2),
	// keyed by bearer key, answered with 429 and no Retry-After.
	RateLimits bool
	// Offers is the initial catalog; nil selects a default catalog of twelve
	// offers on ten machines (RTX 4090, RTX 3090, A100, RTX 5090).
	Offers []Offer
	// Credit is the account balance reported by /users/current/.
	// Default 100.
	Credit float64
	// SSHAuthorizedKeys are the public keys every instance's SSH server
	// accepts for user root, besides the keys attached to the instance
	// through the API. nil accepts any public key; an empty non-nil slice
	// accepts only attached keys. Password authentication is never
	// accepted.
	SSHAuthorizedKeys []ssh.PublicKey
	// SSHDisabled turns the simulated SSH servers off: no listeners, no
	// ports["22/tcp"], and the fictitious ssh5.vast.ai proxy endpoint.
	SSHDisabled bool
	// Logf, if set, receives one line per notable event.
	Logf func(format string, args ...any)
}

// Faults are API failures to inject. Setting several combines them: Latency
// delays the answer, then Status or RateLimit replace it, otherwise
// MalformedJSON/EmptyBody corrupt it, and OmitFromList/CreateSuccessFalse
// alter the real answer.
type Faults struct {
	// Status answers every API call with this status (500 with a JSON body,
	// other codes with a proxy-style text/HTML body) without touching state.
	Status int
	// Body, with Status, replaces the answer's body verbatim (served as
	// JSON when it starts with '{' or '[', else as plain text): an error
	// body that echoes instance objects, tokens or env values, say. With
	// Status 2xx it is a successful-looking answer the client must judge.
	Body string
	// RateLimit answers 429, rotating through the body shapes vast.ai has
	// been seen to use (plain text, {"detail"}, {"success","error","msg"},
	// {"message","code"}), without Retry-After.
	RateLimit bool
	// Latency delays every API answer (a client timeout test).
	Latency time.Duration
	// MalformedJSON answers 200 with the real answer truncated. The call is
	// really executed, so a create still creates: the "lost response" case.
	MalformedJSON bool
	// EmptyBody answers 200 with an empty body; the call is still executed.
	EmptyBody bool
	// OmitFromList leaves these instance ids out of v1 list pages (and
	// their counts) while the show endpoint still knows them.
	OmitFromList []int64
	// Count limits the faults to the next Count API calls; 0 keeps them
	// until SetFaults(Faults{}).
	Count int
	// CreateSuccessFalse makes a successful create answer success:false
	// while still carrying the real new_contract.
	CreateSuccessFalse bool
	// SlowResponse holds the answer back this long AFTER the call was
	// executed: the request has had its effect, but the client has not
	// heard about it yet (a client killed meanwhile never will).
	SlowResponse time.Duration
	// Routes limits the faults to calls of these endpoints, named like
	// APICall.Route ("PUT /api/v0/asks/{id}/"); empty means every call.
	// Count counts only matching calls.
	Routes []string
}

func (f Faults) active() bool {
	return f.Status != 0 || f.RateLimit || f.Latency > 0 || f.MalformedJSON ||
		f.EmptyBody || len(f.OmitFromList) > 0 || f.CreateSuccessFalse || f.SlowResponse > 0
}

func (f Faults) applies(route string) bool {
	if len(f.Routes) == 0 {
		return true
	}
	for _, r := range f.Routes {
		if r == route {
			return true
		}
	}
	return false
}

// APICall records one API request, for assertions about what a client did
// (pacing, endpoints used, retries).
type APICall struct {
	Method string
	Path   string
	Query  string
	// Route is the endpoint pattern, e.g. "GET /api/v0/instances/{id}/";
	// empty for unknown paths.
	Route    string
	Status   int
	Time     time.Time
	Duration time.Duration
}

// maxCalls bounds the call log so that a long-running demo does not grow
// without limit.
const maxCalls = 100000

// Sim is a simulated vast.ai account and marketplace. It implements
// http.Handler for the REST API; Start serves it on a loopback listener.
// All methods are safe for concurrent use.
type Sim struct {
	opts   Options
	secret []byte // signs list cursors so forged tokens are rejected

	mu         sync.Mutex
	instances  map[int64]*instance
	offers     []*offerState
	nextID     int64
	nextKeyID  int64
	faults     Faults
	faultsLeft int // -1: until cleared
	rl         map[string]*rlState
	rlShape    int
	calls      []APICall
	closed     bool
	taken      map[int64]bool // machines rented by someone else (warm.go)

	srvMu sync.Mutex
	srv   *http.Server
	url   string
}

type offerState struct {
	Offer
	removed bool
}

// New builds a simulator. It does not listen; use Start, or mount the Sim
// as a handler.
func New(opts Options) *Sim {
	if opts.AuthErrorStatus == 0 {
		opts.AuthErrorStatus = http.StatusUnauthorized
	}
	if opts.LoadingDelay <= 0 {
		opts.LoadingDelay = 3 * time.Second
	}
	if opts.StartDelay <= 0 {
		opts.StartDelay = opts.LoadingDelay
	}
	if opts.DestroyDelay <= 0 {
		opts.DestroyDelay = time.Second
	}
	if opts.TokenInterval <= 0 {
		opts.TokenInterval = 50 * time.Millisecond
	}
	if opts.EngineReadyDelay < 0 {
		opts.EngineReadyDelay = 0
	}
	if opts.Credit == 0 {
		opts.Credit = 100
	}
	s := &Sim{
		opts:      opts,
		secret:    make([]byte, 32),
		instances: map[int64]*instance{},
		nextID:    31000000,
		nextKeyID: 41000,
		rl:        map[string]*rlState{},
	}
	_, _ = rand.Read(s.secret)
	catalog := opts.Offers
	if catalog == nil {
		catalog = defaultOffers()
	}
	var nextOffer int64 = 29950000
	for _, o := range catalog {
		o = o.withDefaults()
		if o.ID == 0 {
			nextOffer++
			o.ID = nextOffer
		}
		if o.MachineID == 0 {
			o.MachineID = 45000 + o.ID%1000
			o.HostID = 9000 + o.MachineID%1000
		}
		s.offers = append(s.offers, &offerState{Offer: o})
	}
	return s
}

func (s *Sim) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// Start listens on addr ("" means 127.0.0.1:0), serves the API in the
// background and returns the base URL, e.g. "http://127.0.0.1:41234".
func (s *Sim) Start(addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		return "", errors.New("vastsim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.url = "http://" + ln.Addr().String()
	go func(srv *http.Server) { _ = srv.Serve(ln) }(s.srv)
	s.logf("vastsim: API listening on %s", s.url)
	return s.url, nil
}

// URL returns the base URL set by Start, or "" before Start.
func (s *Sim) URL() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	return s.url
}

// Close stops the API server and every engine. It is idempotent; the Sim
// must not be started again afterwards.
func (s *Sim) Close() {
	s.srvMu.Lock()
	if s.srv != nil {
		_ = s.srv.Close()
	}
	s.srvMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, in := range s.instances {
		s.stopEngineLocked(in)
	}
}

// call carries one API request through its handler.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	ids   []string // path parameters in order
	fault Faults   // the fault active for this call (zero if none)
	now   time.Time
}

type handlerFunc func(*Sim, *call)

// route resolves an API path. name is the endpoint pattern used for logs and
// rate limits; h is nil when the path is unknown; allowed lists methods when
// the path exists but the method does not.
func route(method, path string) (name string, h handlerFunc, ids []string, allowed string) {
	if !strings.HasPrefix(path, "/api/") || !strings.HasSuffix(path, "/") {
		return "", nil, nil, ""
	}
	seg := strings.Split(strings.Trim(path, "/"), "/")
	for _, p := range seg {
		if p == "" {
			return "", nil, nil, ""
		}
	}
	type ep struct {
		method string
		h      handlerFunc
	}
	pick := func(pattern string, ids []string, eps ...ep) (string, handlerFunc, []string, string) {
		var ms []string
		for _, e := range eps {
			if e.method == method {
				return method + " " + pattern, e.h, ids, ""
			}
			ms = append(ms, e.method)
		}
		return "", nil, nil, strings.Join(ms, ", ")
	}
	switch {
	case len(seg) == 3 && seg[1] == "v1" && seg[2] == "instances":
		return pick("/api/v1/instances/", nil, ep{"GET", (*Sim).handleList})
	case len(seg) < 3 || seg[1] != "v0":
		return "", nil, nil, ""
	}
	switch seg[2] {
	case "instances":
		switch {
		case len(seg) == 3:
			return pick("/api/v0/instances/", nil, ep{"GET", (*Sim).handleV0List})
		case len(seg) == 4:
			return pick("/api/v0/instances/{id}/", seg[3:],
				ep{"GET", (*Sim).handleShow}, ep{"PUT", (*Sim).handleManage}, ep{"DELETE", (*Sim).handleDestroy})
		case len(seg) == 5 && (seg[3] == "reboot" || seg[3] == "recycle"):
			return pick("/api/v0/instances/"+seg[3]+"/{id}/", seg[4:], ep{"PUT", (*Sim).handleReboot})
		case len(seg) == 5 && seg[4] == "ssh":
			return pick("/api/v0/instances/{id}/ssh/", seg[3:4],
				ep{"GET", (*Sim).handleSSHList}, ep{"POST", (*Sim).handleSSHAttach})
		case len(seg) == 6 && seg[4] == "ssh":
			return pick("/api/v0/instances/{id}/ssh/{key}/", []string{seg[3], seg[5]},
				ep{"DELETE", (*Sim).handleSSHDetach})
		}
	case "bundles":
		if len(seg) == 3 {
			return pick("/api/v0/bundles/", nil, ep{"POST", (*Sim).handleBundles}, ep{"GET", (*Sim).handleBundles})
		}
	case "asks":
		if len(seg) == 4 {
			return pick("/api/v0/asks/{id}/", seg[3:], ep{"PUT", (*Sim).handleCreate})
		}
	case "users":
		if len(seg) == 4 && seg[3] == "current" {
			return pick("/api/v0/users/current/", nil, ep{"GET", (*Sim).handleUser})
		}
	}
	return "", nil, nil, ""
}

// ServeHTTP serves the simulated REST API.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, ControlPrefix) {
		s.serveControl(w, r) // control_http.go: never faulty, never logged as an API call
		return
	}
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	name, h, ids, allowed := route(r.Method, r.URL.Path)
	defer func() { s.logCall(r, name, rec.status, start) }()

	fault, faulty := s.takeFault(name)
	if faulty && fault.SlowResponse > 0 {
		// Runs after the handler: the answer is still buffered in the
		// server, so the client waits while the effect has happened.
		defer time.Sleep(fault.SlowResponse)
	}
	if faulty && fault.Latency > 0 {
		t := time.NewTimer(fault.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			rec.status = 499 // client gave up; recorded for the log only
			return
		}
	}
	if faulty && fault.Status != 0 {
		if fault.Body != "" {
			writeBodyFault(rec, fault.Status, fault.Body)
			return
		}
		writeStatusFault(rec, fault.Status)
		return
	}
	if faulty && fault.RateLimit {
		s.write429(rec, "1.0")
		return
	}
	ident, ok := s.authenticate(r)
	if !ok {
		writeJSON(rec, s.opts.AuthErrorStatus, map[string]any{
			"success": false, "error": "auth_error", "msg": "Invalid user key",
		})
		return
	}
	if h == nil {
		if allowed != "" {
			rec.Header().Set("Allow", allowed)
			writeJSON(rec, http.StatusMethodNotAllowed, map[string]any{
				"success": false, "error": "method_not_allowed",
				"msg": fmt.Sprintf("Method %s not allowed.", r.Method),
			})
			return
		}
		msg := "Not found."
		if !strings.HasSuffix(r.URL.Path, "/") {
			msg = "Not found. API paths end with '/'."
		}
		writeJSON(rec, http.StatusNotFound, map[string]any{"success": false, "error": "not_found", "msg": msg})
		return
	}
	if s.opts.RateLimits {
		if threshold, limited := s.rateLimited(ident, name, start); limited {
			s.write429(rec, threshold)
			return
		}
	}
	c := &call{r: r, ids: ids, now: time.Now()}
	if faulty {
		c.fault = fault
	}
	if faulty && (fault.MalformedJSON || fault.EmptyBody) {
		buf := &bufferedResponse{header: http.Header{}}
		c.w = buf
		h(s, c)
		rec.Header().Set("Content-Type", "application/json")
		rec.WriteHeader(http.StatusOK)
		if fault.MalformedJSON {
			_, _ = rec.Write(truncateJSON(buf.body.Bytes()))
		}
		return
	}
	c.w = rec
	h(s, c)
}

func (s *Sim) logCall(r *http.Request, route string, status int, start time.Time) {
	if status == 0 {
		status = http.StatusOK
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) >= maxCalls {
		s.calls = append(s.calls[:0], s.calls[len(s.calls)-maxCalls/2:]...)
	}
	s.calls = append(s.calls, APICall{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Route: route,
		Status: status, Time: start, Duration: time.Since(start),
	})
}

// takeFault returns the faults to apply to this call and consumes one unit
// of Count.
func (s *Sim) takeFault(route string) (Faults, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.faults.active() || !s.faults.applies(route) {
		return Faults{}, false
	}
	f := s.faults
	if s.faultsLeft > 0 {
		s.faultsLeft--
		if s.faultsLeft == 0 {
			s.faults = Faults{}
		}
	}
	return f, true
}

// authenticate checks the bearer key and returns the identity used for rate
// limiting. Only the Authorization header is accepted: the legacy api_key
// query parameter leaks keys into logs, and the gateway must not use it.
func (s *Sim) authenticate(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return "", false
	}
	if s.opts.APIKey != "" && key != s.opts.APIKey {
		return "", false
	}
	return key, true
}

// rlRule is one endpoint's limit: a minimum interval between accepted
// calls, or (for offer search) a number of calls per minute.
type rlRule struct {
	interval  time.Duration
	perMinute int
	label     string // the threshold as vast.ai prints it
}

// rateRules are the x-rate-limit thresholds of the OpenAPI files (§3.2),
// read as minimum seconds between calls per endpoint and identity.
var rateRules = map[string]rlRule{
	"GET /api/v1/instances/":                   {interval: 1000 * time.Millisecond, label: "1.0"},
	"GET /api/v0/instances/{id}/":              {interval: 2000 * time.Millisecond, label: "2.0"},
	"PUT /api/v0/asks/{id}/":                   {interval: 4500 * time.Millisecond, label: "4.5"},
	"DELETE /api/v0/instances/{id}/":           {interval: 3000 * time.Millisecond, label: "3.0"},
	"PUT /api/v0/instances/{id}/":              {interval: 1000 * time.Millisecond, label: "1.0"},
	"PUT /api/v0/instances/reboot/{id}/":       {interval: 1000 * time.Millisecond, label: "1.0"},
	"PUT /api/v0/instances/recycle/{id}/":      {interval: 1000 * time.Millisecond, label: "1.0"},
	"DELETE /api/v0/instances/{id}/ssh/{key}/": {interval: 2000 * time.Millisecond, label: "2.0"},
	"POST /api/v0/bundles/":                    {perMinute: 10, label: "6.0"},
	"GET /api/v0/bundles/":                     {perMinute: 10, label: "6.0"},
}

type rlState struct {
	last   time.Time
	window []time.Time
}

// rateLimited applies the endpoint's rule. Rejected calls do not move the
// window, so a client that waits the threshold after its last success gets
// through.
func (s *Sim) rateLimited(ident, route string, now time.Time) (string, bool) {
	rule, ok := rateRules[route]
	if !ok {
		return "", false
	}
	key := ident + "\x00" + route
	if rule.perMinute > 0 {
		// Both offer-search methods share one budget.
		_, path, _ := strings.Cut(route, " ")
		key = ident + "\x00" + path
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.rl[key]
	if st == nil {
		st = &rlState{}
		s.rl[key] = st
	}
	if rule.interval > 0 {
		if !st.last.IsZero() && now.Sub(st.last) < rule.interval {
			return rule.label, true
		}
		st.last = now
		return "", false
	}
	cut := now.Add(-time.Minute)
	kept := st.window[:0]
	for _, t := range st.window {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	st.window = kept
	if len(st.window) >= rule.perMinute {
		return rule.label, true
	}
	st.window = append(st.window, now)
	return "", false
}

// write429 answers a rate-limited call, rotating through the observed body
// shapes so that a client has to cope with all of them. No Retry-After.
func (s *Sim) write429(w http.ResponseWriter, threshold string) {
	s.mu.Lock()
	shape := s.rlShape % 5
	s.rlShape++
	s.mu.Unlock()
	switch shape {
	case 0:
		writeText(w, http.StatusTooManyRequests, "API requests too frequent")
	case 1:
		writeText(w, http.StatusTooManyRequests, "API requests too frequent: endpoint threshold="+threshold)
	case 2:
		writeJSON(w, http.StatusTooManyRequests, map[string]any{
			"detail": "API requests too frequent endpoint threshold=" + threshold,
		})
	case 3:
		writeJSON(w, http.StatusTooManyRequests, map[string]any{
			"success": false, "error": "rate_limit_exceeded",
			"msg": "API requests too frequent endpoint threshold=" + threshold,
		})
	default:
		writeJSON(w, http.StatusTooManyRequests, map[string]any{
			"message": "The action could not be performed because there were too many requests by the client.\n\nAPI requests too frequent: endpoint threshold=" + threshold + "*1.0\n\n",
			"code":    "429 Too Many Requests",
		})
	}
}

// writeStatusFault answers like the component that usually produces the
// status: the API itself for 500, a reverse proxy for 502/503/504.
func writeBodyFault(w http.ResponseWriter, status int, body string) {
	ct := "text/plain; charset=utf-8"
	if t := strings.TrimSpace(body); strings.HasPrefix(t, "{") || strings.HasPrefix(t, "[") {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func writeStatusFault(w http.ResponseWriter, status int) {
	text := http.StatusText(status)
	if text == "" {
		text = "Error"
	}
	if status == http.StatusInternalServerError || status < 500 {
		writeJSON(w, status, map[string]any{
			"success": false, "error": "server_error",
			"msg": fmt.Sprintf("%d %s", status, text),
		})
		return
	}
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
		status, text, status, text)
}

// truncateJSON cuts a body in half; a proper prefix of a JSON object is
// never valid JSON, so the client is guaranteed a decode error.
func truncateJSON(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if len(b) < 4 {
		return []byte(`{"instances": [{"id": `)
	}
	return b[:len(b)/2]
}

// writeJSON writes v without HTML escaping, like vast.ai's Python backend.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeText(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

// writeErr writes the common {success:false, error, msg} shape.
func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"success": false, "error": code, "msg": msg})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) WriteHeader(code int)        { b.status = code }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

// sleepCtx waits d or until ctx ends; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-done:
		return false
	}
}
