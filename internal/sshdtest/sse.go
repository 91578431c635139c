package sshdtest

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// sseFixture is vastproxy's fake streaming backend's exact bytes
// (OpenAI-style SSE, four events); see testdata/README.md.
//
//go:embed testdata/sse_stream__handler_test_sseBackendServer.txt
var sseFixture []byte

// SSEServer streams the SSE fixture one event at a time: each event after
// the first waits for the test to ask for it (send on Next), which proves
// that the events arrive incrementally rather than buffered.
type SSEServer struct {
	*httptest.Server
	// Events are the fixture's events, each with its blank line.
	Events [][]byte
	// Next releases the next event.
	Next chan struct{}
}

// NewSSEServer serves the fixture until the test ends.
func NewSSEServer(t testing.TB) *SSEServer {
	t.Helper()
	s := &SSEServer{Next: make(chan struct{})}
	for _, ev := range bytes.SplitAfter(sseFixture, []byte("\n\n")) {
		if len(ev) > 0 {
			s.Events = append(s.Events, ev)
		}
	}
	if len(s.Events) != 4 {
		t.Fatalf("fixture has %d events, want 4", len(s.Events))
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i, ev := range s.Events {
			if i > 0 {
				select {
				case <-s.Next:
				case <-r.Context().Done():
					return
				}
			}
			w.Write(ev)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// SSEStream is an open SSE response.
type SSEStream struct {
	Resp *http.Response
	// Transport is the one the stream was opened with.
	Transport *http.Transport
	r         *bufio.Reader
}

// OpenSSE requests srv's stream over connections made by dial (a tunnel).
func OpenSSE(t testing.TB, dial func(ctx context.Context, addr string) (net.Conn, error), srv *SSEServer) *SSEStream {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return dial(ctx, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/chat/completions", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("request through tunnel: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return &SSEStream{Resp: resp, r: bufio.NewReader(resp.Body), Transport: tr}
}

// Event reads one SSE event (up to and including its blank line).
func (s *SSEStream) Event(t testing.TB) []byte {
	t.Helper()
	var ev []byte
	for {
		line, err := s.r.ReadBytes('\n')
		ev = append(ev, line...)
		if err != nil {
			t.Fatalf("reading SSE event: %v (got %q)", err, ev)
		}
		if len(line) == 1 {
			return ev
		}
	}
}

// ReadRest asks for and reads events from..end, checking them byte for byte.
func (s *SSEStream) ReadRest(t testing.TB, srv *SSEServer, from int) {
	t.Helper()
	for i := from; i < len(srv.Events); i++ {
		srv.Next <- struct{}{}
		if got := s.Event(t); !bytes.Equal(got, srv.Events[i]) {
			t.Fatalf("event %d = %q, want %q", i, got, srv.Events[i])
		}
	}
}
