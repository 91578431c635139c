package usage

// RequestInfo is what Prepare learned about a request body.
type RequestInfo struct {
	// Stream reports "stream": true.
	Stream bool
	// Injected reports that Prepare asked for usage on the client's
	// behalf: the stream's usage-only chunk is the gateway's, and the
	// response writer must strip it (NewWriter(w, info.Injected)).
	Injected bool
	// MaxTokens is max_completion_tokens, else max_tokens; 0 when absent.
	MaxTokens int
	// PromptEstimate estimates the prompt's tokens: bytes of prompt or
	// message text / 4 (plus one per token id of a pre-tokenized prompt),
	// at least 1.
	PromptEstimate int
}

// includeUsage is what Prepare adds; the leading comma joins it to the
// member before it.
const (
	includeUsageMember = `"include_usage":true`
	streamOptionsWhole = `{"include_usage":true}`
	streamOptionsAdded = `,"stream_options":` + streamOptionsWhole
)

// Prepare looks at an OpenAI-style request body and, for a streaming
// completion or chat completion ("stream": true, with "prompt" or
// "messages") whose client did not ask for usage, returns the body with
// "stream_options":{"include_usage":true} added (other stream_options
// fields kept) and Injected set. Otherwise it returns body itself. The
// rest of the body is never reordered or re-encoded: the change is a
// splice, so the upstream sees the client's bytes. A body that is not a
// JSON object is returned as is, with PromptEstimate 1.
//
// Callers send it only bodies of /v1/completions and /v1/chat/completions
// to engines that accept stream_options (vLLM, SGLang): some strict
// servers reject unknown fields.
func Prepare(body []byte) (out []byte, info RequestInfo) {
	var f requestFields
	f.scan(body)
	info = RequestInfo{Stream: f.stream, MaxTokens: f.maxTokens, PromptEstimate: f.promptEstimate()}
	if f.hasMaxCompletion {
		info.MaxTokens = f.maxCompletion
	}
	if !f.ok || !f.stream || !f.hasPrompt {
		return body, info
	}
	out, info.Injected = f.inject(body)
	return out, info
}

// requestFields are the top-level members Prepare reads, with the spans
// it may splice at.
type requestFields struct {
	ok, stream, hasPrompt bool
	// optsStart/optsEnd span the stream_options value; optsStart < 0
	// when absent.
	optsStart, optsEnd int
	// lastEnd is the end of the last member's value, where a new member
	// goes.
	lastEnd int

	maxTokens, maxCompletion int
	hasMaxCompletion         bool
	textBytes, tokenIDs      int
}

// scan reads the top-level object once; duplicate keys take the last
// value, as the Python and Go decoders engines use do.
func (f *requestFields) scan(body []byte) {
	f.optsStart = -1
	s := newScanner(body)
	if s.peek() != '{' {
		return
	}
	m := s.object()
	for key, more := m.next(); more; key, more = m.next() {
		switch string(key) {
		case "stream":
			a, b := s.skip()
			f.stream = string(body[a:b]) == "true"
		case "stream_options":
			f.optsStart, f.optsEnd = s.skip()
		case "max_tokens":
			f.maxTokens = s.integer()
		case "max_completion_tokens":
			f.maxCompletion, f.hasMaxCompletion = s.integer(), true
		case "prompt":
			f.hasPrompt = true
			f.countPrompt(&s, 0)
		case "messages":
			f.hasPrompt = true
			f.countMessages(&s)
		default:
			s.skip()
		}
		f.lastEnd = s.i
	}
	f.ok = s.ok
}

// promptEstimate is the bytes/4 estimate, at least 1.
func (f *requestFields) promptEstimate() int {
	return max(1, f.textBytes/4+f.tokenIDs)
}

// countPrompt measures a completions prompt: a string, a list of strings,
// token ids, or lists of token ids.
func (f *requestFields) countPrompt(s *scanner, depth int) {
	switch c := s.peek(); {
	case c == '"':
		f.textBytes += len(s.str())
	case c == '[' && depth < 2:
		e := s.array()
		for e.next() {
			f.countPrompt(s, depth+1)
		}
	case c == '-' || (c >= '0' && c <= '9'):
		s.skip()
		f.tokenIDs++
	default:
		s.skip()
	}
}

// countMessages measures chat messages' text: string contents and the
// "text" of content parts. Other parts (images as data URLs) would make a
// bytes/4 estimate absurd, so they are left out.
func (f *requestFields) countMessages(s *scanner) {
	if s.peek() != '[' {
		s.skip()
		return
	}
	msgs := s.array()
	for msgs.next() {
		if s.peek() != '{' {
			s.skip()
			continue
		}
		m := s.object()
		for key, more := m.next(); more; key, more = m.next() {
			if !isKey(key, "content") {
				s.skip()
				continue
			}
			f.countContent(s)
		}
	}
}

// countContent measures one message's content.
func (f *requestFields) countContent(s *scanner) {
	switch s.peek() {
	case '"':
		f.textBytes += len(s.str())
	case '[':
		parts := s.array()
		for parts.next() {
			if s.peek() != '{' {
				s.skip()
				continue
			}
			m := s.object()
			for key, more := m.next(); more; key, more = m.next() {
				if isKey(key, "text") && s.peek() == '"' {
					f.textBytes += len(s.str())
				} else {
					s.skip()
				}
			}
		}
	default:
		s.skip()
	}
}

// inject adds include_usage unless the client asked for it; false means
// body is returned unchanged (the client asked, or stream_options is not
// something we can safely extend).
func (f *requestFields) inject(body []byte) ([]byte, bool) {
	if f.optsStart < 0 {
		return splice(body, f.lastEnd, f.lastEnd, streamOptionsAdded), true
	}
	opts := body[f.optsStart:f.optsEnd]
	if string(opts) == "null" {
		return splice(body, f.optsStart, f.optsEnd, streamOptionsWhole), true
	}
	if len(opts) == 0 || opts[0] != '{' {
		return body, false
	}
	s := newScanner(opts)
	valStart, valEnd, empty := -1, -1, true
	m := s.object()
	for key, more := m.next(); more; key, more = m.next() {
		empty = false
		a, b := s.skip()
		if isKey(key, "include_usage") {
			valStart, valEnd = a, b
		}
	}
	switch {
	case !s.ok:
		return body, false
	case valStart >= 0 && string(opts[valStart:valEnd]) == "true":
		return body, false
	case valStart >= 0:
		return splice(body, f.optsStart+valStart, f.optsStart+valEnd, "true"), true
	case empty:
		return splice(body, f.optsStart+1, f.optsStart+1, includeUsageMember), true
	default:
		return splice(body, f.optsStart+1, f.optsStart+1, includeUsageMember+","), true
	}
}

// splice returns a new slice: b with b[start:end] replaced by ins.
func splice(b []byte, start, end int, ins string) []byte {
	out := make([]byte, 0, len(b)-(end-start)+len(ins))
	out = append(out, b[:start]...)
	out = append(out, ins...)
	return append(out, b[end:]...)
}
