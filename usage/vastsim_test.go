package usage

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// miniGateway forwards to one vastsim engine the way the keys handler
// will: Prepare the body, wrap the writer, relay the answer as it comes
// (small reads, a flush after each), Finish. Each request's usage goes to
// the channel.
func miniGateway(t *testing.T, engine, token string) (string, <-chan Usage) {
	t.Helper()
	got := make(chan Usage, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		out, info := Prepare(body)
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+engine+r.URL.Path, bytes.NewReader(out))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		w := NewWriter(rw, info.Injected)
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 37) // odd reads split events anywhere
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				_, _ = w.Write(buf[:n])
				w.Flush()
			}
			if err != nil {
				break
			}
		}
		got <- w.Finish(info.PromptEstimate)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, got
}

// volatile are the fields that differ between two answers to the same
// request.
var volatile = regexp.MustCompile(`"(id|created)":("[^"]*"|\d+)`)

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, volatile.ReplaceAllString(string(b), `"$1":_`)
}

// TestVastsimUsage streams through the mini gateway to a real vastsim
// engine: the counts equal the simulator's true token deltas, a client
// that did not ask for usage gets the stream it gets straight from the
// engine, and one that asked keeps its usage chunk.
func TestVastsimUsage(t *testing.T) {
	sim := vastsim.New(vastsim.Options{APIKey: "k", TokenInterval: time.Millisecond})
	if _, err := sim.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	id, err := sim.Launch(vastsim.LaunchSpec{Running: true})
	if err != nil {
		t.Fatal(err)
	}
	var info vastsim.InstanceInfo
	for _, in := range sim.Instances() {
		if in.ID == id {
			info = in
		}
	}
	gw, usages := miniGateway(t, info.EngineAddr, info.JupyterToken)
	chat := `{"messages":[{"role":"user","content":"tell me about the quick brown fox"}],"max_tokens":20`
	cmpl := `{"prompt":"one two three four five","max_tokens":9`
	tests := []struct {
		name, path, body string
		usageChunk       bool // the client sees a usage chunk
		status           int
		estimated        bool
	}{
		{"chat stream, usage injected", "/v1/chat/completions", chat + `,"stream":true}`, false, 200, false},
		{"chat stream, client asked", "/v1/chat/completions", chat + `,"stream":true,"stream_options":{"include_usage":true}}`, true, 200, false},
		{"completions stream, usage injected", "/v1/completions", cmpl + `,"stream":true}`, false, 200, false},
		{"completions JSON", "/v1/completions", cmpl + `}`, false, 200, false},
		{"error", "/v1/completions", `{"prompt":"x","max_tokens":0}`, false, 400, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := sim.Engine(id)
			status, got := post(t, gw+tc.path, tc.body)
			u := <-usages
			after := sim.Engine(id)
			if status != tc.status {
				t.Fatalf("status %d: %s", status, got)
			}
			wantU := Usage{int(after.PromptTokens - before.PromptTokens), int(after.GenerationTokens - before.GenerationTokens), false}
			if tc.estimated {
				_, pi := Prepare([]byte(tc.body))
				wantU = Usage{pi.PromptEstimate, 0, true}
			}
			if u != wantU || (!tc.estimated && u.CompletionTokens == 0) {
				t.Fatalf("usage %+v, simulator counted %+v", u, wantU)
			}
			if has := strings.Contains(got, `"usage"`) && strings.Contains(got, "data:"); has != tc.usageChunk {
				t.Fatalf("usage chunk in the client's stream %v, want %v:\n%s", has, tc.usageChunk, got)
			}
			// The same request straight to the engine.
			req, _ := http.NewRequest("POST", "http://"+info.EngineAddr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := volatile.ReplaceAllString(string(b), `"$1":_`); got != want {
				t.Fatalf("client got\n%s\nstraight from the engine\n%s", got, want)
			}
		})
	}
}

// TestVastsimClientGone: a client that leaves mid-stream gets no usage
// chunk from the engine, so Finish estimates from the text relayed and
// says so.
func TestVastsimClientGone(t *testing.T) {
	sim := vastsim.New(vastsim.Options{APIKey: "k", TokenInterval: 5 * time.Millisecond})
	if _, err := sim.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	id, err := sim.Launch(vastsim.LaunchSpec{Running: true})
	if err != nil {
		t.Fatal(err)
	}
	info := sim.Instances()[0]
	gw, usages := miniGateway(t, info.EngineAddr, info.JupyterToken)
	body := `{"messages":[{"role":"user","content":"go on"}],"max_tokens":400,"stream":true}`
	resp, err := http.Post(gw+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	for nl := 0; nl < 6; { // the role chunk and two tokens: "\n\n" each
		if _, err := resp.Body.Read(buf); err != nil {
			t.Fatal(err)
		}
		if buf[0] == '\n' {
			nl++
		}
	}
	resp.Body.Close()
	u := <-usages
	_, pi := Prepare([]byte(body))
	if !u.Estimated || u.PromptTokens != pi.PromptEstimate || u.CompletionTokens < 2 || u.CompletionTokens > 400*2 {
		t.Fatalf("usage %+v, want an estimate of the relayed text (prompt estimate %d)", u, pi.PromptEstimate)
	}
	for deadline := time.Now().Add(10 * time.Second); sim.Engine(id).Cancelled != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("engine stats %+v: the generation was not cut short", sim.Engine(id))
		}
	}
}
