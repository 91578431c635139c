package usage

import (
	"net/http"
	"strings"
	"testing"
)

// discardRW is a ResponseWriter that costs nothing, so benchmarks measure
// the Writer alone.
type discardRW struct{ h http.Header }

func (d *discardRW) Header() http.Header         { return d.h }
func (d *discardRW) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardRW) WriteHeader(int)             {}
func (d *discardRW) Flush()                      {}

// benchChunk is a vLLM chat chunk of a usual size.
const benchChunk = `data: {"id":"chatcmpl-9f3c2a7b1e5d4c6a8b0e","object":"chat.completion.chunk","created":1764739200,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}` + "\n\n"

func newStreamWriter(strip bool) *Writer {
	w := NewWriter(&discardRW{h: http.Header{"Content-Type": {"text/event-stream"}}}, strip)
	w.WriteHeader(http.StatusOK)
	return w
}

// BenchmarkWriterStream is the steady state: one op is one chunk through
// a long-lived Writer, written whole or in three pieces, then flushed.
func BenchmarkWriterStream(b *testing.B) {
	chunk := []byte(benchChunk)
	cases := []struct {
		name   string
		strip  bool
		pieces [][]byte
	}{
		{"strip/whole", true, [][]byte{chunk}},
		{"strip/3pieces", true, [][]byte{chunk[:50], chunk[50:200], chunk[200:]}},
		{"nostrip/whole", false, [][]byte{chunk}},
		{"nostrip/3pieces", false, [][]byte{chunk[:50], chunk[50:200], chunk[200:]}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			w := newStreamWriter(tc.strip)
			for _, p := range tc.pieces { // grow the buffers once
				_, _ = w.Write(p)
			}
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			for b.Loop() {
				for _, p := range tc.pieces {
					_, _ = w.Write(p)
				}
				w.Flush()
			}
		})
	}
}

// BenchmarkWriterRequest is a whole streamed request of 100 chunks plus
// the usage chunk: NewWriter, the writes, Finish. ns/chunk is the cost
// per chunk including the per-request setup.
func BenchmarkWriterRequest(b *testing.B) {
	chunk := []byte(benchChunk)
	usageChunk := []byte(vllmUsage + done)
	rw := &discardRW{h: http.Header{"Content-Type": {"text/event-stream"}}}
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(rw, true)
		w.WriteHeader(http.StatusOK)
		for range 100 {
			_, _ = w.Write(chunk)
			w.Flush()
		}
		_, _ = w.Write(usageChunk)
		if u := w.Finish(1); u.Estimated {
			b.Fatal("no usage")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/101, "ns/chunk")
}

// BenchmarkPrepare reads a 2 KB chat body: injecting (one allocation,
// the new body) and not (no allocation).
func BenchmarkPrepare(b *testing.B) {
	msgs := `"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` +
		strings.Repeat("Explain the quick brown fox. ", 64) + `"}],"model":"Qwen/Qwen2.5-7B-Instruct","temperature":0.7,"max_tokens":256`
	for _, tc := range []struct{ name, body string }{
		{"stream-inject", `{` + msgs + `,"stream":true}`},
		{"stream-client-asked", `{` + msgs + `,"stream":true,"stream_options":{"include_usage":true}}`},
		{"no-stream", `{` + msgs + `}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Prepare(body)
			}
		})
	}
}

// BenchmarkWriterJSON is a 1.5 KB JSON answer through a Writer.
func BenchmarkWriterJSON(b *testing.B) {
	body := []byte(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"` +
		strings.Repeat("word ", 300) + `","finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":300,"total_tokens":312}}`)
	rw := &discardRW{h: http.Header{"Content-Type": {"application/json"}}}
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(rw, false)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		if u := w.Finish(1); u.Estimated {
			b.Fatal("no usage")
		}
	}
}
