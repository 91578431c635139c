package usage

import "bytes"

// scanner walks JSON in place, without decoding into values, so that the
// request path can read a few fields of a body and splice bytes into it
// without allocating or re-encoding. It is lenient: it finds the spans of
// well-formed JSON exactly and gives up (ok false) on anything it cannot
// follow, which callers treat as "field absent".
type scanner struct {
	b  []byte
	i  int
	ok bool
}

func newScanner(b []byte) scanner { return scanner{b: b, ok: true} }

// ws skips JSON whitespace.
func (s *scanner) ws() {
	for s.i < len(s.b) && s.b[s.i] <= ' ' {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// fail marks the scan broken; every later step is a no-op.
func (s *scanner) fail() bool {
	s.ok = false
	s.i = len(s.b)
	return false
}

// consume skips one expected byte after optional whitespace.
func (s *scanner) consume(c byte) bool {
	if !s.ok || s.peek() != c {
		return s.fail()
	}
	s.i++
	return true
}

// str reads a string and returns its raw contents (escapes untouched).
// It jumps from quote to quote (IndexByte is vectorized) and checks each
// for an escaping backslash.
func (s *scanner) str() []byte {
	if !s.consume('"') {
		return nil
	}
	start := s.i
	for {
		j := bytes.IndexByte(s.b[s.i:], '"')
		if j < 0 {
			s.fail()
			return nil
		}
		s.i += j + 1
		if !escaped(s.b, s.i-1) {
			return s.b[start : s.i-1]
		}
	}
}

// skip passes over one value of any kind and returns its span.
func (s *scanner) skip() (start, end int) {
	if !s.ok {
		return s.i, s.i
	}
	c := s.peek()
	start = s.i
	switch c {
	case '"':
		s.str()
	case '{', '[':
		s.skipNested()
	case 0:
		s.fail()
	default:
		// Literals and numbers run to the next delimiter.
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r', ':':
				if s.i == start {
					s.fail()
				}
				return start, s.i
			}
			s.i++
		}
	}
	return start, s.i
}

// skipNested passes over an object or array by counting brackets outside
// strings, which is all a span needs.
func (s *scanner) skipNested() {
	depth := 0
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			s.str()
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				s.i++
				return
			}
		}
		s.i++
	}
	s.fail()
}

// members iterates over an object's members: call begin once (it consumes
// '{'), then next until it returns false; after each key the caller must
// consume the value (skip or a typed read) before calling next again.
type members struct {
	s     *scanner
	first bool
}

func (s *scanner) object() members {
	s.consume('{')
	return members{s: s, first: true}
}

// next reads the next key and its ':'; false at the closing '}' (consumed)
// or on a syntax error.
func (m *members) next() ([]byte, bool) {
	s := m.s
	if !s.ok {
		return nil, false
	}
	if s.peek() == '}' {
		s.i++
		return nil, false
	}
	if !m.first && !s.consume(',') {
		return nil, false
	}
	m.first = false
	key := s.str()
	if !s.consume(':') {
		return nil, false
	}
	s.ws()
	return key, true
}

// elems iterates over an array's elements like members.
type elems struct {
	s     *scanner
	first bool
}

func (s *scanner) array() elems {
	s.consume('[')
	return elems{s: s, first: true}
}

// next positions the scanner on the next element; false at ']' (consumed).
func (e *elems) next() bool {
	s := e.s
	if !s.ok {
		return false
	}
	if s.peek() == ']' {
		s.i++
		return false
	}
	if !e.first && !s.consume(',') {
		return false
	}
	e.first = false
	s.ws()
	return s.ok && s.i < len(s.b)
}

// integer reads a number and returns its integer part (0 for negatives,
// exponents or non-numbers, which no token count uses).
func (s *scanner) integer() int {
	start, end := s.skip()
	n := 0
	for _, c := range s.b[start:end] {
		if c < '0' || c > '9' {
			if c == '.' {
				break
			}
			return 0
		}
		if n > 1<<40 {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// textBytes sums the raw lengths of the string values under the current
// value, recursing into objects and arrays (keys, and the values of
// notText keys, excluded) up to a bounded depth. It is the
// generated-text measure for estimates.
func (s *scanner) textBytes() int { return s.textBytesAt(0) }

// maxTextDepth bounds textBytes' recursion on hostile nesting.
const maxTextDepth = 16

func (s *scanner) textBytesAt(depth int) int {
	if depth > maxTextDepth {
		s.skip()
		return 0
	}
	switch s.peek() {
	case '"':
		return len(s.str())
	case '{':
		n := 0
		m := s.object()
		for key, ok := m.next(); ok; key, ok = m.next() {
			if notText(key) {
				s.skip()
				continue
			}
			n += s.textBytesAt(depth + 1)
		}
		return n
	case '[':
		n := 0
		e := s.array()
		for e.next() {
			n += s.textBytesAt(depth + 1)
		}
		return n
	default:
		s.skip()
		return 0
	}
}

// notText reports the keys of a delta or message whose strings are not
// generated text: "role":"assistant" alone would add two tokens per
// answer.
func notText(key []byte) bool {
	switch string(key) {
	case "role", "type", "id":
		return true
	}
	return false
}

// isKey reports whether a raw key equals want (keys we look for have no
// escapes).
func isKey(key []byte, want string) bool { return string(key) == want }
