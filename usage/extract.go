package usage

import "bytes"

// Usage is one request's token counts.
type Usage struct {
	PromptTokens, CompletionTokens int
	// Estimated reports that no usage came back: the counts are
	// estimates (bytes/4).
	Estimated bool
}

// readUsage reads a usage object: OpenAI's prompt_tokens and
// completion_tokens, or the Responses API's input_tokens and
// output_tokens. ok is false for null or an object with neither count.
func readUsage(s *scanner) (u Usage, ok bool) {
	if s.peek() != '{' {
		s.skip()
		return Usage{}, false
	}
	m := s.object()
	for key, more := m.next(); more; key, more = m.next() {
		switch string(key) {
		case "prompt_tokens", "input_tokens":
			u.PromptTokens, ok = s.integer(), true
		case "completion_tokens", "output_tokens":
			u.CompletionTokens, ok = s.integer(), true
		default:
			s.skip()
		}
	}
	return u, ok && s.ok
}

// chunkInfo is what one JSON body or SSE chunk says.
type chunkInfo struct {
	usage      Usage
	hasUsage   bool
	noChoices  bool // "choices": []
	textBytes  int  // generated text in the choices
	wellFormed bool
}

// usageOnly reports the shape of include_usage's extra chunk.
func (c *chunkInfo) usageOnly() bool { return c.wellFormed && c.hasUsage && c.noChoices }

// readChunk reads a completion object (whole response or stream chunk):
// its top-level usage, whether choices is empty, and the bytes of text the
// choices carry; and the Responses API's shapes (usage under "response",
// text in "delta"). A Responses event has no choices, so it is never
// taken for the usage-only chunk.
func readChunk(b []byte) (c chunkInfo) {
	s := newScanner(b)
	if s.peek() != '{' {
		return c
	}
	m := s.object()
	for key, more := m.next(); more; key, more = m.next() {
		switch string(key) {
		case "usage":
			if u, ok := readUsage(&s); ok {
				c.usage, c.hasUsage = u, true
			}
		case "choices":
			c.noChoices, c.textBytes = readChoices(&s)
		case "response":
			// Responses API: response.completed carries the usage.
			if u, ok := nestedUsage(&s); ok {
				c.usage, c.hasUsage = u, true
			}
		case "delta":
			// Responses API: response.output_text.delta and friends.
			if s.peek() == '"' {
				c.textBytes += len(s.str())
			} else {
				s.skip()
			}
		default:
			s.skip()
		}
	}
	c.wellFormed = s.ok
	return c
}

// nestedUsage reads the usage member of an object.
func nestedUsage(s *scanner) (u Usage, ok bool) {
	if s.peek() != '{' {
		s.skip()
		return Usage{}, false
	}
	m := s.object()
	for key, more := m.next(); more; key, more = m.next() {
		if isKey(key, "usage") {
			u, ok = readUsage(s)
		} else {
			s.skip()
		}
	}
	return u, ok
}

// readChoices measures the generated text of a choices array: "text"
// (completions), "delta" (chat chunks) and "message" (chat answers).
func readChoices(s *scanner) (empty bool, text int) {
	if s.peek() != '[' {
		s.skip()
		return false, 0
	}
	empty = true
	e := s.array()
	for e.next() {
		empty = false
		if s.peek() != '{' {
			s.skip()
			continue
		}
		m := s.object()
		for key, more := m.next(); more; key, more = m.next() {
			switch string(key) {
			case "text", "delta", "message":
				text += s.textBytes()
			default:
				s.skip()
			}
		}
	}
	return empty, text
}

// usageKey is what findUsageTail looks for.
var usageKey = []byte(`"usage"`)

// findUsageTail finds the last usage object in the tail of a JSON body
// whose start was not kept. A `"usage"` whose quote is not escaped and
// that is followed by ':' is a key (a string value cannot be followed by
// ':'), so text inside strings cannot fool it; the last such key is the
// top-level one in every engine's answer, which ends with usage.
func findUsageTail(b []byte) (Usage, bool) {
	for end := len(b); ; {
		i := bytes.LastIndex(b[:end], usageKey)
		if i < 0 {
			return Usage{}, false
		}
		end = i
		if escaped(b, i) {
			continue
		}
		s := newScanner(b[i+len(usageKey):])
		if !s.consume(':') {
			continue
		}
		if u, ok := readUsage(&s); ok {
			return u, true
		}
	}
}

// escaped reports whether b[i] is preceded by an odd number of
// backslashes.
func escaped(b []byte, i int) bool {
	n := 0
	for j := i - 1; j >= 0 && b[j] == '\\'; j-- {
		n++
	}
	return n%2 == 1
}
