package vastai

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// clientStream is a streaming chat completion through the proxy that the
// test reads part of and then abandons.
type clientStream struct {
	id     string // the response "id" the client saw
	cancel context.CancelFunc
	body   io.ReadCloser
	br     *bufio.Reader
}

// openClientStream starts a long stream (512 tokens, 25 s at vastsim's
// default pace) through Caddy and reads its first chunks.
func openClientStream(t testing.TB, chunks int) *clientStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, testProxyURL+"/v1/chat/completions",
		strings.NewReader(`{"model":"vastsim/tiny-llm","messages":[{"role":"user","content":"tell me a long story"}],"max_tokens":512,"stream":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream status %d", resp.StatusCode)
	}
	cs := &clientStream{cancel: cancel, body: resp.Body, br: bufio.NewReader(resp.Body)}
	for i := range chunks {
		line := cs.next(t)
		if i == 0 {
			var c struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal([]byte(line), &c); err != nil || c.ID == "" {
				t.Fatalf("first chunk %q has no id", line)
			}
			cs.id = c.ID
		}
	}
	return cs
}

func (cs *clientStream) next(t testing.TB) string {
	t.Helper()
	for {
		line, err := cs.br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if d, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
			return d
		}
	}
}

// leave is the client going away mid-stream.
func (cs *clientStream) leave() time.Time {
	cs.cancel()
	cs.body.Close()
	return time.Now()
}

// startEngineProxy starts Caddy in front of one instance with the given
// engine and waits until the scraper knows its kind.
func startEngineProxy(t testing.TB, spec vastsim.EngineSpec, kind string) (*vastsim.Sim, int64) {
	t.Helper()
	sim := newSim(t, vastsim.Options{})
	id := launch(t, sim, 1, "llm-")[0]
	if err := sim.SetEngine(id, spec); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+enginesBlock, "\tvastai_proxy llm"))
	waitEngineKind(t, id, kind)
	return sim, id
}

func waitEngineKind(t testing.TB, id int64, kind string) {
	t.Helper()
	waitRoutable(t, 15*time.Second, []int64{id})
	var view struct {
		Engine *struct {
			Kind string `json:"kind"`
		} `json:"engine"`
	}
	waitFor(t, 15*time.Second, "the engine kind "+kind+" in the admin API", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &view)
		return view.Engine != nil && view.Engine.Kind == kind
	})
}

// TestClientDisconnectStopsVLLM: for a vLLM-like engine the upstream
// connection's close is the cancel: the engine stops generating, and no
// abort_request is sent (vLLM has none).
func TestClientDisconnectStopsVLLM(t *testing.T) {
	sim, id := startEngineProxy(t, vastsim.EngineSpec{Metrics: vastsim.MetricsVLLM}, "vllm")
	cs := openClientStream(t, 3)
	if st := sim.Engine(id); st.InFlight != 1 {
		t.Fatalf("engine in flight %d before the cancel, want 1", st.InFlight)
	}
	left := cs.leave()
	waitFor(t, 10*time.Second, "the engine to stop generating", func() bool { return sim.Engine(id).InFlight == 0 })
	t.Logf("engine stopped %s after the client left", time.Since(left).Round(time.Millisecond))
	st := sim.Engine(id)
	if st.Cancelled != 1 || st.AbortRequests != 0 || st.GenerationTokens >= 512 {
		t.Errorf("engine stats %+v, want 1 cancelled generation, no abort_request, not all 512 tokens", st)
	}
	var view struct {
		InFlight *int64 `json:"in_flight"`
	}
	waitFor(t, 10*time.Second, "the gateway's in-flight count back to 0", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &view)
		return view.InFlight != nil && *view.InFlight == 0
	})
}

// TestClientDisconnectAbortsSGLang: SGLang would generate on for a client
// that left, holding its only batch slot; the gateway aborts exactly that
// request, so the next one starts at once.
func TestClientDisconnectAbortsSGLang(t *testing.T) {
	sim, id := startEngineProxy(t, vastsim.EngineSpec{Metrics: vastsim.MetricsSGLang, Slots: 1}, "sglang")
	cs := openClientStream(t, 3)
	left := cs.leave()
	waitFor(t, 10*time.Second, "the engine to abort the generation", func() bool { return sim.Engine(id).Aborted == 1 })
	t.Logf("engine aborted %s after the client left", time.Since(left).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "the slot to be free", func() bool {
		l, ok := sim.EngineLoad(id)
		return ok && l.Running == 0 && l.Waiting == 0
	})
	st := sim.Engine(id)
	if st.AbortRequests != 1 || !slices.Equal(st.AbortedIDs, []string{cs.id}) || st.InFlight != 0 {
		t.Errorf("engine stats %+v, want one abort_request for rid %q", st, cs.id)
	}
	// The orphan would have held the slot for 25 s: the next request runs.
	status, events := streamEvents(t, "/v1/completions", `{"model":"vastsim/tiny-llm","prompt":"next","max_tokens":3,"stream":true}`)
	if status != http.StatusOK || len(events) != 4 { // 3 tokens and [DONE]
		t.Fatalf("next request: status %d, %d events", status, len(events))
	}
	if st := sim.Engine(id); st.AbortRequests != 1 {
		t.Errorf("%d abort requests after a completed stream, want still 1", st.AbortRequests)
	}
	want := `caddy_vastai_engine_aborts_total{pool="llm",result="sent"} 1`
	waitFor(t, 10*time.Second, want+" in the metrics", func() bool {
		_, metrics := adminGET(t, "/metrics", nil)
		return strings.Contains(string(metrics), want)
	})
}

// TestClientDisconnectAbortsSGLangThroughTheTunnel: the abort takes the
// traffic's path; with tunnel ssh the upstream address exists only inside
// the SSH connection, so an abort that arrives came through it, with the
// instance's token.
func TestClientDisconnectAbortsSGLangThroughTheTunnel(t *testing.T) {
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	id := launch(t, sim, 1, "llm-")[0]
	if err := sim.SetEngine(id, vastsim.EngineSpec{Metrics: vastsim.MetricsSGLang, Slots: 1}); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), llmPool+"\n"+enginesBlock, `	vastai_proxy llm {
		transport vastai {
			tunnel ssh
		}
	}`))
	waitEngineKind(t, id, "sglang")
	if up := instanceUpstream(t, id); !strings.Contains(up, ".vastai-tunnel:") {
		t.Fatalf("upstream %q is not a tunnel address", up)
	}
	cs := openClientStream(t, 2)
	cs.leave()
	waitFor(t, 10*time.Second, "the engine to abort the generation", func() bool { return sim.Engine(id).Aborted == 1 })
	if st := sim.Engine(id); st.AbortRequests != 1 || !slices.Equal(st.AbortedIDs, []string{cs.id}) || st.Unauthorized != 0 {
		t.Errorf("engine stats %+v, want one authorized abort for %q", st, cs.id)
	}
}

func instanceUpstream(t testing.TB, id int64) string {
	var view struct {
		Upstream string `json:"upstream"`
	}
	adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &view)
	return view.Upstream
}

// TestCompletedRequestsAreNeverAborted: SGLang streams and whole answers
// that finish send no abort. A final abandoned stream is the barrier: its
// abort arrives, and it must be the only one.
func TestCompletedRequestsAreNeverAborted(t *testing.T) {
	sim, id := startEngineProxy(t, vastsim.EngineSpec{Metrics: vastsim.MetricsSGLang}, "sglang")
	for _, tc := range []struct{ path, body string }{
		{"/v1/completions", `{"model":"vastsim/tiny-llm","prompt":"a","max_tokens":3,"stream":true}`},
		{"/v1/chat/completions", `{"model":"vastsim/tiny-llm","messages":[{"role":"user","content":"b"}],"max_tokens":3,"stream":true}`},
	} {
		if status, events := streamEvents(t, tc.path, tc.body); status != http.StatusOK || len(events) == 0 {
			t.Fatalf("%s %s: status %d, %d events", tc.path, tc.body, status, len(events))
		}
	}
	if resp, _ := completion(t, http.DefaultClient); resp.StatusCode != http.StatusOK {
		t.Fatalf("whole answer: status %d", resp.StatusCode)
	}
	cs := openClientStream(t, 1)
	cs.leave()
	waitFor(t, 10*time.Second, "the barrier's abort", func() bool { return sim.Engine(id).Aborted == 1 })
	if st := sim.Engine(id); st.AbortRequests != 1 || !slices.Equal(st.AbortedIDs, []string{cs.id}) || st.Completions != 4 {
		t.Errorf("engine stats %+v, want 4 completions and one abort, for %q", st, cs.id)
	}
}

// BenchmarkClientCancelReachesEngine measures how long after a client
// leaves a stream the engine stops generating it: the upstream close for
// vLLM, the abort_request for SGLang (µs/cancel, polled every 100µs).
func BenchmarkClientCancelReachesEngine(b *testing.B) {
	for _, tc := range []struct {
		kind, metrics string
		count         func(vastsim.EngineStats) int64
	}{
		{"vllm", vastsim.MetricsVLLM, func(st vastsim.EngineStats) int64 { return st.Cancelled }},
		{"sglang", vastsim.MetricsSGLang, func(st vastsim.EngineStats) int64 { return st.Aborted }},
	} {
		b.Run(tc.kind, func(b *testing.B) {
			sim, id := startEngineProxy(b, vastsim.EngineSpec{Metrics: tc.metrics}, tc.kind)
			var total time.Duration
			for i := 0; i < b.N; i++ {
				cs := openClientStream(b, 1)
				want := tc.count(sim.Engine(id)) + 1
				left := cs.leave()
				for tc.count(sim.Engine(id)) < want {
					if time.Since(left) > 10*time.Second {
						b.Fatalf("the engine never saw cancel %d", i)
					}
					time.Sleep(100 * time.Microsecond)
				}
				total += time.Since(left)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/cancel")
		})
	}
}
