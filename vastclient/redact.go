package vastclient

import (
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// sensitiveFields name the fields of vast.ai answers whose values are
// secrets: instance tokens, the per-instance key, and environment values
// (the generated WEB_PASSWORD, an HF_TOKEN...). vast.ai echoes them in
// error bodies and messages, so their values never reach an error.
var sensitiveFields = []string{"jupyter_token", "instance_api_key", "extra_env", "env", "api_key", "image_login"}

// minSecretLen is the shortest value redacted by value: shorter ones
// ("1", "true" from "-p 8000:8000": "1") would blank out ordinary text
// and are no secret anyway.
const minSecretLen = 6

// maxLearnedSecrets bounds the values learned from listings. When the set
// is full it starts afresh; the next listing teaches the live ones again.
const maxLearnedSecrets = 50000

// redactor removes the API key, every registered secret value and the
// values of sensitiveFields from text. It is safe for concurrent use;
// reading the value list is lock-free.
type redactor struct {
	key string

	mu       sync.Mutex
	explicit map[string]struct{}
	learned  map[string]struct{}
	list     atomic.Pointer[[]string] // longest first
}

func newRedactor(key string) *redactor {
	return &redactor{key: key, explicit: map[string]struct{}{}, learned: map[string]struct{}{}}
}

// add registers values; learned ones may be forgotten when the set is full.
func (r *redactor) add(learned bool, values ...string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < minSecretLen {
			continue
		}
		if _, ok := r.explicit[v]; ok {
			continue
		}
		if learned {
			if _, ok := r.learned[v]; ok {
				continue
			}
			if len(r.learned) >= maxLearnedSecrets {
				r.learned = map[string]struct{}{}
			}
			r.learned[v] = struct{}{}
		} else {
			delete(r.learned, v)
			r.explicit[v] = struct{}{}
		}
		changed = true
	}
	if !changed {
		return
	}
	list := make([]string, 0, len(r.explicit)+len(r.learned))
	for v := range r.explicit {
		list = append(list, v)
	}
	for v := range r.learned {
		list = append(list, v)
	}
	// Longest first, so that a secret containing another is replaced whole.
	sort.Slice(list, func(i, j int) bool {
		if len(list[i]) != len(list[j]) {
			return len(list[i]) > len(list[j])
		}
		return list[i] < list[j]
	})
	r.list.Store(&list)
}

// text returns s without the key, known secret values and the values of
// sensitive fields written as "field: value" or "field=value".
func (r *redactor) text(s string) string {
	if r == nil || s == "" {
		return s
	}
	if r.key != "" {
		s = strings.ReplaceAll(s, r.key, redactedMarker)
	}
	if p := r.list.Load(); p != nil {
		for _, v := range *p {
			if strings.Contains(s, v) {
				s = strings.ReplaceAll(s, v, redactedMarker)
			}
		}
	}
	return scrubFieldsText(s)
}

// sensitiveField reports whether a JSON object key names a secret.
func sensitiveField(k string) bool {
	for _, f := range sensitiveFields {
		if strings.EqualFold(k, f) {
			return true
		}
	}
	return false
}

// scrubFieldsText is the fallback for text that is not JSON (plain text,
// truncated JSON, a Python repr inside a message): after every sensitive
// field name followed by ':', '=' or an opening bracket it replaces the
// value, a quoted
// string, a bracketed list or object (to its matching bracket or the end
// of the text) or a bare word.
func scrubFieldsText(s string) string {
	lower := asciiLower(s)
	var b strings.Builder
	last := 0 // s[:last] has been copied or replaced
	for i := 0; i < len(s); {
		name := fieldAt(lower, i)
		if name == "" {
			i++
			continue
		}
		j := i + len(name)
		if j < len(s) && (s[j] == '"' || s[j] == '\'' || s[j] == '\\') {
			for j < len(s) && (s[j] == '"' || s[j] == '\'' || s[j] == '\\') {
				j++
			}
		}
		j = skipSpace(s, j)
		var start int
		switch {
		case j < len(s) && (s[j] == ':' || s[j] == '='):
			start = skipSpace(s, j+1)
		case j < len(s) && (s[j] == '{' || s[j] == '['):
			// "env {'HF_TOKEN': ...}": a Python rendering after the name.
			start = j
		default:
			i += len(name)
			continue
		}
		end := valueEnd(s, start)
		if end == start {
			i = start
			continue
		}
		val, open, closing := s[start:end], "", ""
		if q := val[0]; q == '"' || q == '\'' {
			// Keep the quotes, so that scrubbed JSON stays JSON.
			open = val[:1]
			if len(val) > 1 && val[len(val)-1] == q {
				closing = open
			}
		}
		if strings.Trim(val, `"'\`) == redactedMarker {
			i = end
			continue
		}
		b.WriteString(s[last:start])
		b.WriteString(open + redactedMarker + closing)
		last, i = end, end
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// fieldAt returns the sensitive field name starting at lower[i] on a word
// boundary, or "". Longer names come first in sensitiveFields, so
// "extra_env" is not read as "env".
func fieldAt(lower string, i int) string {
	if i > 0 && isWordByte(lower[i-1]) {
		return ""
	}
	for _, f := range sensitiveFields {
		if strings.HasPrefix(lower[i:], f) {
			if e := i + len(f); e < len(lower) && isWordByte(lower[e]) {
				continue
			}
			return f
		}
	}
	return ""
}

// asciiLower lowers ASCII letters only, keeping every byte at its index
// (strings.ToLower rewrites invalid UTF-8 and would shift them).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the end of the value starting at s[i].
func valueEnd(s string, i int) int {
	if i >= len(s) {
		return i
	}
	switch c := s[i]; c {
	case '"', '\'':
		return quotedEnd(s, i)
	case '\\':
		// An escaped quote (\"value\") inside a JSON string.
		if i+1 < len(s) && s[i+1] == '"' {
			if k := strings.Index(s[i+2:], `\"`); k >= 0 {
				return i + 2 + k + 2
			}
			return len(s)
		}
	case '[', '{':
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case '[', '{':
				depth++
			case ']', '}':
				depth--
				if depth == 0 {
					return j + 1
				}
			case '"', '\'':
				j = quotedEnd(s, j) - 1
			}
		}
		return len(s)
	}
	j := i
	for j < len(s) && !strings.ContainsRune(" \t\r\n,;&}]\"'<", rune(s[j])) {
		j++
	}
	return j
}

// quotedEnd returns the index after the quote closing the string opened
// at s[i], or len(s) when it is never closed (a truncated body).
func quotedEnd(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case q:
			return j + 1
		}
	}
	return len(s)
}

// AddSecrets registers values that must never appear in an error or a log
// line of this client: generated instance passwords (WEB_PASSWORD), the
// values of a provision env block, static tokens. Values shorter than 6
// characters are ignored. The API key is always redacted.
//
// The client also learns, from every listing and show, each instance's
// jupyter_token and extra_env values, and from every create the new
// instance's instance_api_key.
func (c *Client) AddSecrets(values ...string) { c.red.add(false, values...) }

// learnInstances registers the secrets carried by listed instances.
func (c *Client) learnInstances(ins []Instance) {
	var vals []string
	for i := range ins {
		vals = appendInstanceSecrets(vals, &ins[i])
	}
	c.red.add(true, vals...)
}

func appendInstanceSecrets(vals []string, in *Instance) []string {
	if in.JupyterToken != "" {
		vals = append(vals, in.JupyterToken)
	}
	for k, v := range in.ExtraEnv {
		// "-p 8000:8000" style keys are Docker options, not variables.
		if !strings.HasPrefix(k, "-") {
			vals = append(vals, v)
		}
	}
	return vals
}
