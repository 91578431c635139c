package vastsim

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// EngineStats counts what one instance's engine received. Counts survive
// engine restarts (stop/start, reboot) for the life of the instance.
type EngineStats struct {
	// Requests counts every HTTP request that reached the engine's port.
	Requests int64
	// Unauthorized counts 401 answers (missing or wrong token).
	Unauthorized int64
	// NotReady counts portal placeholder answers (engine not ready).
	NotReady int64
	// Completions counts accepted /v1/completions and /v1/chat/completions
	// requests, streamed or not.
	Completions int64
	// Streams counts the accepted requests that asked for "stream": true.
	Streams int64
	// InFlight is the number of generations in progress right now.
	InFlight int64
	// PromptTokens and GenerationTokens are the totals /metrics reports.
	PromptTokens     int64
	GenerationTokens int64
	// LastPath is the path of the most recent request.
	LastPath string
	// Cancelled counts generations that stopped before finishing because
	// their client went away (the default, vLLM-like engine stops then).
	Cancelled int64
	// Abandoned counts SGLang-mode generations whose client went away: the
	// engine generates on, holding its batch slot, until done or aborted.
	Abandoned int64
	// AbortRequests counts calls to /abort_request (any engine; only
	// SGLang mode serves them). Aborted counts generations they ended;
	// AbortedIDs are those generations' ids (rids), oldest first, the
	// last 64.
	AbortRequests, Aborted int64
	AbortedIDs             []string
	// Arrivals are the X-Request-Id headers of the generation requests, in
	// the order their handlers started (the first 1024 that carried one),
	// so a test can check the order requests reached the engine.
	Arrivals []string
	// OpenConns is the number of TCP connections open at the engine's
	// ports right now; ConnsOpened counts every connection ever accepted.
	// They show how a client pools its keep-alive connections.
	OpenConns, ConnsOpened int64
}

// engine is one running incarnation of an instance's container: a listener
// per requested TCP port, all serving the same OpenAI-compatible handler
// behind a simulated Instance Portal.
type engine struct {
	srv    *http.Server
	lns    []net.Listener
	closed chan struct{}
	once   sync.Once
	q      *engineQueue // this incarnation's batch and prefix cache
}

// close kills the engine abruptly: listeners and open connections are
// closed, in-flight streams are cut, as when a host dies.
func (e *engine) close() {
	e.once.Do(func() {
		_ = e.srv.Close()
		for _, ln := range e.lns {
			_ = ln.Close()
		}
		close(e.closed)
	})
}

// startEngineLocked opens the instance's ports. With reuse it first tries
// the previous host ports (a container restarted in place keeps its
// mapping); otherwise, or if a port is taken, it picks fresh ones, as
// vast.ai may after a stop/start. The SSH server starts with it.
// s.mu must be held.
func (s *Sim) startEngineLocked(in *instance, reuse bool) error {
	if s.closed || in.destroyed() {
		return nil
	}
	if in.eng != nil {
		return nil
	}
	e := &engine{closed: make(chan struct{}), q: newEngineQueue(in.engSpec)}
	e.srv = &http.Server{Handler: s.engineHandler(in, e), ReadHeaderTimeout: 10 * time.Second, ConnState: in.conns.track}
	newPorts := map[string]int{}
	for _, p := range in.ports {
		prev := in.hostPorts[p.key()]
		if s.sshOwnsPort(p) {
			continue // container port 22 is the SSH server's (ssh.go)
		}
		if p.proto == "udp" {
			// UDP ports are mapped but not served: the engine speaks HTTP.
			if reuse && prev != 0 {
				newPorts[p.key()] = prev
				continue
			}
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				continue
			}
			newPorts[p.key()] = pc.LocalAddr().(*net.UDPAddr).Port
			_ = pc.Close()
			continue
		}
		var ln net.Listener
		var err error
		if reuse && prev != 0 {
			ln, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(prev))
		}
		if ln == nil {
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			for _, l := range e.lns {
				_ = l.Close()
			}
			return fmt.Errorf("vastsim: engine listen: %w", err)
		}
		e.lns = append(e.lns, ln)
		newPorts[p.key()] = ln.Addr().(*net.TCPAddr).Port
	}
	in.hostPorts = newPorts
	in.eng = e
	for _, ln := range e.lns {
		go func(ln net.Listener) { _ = e.srv.Serve(ln) }(ln)
	}
	s.logf("vastsim: instance %d engine on %v", in.id, newPorts)
	s.startSSHLocked(in, reuse)
	return nil
}

// stopEngineLocked kills the instance's engine, if any, with its SSH server,
// and clears a hang.
// The engine is closed before the hang is released so that a released
// request sees a dead engine and never answers. Closing under s.mu is safe:
// http.Server.Close does not wait for handlers, which may be waiting for
// s.mu.
func (s *Sim) stopEngineLocked(in *instance) {
	if in.eng != nil {
		in.eng.close()
		in.eng = nil
	}
	s.stopSSHLocked(in)
	s.unhangLocked(in)
}

// portalAuthOK applies the Instance Portal's rules (§12.2): a Bearer header
// equal to a valid token, or Basic auth with the portal user. Valid tokens
// are the instance's jupyter_token (taken to equal OPEN_BUTTON_TOKEN) and
// WEB_PASSWORD when the create env set one. ENABLE_AUTH=false disables auth.
func (in *instance) portalAuthOK(r *http.Request) bool {
	var webPassword, user string
	user = "vastai"
	for _, e := range in.env {
		switch e.K {
		case "ENABLE_AUTH":
			if strings.EqualFold(strings.TrimSpace(e.V), "false") {
				return true
			}
		case "WEB_PASSWORD":
			// The portal strips CR, LF and ';' from tokens.
			webPassword = strings.NewReplacer("\r", "", "\n", "", ";", "").Replace(e.V)
		case "WEB_USERNAME":
			if e.V != "" {
				user = e.V
			}
		}
	}
	tokens := []string{in.jupyterToken}
	if webPassword != "" {
		tokens = append(tokens, webPassword)
	}
	h := r.Header.Get("Authorization")
	for _, t := range tokens {
		if subtle.ConstantTimeCompare([]byte(h), []byte("Bearer "+t)) == 1 {
			return true
		}
	}
	if u, p, ok := r.BasicAuth(); ok && u == user {
		for _, t := range tokens {
			if subtle.ConstantTimeCompare([]byte(p), []byte(t)) == 1 {
				return true
			}
		}
	}
	return false
}

// engineHandler serves one instance's port: hang simulation, portal auth,
// the not-ready placeholder, then the OpenAI-compatible engine.
func (s *Sim) engineHandler(in *instance, e *engine) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Vastsim-Instance", strconv.FormatInt(in.id, 10))
		s.mu.Lock()
		in.stats.Requests++
		in.stats.LastPath = r.URL.Path
		s.mu.Unlock()

		// A hung host accepts the connection and never answers.
		for {
			s.mu.Lock()
			hung, ch := in.hung, in.unhang
			s.mu.Unlock()
			if !hung {
				break
			}
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			case <-e.closed:
				// The host died: drop the connection without an answer
				// (returning would let net/http send an empty 200).
				panic(http.ErrAbortHandler)
			}
		}
		select {
		case <-e.closed:
			panic(http.ErrAbortHandler)
		default:
		}

		s.mu.Lock()
		authOK := in.portalAuthOK(r)
		ready := in.engineReady(time.Now(), s.opts.EngineReadyDelay)
		model := in.model
		switch {
		case !authOK:
			in.stats.Unauthorized++
		case !ready:
			in.stats.NotReady++
		}
		s.mu.Unlock()

		if !authOK {
			w.Header().Set("WWW-Authenticate", `Basic realm="Instance Portal"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if !ready {
			writePlaceholder(w, r)
			return
		}
		s.serveEngine(w, r, in, e, model)
	})
}

// writePlaceholder is the portal's "not ready" page: the upstream error
// becomes 502 (200 only through a Cloudflare tunnel) with a marker header.
func writePlaceholder(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Portal-Placeholder", "true")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	status := http.StatusBadGateway
	if r.Header.Get("Cf-Ray") != "" {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, "<!DOCTYPE html><html><head><title>Loading...</title></head><body><h1>This application is starting</h1><p>The service behind this port is not ready yet. This page will refresh when it is.</p></body></html>\n")
}

func (s *Sim) serveEngine(w http.ResponseWriter, r *http.Request, in *instance, e *engine, model string) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	method := func(m string) bool {
		if r.Method == m || (m == http.MethodGet && r.Method == http.MethodHead) {
			return true
		}
		w.Header().Set("Allow", m)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"detail": "Method Not Allowed"})
		return false
	}
	switch path {
	case "/health", "/ping":
		if method(http.MethodGet) {
			w.WriteHeader(http.StatusOK)
		}
	case "/version":
		if method(http.MethodGet) {
			writeJSON(w, http.StatusOK, map[string]any{"version": "0.11.0"})
		}
	case "/v1/models":
		if method(http.MethodGet) {
			writeJSON(w, http.StatusOK, map[string]any{
				"object": "list",
				"data": []any{map[string]any{
					"id": model, "object": "model", "created": in.created.Unix(),
					"owned_by": "vastsim", "root": model, "parent": nil, "max_model_len": 4096,
				}},
			})
		}
	case "/v1/completions":
		if method(http.MethodPost) {
			s.serveGeneration(w, r, in, e, model, false)
		}
	case "/v1/chat/completions":
		if method(http.MethodPost) {
			s.serveGeneration(w, r, in, e, model, true)
		}
	case "/metrics":
		if method(http.MethodGet) {
			s.serveMetrics(w, in, e, model)
		}
	case "/abort_request":
		s.serveAbort(w, r, in, e)
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
	}
}

// openAIError writes the error envelope of current vLLM versions.
func openAIError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": status,
	}})
}

type genRequest struct {
	Model               string          `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            []genMessage    `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type genMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// vocab is the simulated model's whole vocabulary; output is a
// deterministic function of the prompt so tests can compare answers.
var vocab = strings.Fields(`the a quick brown fox jumps over lazy dog and GPU
tensor model token stream cloud vast instance engine cache batch kernel
latency throughput prompt answer simulated world hello data layer weight
attention vector matrix sample river mountain light shadow signal network
packet socket route proxy gateway query result value index memory disk`)

// countTokens approximates a tokenizer: one token per word, at least one.
func countTokens(text string) int {
	return max(1, len(strings.Fields(text)))
}

func genTokens(prompt string, n int) []string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(prompt))
	seed := int(h.Sum32() % uint32(len(vocab)))
	out := make([]string, n)
	for i := range out {
		out[i] = " " + vocab[(seed+i*7)%len(vocab)]
	}
	return out
}

// promptText flattens a completions prompt (string or list) or chat messages
// (string content or a list of text parts) for token counting and seeding.
func promptText(req *genRequest, chat bool) (string, bool) {
	if chat {
		if len(req.Messages) == 0 {
			return "", false
		}
		var b strings.Builder
		for _, m := range req.Messages {
			b.WriteString(m.Role)
			b.WriteString(": ")
			var s string
			if json.Unmarshal(m.Content, &s) == nil {
				b.WriteString(s)
			} else {
				var parts []struct {
					Type string `json:"type"`
					Text string `json:"text"`
				}
				if json.Unmarshal(m.Content, &parts) == nil {
					for _, p := range parts {
						b.WriteString(p.Text)
						b.WriteString(" ")
					}
				}
			}
			b.WriteString("\n")
		}
		return b.String(), true
	}
	if len(req.Prompt) == 0 {
		return "", false
	}
	var s string
	if json.Unmarshal(req.Prompt, &s) == nil {
		return s, true
	}
	var list []string
	if json.Unmarshal(req.Prompt, &list) == nil && len(list) > 0 {
		return strings.Join(list, "\n"), true
	}
	var ids []int
	if json.Unmarshal(req.Prompt, &ids) == nil && len(ids) > 0 {
		return fmt.Sprint(ids), true
	}
	return "", false
}

const (
	defaultMaxTokens = 16
	capMaxTokens     = 512
)

// genJob is a validated generation request.
type genJob struct {
	req          genRequest
	chat         bool
	text         string
	n            int
	promptTokens int
	tokens       []string
}

// parseGeneration reads and validates a completions request, answering
// the client itself when it is invalid.
func parseGeneration(w http.ResponseWriter, r *http.Request, model string, chat bool) (*genJob, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		openAIError(w, http.StatusBadRequest, "BadRequestError", "could not read request body")
		return nil, false
	}
	j := &genJob{chat: chat}
	if err := json.Unmarshal(body, &j.req); err != nil {
		openAIError(w, http.StatusBadRequest, "BadRequestError", "Invalid JSON body: "+err.Error())
		return nil, false
	}
	if j.req.Model != "" && j.req.Model != model {
		openAIError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", j.req.Model))
		return nil, false
	}
	text, ok := promptText(&j.req, chat)
	if !ok {
		field := "prompt"
		if chat {
			field = "messages"
		}
		openAIError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("'%s' is a required property", field))
		return nil, false
	}
	n := defaultMaxTokens
	if chat && j.req.MaxCompletionTokens != nil {
		n = *j.req.MaxCompletionTokens
	} else if j.req.MaxTokens != nil {
		n = *j.req.MaxTokens
	}
	if n < 1 {
		openAIError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("max_tokens must be at least 1, got %d.", n))
		return nil, false
	}
	j.text, j.n = text, min(n, capMaxTokens)
	j.promptTokens = countTokens(text)
	j.tokens = genTokens(text, j.n)
	return j, true
}

// errAborted is the cause of a generation ended by /abort_request.
var errAborted = errors.New("vastsim: generation aborted")

// generation is one accepted request on its way through the engine.
//
// Its ctx decides when it stops early. Like vLLM, the default engine stops
// when the client goes (ctx is the request's). Like SGLang, an engine with
// MetricsSGLang does not: ctx ends only on /abort_request, and a request
// whose client left keeps its batch slot until it would have finished,
// writing to nobody. That is why a gateway must abort it.
type generation struct {
	s      *Sim
	in     *instance
	e      *engine
	w      http.ResponseWriter
	r      *http.Request
	rc     *http.ResponseController
	job    *genJob
	ctx    context.Context
	sglang bool

	id, model, object string
	created           int64
	interval          time.Duration

	writeFailed bool // a write to the client failed (default engine)
	gone        bool // SGLang: the client left, generation goes on
}

func (s *Sim) serveGeneration(w http.ResponseWriter, r *http.Request, in *instance, e *engine, model string, chat bool) {
	if rid := r.Header.Get("X-Request-Id"); rid != "" {
		s.mu.Lock()
		if len(in.stats.Arrivals) < 1024 {
			in.stats.Arrivals = append(in.stats.Arrivals, rid)
		}
		s.mu.Unlock()
	}
	job, ok := parseGeneration(w, r, model, chat)
	if !ok {
		return
	}
	s.mu.Lock()
	spec := in.engSpec
	s.mu.Unlock()
	g := &generation{
		s: s, in: in, e: e, w: w, r: r, rc: http.NewResponseController(w), job: job,
		sglang: spec.Metrics == MetricsSGLang, model: model, created: time.Now().Unix(),
		interval: spec.tokenInterval(s.opts.TokenInterval),
	}
	prefix := "cmpl-"
	g.object = "text_completion"
	if chat {
		prefix, g.object = "chatcmpl-", "chat.completion"
	}
	g.id = prefix + randHex(16)
	base := r.Context()
	if g.sglang {
		// SGLang's response id is the request id (rid) /abort_request takes.
		g.id, base = randHex(16), context.Background()
	}
	ctx, cancel := context.WithCancelCause(base)
	defer cancel(nil)
	g.ctx = ctx
	if g.sglang {
		e.q.register(g.id, cancel)
		defer e.q.unregister(g.id)
	}
	full, total := prefixBlocks(job.text, spec.blockChars())
	// Queue before counting InFlight, so that a request counted in flight
	// is already running or waiting on /metrics.
	kv := kvBlocks(total, job.n)
	wt, elem := e.q.enqueue(kv)
	s.mu.Lock()
	in.stats.Completions++
	in.stats.InFlight++
	in.stats.PromptTokens += int64(job.promptTokens)
	if job.req.Stream {
		in.stats.Streams++
	}
	s.mu.Unlock()
	completed := false
	defer func() { g.end(completed) }()
	if !e.q.wait(ctx, e.closed, wt, elem) {
		return // gave up or the engine died while queued
	}
	defer e.q.release(kv)
	cached, prefill := e.q.prefill(full, total)
	if !sleepCtx(ctx, prefill, e.closed) {
		g.abortNotice(false)
		return
	}
	e.q.remember(full)
	w.Header().Set("X-Vastsim-Prefix-Blocks", strconv.Itoa(total))
	w.Header().Set("X-Vastsim-Cached-Blocks", strconv.Itoa(cached))
	if job.req.Stream {
		completed = g.stream()
	} else {
		completed = g.whole()
	}
}

// end records how the generation ended: in flight no more, and if it did
// not finish, whether it was aborted or its client went away. An engine
// that died counts neither.
func (g *generation) end(completed bool) {
	s, st := g.s, &g.in.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	st.InFlight--
	if completed {
		return
	}
	select {
	case <-g.e.closed:
		return
	default:
	}
	switch {
	case errors.Is(context.Cause(g.ctx), errAborted):
		st.Aborted++
		st.AbortedIDs = append(st.AbortedIDs, g.id)
		if n := len(st.AbortedIDs); n > maxAbortedIDs {
			st.AbortedIDs = append([]string(nil), st.AbortedIDs[n-maxAbortedIDs:]...)
		}
	case g.writeFailed || g.r.Context().Err() != nil:
		st.Cancelled++
	}
}

// maxAbortedIDs bounds EngineStats.AbortedIDs.
const maxAbortedIDs = 64

func (g *generation) emit(k int) {
	g.s.mu.Lock()
	g.in.stats.GenerationTokens += int64(k)
	g.s.mu.Unlock()
}

func (g *generation) usage(completion int) map[string]any {
	p := g.job.promptTokens
	return map[string]any{"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion}
}

// whole answers a non-streaming request after the time streaming would
// take, so that in-flight counts and client timeouts behave like a real
// engine.
func (g *generation) whole() bool {
	n := g.job.n
	if !sleepCtx(g.ctx, time.Duration(n)*g.interval, g.e.closed) {
		g.abortNotice(false)
		return false
	}
	g.emit(n)
	g.writeWhole(strings.Join(g.job.tokens, ""), "length", n)
	return true
}

func (g *generation) writeWhole(text, finish string, completion int) {
	var choice map[string]any
	if g.job.chat {
		choice = map[string]any{
			"index":    0,
			"message":  map[string]any{"role": "assistant", "content": text, "tool_calls": []any{}},
			"logprobs": nil, "finish_reason": finish, "stop_reason": nil,
		}
	} else {
		choice = map[string]any{
			"index": 0, "text": text, "logprobs": nil, "finish_reason": finish, "stop_reason": nil,
		}
	}
	writeJSON(g.w, http.StatusOK, map[string]any{
		"id": g.id, "object": g.object, "created": g.created, "model": g.model,
		"choices": []any{choice}, "usage": g.usage(completion),
	})
}

// send writes one SSE event. False means stop generating: the default
// engine stops when its client is gone; SGLang goes on without writing.
func (g *generation) send(v any) bool {
	if g.sglang && !g.gone && g.r.Context().Err() != nil {
		g.markGone()
	}
	if g.gone {
		return true
	}
	b, _ := json.Marshal(v)
	_, err := fmt.Fprintf(g.w, "data: %s\n\n", b)
	if err == nil {
		err = g.rc.Flush()
	}
	if err == nil {
		return true
	}
	if g.sglang {
		g.markGone()
		return true
	}
	g.writeFailed = true
	return false
}

// markGone counts an SGLang generation whose client left.
func (g *generation) markGone() {
	g.gone = true
	g.s.mu.Lock()
	g.in.stats.Abandoned++
	g.s.mu.Unlock()
}

func (g *generation) chunk(choice map[string]any) map[string]any {
	obj := "text_completion"
	if g.job.chat {
		obj = "chat.completion.chunk"
	}
	choices := []any{}
	if choice != nil {
		choices = []any{choice}
	}
	return map[string]any{"id": g.id, "object": obj, "created": g.created, "model": g.model, "choices": choices}
}

func (g *generation) choice(tok string, finish any) map[string]any {
	if g.job.chat {
		return map[string]any{"index": 0, "delta": map[string]any{"content": tok}, "logprobs": nil, "finish_reason": finish}
	}
	return map[string]any{"index": 0, "text": tok, "logprobs": nil, "finish_reason": finish, "stop_reason": nil}
}

// stream sends the tokens as server-sent events; true if all were
// generated.
func (g *generation) stream() bool {
	g.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	g.w.Header().Set("Cache-Control", "no-cache")
	g.w.WriteHeader(http.StatusOK)
	if g.job.chat {
		if !g.send(g.chunk(map[string]any{
			"index": 0, "delta": map[string]any{"role": "assistant", "content": ""},
			"logprobs": nil, "finish_reason": nil,
		})) {
			return false
		}
	}
	tokens := g.job.tokens
	for i, tok := range tokens {
		if i > 0 && !sleepCtx(g.ctx, g.interval, g.e.closed) {
			g.abortNotice(true)
			return false // client went away, aborted, or the engine died
		}
		var finish any
		if i == len(tokens)-1 {
			finish = "length"
		}
		if !g.send(g.chunk(g.choice(tok, finish))) {
			return false
		}
		g.emit(1)
	}
	if o := g.job.req.StreamOptions; o != nil && o.IncludeUsage {
		m := g.chunk(nil)
		m["usage"] = g.usage(g.job.n)
		if !g.send(m) {
			return false
		}
	}
	if !g.gone {
		_, _ = io.WriteString(g.w, "data: [DONE]\n\n")
		_ = g.rc.Flush()
	}
	return true
}

// abortNotice tells a client still listening that its request was
// aborted, as SGLang does: finish_reason "abort".
func (g *generation) abortNotice(streaming bool) {
	if !errors.Is(context.Cause(g.ctx), errAborted) || g.gone || g.r.Context().Err() != nil {
		return
	}
	if !streaming {
		g.writeWhole("", "abort", 0)
		return
	}
	if g.send(g.chunk(g.choice("", "abort"))) && !g.gone {
		_, _ = io.WriteString(g.w, "data: [DONE]\n\n")
		_ = g.rc.Flush()
	}
}

// serveAbort is SGLang's POST /abort_request: {"rid": "<id>"} aborts that
// request, an unknown or empty rid is a no-op (200, as current SGLang),
// {"abort_all": true} aborts every request. Other engines have no such
// endpoint.
func (s *Sim) serveAbort(w http.ResponseWriter, r *http.Request, in *instance, e *engine) {
	s.mu.Lock()
	in.stats.AbortRequests++
	s.mu.Unlock()
	if e.q.metricsFormat() != MetricsSGLang {
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"detail": "Method Not Allowed"})
		return
	}
	var body struct {
		RID      string `json:"rid"`
		AbortAll bool   `json:"abort_all"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"detail": "Invalid JSON body: " + err.Error()})
		return
	}
	switch {
	case body.AbortAll:
		e.q.abort("", true)
	case body.RID != "":
		e.q.abort(body.RID, false)
	}
	w.WriteHeader(http.StatusOK)
}

// serveMetrics renders the engine's true load in its EngineSpec.Metrics
// format, the gauges a gateway reads for load-aware routing.
func (s *Sim) serveMetrics(w http.ResponseWriter, in *instance, e *engine, model string) {
	s.mu.Lock()
	st := in.stats
	s.mu.Unlock()
	body, ok := renderMetrics(e.q.metricsFormat(), model, e.q.load(), st)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, body)
}

// connCounter counts an engine's TCP connections with atomics: the
// http.Server reports connection states from its Serve loop, which must not
// wait for s.mu (stopEngineLocked holds it while closing the server).
type connCounter struct {
	open, opened atomic.Int64
}

func (c *connCounter) track(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		c.open.Add(1)
		c.opened.Add(1)
	case http.StateClosed, http.StateHijacked:
		c.open.Add(-1)
	}
}
