package usage

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
)

// separators end events in the generated streams: every line-end style
// of the SSE spec.
var separators = []string{"\n\n", "\r\n\r\n", "\r\r", "\n\r\n", "\r\n\n"}

// genStream builds a stream from fuzz input: pieces separated by 0xff
// become content chunks, comments or raw data lines, with the injected
// usage chunk at usageAt. It returns the stream, the same stream without
// the usage event, and the usage.
func genStream(spec []byte, usageAt uint8, style uint64) (in, want string, u Usage) {
	rng := rand.New(rand.NewPCG(style, 7))
	pieces := bytes.Split(spec, []byte{0xff})
	at := int(usageAt) % (len(pieces) + 1)
	u = Usage{PromptTokens: int(usageAt), CompletionTokens: len(spec)}
	usageEv, _ := json.Marshal(map[string]any{"choices": []any{}, "usage": map[string]int{
		"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens}})
	var b, w strings.Builder
	lastCR := false
	add := func(ev string, keep bool) {
		if rng.IntN(4) == 0 { // stray blank lines between events
			blank := "\n"
			if lastCR {
				blank = "\r\n" // a LF right after CR would end the event before
			}
			b.WriteString(blank)
			w.WriteString(blank)
			lastCR = false
		}
		ev += separators[rng.IntN(len(separators))]
		b.WriteString(ev)
		if keep {
			w.WriteString(ev)
		}
		lastCR = strings.HasSuffix(ev, "\r")
	}
	for i, p := range pieces {
		if i == at {
			add("data: "+string(usageEv), false)
		}
		add(pieceEvent(p), true)
	}
	if at == len(pieces) {
		add("data: "+string(usageEv), false)
	}
	add("data: [DONE]", true)
	return b.String(), w.String(), u
}

// pieceEvent turns fuzz bytes into an event that is not usage-only.
func pieceEvent(p []byte) string {
	line := strings.NewReplacer("\r", "", "\n", "").Replace(string(p))
	kind := 0
	if len(p) > 0 {
		kind = int(p[0]) % 3
	}
	switch kind {
	case 1:
		return ":" + line
	case 2:
		var v struct {
			Choices []any `json:"choices"`
			Usage   any   `json:"usage"`
		}
		if json.Unmarshal([]byte(line), &v) == nil && v.Choices != nil && len(v.Choices) == 0 {
			return ":" + line // would be a usage-only chunk
		}
		return "data:" + line
	default:
		text, _ := json.Marshal(string(p))
		return `data: {"choices":[{"index":0,"delta":{"content":` + string(text) + `}}]}`
	}
}

// writeCuts sends in through a fresh Writer in pieces of 1 to maxPiece
// bytes from seed (whole when maxPiece is 0).
func writeCuts(t *testing.T, in string, seed uint64, strip bool, maxPiece int) (string, Usage, bool) {
	t.Helper()
	rec := httptest.NewRecorder()
	w := NewWriter(rec, strip)
	w.Header().Set("Content-Type", "text/event-stream")
	rng := rand.New(rand.NewPCG(seed, 3))
	for rest := []byte(in); len(rest) > 0; {
		n := len(rest)
		if maxPiece > 0 {
			n = min(n, 1+rng.IntN(maxPiece))
		}
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	w.Finish(1)
	u, ok := w.Usage()
	return rec.Body.String(), u, ok
}

// FuzzWriterStrip: the client gets the stream minus exactly the injected
// usage event, whatever the events, line ends and write boundaries; with
// strip off it gets the stream unchanged; the usage is read either way.
func FuzzWriterStrip(f *testing.F) {
	f.Add([]byte("hello\xffworld"), uint8(1), uint64(1), uint64(2))
	f.Add([]byte("\x01comment\xff\x02{\"choices\":[1]}\xff"), uint8(0), uint64(3), uint64(4))
	f.Add([]byte(""), uint8(9), uint64(5), uint64(6))
	f.Fuzz(func(t *testing.T, spec []byte, usageAt uint8, style, cuts uint64) {
		in, want, u := genStream(spec, usageAt, style)
		got, gu, ok := writeCuts(t, in, cuts, true, 64)
		if got != want {
			t.Fatalf("stream %q\nclient got %q\nwant       %q", in, got, want)
		}
		if !ok || gu != u {
			t.Fatalf("usage %+v %v, want %+v", gu, ok, u)
		}
		got, gu, ok = writeCuts(t, in, cuts, false, 64)
		if got != in || !ok || gu != u {
			t.Fatalf("no strip: changed %v, usage %+v %v", got != in, gu, ok)
		}
	})
}

// FuzzWriterRaw feeds arbitrary bytes: no panic; without strip the output
// is the input; with strip at most one contiguous range is gone; and the
// result does not depend on the write boundaries.
func FuzzWriterRaw(f *testing.F) {
	f.Add([]byte(chatContent+chatUsage+done), uint64(1), true)
	f.Add([]byte(crlf(vllmContent+vllmUsage)), uint64(2), true)
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r"), uint64(3), true)
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, strip bool) {
		whole, wu, _ := writeCuts(t, string(data), seed, strip, 0)
		got, gu, _ := writeCuts(t, string(data), seed, strip, 16)
		if got != whole || gu != wu {
			t.Fatalf("pieces changed the result: %q vs %q, %+v vs %+v", got, whole, gu, wu)
		}
		if !strip {
			if got != string(data) {
				t.Fatal("output differs without strip")
			}
			return
		}
		a := 0
		for a < len(got) && got[a] == data[a] {
			a++
		}
		if !strings.HasSuffix(string(data[a:]), got[a:]) {
			t.Fatalf("more than one range removed: %q -> %q", data, got)
		}
	})
}
