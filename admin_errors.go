package vastai

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/keys"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// Errors of the admin endpoints (/vastai/ and the dashboard's). Handlers
// return plain errors; adminErrorResponse, the one place that knows HTTP
// statuses, turns them into responses. An error that has no sentinel of
// its own is tagged with one by classify, which keeps its message.
var (
	// errNoEndpoint: the path is not one of the API's.
	errNoEndpoint = errors.New("no such endpoint")
	// errMethodNotAllowed is matched by every *methodNotAllowedError.
	errMethodNotAllowed = errors.New("method not allowed")
	// errManagerNotRunning: the lifecycle manager has not started (or has
	// stopped), so nothing can be created or destroyed.
	errManagerNotRunning = errors.New("the lifecycle manager is not running")
	// ErrNoProvisionBlock: the pool only routes; it has nothing to create
	// instances from.
	ErrNoProvisionBlock = errors.New("no provision block")
	// errBodyTooLarge: the request body is over maxAdminBody.
	errBodyTooLarge = errors.New("body too large")
	// errSamplerNotStarted: the dashboard has no history yet.
	errSamplerNotStarted = errors.New("the dashboard sampler has not started yet")
	// errInternal: a fault of the gateway itself.
	errInternal = errors.New("internal error")
)

// adminStatus is the HTTP status of an admin error.
func adminStatus(err error) int {
	switch {
	case errors.Is(err, errMethodNotAllowed):
		return http.StatusMethodNotAllowed
	case errors.Is(err, lifecycle.ErrInvalidRequest), errors.Is(err, keys.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errBodyTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errNoEndpoint), errors.Is(err, ErrUnknownPool), errors.Is(err, ErrNoHistory),
		errors.Is(err, lifecycle.ErrUnknownPool), errors.Is(err, lifecycle.ErrOperationNotFound),
		errors.Is(err, lifecycle.ErrInstanceNotFound), errors.Is(err, keys.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, lifecycle.ErrNotOwned):
		return http.StatusForbidden
	case errors.Is(err, ErrNoProvisionBlock), errors.Is(err, lifecycle.ErrBudget), errors.Is(err, keys.ErrExists),
		errors.Is(err, lifecycle.ErrMaxInstances), errors.Is(err, lifecycle.ErrNoOffers):
		return http.StatusConflict
	case errors.Is(err, ErrNotConfigured), errors.Is(err, errManagerNotRunning), errors.Is(err, lifecycle.ErrStopped),
		errors.Is(err, errLedgerNotLoaded), errors.Is(err, ErrTooManyStreams), errors.Is(err, errSamplerNotStarted),
		errors.Is(err, errKeysNotRunning):
		return http.StatusServiceUnavailable
	case errors.Is(err, errInternal):
		return http.StatusInternalServerError
	default:
		// What is left comes from the lifecycle manager's calls to vast.ai.
		return http.StatusBadGateway
	}
}

// adminErrorResponse answers an admin request that failed. A budget
// refusal is written with its figures; a 405 carries the Allow header;
// everything else goes back to Caddy's admin server as an APIError.
func adminErrorResponse(w http.ResponseWriter, err error) error {
	var be *lifecycle.BudgetError
	if errors.As(err, &be) {
		return writeJSON(w, http.StatusConflict, map[string]any{"error": be.Error(), "budget": be})
	}
	var mna *methodNotAllowedError
	if errors.As(err, &mna) {
		w.Header().Set("Allow", strings.Join(mna.allow, ", "))
	}
	return caddy.APIError{HTTPStatus: adminStatus(err), Err: err, Message: err.Error()}
}

// adminHandler adapts an admin handler to Caddy, mapping its errors.
func adminHandler(h func(http.ResponseWriter, *http.Request) error) caddy.AdminHandler {
	return caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if err := h(w, r); err != nil {
			return adminErrorResponse(w, err)
		}
		return nil
	})
}

// classified is an error tagged with a sentinel: it matches kind and
// whatever err matches, and reads as err alone.
type classified struct {
	kind, err error
}

func (c *classified) Error() string   { return c.err.Error() }
func (c *classified) Unwrap() []error { return []error{c.kind, c.err} }

// classify tags err with kind (see adminStatus) without changing its message.
func classify(kind, err error) error {
	return &classified{kind: kind, err: err}
}

// invalidf is a mistake in the request (400), its message as formatted.
func invalidf(format string, args ...any) error {
	return classify(lifecycle.ErrInvalidRequest, fmt.Errorf(format, args...))
}

// methodNotAllowedError is a method the path does not take (405, with
// Allow).
type methodNotAllowedError struct {
	method, path string
	allow        []string
}

func (e *methodNotAllowedError) Error() string {
	return fmt.Sprintf("method %s not allowed on %s; use %s", e.method, e.path, strings.Join(e.allow, " or "))
}

// Is makes errors.Is(err, errMethodNotAllowed) hold.
func (e *methodNotAllowedError) Is(target error) bool { return target == errMethodNotAllowed }
