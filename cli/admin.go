package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// maxResponse bounds what the CLI reads from the admin API.
const maxResponse = 64 << 20

var (
	// ErrUnreachable means the admin API could not be reached at all.
	ErrUnreachable = errors.New("cannot reach Caddy's admin API")
	// ErrBadAddress means the admin address does not parse.
	ErrBadAddress = errors.New("invalid admin address")
)

// APIError is an answer of the admin API with a status of 400 or more.
type APIError struct {
	// Status is the HTTP status.
	Status int
	// Message is the API's own message (its "error" field), or the body.
	Message string
	// Body is the raw answer, JSON when the API wrote JSON.
	Body []byte
}

func (e *APIError) Error() string {
	return fmt.Sprintf("the admin API answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Admin talks to a running Caddy's admin API through
// caddycmd.AdminAPIRequest, so tcp, unix socket and fd addresses all work
// as they do for `caddy stop` or `caddy trust`. It satisfies tui.API.
type Admin struct {
	// Addr is the admin listen address (e.g. "localhost:2019",
	// "unix//run/caddy-admin.sock").
	Addr string
}

// NewAdmin returns a client of the admin API at addr.
func NewAdmin(addr string) *Admin { return &Admin{Addr: addr} }

// Get fetches path and decodes the JSON answer into out (nil: discard).
func (a *Admin) Get(ctx context.Context, path string, out any) error {
	return a.Do(ctx, http.MethodGet, path, nil, out)
}

// Post sends body (nil: none) as JSON and decodes the answer into out.
func (a *Admin) Post(ctx context.Context, path string, body, out any) error {
	return a.Do(ctx, http.MethodPost, path, body, out)
}

// Delete sends a DELETE and decodes the answer into out.
func (a *Admin) Delete(ctx context.Context, path string, out any) error {
	return a.Do(ctx, http.MethodDelete, path, nil, out)
}

// Do sends one request. out may be nil, a *[]byte or *json.RawMessage
// (the raw answer), or a value to decode the JSON answer into. An answer
// of 400 or more is an *APIError carrying the API's message.
func (a *Admin) Do(ctx context.Context, method, path string, body, out any) error {
	raw, err := a.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = raw
		return nil
	case *json.RawMessage:
		*o = raw
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: the admin API's answer is not the expected JSON: %w", method, path, err)
	}
	return nil
}

type adminResult struct {
	body []byte
	err  error
}

// do runs AdminAPIRequest, which takes no context, in a goroutine so that
// a hung admin endpoint cannot hold the caller past ctx.
func (a *Admin) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding the request body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	done := make(chan adminResult, 1)
	go func() {
		resp, err := caddycmd.AdminAPIRequest(a.Addr, method, path, nil, rd)
		if err != nil {
			done <- adminResult{err: a.classify(err)}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
		if err != nil {
			err = fmt.Errorf("%w at %s: reading the answer to %s %s: %v", ErrUnreachable, a.Addr, method, path, err)
		}
		done <- adminResult{body: b, err: err}
	}()
	select {
	case r := <-done:
		return r.body, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%s %s at %s: no answer: %w", method, path, a.Addr, ctx.Err())
	}
}

// statusErrRe matches how AdminAPIRequest reports an answer >= 400.
var statusErrRe = regexp.MustCompile(`(?s)^caddy responded with error: HTTP (\d{3}): (.*)$`)

// classify turns AdminAPIRequest's flat errors back into an *APIError,
// ErrBadAddress or ErrUnreachable.
func (a *Admin) classify(err error) error {
	msg := err.Error()
	if m := statusErrRe.FindStringSubmatch(msg); m != nil {
		status, _ := strconv.Atoi(m[1])
		return newAPIError(status, []byte(m[2]))
	}
	if strings.HasPrefix(msg, "invalid admin address") || strings.HasPrefix(msg, "making request:") {
		return fmt.Errorf("%w %q: use host:port, unix//path/to/socket or fd/N", ErrBadAddress, a.Addr)
	}
	return fmt.Errorf("%w at %s: is Caddy running? (--address or --config to choose another): %v", ErrUnreachable, a.Addr, err)
}

func newAPIError(status int, body []byte) *APIError {
	e := &APIError{Status: status, Body: bytes.TrimSpace(body)}
	var m struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(e.Body, &m) == nil && m.Error != "" {
		e.Message = m.Error
	} else {
		e.Message = string(e.Body)
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}
