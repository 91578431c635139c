package vastsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEngineAuth(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Env: map[string]string{"WEB_PASSWORD": "pw;x"}})
	info := s.info(t, id)
	tests := []struct {
		name   string
		header string
		basic  []string
		status int
	}{
		{"jupyter token", "Bearer " + info.JupyterToken, nil, 200},
		{"WEB_PASSWORD, sanitised like the portal", "Bearer pwx", nil, 200},
		{"unsanitised WEB_PASSWORD", "Bearer pw;x", nil, 401},
		{"wrong token", "Bearer nope", nil, 401},
		{"missing", "", nil, 401},
		{"lowercase scheme is not the exact header", "bearer " + info.JupyterToken, nil, 401},
		{"token with a suffix", "Bearer " + info.JupyterToken + "x", nil, 401},
		{"basic auth as portal user", "", []string{"vastai", info.JupyterToken}, 200},
		{"basic auth wrong user", "", []string{"root", info.JupyterToken}, 401},
	}
	var unauthorized int64
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+info.EngineAddr+"/v1/models", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			if tc.basic != nil {
				req.SetBasicAuth(tc.basic[0], tc.basic[1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if resp.Header.Get("X-Vastsim-Instance") != strconv.FormatInt(id, 10) {
				t.Fatal("missing X-Vastsim-Instance")
			}
			if tc.status == 401 {
				unauthorized++
				if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="Instance Portal"` {
					t.Fatalf("challenge %q", got)
				}
			}
		})
	}
	st := s.Engine(id)
	if st.Unauthorized != unauthorized || st.Requests != int64(len(tests)) || st.LastPath != "/v1/models" {
		t.Fatalf("stats %+v, want %d unauthorized", st, unauthorized)
	}
}

func TestEngineAuthDisabled(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Env: map[string]string{"ENABLE_AUTH": "false"}})
	if r := engineReq(t, s.info(t, id).EngineAddr, "GET", "/health", "", nil); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
}

func TestEngineEndpoints(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = time.Millisecond // a 512-token answer takes 512 intervals
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true, Model: "org/m-1"})
	info := s.info(t, id)
	tok := info.JupyterToken
	do := func(method, path string, body any) response {
		return engineReq(t, info.EngineAddr, method, path, tok, body)
	}

	if r := do("GET", "/health", nil); r.status != 200 {
		t.Fatalf("health %d", r.status)
	}
	jsonModels := do("GET", "/v1/models", nil)
	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object, OwnedBy string
		} `json:"data"`
	}
	if err := json.Unmarshal(jsonModels.body, &models); err != nil || models.Object != "list" || len(models.Data) != 1 || models.Data[0].ID != "org/m-1" {
		t.Fatalf("models %s", jsonModels.body)
	}
	jsonEq(t, mustField(t, jsonModels.body, "data", 0, "owned_by"), `"vastsim"`)

	type usage struct{ PromptTokens, CompletionTokens, TotalTokens int }
	var comp struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
			Message      struct{ Role, Content string }
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	r := do("POST", "/v1/completions", map[string]any{"model": "org/m-1", "prompt": "one two three"})
	if err := json.Unmarshal(r.body, &comp); err != nil || r.status != 200 {
		t.Fatalf("completions %d %s", r.status, r.body)
	}
	if comp.Object != "text_completion" || !strings.HasPrefix(comp.ID, "cmpl-") || comp.Usage.CompletionTokens != 16 ||
		comp.Usage.PromptTokens != 3 || comp.Usage.TotalTokens != 19 || comp.Choices[0].FinishReason != "length" ||
		len(strings.Fields(comp.Choices[0].Text)) != 16 {
		t.Fatalf("completion %+v", comp)
	}
	first := comp.Choices[0].Text
	r = do("POST", "/v1/completions", map[string]any{"prompt": "one two three"})
	_ = json.Unmarshal(r.body, &comp)
	if comp.Choices[0].Text != first {
		t.Fatal("generation is not deterministic")
	}

	r = do("POST", "/v1/chat/completions", map[string]any{"model": "org/m-1", "max_tokens": 5000,
		"messages": []map[string]any{{"role": "user", "content": "hi"}}})
	comp.Usage.CompletionTokens = 0
	if err := json.Unmarshal(r.body, &comp); err != nil || r.status != 200 {
		t.Fatalf("chat %d %s", r.status, r.body)
	}
	if comp.Object != "chat.completion" || comp.Choices[0].Message.Role != "assistant" || comp.Usage.CompletionTokens != 512 {
		t.Fatalf("chat %+v", comp)
	}

	errs := []struct {
		name   string
		path   string
		body   any
		status int
	}{
		{"unknown model", "/v1/completions", map[string]any{"model": "other", "prompt": "x"}, 404},
		{"no prompt", "/v1/completions", map[string]any{}, 400},
		{"no messages", "/v1/chat/completions", map[string]any{"messages": []any{}}, 400},
		{"zero max_tokens", "/v1/completions", map[string]any{"prompt": "x", "max_tokens": 0}, 400},
		{"bad JSON", "/v1/completions", "{", 400},
	}
	for _, tc := range errs {
		r := do("POST", tc.path, tc.body)
		var e struct {
			Error struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			} `json:"error"`
		}
		if r.status != tc.status || json.Unmarshal(r.body, &e) != nil || e.Error.Code != tc.status || e.Error.Message == "" {
			t.Errorf("%s: %d %s", tc.name, r.status, r.body)
		}
	}
	if r := do("GET", "/v1/completions", nil); r.status != 405 {
		t.Errorf("GET completions: %d", r.status)
	}
	if r := do("GET", "/nope", nil); r.status != 404 {
		t.Errorf("unknown path: %d", r.status)
	}

	m := do("GET", "/metrics", nil)
	for _, want := range []string{
		`vllm:num_requests_running{model_name="org/m-1"} 0`,
		`vllm:num_requests_waiting{model_name="org/m-1"} 0`,
		`vllm:gpu_cache_usage_perc{model_name="org/m-1"}`,
		`vllm:prompt_tokens_total{model_name="org/m-1"}`,
		`vllm:generation_tokens_total{model_name="org/m-1"} 544`,
		"# TYPE vllm:prompt_tokens_total counter",
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("metrics lack %q:\n%s", want, m.body)
		}
	}
	if st := s.Engine(id); st.Completions != 3 || st.Streams != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func mustField(t *testing.T, body []byte, path ...any) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			v = v.(map[string]any)[k]
		case int:
			v = v.([]any)[k]
		}
	}
	b, _ := json.Marshal(v)
	return b
}

type sseEvent struct {
	data string
	at   time.Time
}

// readSSE reads data lines with their arrival time on the client.
func readSSE(t *testing.T, resp *http.Response) []sseEvent {
	t.Helper()
	var out []sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			out = append(out, sseEvent{data: d, at: time.Now()})
		} else if line != "" {
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	return out
}

func TestSSEArrivesIncrementally(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = 40 * time.Millisecond
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)

	for _, chat := range []bool{false, true} {
		path := "/v1/completions"
		body := map[string]any{"prompt": "stream please", "max_tokens": 10, "stream": true, "stream_options": map[string]any{"include_usage": true}}
		if chat {
			path = "/v1/chat/completions"
			body = map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "max_tokens": 10, "stream": true}
		}
		j, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", "http://"+info.EngineAddr+path, bytes.NewReader(j))
		req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Fatalf("content type %q", ct)
		}
		events := readSSE(t, resp)
		resp.Body.Close()
		if events[len(events)-1].data != "[DONE]" {
			t.Fatalf("last event %q", events[len(events)-1].data)
		}
		var text strings.Builder
		tokens := 0
		for _, e := range events[:len(events)-1] {
			var chunk struct {
				Object  string `json:"object"`
				Choices []struct {
					Text  string `json:"text"`
					Delta struct {
						Content string `json:"content"`
					} `json:"delta"`
				} `json:"choices"`
				Usage *struct {
					CompletionTokens int `json:"completion_tokens"`
				} `json:"usage"`
			}
			if err := json.Unmarshal([]byte(e.data), &chunk); err != nil {
				t.Fatalf("chunk %q: %v", e.data, err)
			}
			if chunk.Usage != nil {
				if chunk.Usage.CompletionTokens != 10 {
					t.Fatalf("usage %+v", chunk.Usage)
				}
				continue
			}
			c := chunk.Choices[0].Text + chunk.Choices[0].Delta.Content
			if c != "" {
				tokens++
			}
			text.WriteString(c)
		}
		if tokens != 10 {
			t.Fatalf("chat=%v: %d token events", chat, tokens)
		}
		firstAt := events[0].at.Sub(start)
		spread := events[len(events)-1].at.Sub(events[0].at)
		// Ten tokens 40 ms apart: the first must arrive long before the last.
		if spread < 9*opts.TokenInterval*3/4 || firstAt > spread/2 {
			t.Fatalf("chat=%v: first event after %s, spread %s: not incremental", chat, firstAt, spread)
		}
	}
	if st := s.Engine(id); st.Streams != 2 || st.Completions != 2 || st.GenerationTokens != 20 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSSEStopsWhenClientLeaves(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = 20 * time.Millisecond
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j, _ := json.Marshal(map[string]any{"prompt": "long", "max_tokens": 512, "stream": true})
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+info.EngineAddr+"/v1/completions", bytes.NewReader(j))
	req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if st := s.Engine(id); st.InFlight != 1 {
		t.Fatalf("in flight %d", st.InFlight)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, 2*time.Second, "generation to stop", func() bool { return s.Engine(id).InFlight == 0 })
	if st := s.Engine(id); st.GenerationTokens >= 512 {
		t.Fatalf("generated %d tokens for a client that left", st.GenerationTokens)
	}
}

func TestNonStreamingIsInFlight(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = 30 * time.Millisecond
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)
	done := make(chan response, 1)
	go func() {
		done <- engineReq(t, info.EngineAddr, "POST", "/v1/completions", info.JupyterToken, map[string]any{"prompt": "x", "max_tokens": 20})
	}()
	waitFor(t, 2*time.Second, "in flight", func() bool { return s.Engine(id).InFlight == 1 })
	m := engineReq(t, info.EngineAddr, "GET", "/metrics", info.JupyterToken, nil)
	if !strings.Contains(string(m.body), `vllm:num_requests_running{model_name="vastsim/tiny-llm"} 1`) {
		t.Fatalf("metrics during a request:\n%s", m.body)
	}
	if r := <-done; r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
}

func TestEnginePlaceholder(t *testing.T) {
	t.Parallel()
	opts := fastOpts()
	// Long enough that the first probes below, right after the launch,
	// still see the placeholder on a loaded machine.
	opts.EngineReadyDelay = 3 * time.Second
	s, c := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)
	isPlaceholder := func(r response) bool {
		return r.status == 502 && r.header.Get("X-Portal-Placeholder") == "true" && r.header.Get("Cache-Control") == "no-store"
	}
	if st := c.do("GET", "/api/v0/instances/"+strconv.FormatInt(id, 10)+"/", nil).obj(t)["instances"].(map[string]any)["actual_status"]; st != "running" {
		t.Fatalf("status %v", st)
	}
	if r := engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil); !isPlaceholder(r) {
		t.Fatalf("want placeholder, got %d %v", r.status, r.header)
	}
	// Auth is checked before the placeholder, as the portal does.
	if r := engineReq(t, info.EngineAddr, "GET", "/health", "", nil); r.status != 401 {
		t.Fatalf("unauthenticated: %d", r.status)
	}
	waitFor(t, 30*time.Second, "engine ready", func() bool {
		return engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil).status == 200
	})
	s.SetEngineReady(id, false)
	if r := engineReq(t, info.EngineAddr, "GET", "/v1/models", info.JupyterToken, nil); !isPlaceholder(r) {
		t.Fatalf("forced not ready: %d", r.status)
	}
	s.SetEngineReady(id, true)
	if r := engineReq(t, info.EngineAddr, "GET", "/v1/models", info.JupyterToken, nil); r.status != 200 {
		t.Fatalf("forced ready: %d", r.status)
	}
	if st := s.Engine(id); st.NotReady < 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestKillAndHangEngine(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)

	t.Run("kill", func(t *testing.T) {
		s.KillEngine(id)
		if conn, err := net.DialTimeout("tcp", info.EngineAddr, time.Second); err == nil {
			conn.Close()
			t.Fatal("killed engine still accepts")
		}
		in := c.do("GET", "/api/v0/instances/"+strconv.FormatInt(id, 10)+"/", nil).obj(t)["instances"].(map[string]any)
		if in["actual_status"] != "running" || in["ports"].(map[string]any)["8000/tcp"] == nil {
			t.Fatalf("killed instance should still look running: %v", in["actual_status"])
		}
		s.SetStatus(id, "running")
		if r := engineReq(t, s.info(t, id).EngineAddr, "GET", "/health", info.JupyterToken, nil); r.status != 200 {
			t.Fatalf("revived: %d", r.status)
		}
	})

	t.Run("hang", func(t *testing.T) {
		addr := s.info(t, id).EngineAddr
		s.HangEngine(id, true)
		hc := &http.Client{Timeout: 200 * time.Millisecond}
		req, _ := http.NewRequest("GET", "http://"+addr+"/health", nil)
		req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
		start := time.Now()
		_, err := hc.Do(req)
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("hung engine answered: %v", err)
		}
		if time.Since(start) < 150*time.Millisecond {
			t.Fatal("timed out too early")
		}
		// A request waiting on a hung engine resumes when it is unhung.
		before := s.Engine(id).Requests
		got := make(chan int, 1)
		go func() {
			r, err := http.DefaultClient.Do(req.Clone(context.Background()))
			if err != nil {
				got <- -1
				return
			}
			r.Body.Close()
			got <- r.StatusCode
		}()
		waitFor(t, 2*time.Second, "request to reach the hung engine", func() bool {
			return s.Engine(id).Requests > before
		})
		s.HangEngine(id, false)
		select {
		case code := <-got:
			if code != 200 {
				t.Fatalf("after unhang: %d", code)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("request did not resume after unhang")
		}
	})

	t.Run("close releases hung requests", func(t *testing.T) {
		s.HangEngine(id, true)
		addr := s.info(t, id).EngineAddr
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest("GET", "http://"+addr+"/health", nil)
			req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
			_, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
			errc <- err
		}()
		before := s.Engine(id).Requests
		waitFor(t, 2*time.Second, "hung request", func() bool { return s.Engine(id).Requests > before })
		s.KillEngine(id)
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("hung request answered after kill")
			}
		case <-time.After(3 * time.Second):
			t.Fatal("killing the engine did not release the hung connection")
		}
	})
}
