package usage

import "bytes"

// maxEvent bounds the bytes of one SSE event kept to read it. A larger
// event is no usage-only chunk (those are a few hundred bytes): it passes
// through unread and counts whole towards the text estimate.
const maxEvent = 64 << 10

// sseState follows an event stream across Write calls. Lines end with
// "\n", "\r\n" or "\r" and a blank line ends an event (the SSE spec), so
// the state is the current line's length, whether the last byte was a CR
// (its LF may come in the next write) and the current event's bytes.
type sseState struct {
	ev        []byte  // the current event's bytes from earlier writes (reused)
	pooled    *[]byte // where ev came from
	inEvent   bool    // a line of the current event has begun
	lineLen   int     // bytes in the current line so far
	lastCR    bool    // the previous byte was CR
	swallowLF bool    // the dropped event ended at CR: its LF goes too
	overflow  bool    // the current event passed maxEvent: not kept
	dropped   bool    // the injected usage chunk is gone
	scratch   []byte  // joins multi-line data fields (reused)

	// Per-Write cursors into p: fwd is the first byte not yet written or
	// dropped (strip mode); evStart is where the current event began in
	// p, or -1 when it began in an earlier write.
	fwd, evStart int
}

// sseWrite runs p through the event splitter. When stripping, complete
// events are written through in runs and only the current incomplete
// event is held back; otherwise p was already written and this only
// reads.
func (w *Writer) sseWrite(p []byte) error {
	st := &w.sse
	st.fwd, st.evStart = 0, -1
	for i := 0; i < len(p); {
		if st.lastCR && p[i] == '\n' {
			// The LF of a CRLF whose CR ended a line; part of a dropped
			// event's end when that event ended at the CR.
			if st.swallowLF {
				st.fwd = i + 1
			}
			st.lastCR, st.swallowLF = false, false
			i++
			continue
		}
		st.lastCR, st.swallowLF = false, false
		j := lineEnd(p[i:])
		if j > 0 {
			if !st.inEvent {
				st.inEvent, st.evStart = true, i
			}
			st.lineLen += j
		}
		i += j
		if i == len(p) {
			break
		}
		st.lastCR = p[i] == '\r'
		i++
		if st.lineLen > 0 {
			st.lineLen = 0
			continue
		}
		if st.inEvent {
			w.eventEnd(p, i)
		}
	}
	w.sseHold(p)
	return w.werr
}

// lineEnd returns the index of the first CR or LF in b, or len(b).
func lineEnd(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	if n < 0 {
		n = len(b)
	}
	if r := bytes.IndexByte(b[:n], '\r'); r >= 0 {
		return r
	}
	return n
}

// sseHold ends a Write. When stripping, the complete events not yet
// written go out and the incomplete one waits (up to maxEvent); either
// way its bytes are kept to read it at its end. An event past maxEvent is
// not kept: its bytes count whole towards the estimate as they pass.
func (w *Writer) sseHold(p []byte) {
	st := &w.sse
	from := max(st.evStart, 0)
	held := len(p)
	if st.inEvent && !st.overflow {
		held = from
	}
	if w.stripping {
		w.out(p[st.fwd:held])
	}
	if held < len(p) && !st.keep(p[held:]) {
		w.textBytes += len(st.ev)
		if w.stripping {
			// Too big to be the usage chunk: it flows from now on.
			w.out(st.ev)
			w.out(p[held:])
		}
		st.ev = st.ev[:0]
	}
	if st.inEvent && st.overflow {
		w.textBytes += len(p) - from
	}
}

// keep appends an incomplete event's bytes; false (and overflow set)
// when the event grows past maxEvent.
func (st *sseState) keep(b []byte) bool {
	if len(st.ev)+len(b) > maxEvent {
		st.overflow = true
		return false
	}
	if st.pooled == nil {
		st.pooled = getBuf()
		st.ev = (*st.pooled)[:0]
	}
	st.ev = append(st.ev, b...)
	return true
}

// eventEnd handles an event whose blank line ends just before p[end].
func (w *Writer) eventEnd(p []byte, end int) {
	st := &w.sse
	from := max(st.evStart, 0)
	var ev []byte
	switch {
	case st.overflow:
		w.textBytes += end - from // unread: count it all
	case len(st.ev) == 0 && st.evStart >= 0 && end-from <= maxEvent:
		ev = p[from:end]
	case len(st.ev) == 0 && st.evStart >= 0:
		w.textBytes += end - from // as if it had come in pieces
	default:
		if st.keep(p[from:end]) {
			ev = st.ev
			break
		}
		w.textBytes += len(st.ev) + end - from
		if w.stripping {
			w.out(st.ev) // the held head; the rest is in p's pending run
		}
	}
	drop := false
	if ev != nil {
		c := readChunk(st.data(ev))
		w.textBytes += c.textBytes
		if c.hasUsage {
			w.usage, w.seen = c.usage, true
		}
		drop = w.stripping && !st.dropped && c.usageOnly()
	}
	if w.stripping {
		w.eventOut(p, from, end, drop)
	}
	st.ev, st.inEvent, st.overflow, st.evStart = st.ev[:0], false, false, -1
}

// eventOut writes or drops a complete event when stripping.
func (w *Writer) eventOut(p []byte, from, end int, drop bool) {
	st := &w.sse
	if st.evStart < 0 && !st.overflow {
		// Begun in an earlier write: its head is held in ev (with the
		// rest appended), nothing of p before it is pending.
		if !drop {
			w.out(st.ev)
		}
		st.fwd = end
	} else if drop {
		w.out(p[st.fwd:from])
		st.fwd = end
	}
	if drop {
		st.dropped = true
		st.swallowLF = p[end-1] == '\r'
	}
}

// data returns an event's data field: the "data:" lines' values joined by
// "\n" (the SSE spec), in place when there is one line.
func (st *sseState) data(ev []byte) []byte {
	var first []byte
	n := 0
	for len(ev) > 0 {
		j := lineEnd(ev)
		line := ev[:j]
		ev = ev[j:]
		if len(ev) > 0 && ev[0] == '\r' {
			ev = ev[1:]
		}
		if len(ev) > 0 && ev[0] == '\n' {
			ev = ev[1:]
		}
		v, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		v, _ = bytes.CutPrefix(v, []byte(" "))
		switch n++; n {
		case 1:
			first = v
		case 2:
			st.scratch = append(append(append(st.scratch[:0], first...), '\n'), v...)
		default:
			st.scratch = append(append(st.scratch, '\n'), v...)
		}
	}
	if n > 1 {
		return st.scratch
	}
	return first
}
