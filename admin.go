package vastai

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves /vastai/ on Caddy's admin endpoint. Caddy instantiates
// admin modules anew for every config load, so it always talks to the
// current config's app. Responses never contain tokens or API keys.
type adminAPI struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.vastai",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision finds the vastai app, if one is configured.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	// Without a vastai app the routes answer with a clear error instead of
	// failing the whole config load.
	a.app, _ = lookupApp(ctx)
	return nil
}

// Routes returns the admin routes.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/vastai/", Handler: adminHandler(a.handleAPIEndpoints)}}
}

// adminEndpoint is one method on one resource of /vastai/.
type adminEndpoint struct {
	// shape is the path below /vastai/ with the id segment as "*".
	shape  string
	method string
	// handle serves the request; arg is the id segment ("" if none).
	handle func(a *adminAPI, w http.ResponseWriter, r *http.Request, arg string) error
}

// adminEndpoints is the whole /vastai/ API. A path listed here with
// another method is a 405 naming the methods it takes; a path not listed
// is a 404.
var adminEndpoints = []adminEndpoint{
	{"instances", http.MethodGet, (*adminAPI).handleInstances},
	{"instances/*", http.MethodGet, (*adminAPI).handleInstance},
	{"instances/*", http.MethodDelete, (*adminAPI).handleDestroy},   // admin_lifecycle.go
	{"instances/*/drain", http.MethodPost, (*adminAPI).handleDrain}, // admin_lifecycle.go
	{"pools", http.MethodGet, (*adminAPI).handlePools},
	{"pools/*", http.MethodGet, (*adminAPI).handlePool},
	{"pools/*/instances", http.MethodPost, (*adminAPI).handleProvision}, // admin_lifecycle.go
	{"operations", http.MethodGet, (*adminAPI).handleOperations},        // admin_lifecycle.go
	{"operations/*", http.MethodGet, (*adminAPI).handleOperation},       // admin_lifecycle.go
	{"reconcile", http.MethodPost, (*adminAPI).handleReconcile},         // admin_lifecycle.go
	{"offers", http.MethodGet, (*adminAPI).handleOffers},                // admin_lifecycle.go
	{"status", http.MethodGet, (*adminAPI).handleStatus},
	{"costs", http.MethodGet, (*adminAPI).handleCosts}, // costs.go
}

// handleAPIEndpoints routes a request of /vastai/ to its handler.
func (a *adminAPI) handleAPIEndpoints(w http.ResponseWriter, r *http.Request) error {
	if a.app == nil || a.app.state == nil {
		return ErrNotConfigured
	}
	shape, arg := routeShape(r.URL.Path)
	var allow []string
	for _, e := range adminEndpoints {
		if e.shape != shape {
			continue
		}
		if e.method == r.Method {
			return e.handle(a, w, r, arg)
		}
		allow = append(allow, e.method)
	}
	if len(allow) > 0 {
		sort.Strings(allow)
		return &methodNotAllowedError{method: r.Method, path: r.URL.Path, allow: allow}
	}
	return fmt.Errorf("%w: %s %s (see /vastai/instances, /vastai/pools, /vastai/operations, /vastai/offers, /vastai/status)", errNoEndpoint, r.Method, r.URL.Path)
}

// routeShape splits a /vastai/ path into its shape (the id segment of
// instances, pools and operations replaced by "*") and that id.
func routeShape(path string) (shape, arg string) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(path, "/vastai"), "/"), "/")
	if len(parts) >= 2 && (parts[0] == "pools" || parts[0] == "operations" || parts[0] == "instances" || parts[0] == "keys") {
		arg, parts[1] = parts[1], "*"
	}
	return strings.Join(parts, "/"), arg
}

// handleInstances answers GET /vastai/instances: every instance of the
// account the watcher sees.
func (a *adminAPI) handleInstances(w http.ResponseWriter, r *http.Request, _ string) error {
	snap := a.app.state.watcher.Snapshot()
	out := make([]adminapi.Instance, 0, len(snap.Members))
	for _, m := range snap.Members {
		out = append(out, a.instanceView(m))
	}
	return writeJSON(w, http.StatusOK, out)
}

// handleInstance answers GET /vastai/instances/{id}.
func (a *adminAPI) handleInstance(w http.ResponseWriter, r *http.Request, arg string) error {
	id, err := instanceID(arg)
	if err != nil {
		return err
	}
	m, ok := a.app.state.watcher.Snapshot().Member(id)
	if !ok {
		return classify(lifecycle.ErrInstanceNotFound, fmt.Errorf("instance %d is not known", id))
	}
	return writeJSON(w, http.StatusOK, a.instanceView(m))
}

// instanceID reads the id segment of /vastai/instances/{id}.
func instanceID(arg string) (int64, error) {
	id, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || id <= 0 {
		return 0, invalidf("instance id %q is not a positive integer", arg)
	}
	return id, nil
}

// handlePools answers GET /vastai/pools: every configured pool, by name.
func (a *adminAPI) handlePools(w http.ResponseWriter, r *http.Request, _ string) error {
	snap := a.app.state.watcher.Snapshot()
	names := make([]string, 0, len(snap.Pools))
	for n := range snap.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	return writeJSON(w, http.StatusOK, a.poolViews(snap, names...))
}

// handlePool answers GET /vastai/pools/{name}.
func (a *adminAPI) handlePool(w http.ResponseWriter, r *http.Request, name string) error {
	snap := a.app.state.watcher.Snapshot()
	if _, ok := snap.Pools[name]; !ok {
		return classify(ErrUnknownPool, fmt.Errorf("pool %q is not configured", name))
	}
	return writeJSON(w, http.StatusOK, a.poolViews(snap, name)[0])
}

// handleStatus answers GET /vastai/status: the watcher's health.
func (a *adminAPI) handleStatus(w http.ResponseWriter, r *http.Request, _ string) error {
	snap := a.app.state.watcher.Snapshot()
	v := newStatusView(snap, a.app.state.watcher.Running(), time.Now())
	addProbeFailing(&v, a.app.state.probeFailingPools(snap))
	spend := spendPerHour(snap)
	v.SpendPerHour = &spend
	return writeJSON(w, http.StatusOK, v)
}

func newInstanceView(m fleet.Member) adminapi.Instance {
	in := m.Instance
	v := adminapi.Instance{
		ID: in.ID, Label: in.Label, IntendedStatus: in.IntendedStatus, StatusMsg: in.StatusMsg,
		Routable: m.Routable, Reason: m.Reason, GPUName: in.GPUName, NumGPUs: in.NumGPUs,
		DPHTotal: in.DPHTotal, PublicIPAddr: in.PublicIPAddr, MachineID: in.MachineID,
		FirstSeen: m.FirstSeen, LastSeen: m.LastSeen, MissedListings: m.Misses,
	}
	if m.Pool != "" {
		v.Pool = &m.Pool
	}
	v.State, v.StateSince, v.Ready = m.State, timePtr(m.StateSince), m.State == fleet.StateReady
	if p := m.LastProbe(); p != nil {
		v.LastProbe = &adminapi.Probe{Time: p.Time, Status: p.Status, LatencyMS: float64(p.Latency.Microseconds()) / 1000, Error: p.Error, OK: p.OK}
	}
	if in.ActualStatus != "" {
		v.ActualStatus = &in.ActualStatus
	}
	if m.Upstream != "" {
		v.Upstream = &m.Upstream
	}
	if in.StartDate > 0 {
		t := time.Unix(0, int64(in.StartDate*1e9)).UTC()
		v.StartDate = &t
	}
	_, v.Accrued = instanceCost(&in, time.Now())
	return v
}

// instanceView adds what the SSH side knows (GPU figures, connection path)
// to the snapshot's view of an instance.
func (a *adminAPI) instanceView(m fleet.Member) adminapi.Instance {
	v := newInstanceView(m)
	a.app.state.addTraffic(&v)
	a.app.state.addModels(&v)
	rt := a.app.state.ssh.Load()
	if rt == nil || m.Pool == "" {
		return v
	}
	st := rt.pool.Status(m.Instance.ID)
	v.SSH = &adminapi.SSH{Path: st.Path, LastError: st.LastError, ConnectedSince: timePtr(st.ConnectedSince), Reconnects: st.Reconnects}
	if sample, ok := rt.collector.Sample(m.Instance.ID); ok {
		v.GPUError = sample.Err
		v.GPUs = make([]adminapi.GPU, 0, len(sample.GPUs))
		for _, g := range sample.GPUs {
			v.GPUs = append(v.GPUs, adminapi.GPU{GPU: g, CollectedAt: sample.CollectedAt})
		}
	}
	return v
}

// poolViews adds the provisioning figures to the snapshot's view of each
// named pool; the lifecycle report is computed once for all of them.
func (a *adminAPI) poolViews(snap *fleet.Snapshot, names ...string) []adminapi.Pool {
	provisioning := map[string]lifecycle.PoolStatus{}
	if rt := a.app.state.lifecycle.Load(); rt != nil {
		for _, ps := range rt.mgr.Pools().Pools {
			if ps.Configured {
				provisioning[ps.Name] = ps
			}
		}
	}
	out := make([]adminapi.Pool, 0, len(names))
	for _, name := range names {
		v := newPoolView(snap, name)
		if ps, ok := provisioning[name]; ok {
			v.Provisioning = &ps
		}
		v.Autoscale = a.app.state.autoscaleView(name) // wire_autoscale.go
		out = append(out, v)
	}
	return out
}

func newPoolView(snap *fleet.Snapshot, name string) adminapi.Pool {
	pv := snap.Pools[name]
	now := time.Now()
	v := adminapi.Pool{Name: name, Label: pv.Spec.Label, Prefix: pv.Spec.LabelPrefix, Port: pv.Spec.Port, Members: []int64{}, Routable: []int64{}, States: map[string]int{}}
	if v.Port == 0 {
		v.Port = fleet.DefaultPort
	}
	for _, m := range snap.Members {
		if m.Pool != name {
			continue
		}
		v.Members = append(v.Members, m.Instance.ID)
		v.States[m.State]++
		rate, accrued := instanceCost(&m.Instance, now)
		v.SpendRate += rate
		v.Accrued += accrued
	}
	for _, t := range pv.Targets {
		v.Routable = append(v.Routable, t.ID)
	}
	rate := v.SpendRate
	v.SpendPerHour = &rate
	return v
}

// instanceCost returns an instance's current rate (ledger.Rate, the one
// billing rule) and what it has cost since vast.ai's start_date at that
// rate.
func instanceCost(in *vastclient.Instance, now time.Time) (rate, accrued float64) {
	rate = ledger.Rate(in)
	if in.StartDate > 0 {
		if secs := float64(now.UnixNano())/1e9 - in.StartDate; secs > 0 {
			accrued = rate * secs / 3600
		}
	}
	return rate, accrued
}

func newStatusView(snap *fleet.Snapshot, running int, now time.Time) adminapi.Status {
	p := snap.Poll
	v := adminapi.Status{
		Generation: snap.Generation, LastSuccess: timePtr(p.LastSuccess), LastAttempt: timePtr(p.LastAttempt),
		LastError: p.LastError, ListingOK: !p.NeverSucceeded() && p.ConsecutiveFailures == 0,
		NeverSucceeded: p.NeverSucceeded(), AuthError: p.AuthError, ConsecutiveFailures: p.ConsecutiveFailures,
		StaleSeconds: p.Stale(now).Seconds(), ListingPages: p.Pages, ListingLabels: p.LabelFilter, SkippedRows: p.Skipped,
		Instances: len(snap.Members), WatchersRunning: running,
	}
	if !p.NeverSucceeded() {
		secs := p.ListingDuration.Seconds()
		v.ListingSeconds = &secs
	}
	if age, ok := p.DataAge(now); ok {
		secs := age.Seconds()
		v.DataAgeSeconds = &secs
	}
	switch {
	case p.AuthError:
		v.Problem = "vast.ai rejected the API key (auth_error): fix api_key; nothing is listed until then"
	case p.NeverSucceeded() && p.ConsecutiveFailures > 0:
		v.Problem = "no listing of the vast.ai account has succeeded yet, so no instance is routed (see last_error)"
	case p.ConsecutiveFailures > 0:
		v.Problem = "listings fail; routing uses the last successful listing (see last_error and stale_seconds)"
	}
	return v
}

// addProbeFailing names the pools whose every instance fails its probe;
// a listing problem, when there is one, stays the headline.
func addProbeFailing(v *adminapi.Status, pools []string) {
	v.ProbeFailingPools = pools
	if len(pools) > 0 && v.Problem == "" {
		v.Problem = fmt.Sprintf("every instance of pool(s) %s fails its health probe: check the health block (path, model, token); they are kept, not replaced", strings.Join(pools, ", "))
	}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
