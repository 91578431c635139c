package vastai

import (
	"bytes"
	"context"
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

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// maxAdminBody bounds request bodies of the admin API.
const maxAdminBody = 64 << 10

// The provisioning side of the admin API (routed by adminEndpoints):
//
//	POST   /vastai/pools/{pool}/instances   {"offer_id": N, "count": N} (both optional) → 202 operations
//	GET    /vastai/operations               → operations, newest first
//	GET    /vastai/operations/{id}          → one operation with its attempts
//	DELETE /vastai/instances/{id}[?force=1] → 202 verified destroy
//	POST   /vastai/instances/{id}/drain[?force=1] → 202 drain, then verified destroy (allowed where DELETE is)
//	POST   /vastai/reconcile                → the reconciliation report
//	GET    /vastai/offers?pool=NAME[&gpu_name=..&num_gpus=..&max_dph=..&min_gpu_ram=..&min_reliability=..&countries=US,CA&limit=..]

// manager is the running lifecycle manager.
func (a *adminAPI) manager() (*lifecycle.Manager, error) {
	rt := a.app.state.lifecycle.Load()
	if rt == nil {
		return nil, errManagerNotRunning
	}
	return rt.mgr, nil
}

// handleProvision answers POST /vastai/pools/{pool}/instances.
func (a *adminAPI) handleProvision(w http.ResponseWriter, r *http.Request, pool string) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	if err := a.provisionedPool(pool); err != nil {
		return err
	}
	req, err := decodeProvision(r)
	if err != nil {
		return err
	}
	ops, err := mgr.Provision(r.Context(), pool, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, map[string]any{"operations": ops})
}

// handleOperations answers GET /vastai/operations.
func (a *adminAPI) handleOperations(w http.ResponseWriter, r *http.Request, _ string) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, mgr.Operations())
}

// handleOperation answers GET /vastai/operations/{id}.
func (a *adminAPI) handleOperation(w http.ResponseWriter, r *http.Request, id string) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	op, err := mgr.Operation(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, op)
}

// handleDestroy answers DELETE /vastai/instances/{id}[?force=1].
func (a *adminAPI) handleDestroy(w http.ResponseWriter, r *http.Request, arg string) error {
	return a.removeInstance(w, r, arg, (*lifecycle.Manager).Destroy, (*lifecycle.Manager).ForceDestroy)
}

// handleDrain answers POST /vastai/instances/{id}/drain[?force=1]: drain
// and DELETE are allowed on exactly the same instances.
func (a *adminAPI) handleDrain(w http.ResponseWriter, r *http.Request, arg string) error {
	return a.removeInstance(w, r, arg, (*lifecycle.Manager).Drain, (*lifecycle.Manager).ForceDrain)
}

// removeFunc is Manager.Destroy, Drain or their forced variants.
type removeFunc = func(m *lifecycle.Manager, ctx context.Context, id int64, reason string) (*lifecycle.Operation, error)

// removeInstance destroys or drains an instance; forced is used for one
// the gateway does not own when the caller may take it anyway.
func (a *adminAPI) removeInstance(w http.ResponseWriter, r *http.Request, arg string, remove, forced removeFunc) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	id, err := instanceID(arg)
	if err != nil {
		return err
	}
	force, err := forceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	op, err := remove(mgr, ctx, id, "admin API")
	// An instance of a configured pool was put there by the operator's own
	// selector; naming it here is explicit enough.
	m, pooled := a.app.state.watcher.Snapshot().Member(id)
	if errors.Is(err, lifecycle.ErrNotOwned) && ((pooled && m.Pool != "") || force) {
		op, err = forced(mgr, ctx, id, "admin API (force)")
	}
	if errors.Is(err, lifecycle.ErrNotOwned) {
		return fmt.Errorf("%w; add ?force=1 to destroy it anyway", err)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, op)
}

// handleReconcile answers POST /vastai/reconcile with the report, also
// when reconciliation failed part of the way.
func (a *adminAPI) handleReconcile(w http.ResponseWriter, r *http.Request, _ string) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	rep, err := mgr.Reconcile(r.Context())
	if err != nil {
		return writeJSON(w, adminStatus(err), map[string]any{"error": err.Error(), "report": rep})
	}
	return writeJSON(w, http.StatusOK, rep)
}

// handleOffers answers GET /vastai/offers?pool=NAME[&filters].
func (a *adminAPI) handleOffers(w http.ResponseWriter, r *http.Request, _ string) error {
	mgr, err := a.manager()
	if err != nil {
		return err
	}
	q := r.URL.Query()
	pool := q.Get("pool")
	if pool == "" {
		return invalidf("pool: the pool query parameter is required")
	}
	if err := a.provisionedPool(pool); err != nil {
		return err
	}
	overrides, err := offerOverrides(q)
	if err != nil {
		return err
	}
	offers, err := mgr.Offers(r.Context(), pool, overrides)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, offers)
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
		return false, invalidf("force: %q is not 1 or 0", strings.Join(v, ","))
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
			return req, invalidf("count: %d is out of range 1-%d", *b.Count, maxProvisionCount)
		}
		req.Count = *b.Count
	}
	if b.OfferID != nil {
		if *b.OfferID < 0 {
			return req, invalidf("offer_id: %d is not a valid offer id", *b.OfferID)
		}
		req.OfferID = *b.OfferID
	}
	return req, nil
}

// provisionedPool answers 404 for a pool that is not configured and 409
// for one that only routes (it has no provision block to create from).
func (a *adminAPI) provisionedPool(name string) error {
	p, ok := a.app.Pools[name]
	if !ok {
		return fmt.Errorf("%w %q (configured pools: %s)", ErrUnknownPool, name, a.app.poolNames())
	}
	if p == nil || p.Provision == nil {
		return classify(ErrNoProvisionBlock, fmt.Errorf("pool %q has no provision block: it only routes to instances created elsewhere", name))
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
		return invalidf("reading the body: %w", err)
	}
	if len(body) > maxAdminBody {
		return classify(errBodyTooLarge, fmt.Errorf("body: larger than %d bytes", maxAdminBody))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	invalid := func(err error) error {
		return invalidf("body: not valid JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return invalid(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalidf("the body must be a JSON object like %s", example)
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
			return invalidf("body: %q appears twice", key)
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
		return invalidf("body: unexpected data after the JSON object")
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
		return invalidf("body: unknown field %q (the fields are %s)", key, strings.Join(names, ", "))
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			want := te.Type.String()
			switch te.Type.Kind() {
			case reflect.Int, reflect.Int64:
				want = "a whole number"
			}
			return invalidf("%s: expected %s, got %s", key, want, te.Value)
		}
		return invalidf("%s: %v", key, err)
	}
	return nil
}

// offerQueryKeys are the query parameters of GET /vastai/offers.
var offerQueryKeys = []string{"pool", "gpu_name", "num_gpus", "limit", "min_direct_ports", "max_dph", "min_gpu_ram", "min_reliability", "min_cuda", "countries", "verified"}

// offerOverrides reads filter overrides from the query string. Every value
// must be well-formed and given once: a filter that is silently dropped
// would show offers the caller did not ask for.
func offerOverrides(q map[string][]string) (*lifecycle.OfferFilter, error) {
	bad := invalidf
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
	if c := get("countries"); c != "" {
		f.Countries = strings.Split(strings.ToUpper(c), ",")
	}
	if v := get("verified"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, bad("verified: %q is not true or false", v)
		}
		f.Verified = b
	}
	// The same checks, in the same words, as a configured filter.
	if err := f.Validate(); err != nil {
		return nil, bad("%v", err)
	}
	return f, nil
}
