package vastclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Test for them with errors.Is; an *APIError matches the
// ones that fit its status and body (see APIError.Is).
var (
	// ErrAuth means the API key was rejected. vast.ai answers a bad key with
	// 401 on some endpoints and 404 on others, so it is detected by the
	// "auth_error" code as well as by the status.
	ErrAuth = errors.New("vast.ai: authentication failed")

	// ErrNotFound means the instance does not exist (any more): a show that
	// returned {"instances": null}, or a not_found / no_such_instance error.
	ErrNotFound = errors.New("vast.ai: instance not found")

	// ErrRateLimited means vast.ai answered 429 on every attempt.
	ErrRateLimited = errors.New("vast.ai: rate limited")

	// ErrNoSuchAsk means the offer passed to CreateInstance is gone; pick
	// another offer.
	ErrNoSuchAsk = errors.New("vast.ai: offer no longer available (no_such_ask)")

	// ErrDeprecated means vast.ai retired the endpoint (HTTP 410
	// deprecated_endpoint), as happened to the v0 instance list.
	ErrDeprecated = errors.New("vast.ai: deprecated endpoint")

	// ErrCreateUncertain means a create request may or may not have created
	// an instance (timeout, reset connection, 5xx, unreadable 2xx). The
	// caller must look the instance up by its label before trying again,
	// because create is not idempotent and a blind retry can rent twice.
	ErrCreateUncertain = errors.New("vast.ai: create outcome unknown")

	// ErrServer means vast.ai answered with a 5xx status.
	ErrServer = errors.New("vast.ai: server error")
)

// maxBodyExcerpt bounds APIError.Body so that a huge HTML error page does
// not end up in logs.
const maxBodyExcerpt = 512

// maxMsgLen bounds the message shown by APIError.Error.
const maxMsgLen = 300

// redactedMarker replaces every occurrence of the API key in error text.
const redactedMarker = "[REDACTED]"

// APIError is an unsuccessful answer from vast.ai: a non-2xx status, or a 2xx
// body carrying "success": false.
//
// Every string field has had the API key, every registered or learned
// secret and the values of jupyter_token, instance_api_key, extra_env and
// env replaced by "[REDACTED]", since vast.ai echoes request data and
// instance objects back in its error bodies and messages.
type APIError struct {
	// Method is the HTTP method of the request.
	Method string
	// Path is the endpoint's path template (for example
	// "/api/v0/instances/{id}/"), without the query string.
	Path string
	// Status is the HTTP status code.
	Status int
	// Code is vast.ai's machine-readable "error" value, such as
	// "auth_error", "invalid_args" or "no_such_ask"; empty when the body had
	// none.
	Code string
	// Msg is the human-readable message (from "msg", "message" or "detail",
	// or the plain-text body).
	Msg string
	// AskID is the offer id vast.ai reported with a no_such_ask error.
	AskID int64
	// Body is an excerpt of an error response's body, at most 512 bytes;
	// always empty for a 2xx answer, which is real data.
	Body string

	// noSuchAsk is computed from the whole body, which Body may truncate.
	noSuchAsk bool
	// also is an extra sentinel the client attached because of where the
	// error happened (ErrNotFound for a null show, ErrCreateUncertain for a
	// 5xx on create).
	also error
}

// Error formats the error as
// "vast.ai GET /api/v1/instances/: HTTP 404 auth_error: Invalid user key".
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("vast.ai ")
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.Path)
	b.WriteString(": HTTP ")
	b.WriteString(strconv.Itoa(e.Status))
	if e.Code != "" {
		b.WriteByte(' ')
		b.WriteString(e.Code)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.also == ErrCreateUncertain {
		b.WriteString(" (outcome unknown: an instance may have been created)")
	}
	return b.String()
}

// Is makes errors.Is match the package's sentinel errors against the status
// and body of the answer.
func (e *APIError) Is(target error) bool {
	if target == nil {
		return false
	}
	if e.also != nil && target == e.also {
		return true
	}
	switch target {
	case ErrAuth:
		return e.Code == "auth_error" || e.Status == 401
	case ErrNotFound:
		// A bare 404 is not enough: a wrong api_url also gives 404, and
		// treating that as "instance gone" would make callers forget
		// instances that still bill.
		return e.Code == "not_found" || e.Code == "no_such_instance"
	case ErrRateLimited:
		return e.Status == 429 || e.Code == "rate_limit_exceeded"
	case ErrNoSuchAsk:
		return e.noSuchAsk
	case ErrDeprecated:
		return e.Code == "deprecated_endpoint"
	case ErrServer:
		return e.Status >= 500 && e.Status <= 599
	}
	return false
}

// parseAPIError builds an APIError from a response, redacting only the API
// key; the Client uses its redactor, which knows more secrets.
func parseAPIError(method, path string, status int, body []byte, key string) *APIError {
	return newRedactor(key).parseAPIError(method, path, status, body)
}

// parseAPIError builds an APIError from a response. The body may be JSON in
// any of the shapes vast.ai uses, plain text, HTML or garbage; parsing never
// fails. Every secret the redactor knows, and the value of every sensitive
// field, is removed from every field. A 2xx body is never excerpted: it is
// a real answer, which carries instance tokens and env values.
func (r *redactor) parseAPIError(method, path string, status int, body []byte) *APIError {
	e := &APIError{Method: method, Path: path, Status: status}
	text := r.text(string(body))
	if status < 200 || status > 299 {
		if normalized, ok := r.redactJSON(body); ok {
			e.Body = truncateUTF8(normalized, maxBodyExcerpt)
		} else {
			e.Body = truncateUTF8(text, maxBodyExcerpt)
		}
	}
	e.noSuchAsk = strings.Contains(string(body), "no_such_ask")

	var m map[string]json.RawMessage
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '{' && json.Unmarshal(trimmed, &m) == nil {
		e.Code = r.clean(flexString(m["error"]), 100)
		if e.Code == "" {
			// {"message": ..., "code": "429 Too Many Requests"} puts an HTTP
			// status line in "code"; only an identifier-like value is a
			// vast.ai error code.
			if c := flexString(m["code"]); isIdentifier(c) {
				e.Code = r.clean(c, 100)
			}
		}
		for _, k := range []string{"msg", "message", "detail"} {
			if s := r.rawText(m[k]); s != "" {
				e.Msg = r.clean(s, maxMsgLen)
				break
			}
		}
		e.AskID = flexInt(m["ask_id"])
		// The JSON decoding may have turned an escaped form of the code
		// into plain text; look again at the decoded values.
		if strings.Contains(flexString(m["error"]), "no_such_ask") || strings.Contains(e.Msg, "no_such_ask") {
			e.noSuchAsk = true
		}
		return e
	}
	if len(trimmed) > 0 && trimmed[0] != '<' && trimmed[0] != '{' && trimmed[0] != '[' {
		// Plain text, like the 429 "API requests too frequent".
		e.Msg = r.clean(text, maxMsgLen)
	}
	return e
}

// redactJSON re-encodes a JSON body with the secrets removed from every
// string (object keys included) and the values of sensitive fields
// replaced whole. Working on decoded strings catches a secret that the
// server escaped (for example "\/" for "/"), which a search of the raw
// text would miss.
func (r *redactor) redactJSON(body []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil || dec.More() {
		return "", false
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", false
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(r.redactValue(v)) != nil {
		return "", false
	}
	return r.text(strings.TrimSuffix(buf.String(), "\n")), true
}

func (r *redactor) redactValue(v any) any {
	switch x := v.(type) {
	case string:
		return r.text(x)
	case []any:
		for i := range x {
			x[i] = r.redactValue(x[i])
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			if sensitiveField(k) && val != nil && val != "" {
				out[r.text(k)] = redactedMarker
				continue
			}
			out[r.text(k)] = r.redactValue(val)
		}
		return out
	}
	return v
}

// rawText returns a JSON string's value, or a redacted compact rendering of
// any other non-null value (FastAPI-style "detail" can be a list of objects).
func (r *redactor) rawText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	if s := flexString(raw); s != "" {
		return s
	}
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" || string(t) == `""` {
		return ""
	}
	if s, ok := r.redactJSON(t); ok {
		return s
	}
	return ""
}

func isIdentifier(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// clean makes s fit on one line, removes the secrets and bounds its
// length. Whitespace is collapsed before redaction so that the collapsing
// cannot assemble a secret; truncation afterwards cannot create one either.
func (r *redactor) clean(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	s = r.text(s)
	return truncateUTF8(s, limit)
}

// redact replaces every occurrence of key in s.
func redact(s, key string) string {
	if key == "" {
		return s
	}
	return strings.ReplaceAll(s, key, redactedMarker)
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// redactedError hides the API key and every known secret from the text of
// an error while keeping its chain for errors.Is and errors.As. Every error
// the Client returns is wrapped in one, as a last line of defence.
type redactedError struct {
	err error
	r   *redactor
}

func (e *redactedError) Error() string { return e.r.text(e.err.Error()) }
func (e *redactedError) Unwrap() error { return e.err }

// transportError is a failure to get any HTTP answer: dial, TLS, timeout,
// reset connection, or a body that could not be read.
type transportError struct {
	method, path string
	err          error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("vast.ai %s %s: %v", e.method, e.path, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// stripURLError drops the *url.Error layer, whose text repeats the full URL
// (query included) in every message.
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}
