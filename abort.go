package vastai

// Client disconnects. When a client goes away mid-generation, Go's
// transport closes the upstream connection (the request's context is
// cancelled and reverse_proxy closes the response body), and that is what
// stops vLLM and TGI. SGLang generates on for a request whose connection
// is gone, holding its batch slot until the answer is complete, so for an
// SGLang instance the gateway also asks it to stop: POST /abort_request
// {"rid": "<id>"}, the id being the response's "id" (SGLang's request id).
//
// Rules (vastproxy's automatic abort on idle was racy and aborted the
// next request; lessons B3): one abort per request at most, only for a
// 2xx response whose body was closed before its end, only when the id was
// seen; never {"abort_all": true}; never on completion or a 5xx. The
// abort is sent asynchronously through the same path as traffic (the
// instance's token, its tunnel), with its own timeout, at most
// maxConcurrentAborts at once; the request path never waits for it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/enginestate"
	"github.com/caddy-vastai/caddy-vastai/fleet"
)

const (
	// abortTimeout bounds one abort request, connection included.
	abortTimeout = 5 * time.Second
	// maxConcurrentAborts caps aborts in progress in the process; more
	// are dropped (the engine then finishes the orphan on its own).
	maxConcurrentAborts = 32
	// ridPeekLimit is how much of a response's start is inspected for its
	// id; SGLang puts "id" first, so the first event is enough.
	ridPeekLimit = 4096
)

// abortSlots is the process-wide cap on aborts in progress.
var abortSlots = make(chan struct{}, maxConcurrentAborts)

// abortWatch follows one SGLang response body: it notes the id as the
// bytes pass and whether the end was reached, and aborts the generation if
// the body is closed before its end.
type abortWatch struct {
	t     *Transport
	route fleet.Route
	url   url.URL // the upstream's scheme and host

	mu    sync.Mutex
	sniff ridSniffer
	eof   bool
	done  bool // closed: nothing more to do
}

// watchAbort returns a watch for responses an SGLang instance may need to
// abort, nil for every other response (no cost on their path).
func (t *Transport) watchAbort(route fleet.Route, out *http.Request, resp *http.Response) *abortWatch {
	if resp.StatusCode < 200 || resp.StatusCode > 299 || out.URL == nil ||
		t.st.engineKind(route.ID) != enginestate.EngineSGLang {
		return nil
	}
	ct := resp.Header.Get("Content-Type")
	sse := strings.HasPrefix(ct, "text/event-stream")
	if !sse && !strings.HasPrefix(ct, "application/json") {
		return nil
	}
	return &abortWatch{
		t: t, route: route,
		url:   url.URL{Scheme: out.URL.Scheme, Host: out.URL.Host, Path: "/abort_request"},
		sniff: ridSniffer{sse: sse},
	}
}

// observe sees every Read of the body, after the bytes were read and
// before they are handed on; it never holds them back.
func (w *abortWatch) observe(p []byte, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.eof {
		return
	}
	w.sniff.feed(p)
	if errors.Is(err, io.EOF) {
		w.eof = true
	}
}

// closed is called once the body is closed: before its end means the
// generation was cut off (the client left, or the proxy stopped reading),
// so the engine is asked to abort it.
func (w *abortWatch) closed() {
	w.mu.Lock()
	fire := !w.done && !w.eof && w.sniff.id != ""
	w.done = true
	rid := w.sniff.id
	w.mu.Unlock()
	if fire {
		w.t.sendAbort(w.route, w.url, rid)
	}
}

// sendAbort starts one abort in the background unless the cap is reached.
func (t *Transport) sendAbort(route fleet.Route, u url.URL, rid string) {
	log := t.logger().With(zap.String("pool", route.Pool), zap.Int64("instance", route.ID))
	select {
	case abortSlots <- struct{}{}:
	default:
		t.st.aborts.add(route.Pool, "skipped")
		log.Debug("engine abort skipped: too many in progress")
		return
	}
	go func() {
		defer func() { <-abortSlots }()
		start := time.Now()
		if err := t.postAbort(route, u, rid); err != nil {
			t.st.aborts.add(route.Pool, "failed")
			log.Debug("engine abort failed", zap.Error(err))
			return
		}
		t.st.aborts.add(route.Pool, "sent")
		log.Debug("engine aborted a generation its client left", zap.Duration("took", time.Since(start)))
	}()
}

// postAbort sends POST /abort_request {"rid": rid} to the instance. Its
// context is not the request's, which is already cancelled.
func (t *Transport) postAbort(route fleet.Route, u url.URL, rid string) error {
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	body, err := json.Marshal(map[string]string{"rid": rid})
	if err != nil {
		return fmt.Errorf("abort body: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("abort request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+route.Token)
	resp, err := t.st.roundTrip(t.HTTPTransport, route, req)
	if err != nil {
		return fmt.Errorf("abort request: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: status %d", errAbortRefused, resp.StatusCode)
	}
	return nil
}

// errAbortRefused is an abort the engine answered with an error status.
var errAbortRefused = errors.New("abort_request refused")

// abortCounters count the gateway's aborts by pool and result: "sent"
// (the engine accepted it), "failed" (no answer or an error status),
// "skipped" (too many in progress). At most pools × 3 series.
type abortCounters struct {
	m sync.Map // abortKey → *atomic.Int64
}

type abortKey struct{ pool, result string }

func (c *abortCounters) add(pool, result string) {
	v, ok := c.m.Load(abortKey{pool, result})
	if !ok {
		v, _ = c.m.LoadOrStore(abortKey{pool, result}, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

// abortCollector exports the state's abortCounters.
type abortCollector struct {
	c    *abortCounters
	desc *prometheus.Desc
}

func (s *state) registerAbortMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	err := reg.Register(&abortCollector{c: &s.aborts, desc: prometheus.NewDesc("caddy_vastai_engine_aborts_total",
		"Generations the gateway asked an SGLang engine to abort because their client left, by result (sent, failed, skipped).",
		[]string{"pool", "result"}, nil)})
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return fmt.Errorf("registering abort metrics: %w", err)
	}
	return nil
}

// Describe implements prometheus.Collector.
func (a *abortCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

// Collect implements prometheus.Collector.
func (a *abortCollector) Collect(ch chan<- prometheus.Metric) {
	a.c.m.Range(func(k, v any) bool {
		key := k.(abortKey)
		ch <- prometheus.MustNewConstMetric(a.desc, prometheus.CounterValue, float64(v.(*atomic.Int64).Load()), key.pool, key.result)
		return true
	})
}

func (t *Transport) logger() *zap.Logger {
	if t.log == nil {
		return zap.NewNop()
	}
	return t.log
}

// ridSniffer finds the "id" of a response's first JSON object (a JSON
// body, or the first data: event of a stream) in its first ridPeekLimit
// bytes, fed as they arrive. It copies at most that much, once.
type ridSniffer struct {
	sse  bool
	buf  []byte
	done bool
	id   string
}

func (s *ridSniffer) feed(p []byte) {
	if s.done || len(p) == 0 {
		return
	}
	p = p[:min(len(p), ridPeekLimit-len(s.buf))]
	s.buf = append(s.buf, p...)
	id, more := s.parse()
	if id != "" || !more || len(s.buf) >= ridPeekLimit {
		s.id, s.done, s.buf = id, true, nil
	}
}

// parse returns the id, or more=true if the bytes so far may yet hold it.
func (s *ridSniffer) parse() (id string, more bool) {
	if !s.sse {
		return jsonID(s.buf)
	}
	rest := s.buf
	for len(rest) > 0 {
		line, tail, complete := bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if data, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			id, more = jsonID(bytes.TrimLeft(data, " "))
			// A complete data line without an id has none to give.
			return id, more && !complete
		}
		if !complete {
			return "", true // a partial line that may become "data:"
		}
		rest = tail // a comment, event: or id: line, or a blank one
	}
	return "", true
}

// jsonID reads b, the start of a JSON object, for its top-level "id"
// string; more=true while b ends before the answer is known.
func jsonID(b []byte) (id string, more bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	need := func(err error) (string, bool) {
		return "", errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	}
	tok, err := dec.Token()
	if err != nil {
		return need(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return "", false
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return need(err)
		}
		if key != "id" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return need(err)
			}
			continue
		}
		v, err := dec.Token()
		if err != nil {
			return need(err)
		}
		s, _ := v.(string)
		return s, false
	}
	if _, err := dec.Token(); err != nil { // the closing brace, or the end of b
		return need(err)
	}
	return "", false
}

// Interface guards
var _ prometheus.Collector = (*abortCollector)(nil)
