package usage

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Streams recorded from vastsim (chat and completions, with
// include_usage) and shaped like vLLM's (usage: null on every chunk).
const (
	chatContent = `data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796281813,"id":"chatcmpl-6dbe","model":"vastsim/tiny-llm","object":"chat.completion.chunk"}` + "\n\n" +
		`data: {"choices":[{"delta":{"content":" hello"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796281813,"id":"chatcmpl-6dbe","model":"vastsim/tiny-llm","object":"chat.completion.chunk"}` + "\n\n" +
		`data: {"choices":[{"delta":{"content":" sample"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796281813,"id":"chatcmpl-6dbe","model":"vastsim/tiny-llm","object":"chat.completion.chunk"}` + "\n\n" +
		`data: {"choices":[{"delta":{"content":" packet"},"finish_reason":"length","index":0,"logprobs":null}],"created":1796281813,"id":"chatcmpl-6dbe","model":"vastsim/tiny-llm","object":"chat.completion.chunk"}` + "\n\n"
	chatUsage = `data: {"choices":[],"created":1796281813,"id":"chatcmpl-6dbe","model":"vastsim/tiny-llm","object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":3,"total_tokens":6}}` + "\n\n"
	done      = "data: [DONE]\n\n"

	cmplContent = `data: {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"stop_reason":null,"text":" socket"}],"created":1796281813,"id":"cmpl-77ab","model":"vastsim/tiny-llm","object":"text_completion"}` + "\n\n" +
		`data: {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"stop_reason":null,"text":" index"}],"created":1796281813,"id":"cmpl-77ab","model":"vastsim/tiny-llm","object":"text_completion"}` + "\n\n" +
		`data: {"choices":[{"finish_reason":"length","index":0,"logprobs":null,"stop_reason":null,"text":" fox"}],"created":1796281813,"id":"cmpl-77ab","model":"vastsim/tiny-llm","object":"text_completion"}` + "\n\n"
	cmplUsage = `data: {"choices":[],"created":1796281813,"id":"cmpl-77ab","model":"vastsim/tiny-llm","object":"text_completion","usage":{"completion_tokens":3,"prompt_tokens":2,"total_tokens":5}}` + "\n\n"

	vllmContent = `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n" +
		`: keep-alive comment` + "\n\n" +
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi \"usage\": {\"prompt_tokens\":9}"},"logprobs":null,"finish_reason":"stop"}],"usage":null}` + "\n\n"
	vllmUsage = `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}` + "\n\n"
)

// responsesStream is a Responses API stream (no choices: nothing to strip).
const responsesStream = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n" +
	"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":2,\"total_tokens\":7}}}\n\n"

// crlf rewrites a stream's line ends as CRLF.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// sseCase is a stream, what the client must receive, and the usage.
type sseCase struct {
	name       string
	in, want   string
	strip      bool
	usage      Usage
	completion int // Finish's estimate when usage is absent
}

func sseCases() []sseCase {
	chatU := Usage{PromptTokens: 3, CompletionTokens: 3}
	return []sseCase{
		{"chat injected", chatContent + chatUsage + done, chatContent + done, true, chatU, 0},
		{"chat client asked", chatContent + chatUsage + done, chatContent + chatUsage + done, false, chatU, 0},
		{"chat CRLF injected", crlf(chatContent + chatUsage + done), crlf(chatContent + done), true, chatU, 0},
		{"chat CR only injected", strings.ReplaceAll(chatContent+chatUsage+done, "\n", "\r"),
			strings.ReplaceAll(chatContent+done, "\n", "\r"), true, chatU, 0},
		{"completions injected", cmplContent + cmplUsage + done, cmplContent + done, true, Usage{2, 3, false}, 0},
		{"vllm injected", vllmContent + vllmUsage + done, vllmContent + done, true, Usage{12, 7, false}, 0},
		{"vllm extra blank lines kept", vllmContent + "\n\n" + vllmUsage + "\n" + done,
			vllmContent + "\n\n" + "\n" + done, true, Usage{12, 7, false}, 0},
		{"responses API stream", responsesStream, responsesStream, true, Usage{5, 2, false}, 0},
		{"no usage estimated", cmplContent + done, cmplContent + done, true, Usage{PromptTokens: 10, Estimated: true}, 5},
		{"usage last event without blank line", cmplContent + strings.TrimSuffix(cmplUsage, "\n\n"), cmplContent,
			true, Usage{2, 3, false}, 0},
		{"cut last event passes", cmplContent + "data: {\"choi", cmplContent + "data: {\"choi",
			true, Usage{PromptTokens: 10, Estimated: true}, 5},
	}
}

// runSSE writes in through a Writer in the given pieces and returns what
// the client got and Finish's usage.
func runSSE(t *testing.T, in string, cuts []int, strip bool) (string, Usage) {
	t.Helper()
	rec := httptest.NewRecorder()
	w := NewWriter(rec, strip)
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	prev := 0
	for _, c := range append(cuts, len(in)) {
		if n, err := w.Write([]byte(in[prev:c])); err != nil || n != c-prev {
			t.Fatalf("Write = %d, %v; want %d", n, err, c-prev)
		}
		prev = c
	}
	u := w.Finish(10)
	return rec.Body.String(), u
}

// TestWriterStreamSplits writes each stream whole, at every two-piece
// split point, byte by byte and in random pieces.
func TestWriterStreamSplits(t *testing.T) {
	for _, tc := range sseCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.usage
			if want.Estimated {
				want.CompletionTokens = tc.completion
			}
			check := func(how string, cuts []int) {
				t.Helper()
				got, u := runSSE(t, tc.in, cuts, tc.strip)
				if got != tc.want {
					t.Fatalf("%s: client got\n%q\nwant\n%q", how, got, tc.want)
				}
				if u != want {
					t.Fatalf("%s: usage %+v, want %+v", how, u, want)
				}
			}
			check("whole", nil)
			for i := 1; i < len(tc.in); i++ {
				check("split", []int{i})
			}
			bytewise := make([]int, 0, len(tc.in))
			for i := 1; i < len(tc.in); i++ {
				bytewise = append(bytewise, i)
			}
			check("byte by byte", bytewise)
			rng := rand.New(rand.NewPCG(1, 2))
			for range 200 {
				var cuts []int
				for c := rng.IntN(40); c < len(tc.in); c += 1 + rng.IntN(80) {
					if c > 0 {
						cuts = append(cuts, c)
					}
				}
				check("random", cuts)
			}
		})
	}
}

// TestWriterUsageBeforeFinish reads the usage as soon as the chunk is in.
func TestWriterUsageBeforeFinish(t *testing.T) {
	rec := httptest.NewRecorder()
	w := NewWriter(rec, true)
	w.Header().Set("Content-Type", "text/event-stream")
	if _, ok := w.Usage(); ok {
		t.Fatal("usage before any byte")
	}
	_, _ = w.Write([]byte(chatContent + chatUsage))
	if u, ok := w.Usage(); !ok || u != (Usage{3, 3, false}) {
		t.Fatalf("Usage = %+v, %v", u, ok)
	}
	if rec.Body.String() != chatContent {
		t.Fatalf("client got %q", rec.Body.String())
	}
	if w.Status() != 200 {
		t.Fatalf("status %d", w.Status())
	}
}

// TestWriterLargeEvent passes an event over maxEvent through, split
// anywhere, while still stripping the usage chunk after it.
func TestWriterLargeEvent(t *testing.T) {
	big := `data: {"choices":[{"index":0,"text":"` + strings.Repeat("x", maxEvent+100) + `"}]}` + "\n\n"
	in := big + cmplUsage + done
	for _, cuts := range [][]int{nil, {10}, {maxEvent / 2, maxEvent + 50}, {len(big) - 1}, {len(big) + 3}} {
		got, u := runSSE(t, in, cuts, true)
		if got != big+done {
			t.Fatalf("cuts %v: client got %d bytes, want %d", cuts, len(got), len(big+done))
		}
		if u != (Usage{2, 3, false}) {
			t.Fatalf("cuts %v: usage %+v", cuts, u)
		}
		for _, strip := range []bool{true, false} {
			got, u = runSSE(t, big+done, cuts, strip)
			if want := (Usage{10, (len(big) + 3) / 4, true}); got != big+done || u != want {
				t.Fatalf("cuts %v, strip %v, no usage: %d bytes, usage %+v, want %+v", cuts, strip, len(got), u, want)
			}
		}
	}
}

// TestWriterMultiLineData reads a data field spread over two lines.
func TestWriterMultiLineData(t *testing.T) {
	in := cmplContent + "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n\n" + done
	got, u := runSSE(t, in, []int{len(cmplContent) + 20}, true)
	if got != cmplContent+done || u != (Usage{4, 5, false}) {
		t.Fatalf("client got %q, usage %+v", got, u)
	}
}

// TestWriterStripsOnce keeps a second usage-only chunk: only the first
// is the injected one.
func TestWriterStripsOnce(t *testing.T) {
	got, _ := runSSE(t, cmplContent+cmplUsage+cmplUsage+done, nil, true)
	if got != cmplContent+cmplUsage+done {
		t.Fatalf("client got %q", got)
	}
}

// TestWriterHeaders checks what the header decides: Content-Length goes
// when stripping, compressed and error answers are not touched.
func TestWriterHeaders(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		header        map[string]string
		wantBody      string
		wantLength    bool
		wantUsageSeen bool
	}{
		{"stripped stream drops Content-Length", 200, map[string]string{"Content-Type": "text/event-stream", "Content-Length": "999"},
			cmplContent + done, false, true},
		{"gzip is not read", 200, map[string]string{"Content-Type": "text/event-stream", "Content-Encoding": "gzip", "Content-Length": "999"},
			cmplContent + cmplUsage + done, true, false},
		{"error stream is not read", 500, map[string]string{"Content-Type": "text/event-stream"},
			cmplContent + cmplUsage + done, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			w := NewWriter(rec, true)
			for k, v := range tc.header {
				w.Header().Set(k, v)
			}
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(cmplContent + cmplUsage + done))
			u := w.Finish(7)
			if rec.Body.String() != tc.wantBody {
				t.Fatalf("client got %q", rec.Body.String())
			}
			if has := rec.Header().Get("Content-Length") != ""; has != tc.wantLength {
				t.Fatalf("Content-Length present %v, want %v", has, tc.wantLength)
			}
			if u.Estimated == tc.wantUsageSeen {
				t.Fatalf("usage %+v, seen want %v", u, tc.wantUsageSeen)
			}
			if !tc.wantUsageSeen && u != (Usage{PromptTokens: 7, Estimated: true}) {
				t.Fatalf("unread answer: usage %+v, want prompt estimate and 0 completion", u)
			}
		})
	}
}

// TestWriterFlushUnwrap checks the ResponseController path Caddy uses.
func TestWriterFlushUnwrap(t *testing.T) {
	rec := httptest.NewRecorder()
	w := NewWriter(rec, true)
	if w.Unwrap() != rec {
		t.Fatal("Unwrap is not the wrapped writer")
	}
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = w.Write([]byte(cmplContent[:30]))
	if err := http.NewResponseController(w).Flush(); err != nil {
		t.Fatal(err)
	}
	if !rec.Flushed {
		t.Fatal("flush did not reach the wrapped writer")
	}
	var _ http.Flusher = w
	if rec.Body.Len() != 0 {
		t.Fatalf("incomplete event written before its end: %q", rec.Body.String())
	}
	_, _ = w.Write([]byte(cmplContent[30:]))
	if rec.Body.String() != cmplContent {
		t.Fatalf("client got %q", rec.Body.String())
	}
}

// TestWriterInformational lets a 103 through without deciding on it
// (over real HTTP: httptest.ResponseRecorder takes 1xx as final).
func TestWriterInformational(t *testing.T) {
	type result struct {
		u            Usage
		after1xx, st int
	}
	got := make(chan result, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w := NewWriter(rw, false)
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		after := w.Status()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"usage":{"prompt_tokens":1,"completion_tokens":2}}`))
		got <- result{w.Finish(5), after, w.Status()}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r := <-got
	if r.after1xx != 0 || r.st != 200 || resp.StatusCode != 200 || r.u != (Usage{1, 2, false}) {
		t.Fatalf("status after 103 %d, final %d (client %d), usage %+v", r.after1xx, r.st, resp.StatusCode, r.u)
	}
}

// TestWriterJSON reads usage from whole answers.
func TestWriterJSON(t *testing.T) {
	big := strings.Repeat("word ", maxTail/4)
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
		want   Usage
		seen   bool
	}{
		{"vastsim answer", 200, "application/json",
			`{"choices":[{"finish_reason":"length","index":0,"text":" socket index fox"}],"usage":{"completion_tokens":3,"prompt_tokens":2,"total_tokens":5}}` + "\n",
			Usage{2, 3, false}, true},
		{"top-level usage wins over nested", 200, "application/json; charset=utf-8",
			`{"usage":{"prompt_tokens":8,"completion_tokens":9},"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":1}","meta":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}}]}`,
			Usage{8, 9, false}, true},
		{"no content type", 200, "", `{"usage":{"prompt_tokens":1,"completion_tokens":1}}`, Usage{1, 1, false}, true},
		{"responses api names", 200, "application/json", `{"output":[],"usage":{"input_tokens":4,"output_tokens":6}}`, Usage{4, 6, false}, true},
		{"large answer, usage in the tail", 200, "application/json",
			`{"choices":[{"text":"` + big + `"}],"usage":{"prompt_tokens":3,"completion_tokens":4096}}`, Usage{3, 4096, false}, true},
		{"no usage: estimate from text", 200, "application/json",
			`{"choices":[{"message":{"role":"assistant","content":"twelve bytes"}}]}`, Usage{10, (12 + 3) / 4, true}, false},
		{"usage null", 200, "application/json", `{"choices":[],"usage":null}`, Usage{10, 0, true}, false},
		{"large answer, no usage: estimate from bytes", 200, "application/json",
			`{"choices":[{"text":"` + big + `"}]}`, Usage{10, (len(big) + 25 + 3) / 4, true}, false},
		{"400", 400, "application/json", `{"error":{"message":"bad"},"usage":{"prompt_tokens":1,"completion_tokens":1}}`, Usage{10, 0, true}, false},
		{"500", 500, "application/json", `{"error":"x"}`, Usage{10, 0, true}, false},
		{"html", 200, "text/html", `<p>"usage":{"prompt_tokens":1}</p>`, Usage{10, 0, true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, piece := range []int{len(tc.body), 7, 4096} {
				rec := httptest.NewRecorder()
				w := NewWriter(rec, false)
				if tc.ctype != "" {
					w.Header().Set("Content-Type", tc.ctype)
				}
				w.WriteHeader(tc.status)
				for b := []byte(tc.body); len(b) > 0; {
					n := min(piece, len(b))
					_, _ = w.Write(b[:n])
					b = b[n:]
				}
				if _, ok := w.Usage(); ok != tc.seen {
					t.Fatalf("pieces of %d: Usage ok %v, want %v", piece, ok, tc.seen)
				}
				if u := w.Finish(10); u != tc.want {
					t.Fatalf("pieces of %d: usage %+v, want %+v", piece, u, tc.want)
				}
				if rec.Body.String() != tc.body {
					t.Fatal("body changed")
				}
			}
		})
	}
}

// TestTailBuf keeps exactly the last maxTail bytes whatever the pieces.
func TestTailBuf(t *testing.T) {
	src := make([]byte, 3*maxTail+123)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for _, piece := range []int{1, 1000, maxTail - 1, maxTail, maxTail + 1, len(src)} {
		var tb tailBuf
		for b := src; len(b) > 0; {
			n := min(piece, len(b))
			tb.write(b[:n])
			b = b[n:]
		}
		if !bytes.Equal(tb.bytes(), src[len(src)-maxTail:]) || !tb.cut() {
			t.Fatalf("pieces of %d: wrong tail", piece)
		}
		tb.write(src[:5])
		if got := tb.bytes(); !bytes.Equal(got[maxTail-5:], src[:5]) || !bytes.Equal(got[:10], src[len(src)-maxTail+5:][:10]) {
			t.Fatalf("pieces of %d: wrong tail after more", piece)
		}
	}
}

// failingRW fails every write once limit bytes went through.
type failingRW struct {
	discardRW
	limit, n int
}

func (f *failingRW) Write(p []byte) (int, error) {
	if f.n+len(p) > f.limit {
		return 0, errors.New("client gone")
	}
	f.n += len(p)
	return len(p), nil
}

// TestWriterClientGone keeps reading after the client left: the tokens
// were generated all the same.
func TestWriterClientGone(t *testing.T) {
	in := cmplContent + cmplUsage + done
	for _, strip := range []bool{true, false} {
		rw := &failingRW{discardRW: discardRW{h: http.Header{"Content-Type": {"text/event-stream"}}}, limit: 100}
		w := NewWriter(rw, strip)
		var errs int
		for i := 0; i < len(in); i += 50 {
			if _, err := w.Write([]byte(in[i:min(i+50, len(in))])); err != nil {
				errs++
			}
		}
		if errs == 0 {
			t.Fatalf("strip %v: no write error reported", strip)
		}
		if u := w.Finish(1); u != (Usage{2, 3, false}) {
			t.Fatalf("strip %v: usage %+v", strip, u)
		}
	}
}
