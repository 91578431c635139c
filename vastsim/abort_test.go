package vastsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// liveStream is a streaming chat completion held open by a test.
type liveStream struct {
	id     string // the response "id" of the first chunk
	cancel context.CancelFunc
	done   chan string // the finish_reason of the last chunk read
}

// openStream starts a long streaming chat completion and returns once its
// first chunk arrived.
func openStream(t *testing.T, info InstanceInfo, user string) *liveStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	j, _ := json.Marshal(chat("s", user, 512, true))
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+info.EngineAddr+"/v1/chat/completions", bytes.NewReader(j))
	req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ls := &liveStream{cancel: cancel, done: make(chan string, 1)}
	br := bufio.NewReader(resp.Body)
	first := readChunk(t, br)
	if err := json.Unmarshal([]byte(first), &struct {
		ID *string `json:"id"`
	}{&ls.id}); err != nil || ls.id == "" {
		t.Fatalf("first chunk %q: no id (%v)", first, err)
	}
	go func() {
		defer resp.Body.Close()
		finish := ""
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				ls.done <- finish
				return
			}
			var c struct {
				Choices []struct {
					Finish *string `json:"finish_reason"`
				} `json:"choices"`
			}
			if d, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok && json.Unmarshal([]byte(d), &c) == nil {
				if len(c.Choices) > 0 && c.Choices[0].Finish != nil {
					finish = *c.Choices[0].Finish
				}
			}
		}
	}()
	return ls
}

func readChunk(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if d, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
			return d
		}
	}
}

func abortReq(t *testing.T, info InstanceInfo, body string) response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+info.EngineAddr+"/abort_request", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, body: b}
}

// sglangSpec generates slowly enough (512 tokens take 25 s) that a stream
// is still running whenever the test looks.
var sglangSpec = EngineSpec{Slots: 2, TokensPerSecond: 20, Metrics: MetricsSGLang}

func TestSGLangAbortRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    func(a, b string) string
		aborted []string // "a", "b": the streams that must end with "abort"
	}{
		{"rid aborts that request only", func(a, _ string) string { return `{"rid":"` + a + `"}` }, []string{"a"}},
		{"unknown rid is a no-op", func(string, string) string { return `{"rid":"nosuchrequest"}` }, nil},
		{"empty rid is a no-op", func(string, string) string { return `{"rid":""}` }, nil},
		{"abort_all aborts everything", func(string, string) string { return `{"abort_all":true}` }, []string{"a", "b"}},
	}
	s, _ := startSim(t, fastOpts())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := launch(t, s, LaunchSpec{Running: true, Engine: sglangSpec})
			info := s.info(t, id)
			streams := map[string]*liveStream{"a": openStream(t, info, "a"), "b": openStream(t, info, "b")}
			if strings.HasPrefix(streams["a"].id, "chatcmpl-") || streams["a"].id == streams["b"].id {
				t.Fatalf("SGLang ids %q, %q: want distinct bare rids", streams["a"].id, streams["b"].id)
			}
			if r := abortReq(t, info, tc.body(streams["a"].id, streams["b"].id)); r.status != http.StatusOK {
				t.Fatalf("abort_request: %d %s", r.status, r.body)
			}
			var wantIDs []string
			for _, name := range tc.aborted {
				if fin := <-streams[name].done; fin != "abort" {
					t.Errorf("stream %s ended with finish_reason %q, want abort", name, fin)
				}
				wantIDs = append(wantIDs, streams[name].id)
			}
			left := int64(2 - len(tc.aborted))
			waitFor(t, 10*time.Second, "aborted generations to end", func() bool { return s.Engine(id).InFlight == left })
			st := s.Engine(id)
			slices.Sort(wantIDs)
			slices.Sort(st.AbortedIDs)
			if st.Aborted != int64(len(tc.aborted)) || !slices.Equal(st.AbortedIDs, wantIDs) || st.AbortRequests != 1 || st.Cancelled != 0 {
				t.Errorf("stats %+v, want %d aborted (%v), one abort request", st, len(tc.aborted), wantIDs)
			}
			if l, _ := s.EngineLoad(id); l.Running != int(left) {
				t.Errorf("running %d, want %d", l.Running, left)
			}
		})
	}
}

// TestSGLangDisconnectKeepsSlotUntilAborted: SGLang generates on for a
// client that left, so the next request waits, until the gateway aborts
// the orphan.
func TestSGLangDisconnectKeepsSlotUntilAborted(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	spec := sglangSpec
	spec.Slots = 1
	id := launch(t, s, LaunchSpec{Running: true, Engine: spec})
	info := s.info(t, id)
	a := openStream(t, info, "a")
	a.cancel()
	<-a.done
	waitFor(t, 10*time.Second, "the engine to notice the client left", func() bool { return s.Engine(id).Abandoned == 1 })

	doneB := make(chan genResult, 1)
	go func() { doneB <- generate(context.Background(), info, chat("s", "b", 2, false), nil) }()
	waitFor(t, 10*time.Second, "B waiting behind the orphan", func() bool {
		l, _ := s.EngineLoad(id)
		return l.Running == 1 && l.Waiting == 1
	})
	select {
	case r := <-doneB:
		t.Fatalf("B finished while the orphan held the only slot: %+v", r)
	default:
	}
	if r := abortReq(t, info, `{"rid":"`+a.id+`"}`); r.status != http.StatusOK {
		t.Fatalf("abort_request: %d %s", r.status, r.body)
	}
	if r := <-doneB; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("B after the abort: %+v", r)
	}
	waitFor(t, 10*time.Second, "an idle engine", func() bool { return s.Engine(id).InFlight == 0 })
	if st := s.Engine(id); st.Aborted != 1 || !slices.Equal(st.AbortedIDs, []string{a.id}) || st.Cancelled != 0 {
		t.Fatalf("stats %+v, want the orphan aborted, nothing cancelled", st)
	}
	if l, _ := s.EngineLoad(id); l.Running != 0 || l.Waiting != 0 || l.KVCacheUse != 0 {
		t.Fatalf("leaked load: %+v", l)
	}
}

// TestDefaultEngineCountsCancels: the vLLM-like engine stops at once when
// its client goes, whether queued, streaming or generating a whole answer,
// and counts it; a finished request is not counted; it has no
// /abort_request.
func TestDefaultEngineCountsCancels(t *testing.T) {
	tests := []struct {
		name      string
		body      map[string]any
		queued    bool // a first request holds the only slot
		cancel    bool
		cancelled int64
	}{
		{"streaming", chat("s", "x", 512, true), false, true, 1},
		{"whole answer", chat("s", "x", 512, false), false, true, 1},
		{"queued", chat("s", "x", 512, true), true, true, 1},
		{"finished", chat("s", "x", 2, true), false, false, 0},
	}
	s, _ := startSim(t, fastOpts())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{Slots: 1, TokensPerSecond: 20}})
			info := s.info(t, id)
			var holder *liveStream
			if tc.queued {
				holder = openStream(t, info, "holder")
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan genResult, 1)
			go func() { done <- generate(ctx, info, tc.body, nil) }()
			want := int64(1)
			if tc.queued {
				want = 2
			}
			waitFor(t, 10*time.Second, "the request in flight", func() bool { return s.Engine(id).InFlight == want })
			if tc.cancel {
				cancel()
			}
			<-done
			if holder != nil {
				holder.cancel()
				<-holder.done
				tc.cancelled++
			}
			waitFor(t, 10*time.Second, "no generation in flight", func() bool { return s.Engine(id).InFlight == 0 })
			if st := s.Engine(id); st.Cancelled != tc.cancelled || st.Aborted != 0 || st.Abandoned != 0 {
				t.Errorf("stats %+v, want %d cancelled", st, tc.cancelled)
			}
			if r := abortReq(t, info, `{"abort_all":true}`); r.status != http.StatusNotFound {
				t.Errorf("vLLM /abort_request: %d, want 404", r.status)
			}
			if l, _ := s.EngineLoad(id); l.Running != 0 || l.Waiting != 0 {
				t.Errorf("leaked load: %+v", l)
			}
		})
	}
}
