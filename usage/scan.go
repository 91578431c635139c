package usage

import (
	"bytes"
	"errors"
	"strconv"
)

// scanner walks JSON in place, without decoding into values, so that the
// request path can read a few fields of a body and splice bytes into it
// without allocating or re-encoding. It is lenient: it finds the spans of
// well-formed JSON exactly and gives up (ok false) on anything it cannot
// follow, which callers treat as "field absent".
type scanner struct {
	b  []byte
	i  int
	ok bool
	// kbuf holds a key decoded from escapes: "max\u005ftokens" is
	// max_tokens to the engine, so it must be to us.
	kbuf [32]byte
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
	if bytes.IndexByte(key, '\\') >= 0 {
		key = s.unescapeKey(key)
	}
	if !s.consume(':') {
		return nil, false
	}
	s.ws()
	return key, true
}

// unescapeKey decodes a key's escapes into kbuf. Keys Prepare looks for
// are short ASCII, so a key that decodes to anything else (or longer than
// kbuf) is returned raw: it matches none of them either way.
func (s *scanner) unescapeKey(key []byte) []byte {
	n := 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '\\' && i+1 < len(key) {
			i++
			switch c = key[i]; c {
			case 'u':
				if i+5 > len(key) {
					return key
				}
				v, err := strconv.ParseUint(string(key[i+1:i+5]), 16, 8)
				if err != nil || v >= 0x80 {
					return key
				}
				c, i = byte(v), i+4
			case 'b', 'f', 'n', 'r', 't':
				return key
			}
		}
		if n == len(s.kbuf) {
			return key
		}
		s.kbuf[n] = c
		n++
	}
	return s.kbuf[:n]
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

// maxCount saturates counts read from JSON.
const maxCount = 1 << 31

// integer reads a number as a count: 0 for negatives and non-numbers,
// the integer part of fractions and exponents (Python engines accept
// 1e3 and 100.0 for an int), at most maxCount.
func (s *scanner) integer() int {
	start, end := s.skip()
	num := s.b[start:end]
	n := 0
	for _, c := range num {
		if c < '0' || c > '9' {
			return slowCount(num)
		}
		if n = n*10 + int(c-'0'); n > maxCount {
			return maxCount
		}
	}
	return n
}

// slowCount is integer's path for anything but plain digits.
func slowCount(num []byte) int {
	f, err := strconv.ParseFloat(string(num), 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange), f != f, f <= 0:
		return 0
	case f >= maxCount:
		return maxCount
	}
	return int(f)
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
