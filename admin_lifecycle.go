package vastai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// maxAdminBody bounds request bodies of the admin API.
const maxAdminBody = 64 << 10

// serveLifecycle handles the provisioning side of the admin API:
//
//	POST   /vastai/pools/{pool}/instances   {"offer_id": N, "count": N} (both optional) → 202 operations
//	GET    /vastai/operations               → operations, newest first
//	GET    /vastai/operations/{id}          → one operation with its attempts
//	DELETE /vastai/instances/{id}[?force=1] → 202 verified destroy
//	POST   /vastai/instances/{id}/drain[?force=1] → 202 drain, then verified destroy (allowed where DELETE is)
//	POST   /vastai/reconcile                → the reconciliation report
//	GET    /vastai/offers?pool=NAME[&gpu_name=..&num_gpus=..&max_dph=..&min_gpu_ram=..&min_reliability=..&countries=US,CA&limit=..]
//
// It reports handled=false for the read-only routes served by serve.
func (a *adminAPI) serveLifecycle(w http.ResponseWriter, r *http.Request, parts []string, snap *fleet.Snapshot) (bool, error) {
	route := r.Method + " " + strings.Join(routeShape(parts), "/")
	switch route {
	case "POST pools/*/instances", "GET operations", "GET operations/*", "DELETE instances/*",
		"POST instances/*/drain", "POST reconcile", "GET offers":
	default:
		// A known path with a method it does not take is a 405; what serve
		// does not know either is a 404 there.
		if allow, known := adminRoutes[strings.Join(routeShape(parts), "/")]; known && !slices.Contains(allow, r.Method) {
			return true, methodNotAllowed(r, allow)
		}
		return false, nil
	}
	rt := a.app.state.lifecycle.Load()
	if rt == nil {
		return true, apiError(http.StatusServiceUnavailable, errors.New("the lifecycle manager is not running"))
	}
	mgr := rt.mgr
	ctx := r.Context()

	switch route {
	case "POST pools/*/instances":
		if err := a.provisionedPool(parts[1]); err != nil {
			return true, err
		}
		req, err := decodeProvision(r)
		if err != nil {
			return true, err
		}
		ops, err := mgr.Provision(ctx, parts[1], req)
		if err != nil {
			return true, lifecycleError(w, err)
		}
		return true, writeJSON(w, http.StatusAccepted, map[string]any{"operations": ops})

	case "GET operations":
		return true, writeJSON(w, http.StatusOK, mgr.Operations())

	case "GET operations/*":
		op, err := mgr.Operation(ctx, parts[1])
		if err != nil {
			return true, lifecycleError(w, err)
		}
		return true, writeJSON(w, http.StatusOK, op)

	case "DELETE instances/*", "POST instances/*/drain":
		id, err := strconv.ParseInt(parts[1], 10, 64)
		if err != nil || id <= 0 {
			return true, apiError(http.StatusBadRequest, fmt.Errorf("instance id %q is not a positive integer", parts[1]))
		}
		force, err := forceParam(r)
		if err != nil {
			return true, err
		}
		// Drain and DELETE are allowed on exactly the same instances.
		destroy, forced := mgr.Destroy, mgr.ForceDestroy
		if r.Method == http.MethodPost {
			destroy, forced = mgr.Drain, mgr.ForceDrain
		}
		op, err := destroy(ctx, id, "admin API")
		// An instance of a configured pool was put there by the
		// operator's own selector; naming it here is explicit enough.
		m, pooled := snap.Member(id)
		if errors.Is(err, lifecycle.ErrNotOwned) && ((pooled && m.Pool != "") || force) {
			op, err = forced(ctx, id, "admin API (force)")
		}
		if err != nil {
			return true, lifecycleError(w, err)
		}
		return true, writeJSON(w, http.StatusAccepted, op)

	case "POST reconcile":
		rep, err := mgr.Reconcile(ctx)
		if err != nil {
			status := http.StatusBadGateway
			if errors.Is(err, lifecycle.ErrStopped) {
				status = http.StatusServiceUnavailable
			}
			return true, writeJSON(w, status, map[string]any{"error": err.Error(), "report": rep})
		}
		return true, writeJSON(w, http.StatusOK, rep)

	case "GET offers":
		q := r.URL.Query()
		pool := q.Get("pool")
		if pool == "" {
			return true, apiError(http.StatusBadRequest, errors.New("pool: the pool query parameter is required"))
		}
		if err := a.provisionedPool(pool); err != nil {
			return true, err
		}
		overrides, err := offerOverrides(q)
		if err != nil {
			return true, err
		}
		offers, err := mgr.Offers(ctx, pool, overrides)
		if err != nil {
			return true, lifecycleError(w, err)
		}
		return true, writeJSON(w, http.StatusOK, offers)
	}
	return false, nil
}

// forceParam reads ?force=: 1/true forces, 0/false or absent does not,
// anything else is refused rather than silently ignored.
func forceParam(r *http.Request) (bool, error) {
	q := r.URL.Query()
	v, ok := q["force"]
	if !ok {
		return false, nil
	}
	b, err := strconv.ParseBool(v[0])
	if err != nil || len(v) > 1 {
		return false, apiError(http.StatusBadRequest, fmt.Errorf("force: %q is not 1 or 0", strings.Join(v, ",")))
	}
	return b, nil
}

// provisionBody is the body of POST /vastai/pools/{pool}/instances. The
// fields are pointers so that an absent count (1) differs from an explicit
// 0, which is refused rather than rounded up to a rental.
type provisionBody struct {
	OfferID *int64 `json:"offer_id"`
	Count   *int   `json:"count"`
}

// maxProvisionCount bounds one provisioning request (the lifecycle
// manager's own limit).
const maxProvisionCount = 32

func decodeProvision(r *http.Request) (lifecycle.ProvisionRequest, error) {
	var b provisionBody
	if err := decodeObject(r, `{"count": 1}`, map[string]any{"offer_id": &b.OfferID, "count": &b.Count}); err != nil {
		return lifecycle.ProvisionRequest{}, err
	}
	req := lifecycle.ProvisionRequest{Count: 1}
	if b.Count != nil {
		if *b.Count < 1 || *b.Count > maxProvisionCount {
			return req, apiError(http.StatusBadRequest, fmt.Errorf("count: %d is out of range 1-%d", *b.Count, maxProvisionCount))
		}
		req.Count = *b.Count
	}
	if b.OfferID != nil {
		if *b.OfferID < 0 {
			return req, apiError(http.StatusBadRequest, fmt.Errorf("offer_id: %d is not a valid offer id", *b.OfferID))
		}
		req.OfferID = *b.OfferID
	}
	return req, nil
}

// routeShape replaces path segments that are ids by "*".
func routeShape(parts []string) []string {
	out := append([]string(nil), parts...)
	if len(out) >= 2 && (out[0] == "pools" || out[0] == "operations" || out[0] == "instances") {
		out[1] = "*"
	}
	return out
}

// adminRoutes lists every path shape of the admin API with its methods,
// so that a wrong method gets 405 with an Allow header and an unknown path
// 404, whichever handler would serve the path.
var adminRoutes = map[string][]string{
	"instances": {"GET"}, "instances/*": {"DELETE", "GET"}, "instances/*/drain": {"POST"},
	"pools": {"GET"}, "pools/*": {"GET"}, "pools/*/instances": {"POST"},
	"operations": {"GET"}, "operations/*": {"GET"},
	"reconcile": {"POST"}, "offers": {"GET"}, "status": {"GET"},
}

// methodNotAllowedError is a 405; serve turns it into the Allow header.
type methodNotAllowedError struct {
	method, path string
	allow        []string
}

func (e *methodNotAllowedError) Error() string {
	return fmt.Sprintf("method %s not allowed on %s; use %s", e.method, e.path, strings.Join(e.allow, " or "))
}

func methodNotAllowed(r *http.Request, allow []string) error {
	return apiError(http.StatusMethodNotAllowed, &methodNotAllowedError{method: r.Method, path: r.URL.Path, allow: allow})
}

// provisionedPool answers 404 for a pool that is not configured and 409
// for one that only routes (it has no provision block to create from).
func (a *adminAPI) provisionedPool(name string) error {
	p, ok := a.app.Pools[name]
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("%w %q (configured pools: %s)", ErrUnknownPool, name, a.app.poolNames()))
	}
	if p == nil || p.Provision == nil {
		return apiError(http.StatusConflict, fmt.Errorf("pool %q has no provision block: it only routes to instances created elsewhere", name))
	}
	return nil
}

// decodeObject reads an optional JSON object body into fields (name →
// pointer), refusing unknown or repeated fields, wrong types, trailing
// data and bodies over maxAdminBody, naming the field. Names must match
// exactly: encoding/json alone matches them case-insensitively, so
// {"COUNT": 40} would set count. example is shown when the body is not an
// object at all.
func decodeObject(r *http.Request, example string, fields map[string]any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		return apiError(http.StatusBadRequest, fmt.Errorf("reading the body: %w", err))
	}
	if len(body) > maxAdminBody {
		return apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("body: larger than %d bytes", maxAdminBody))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	invalid := func(err error) error {
		return apiError(http.StatusBadRequest, fmt.Errorf("body: not valid JSON: %v", err))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return invalid(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return apiError(http.StatusBadRequest, fmt.Errorf("the body must be a JSON object like %s", example))
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalid(err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return invalid(err)
		}
		if seen[key] {
			return apiError(http.StatusBadRequest, fmt.Errorf("body: %q appears twice", key))
		}
		seen[key] = true
		if err := decodeField(key, raw, fields); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return invalid(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return apiError(http.StatusBadRequest, errors.New("body: unexpected data after the JSON object"))
	}
	return nil
}

func decodeField(key string, raw json.RawMessage, fields map[string]any) error {
	dst, ok := fields[key]
	if !ok {
		names := make([]string, 0, len(fields))
		for n := range fields {
			names = append(names, n)
		}
		sort.Strings(names)
		return apiError(http.StatusBadRequest, fmt.Errorf("body: unknown field %q (the fields are %s)", key, strings.Join(names, ", ")))
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			want := te.Type.String()
			switch te.Type.Kind() {
			case reflect.Int, reflect.Int64:
				want = "a whole number"
			}
			return apiError(http.StatusBadRequest, fmt.Errorf("%s: expected %s, got %s", key, want, te.Value))
		}
		return apiError(http.StatusBadRequest, fmt.Errorf("%s: %v", key, err))
	}
	return nil
}

// offerQueryKeys are the query parameters of GET /vastai/offers.
var offerQueryKeys = []string{"pool", "gpu_name", "num_gpus", "limit", "min_direct_ports", "max_dph", "min_gpu_ram", "min_reliability", "min_cuda", "countries", "verified"}

// offerOverrides reads filter overrides from the query string. Every value
// must be well-formed and given once: a filter that is silently dropped
// would show offers the caller did not ask for.
func offerOverrides(q map[string][]string) (*lifecycle.OfferFilter, error) {
	bad := func(format string, args ...any) error {
		return apiError(http.StatusBadRequest, fmt.Errorf(format, args...))
	}
	for k, v := range q {
		switch {
		case !slices.Contains(offerQueryKeys, k):
			return nil, bad("%s: unknown offer filter (the filters are %s)", k, strings.Join(offerQueryKeys[1:], ", "))
		case len(v) > 1:
			return nil, bad("%s: given %d times", k, len(v))
		case strings.TrimSpace(v[0]) == "":
			return nil, bad("%s: empty value", k)
		}
	}
	if len(q) == 1 {
		return nil, nil // only pool
	}
	f := new(lifecycle.OfferFilter)
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	num := func(k string, dst *float64) error {
		if v := get(k); v != "" {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n < 0 || math.IsInf(n, 0) || math.IsNaN(n) {
				return bad("%s: %q is not a non-negative number", k, v)
			}
			*dst = n
		}
		return nil
	}
	integer := func(k string, dst *int) error {
		if v := get(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return bad("%s: %q is not a whole number", k, v)
			}
			*dst = n
		}
		return nil
	}
	f.GPUName = get("gpu_name")
	for _, err := range []error{
		integer("num_gpus", &f.NumGPUs), integer("limit", &f.Limit), integer("min_direct_ports", &f.MinDirectPorts),
		num("max_dph", &f.MaxDPH), num("min_gpu_ram", &f.MinGPURAMGB), num("min_reliability", &f.MinReliability), num("min_cuda", &f.MinCUDA),
	} {
		if err != nil {
			return nil, err
		}
	}
	if f.MinReliability > 1 {
		return nil, bad("min_reliability: %v is above 1", f.MinReliability)
	}
	if c := get("countries"); c != "" {
		for _, cc := range strings.Split(strings.ToUpper(c), ",") {
			if len(cc) != 2 || cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z' {
				return nil, bad("countries: %q is not a two-letter country code", cc)
			}
			f.Countries = append(f.Countries, cc)
		}
	}
	if v := get("verified"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, bad("verified: %q is not true or false", v)
		}
		f.Verified = b
	}
	return f, nil
}

// lifecycleError maps the manager's errors to statuses. Budget refusals are
// written with their figures.
func lifecycleError(w http.ResponseWriter, err error) error {
	var be *lifecycle.BudgetError
	switch {
	case errors.As(err, &be):
		return writeJSON(w, http.StatusConflict, map[string]any{"error": be.Error(), "budget": be})
	case errors.Is(err, lifecycle.ErrInvalidRequest):
		return apiError(http.StatusBadRequest, err)
	case errors.Is(err, lifecycle.ErrUnknownPool), errors.Is(err, lifecycle.ErrOperationNotFound), errors.Is(err, lifecycle.ErrInstanceNotFound):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, lifecycle.ErrNotOwned):
		return apiError(http.StatusForbidden, fmt.Errorf("%w; add ?force=1 to destroy it anyway", err))
	case errors.Is(err, lifecycle.ErrMaxInstances), errors.Is(err, lifecycle.ErrNoOffers):
		return apiError(http.StatusConflict, err)
	case errors.Is(err, lifecycle.ErrStopped):
		return apiError(http.StatusServiceUnavailable, err)
	default:
		return apiError(http.StatusBadGateway, err)
	}
}
