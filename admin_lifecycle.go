package vastai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
		if len(parts) > 0 && (parts[0] == "operations" || parts[0] == "reconcile" || parts[0] == "offers") {
			return true, apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s", r.Method, r.URL.Path))
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
	if err := decodeBody(r, &b); err != nil {
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

// decodeBody reads an optional JSON object, refusing unknown fields, wrong
// types, trailing data and bodies over maxAdminBody, naming the field.
func decodeBody(r *http.Request, v any) error {
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
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return apiError(http.StatusBadRequest, fmt.Errorf("%s: expected %s, got %s", te.Field, te.Type, te.Value))
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return apiError(http.StatusBadRequest, fmt.Errorf("body: %s", strings.TrimPrefix(err.Error(), "json: ")))
		default:
			return apiError(http.StatusBadRequest, fmt.Errorf("body: not valid JSON: %v", err))
		}
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, errors.New("body: unexpected data after the JSON object"))
	}
	return nil
}

// offerOverrides reads filter overrides from the query string.
func offerOverrides(q map[string][]string) (*lifecycle.OfferFilter, error) {
	f := new(lifecycle.OfferFilter)
	set := false
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			set = true
			return v[0]
		}
		return ""
	}
	num := func(k string, dst *float64) error {
		if v := get(k); v != "" {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n < 0 {
				return apiError(http.StatusBadRequest, fmt.Errorf("%s: %q is not a non-negative number", k, v))
			}
			*dst = n
		}
		return nil
	}
	integer := func(k string, dst *int) error {
		if v := get(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return apiError(http.StatusBadRequest, fmt.Errorf("%s: %q is not a whole number", k, v))
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
	if c := get("countries"); c != "" {
		f.Countries = strings.Split(strings.ToUpper(c), ",")
	}
	if get("verified") == "true" {
		f.Verified = true
	}
	for k := range q {
		switch k {
		case "pool", "gpu_name", "num_gpus", "limit", "min_direct_ports", "max_dph", "min_gpu_ram", "min_reliability", "min_cuda", "countries", "verified":
		default:
			return nil, apiError(http.StatusBadRequest, fmt.Errorf("%s: unknown offer filter", k))
		}
	}
	if !set {
		return nil, nil
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
	case errors.Is(err, lifecycle.ErrUnknownPool), errors.Is(err, lifecycle.ErrOperationNotFound), errors.Is(err, lifecycle.ErrInstanceNotFound):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, lifecycle.ErrNotOwned):
		return apiError(http.StatusForbidden, fmt.Errorf("%w (not created or adopted by this gateway; add ?force=1 to destroy it anyway)", err))
	case errors.Is(err, lifecycle.ErrMaxInstances), errors.Is(err, lifecycle.ErrNoOffers):
		return apiError(http.StatusConflict, err)
	case errors.Is(err, lifecycle.ErrStopped):
		return apiError(http.StatusServiceUnavailable, err)
	default:
		return apiError(http.StatusBadGateway, err)
	}
}
