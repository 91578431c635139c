package vastai

import (
	"strings"
	"testing"
)

// TestRIDSniffer feeds each response start whole and split at every byte:
// the id must be found however the reads fall, and a body without one must
// give up rather than keep copying.
func TestRIDSniffer(t *testing.T) {
	tests := []struct {
		name string
		sse  bool
		in   string
		want string
	}{
		{"sglang chat chunk", true, `data: {"id":"9f2c4e","object":"chat.completion.chunk","choices":[{"delta":{"role":"assistant"}}]}` + "\n\n", "9f2c4e"},
		{"crlf and comment first", true, ": keep-alive\r\n\r\ndata:{\"id\":\"ab\"}\r\n\r\n", "ab"},
		{"event line first", true, "event: message\ndata: {\"object\":\"x\",\"id\":\"late\"}\n\n", "late"},
		{"nested ids are not the id", true, `data: {"choices":[{"id":"inner"}],"meta":{"id":"deep"},"id":"top"}` + "\n\n", "top"},
		{"no id in the first event", true, "data: {\"object\":\"x\"}\n\ndata: {\"id\":\"second\"}\n\n", ""},
		{"done first", true, "data: [DONE]\n\n", ""},
		{"json body", false, `{"id":"whole","object":"chat.completion","choices":[]}`, "whole"},
		{"json id not a string", false, `{"id":12,"object":"x"}`, ""},
		{"json array", false, `[{"id":"x"}]`, ""},
		{"escaped id", false, `{"id":"a\"b"}`, `a"b`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for split := range len(tc.in) + 1 {
				s := ridSniffer{sse: tc.sse}
				s.feed([]byte(tc.in[:split]))
				s.feed([]byte(tc.in[split:]))
				if s.id != tc.want || (tc.want != "" && !s.done) {
					t.Fatalf("split at %d: id %q done %v, want %q", split, s.id, s.done, tc.want)
				}
			}
			s := ridSniffer{sse: tc.sse}
			for i := range len(tc.in) {
				s.feed([]byte{tc.in[i]})
			}
			if s.id != tc.want {
				t.Fatalf("byte by byte: id %q, want %q", s.id, tc.want)
			}
			if strings.Contains(tc.in, "}") && !s.done {
				t.Fatalf("still sniffing after a whole object (%d bytes kept)", len(s.buf))
			}
		})
	}
}

// TestRIDSnifferIsBounded: a stream that never shows an id is copied no
// further than ridPeekLimit.
func TestRIDSnifferIsBounded(t *testing.T) {
	s := ridSniffer{sse: true}
	s.feed([]byte("data: {\"object\":\"" + strings.Repeat("x", 3*ridPeekLimit)))
	s.feed([]byte(`","id":"too-late"}`))
	if !s.done || s.id != "" || s.buf != nil {
		t.Fatalf("sniffer after %d bytes: done %v id %q kept %d", 3*ridPeekLimit, s.done, s.id, len(s.buf))
	}
}
