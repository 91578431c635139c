package usage

import (
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// bufPool recycles the buffers of finished Writers (a JSON tail, a held
// SSE event), so that once warm a request costs no buffer growth.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// getBuf returns an empty pooled buffer; putBuf gives it back.
func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if b != nil && cap(*b) <= maxTail {
		*b = (*b)[:0]
		bufPool.Put(b)
	}
}

// maxTail bounds the bytes of a JSON answer kept to find its usage: the
// last ones, since engines put usage after the choices.
const maxTail = 64 << 10

// mode is how a response is read, decided when its header is written.
type mode uint8

const (
	modeNone mode = iota // not read: errors, other types, compressed
	modeJSON             // a JSON answer: usage from its tail
	modeSSE              // an event stream: usage from its chunks
)

// Writer wraps the client's http.ResponseWriter for one request. It
// passes every byte through as it arrives, except that when stripping it
// holds the current incomplete SSE event until it ends, and drops the
// first usage-only chunk ("choices": [] with "usage") — the one the
// gateway asked for. It records the usage of a JSON answer (from its last
// 64 KiB) or of a stream's usage chunk, and counts the generated text for
// an estimate when none comes.
//
// A Writer is used by one goroutine, like the ResponseWriter it wraps.
type Writer struct {
	w     http.ResponseWriter
	strip bool

	status    int
	mode      mode
	stripping bool // strip, and the answer is an identity-encoded 2xx stream

	usage     Usage
	seen      bool
	textBytes int // generated text seen (choices' strings)

	tail  tailBuf
	sse   sseState
	werr  error // the first failed write when stripping; later ones are skipped
	done  bool
	final Usage
}

// NewWriter wraps w. strip is RequestInfo.Injected: drop the usage chunk
// Prepare asked for. Call Finish before the handler returns: it writes
// out what is still held and returns the usage.
func NewWriter(w http.ResponseWriter, strip bool) *Writer {
	return &Writer{w: w, strip: strip, sse: sseState{evStart: -1}}
}

// Header returns the wrapped writer's header map.
func (w *Writer) Header() http.Header { return w.w.Header() }

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *Writer) Unwrap() http.ResponseWriter { return w.w }

// Status is the response's status code (0 before the header is written).
func (w *Writer) Status() int { return w.status }

// WriteHeader decides how to read the answer from the final status and
// the header, then passes the call on. Informational (1xx) headers pass
// through without deciding.
func (w *Writer) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		w.decide()
	}
	w.w.WriteHeader(code)
}

// decide picks the mode. Only identity-encoded 2xx answers are read, and
// only streams are stripped; a stripped stream loses its Content-Length,
// which no longer holds.
func (w *Writer) decide() {
	h := w.w.Header()
	if w.status < 200 || w.status > 299 {
		return
	}
	if enc := h.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return
	}
	ct := h.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	switch {
	case mt == "text/event-stream":
		w.mode, w.stripping = modeSSE, w.strip
		if w.stripping {
			h.Del("Content-Length")
		}
	case ct == "" || strings.Contains(mt, "json"):
		w.mode = modeJSON
	}
}

// Write passes p on and reads it.
func (w *Writer) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
		w.decide()
	}
	if w.done || !w.stripping {
		n, err := w.w.Write(p)
		if !w.done {
			// Read even what the client missed: the engine generated it.
			w.read(p)
		}
		return n, err
	}
	if err := w.sseWrite(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// read takes in bytes already written through.
func (w *Writer) read(p []byte) {
	switch w.mode {
	case modeJSON:
		w.tail.write(p)
	case modeSSE:
		_ = w.sseWrite(p) // not stripping: never writes
	}
}

// out writes bytes through when stripping. After a failed write (the
// client is gone) it writes nothing more, but the stream is still read:
// the engine generated those tokens.
func (w *Writer) out(b []byte) {
	if len(b) == 0 || w.werr != nil {
		return
	}
	_, w.werr = w.w.Write(b)
}

// Flush flushes through; see FlushError.
func (w *Writer) Flush() { _ = w.FlushError() }

// FlushError flushes the wrapped writer (http.ResponseController prefers
// it to Flush, and gets the error). Bytes held back while stripping are
// part of an incomplete event and stay held.
func (w *Writer) FlushError() error {
	if w.status == 0 {
		w.status = http.StatusOK
		w.decide()
	}
	return flush(w.w)
}

// flush flushes rw the way http.ResponseController does (FlushError,
// then Flusher, down the Unwrap chain), without allocating a controller
// per request.
func flush(rw http.ResponseWriter) error {
	for {
		switch t := rw.(type) {
		case interface{ FlushError() error }:
			return t.FlushError()
		case http.Flusher:
			t.Flush()
			return nil
		case interface{ Unwrap() http.ResponseWriter }:
			rw = t.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// Usage returns the usage the answer reported so far; ok is false when
// none was seen (yet).
func (w *Writer) Usage() (Usage, bool) {
	if w.done {
		return w.final, !w.final.Estimated
	}
	if w.mode == modeJSON {
		return w.jsonUsage()
	}
	return w.usage, w.seen
}

// Finish ends the response: it writes out an incomplete last event still
// held (or drops it if it is the usage chunk) and returns the usage to
// account: the one reported, or an estimate (bytes of generated text / 4
// and promptEstimate) with Estimated set. An answer that is not a 2xx has
// no usage: its estimate has 0 completion tokens. Later calls return the
// same.
func (w *Writer) Finish(promptEstimate int) Usage {
	if w.done {
		return w.final
	}
	if w.mode == modeSSE && w.sse.inEvent {
		w.finishEvent()
	}
	u, ok := w.Usage()
	switch {
	case ok:
	case w.mode == modeNone:
		u = Usage{PromptTokens: promptEstimate, Estimated: true}
	default:
		u = Usage{PromptTokens: promptEstimate, CompletionTokens: (w.textBytes + 3) / 4, Estimated: true}
	}
	w.done, w.final = true, u
	if w.tail.pooled != nil {
		*w.tail.pooled = w.tail.buf
	}
	if w.sse.pooled != nil {
		*w.sse.pooled = w.sse.ev
	}
	putBuf(w.tail.pooled)
	putBuf(w.sse.pooled)
	w.tail, w.sse = tailBuf{}, sseState{}
	return u
}

// finishEvent treats an event cut off by the end of the stream as ended:
// it is read, and written out (dropped if it is the usage chunk).
func (w *Writer) finishEvent() {
	st := &w.sse
	if st.overflow {
		return // already through, nothing held
	}
	ev := st.ev
	c := readChunk(st.data(ev))
	w.textBytes += c.textBytes
	if c.hasUsage {
		w.usage, w.seen = c.usage, true
	}
	if !w.stripping {
		return
	}
	if !st.dropped && c.usageOnly() {
		st.dropped = true
		return
	}
	w.out(ev)
	if w.werr == nil {
		_ = flush(w.w)
	}
}

// jsonUsage reads the kept answer: the top-level usage when the whole
// answer was kept, else the last usage key of the tail. With no usage,
// the choices' text (or, for a cut answer, every byte) feeds the estimate.
func (w *Writer) jsonUsage() (Usage, bool) {
	b := w.tail.bytes()
	if !w.tail.cut() {
		c := readChunk(b)
		w.textBytes = c.textBytes
		return c.usage, c.hasUsage
	}
	u, ok := findUsageTail(b)
	if !ok {
		w.textBytes = int(min(w.tail.total, 1<<40))
	}
	return u, ok
}

// tailBuf keeps the last maxTail bytes written: a slice that grows to
// maxTail, then a ring.
type tailBuf struct {
	buf    []byte
	pooled *[]byte // where buf came from
	pos    int     // once full: where the next byte goes (the oldest byte)
	total  int64
}

func (t *tailBuf) write(p []byte) {
	t.total += int64(len(p))
	if len(p) >= maxTail {
		if t.pooled == nil {
			t.pooled = getBuf()
			t.buf = (*t.pooled)[:0]
		}
		t.buf = append(t.buf[:0], p[len(p)-maxTail:]...)
		t.pos = 0
		return
	}
	if t.pooled == nil {
		t.pooled = getBuf()
		t.buf = (*t.pooled)[:0]
	}
	if n := min(len(p), maxTail-len(t.buf)); n > 0 {
		t.buf = append(t.buf, p[:n]...)
		p = p[n:]
	}
	for len(p) > 0 {
		n := copy(t.buf[t.pos:], p)
		p = p[n:]
		t.pos = (t.pos + n) % maxTail
	}
}

// cut reports that the start of the answer was not kept.
func (t *tailBuf) cut() bool { return t.total > int64(len(t.buf)) }

// bytes returns the kept bytes in order, rotating the ring in place.
func (t *tailBuf) bytes() []byte {
	if t.pos != 0 {
		slices.Reverse(t.buf[:t.pos])
		slices.Reverse(t.buf[t.pos:])
		slices.Reverse(t.buf)
		t.pos = 0
	}
	return t.buf
}
