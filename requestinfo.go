package vastai

// The request body is read for routing (the model field, the prompt for
// the prefix index) once per request, bounded, and passed on intact: the
// bytes read are replayed ahead of the rest of the body.

import (
	"bytes"
	"context"
	"io"
	"net/http"

	"github.com/caddy-vastai/caddy-vastai/routing"
)

// Defaults of the body inspection.
const (
	// DefaultInspectBytes bounds the bytes of a request body read for
	// routing; a larger body is routed on what its first bytes say.
	DefaultInspectBytes = 1 << 20
	// maxPromptText bounds the prompt text kept for the prefix index.
	maxPromptText = 64 << 10
)

type requestInfoKey struct{}

// inspectedBody replays the inspected head of a body, then the rest. It
// carries what was read, so that a second look (a retry, the selection
// policy after the upstream source) does not read again.
type inspectedBody struct {
	io.Reader
	orig io.ReadCloser
	info *routing.Request
}

func (b *inspectedBody) Close() error { return b.orig.Close() }

var emptyRequest = &routing.Request{}

// requestInfo returns what the body of r says for routing, reading at most
// limit bytes of it the first time. The result must not be modified.
func requestInfo(r *http.Request, limit int64) *routing.Request {
	if info, ok := r.Context().Value(requestInfoKey{}).(*routing.Request); ok {
		return info
	}
	if b, ok := r.Body.(*inspectedBody); ok {
		return b.info
	}
	if r.Body == nil || r.Body == http.NoBody || r.Method != http.MethodPost {
		return emptyRequest
	}
	if limit <= 0 {
		limit = DefaultInspectBytes
	}
	head, _ := io.ReadAll(io.LimitReader(r.Body, limit))
	parsed := routing.ParseRequest(head, maxPromptText)
	info := &parsed
	r.Body = &inspectedBody{Reader: io.MultiReader(bytes.NewReader(head), r.Body), orig: r.Body, info: info}
	return info
}

// withRequestInfo inspects r's body and returns r with the result in its
// context, where the handlers and modules after it find it without reading
// again (reverse_proxy wraps the body, which hides inspectedBody).
func withRequestInfo(r *http.Request, limit int64) (*http.Request, *routing.Request) {
	info := requestInfo(r, limit)
	return r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info)), info
}
