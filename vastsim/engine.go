package vastsim

import (
	"crypto/subtle"
	"encoding/json"
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

func (s *Sim) serveGeneration(w http.ResponseWriter, r *http.Request, in *instance, e *engine, model string, chat bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		openAIError(w, http.StatusBadRequest, "BadRequestError", "could not read request body")
		return
	}
	var req genRequest
	if err := json.Unmarshal(body, &req); err != nil {
		openAIError(w, http.StatusBadRequest, "BadRequestError", "Invalid JSON body: "+err.Error())
		return
	}
	if req.Model != "" && req.Model != model {
		openAIError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", req.Model))
		return
	}
	text, ok := promptText(&req, chat)
	if !ok {
		field := "prompt"
		if chat {
			field = "messages"
		}
		openAIError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("'%s' is a required property", field))
		return
	}
	n := defaultMaxTokens
	if chat && req.MaxCompletionTokens != nil {
		n = *req.MaxCompletionTokens
	} else if req.MaxTokens != nil {
		n = *req.MaxTokens
	}
	if n < 1 {
		openAIError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("max_tokens must be at least 1, got %d.", n))
		return
	}
	n = min(n, capMaxTokens)
	promptTokens := countTokens(text)
	tokens := genTokens(text, n)

	s.mu.Lock()
	spec := in.engSpec
	s.mu.Unlock()
	full, total := prefixBlocks(text, spec.blockChars())
	// Queue before counting InFlight, so that a request counted in flight
	// is already running or waiting on /metrics.
	kv := kvBlocks(total, n)
	wt, elem := e.q.enqueue(kv)

	s.mu.Lock()
	in.stats.Completions++
	in.stats.InFlight++
	in.stats.PromptTokens += int64(promptTokens)
	if req.Stream {
		in.stats.Streams++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		in.stats.InFlight--
		s.mu.Unlock()
	}()
	if !e.q.wait(r.Context(), e.closed, wt, elem) {
		return // client went away or the engine died while queued
	}
	defer e.q.release(kv)
	cached, prefill := e.q.prefill(full, total)
	if !sleepCtx(r.Context(), prefill, e.closed) {
		return
	}
	e.q.remember(full)
	w.Header().Set("X-Vastsim-Prefix-Blocks", strconv.Itoa(total))
	w.Header().Set("X-Vastsim-Cached-Blocks", strconv.Itoa(cached))
	emit := func(k int) {
		s.mu.Lock()
		in.stats.GenerationTokens += int64(k)
		s.mu.Unlock()
	}

	prefix, object := "cmpl-", "text_completion"
	if chat {
		prefix, object = "chatcmpl-", "chat.completion"
	}
	id := prefix + randHex(16)
	created := time.Now().Unix()
	interval := spec.tokenInterval(s.opts.TokenInterval)
	usage := map[string]any{
		"prompt_tokens": promptTokens, "completion_tokens": n, "total_tokens": promptTokens + n,
	}

	if !req.Stream {
		// Generation takes as long as streaming would, so that in-flight
		// counts and client timeouts behave like a real engine.
		if !sleepCtx(r.Context(), time.Duration(n)*interval, e.closed) {
			return
		}
		emit(n)
		full := strings.Join(tokens, "")
		var choice map[string]any
		if chat {
			choice = map[string]any{
				"index":    0,
				"message":  map[string]any{"role": "assistant", "content": full, "tool_calls": []any{}},
				"logprobs": nil, "finish_reason": "length", "stop_reason": nil,
			}
		} else {
			choice = map[string]any{
				"index": 0, "text": full, "logprobs": nil, "finish_reason": "length", "stop_reason": nil,
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "object": object, "created": created, "model": model,
			"choices": []any{choice}, "usage": usage,
		})
		return
	}

	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(v any) bool {
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	chunk := func(choice map[string]any) map[string]any {
		obj := "text_completion"
		if chat {
			obj = "chat.completion.chunk"
		}
		return map[string]any{"id": id, "object": obj, "created": created, "model": model, "choices": []any{choice}}
	}
	if chat {
		if !send(chunk(map[string]any{
			"index": 0, "delta": map[string]any{"role": "assistant", "content": ""},
			"logprobs": nil, "finish_reason": nil,
		})) {
			return
		}
	}
	for i, tok := range tokens {
		if i > 0 && !sleepCtx(r.Context(), interval, e.closed) {
			return // client went away or the engine died: stop generating
		}
		var finish any
		if i == len(tokens)-1 {
			finish = "length"
		}
		var choice map[string]any
		if chat {
			choice = map[string]any{"index": 0, "delta": map[string]any{"content": tok}, "logprobs": nil, "finish_reason": finish}
		} else {
			choice = map[string]any{"index": 0, "text": tok, "logprobs": nil, "finish_reason": finish, "stop_reason": nil}
		}
		if !send(chunk(choice)) {
			return
		}
		emit(1)
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		m := chunk(nil)
		m["choices"] = []any{}
		m["usage"] = usage
		if !send(m) {
			return
		}
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
	_ = rc.Flush()
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
