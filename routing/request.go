package routing

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Request is what routing reads from an OpenAI-style request body.
type Request struct {
	// Model is the body's top-level "model" field; "" when absent.
	Model string
	// Text is the prompt as the prefix index sees it: the "prompt", or
	// each chat message as role NUL content NUL, in order, cut at the
	// maximum length given to ParseRequest.
	Text string
}

// ParseRequest reads the model and the prompt text of a JSON request body,
// keeping at most maxText bytes of text. The body may be cut short (a
// bounded read of a large request): the fields read before the cut are
// kept, so a model named before a long prompt is still found. Anything that
// is not a JSON object yields an empty Request.
func ParseRequest(body []byte, maxText int) Request {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return req
	}
	var text strings.Builder
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			break // cut short inside this value
		}
		switch key {
		case "model":
			_ = json.Unmarshal(raw, &req.Model)
		case "prompt":
			if text.Len() == 0 {
				appendPrompt(&text, raw, maxText)
			}
		case "messages":
			if text.Len() == 0 {
				appendMessages(&text, raw, maxText)
			}
		}
	}
	req.Text = text.String()
	return req
}

// appendPrompt adds a completion prompt: a string, or a list of strings
// (token-id prompts carry no text to match and are skipped).
func appendPrompt(b *strings.Builder, raw json.RawMessage, limit int) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		appendCapped(b, s, limit)
		return
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		for _, s := range list {
			appendCapped(b, s, limit)
			appendCapped(b, "\x00", limit)
		}
	}
}

// appendMessages adds chat messages. Content is a string or a list of
// parts, of which the text parts count.
func appendMessages(b *strings.Builder, raw json.RawMessage, limit int) {
	var msgs []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(raw, &msgs) != nil {
		return
	}
	for _, m := range msgs {
		if b.Len() >= limit {
			return
		}
		appendCapped(b, m.Role, limit)
		appendCapped(b, "\x00", limit)
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			appendCapped(b, s, limit)
		} else {
			var parts []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}
			if json.Unmarshal(m.Content, &parts) == nil {
				for _, p := range parts {
					appendCapped(b, p.Text, limit)
				}
			}
		}
		appendCapped(b, "\x00", limit)
	}
}

func appendCapped(b *strings.Builder, s string, limit int) {
	if room := limit - b.Len(); room < len(s) {
		s = s[:max(room, 0)]
	}
	b.WriteString(s)
}
