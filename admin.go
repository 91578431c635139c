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

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/gpumetrics"
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
	return []caddy.AdminRoute{{Pattern: "/vastai/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	if a.app == nil || a.app.state == nil {
		return apiError(http.StatusServiceUnavailable, ErrNotConfigured)
	}
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/vastai"), "/"), "/")
	snap := a.app.state.watcher.Snapshot()
	if handled, err := a.serveLifecycle(w, r, parts, snap); handled {
		return err
	}
	switch {
	case len(parts) == 1 && parts[0] == "instances":
		if err := onlyGET(r); err != nil {
			return err
		}
		out := make([]instanceView, 0, len(snap.Members))
		for _, m := range snap.Members {
			out = append(out, a.instanceView(m))
		}
		return writeJSON(w, http.StatusOK, out)

	case len(parts) == 2 && parts[0] == "instances":
		if err := onlyGET(r); err != nil {
			return err
		}
		id, err := strconv.ParseInt(parts[1], 10, 64)
		if err != nil || id <= 0 {
			return apiError(http.StatusBadRequest, fmt.Errorf("instance id %q is not a positive integer", parts[1]))
		}
		m, ok := snap.Member(id)
		if !ok {
			return apiError(http.StatusNotFound, fmt.Errorf("instance %d is not known", id))
		}
		return writeJSON(w, http.StatusOK, a.instanceView(m))

	case len(parts) == 1 && parts[0] == "pools":
		if err := onlyGET(r); err != nil {
			return err
		}
		names := make([]string, 0, len(snap.Pools))
		for n := range snap.Pools {
			names = append(names, n)
		}
		sort.Strings(names)
		return writeJSON(w, http.StatusOK, a.poolViews(snap, names...))

	case len(parts) == 2 && parts[0] == "pools":
		if err := onlyGET(r); err != nil {
			return err
		}
		if _, ok := snap.Pools[parts[1]]; !ok {
			return apiError(http.StatusNotFound, fmt.Errorf("pool %q is not configured", parts[1]))
		}
		return writeJSON(w, http.StatusOK, a.poolViews(snap, parts[1])[0])

	case len(parts) == 1 && parts[0] == "costs":
		return a.serveCosts(w, r, snap) // costs.go

	case len(parts) == 1 && parts[0] == "status":
		if err := onlyGET(r); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, statusView{
			Generation:          snap.Generation,
			LastSuccess:         timePtr(snap.Poll.LastSuccess),
			LastAttempt:         timePtr(snap.Poll.LastAttempt),
			LastError:           snap.Poll.LastError,
			ConsecutiveFailures: snap.Poll.ConsecutiveFailures,
			StaleSeconds:        snap.Poll.Stale(time.Now()).Seconds(),
			SkippedRows:         snap.Poll.Skipped,
			Instances:           len(snap.Members),
			WatchersRunning:     a.app.state.watcher.Running(),
			SpendPerHour:        spendPerHour(snap),
		})
	}
	return apiError(http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s (see /vastai/instances, /vastai/pools, /vastai/operations, /vastai/offers, /vastai/status)", r.Method, r.URL.Path))
}

// instanceView is the admin representation of an instance.
type instanceView struct {
	ID             int64      `json:"id"`
	Pool           *string    `json:"pool"`
	Label          string     `json:"label"`
	ActualStatus   *string    `json:"actual_status"`
	IntendedStatus string     `json:"intended_status,omitempty"`
	StatusMsg      string     `json:"status_msg,omitempty"`
	Upstream       *string    `json:"upstream"`
	Routable       bool       `json:"routable"`
	Reason         string     `json:"reason,omitempty"`
	State          string     `json:"state"`
	StateSince     *time.Time `json:"state_since"`
	Ready          bool       `json:"ready"`
	LastProbe      *probeView `json:"last_probe"`
	GPUs           []gpuView  `json:"gpus,omitempty"`
	GPUError       string     `json:"gpu_error,omitempty"`
	SSH            *sshView   `json:"ssh,omitempty"`
	GPUName        string     `json:"gpu_name"`
	NumGPUs        int        `json:"num_gpus"`
	DPHTotal       float64    `json:"dph_total"`
	PublicIPAddr   string     `json:"public_ipaddr,omitempty"`
	MachineID      int64      `json:"machine_id,omitempty"`
	StartDate      *time.Time `json:"start_date,omitempty"`
	Accrued        float64    `json:"accrued_dollars"`
	FirstSeen      time.Time  `json:"first_seen"`
	LastSeen       time.Time  `json:"last_seen"`
	MissedListings int        `json:"missed_listings"`
}

func newInstanceView(m fleet.Member) instanceView {
	in := m.Instance
	v := instanceView{
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
		v.LastProbe = &probeView{Time: p.Time, Status: p.Status, LatencyMS: float64(p.Latency.Microseconds()) / 1000, Error: p.Error, OK: p.OK}
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
func (a *adminAPI) instanceView(m fleet.Member) instanceView {
	v := newInstanceView(m)
	rt := a.app.state.ssh.Load()
	if rt == nil || m.Pool == "" {
		return v
	}
	st := rt.pool.Status(m.Instance.ID)
	v.SSH = &sshView{Path: st.Path, LastError: st.LastError, ConnectedSince: timePtr(st.ConnectedSince), Reconnects: st.Reconnects}
	if sample, ok := rt.collector.Sample(m.Instance.ID); ok {
		v.GPUError = sample.Err
		v.GPUs = make([]gpuView, 0, len(sample.GPUs))
		for _, g := range sample.GPUs {
			v.GPUs = append(v.GPUs, gpuView{GPU: g, CollectedAt: sample.CollectedAt})
		}
	}
	return v
}

// gpuView is one GPU's figures from nvidia-smi; unknown figures are null.
type gpuView struct {
	gpumetrics.GPU
	CollectedAt time.Time `json:"collected_at"`
}

type sshView struct {
	Path           string     `json:"path"`
	LastError      string     `json:"last_error,omitempty"`
	ConnectedSince *time.Time `json:"connected_since,omitempty"`
	Reconnects     int        `json:"reconnects"`
}

type probeView struct {
	Time      time.Time `json:"time"`
	Status    int       `json:"status,omitempty"`
	LatencyMS float64   `json:"latency_ms"`
	Error     string    `json:"error,omitempty"`
	OK        bool      `json:"ok"`
}

type poolView struct {
	Name      string         `json:"name"`
	Label     string         `json:"label,omitempty"`
	Prefix    string         `json:"label_prefix,omitempty"`
	Port      int            `json:"port"`
	Members   []int64        `json:"members"`
	Routable  []int64        `json:"routable"`
	States    map[string]int `json:"states"`
	SpendRate float64        `json:"spend_rate_dollars_per_hour"`
	// SpendPerHour is the same rate under the name /vastai/status uses.
	SpendPerHour float64 `json:"spend_per_hour"`
	// Accrued is what the pool's instances have cost so far (from
	// start_date at their current rates), in dollars.
	Accrued float64 `json:"accrued_dollars"`
	// Provisioning is the lifecycle manager's view (records, operations in
	// progress, budgets) for pools with a provision block.
	Provisioning *lifecycle.PoolStatus `json:"provisioning,omitempty"`
}

// poolViews adds the provisioning figures to the snapshot's view of each
// named pool; the lifecycle report is computed once for all of them.
func (a *adminAPI) poolViews(snap *fleet.Snapshot, names ...string) []poolView {
	provisioning := map[string]lifecycle.PoolStatus{}
	if rt := a.app.state.lifecycle.Load(); rt != nil {
		for _, ps := range rt.mgr.Pools().Pools {
			if ps.Configured {
				provisioning[ps.Name] = ps
			}
		}
	}
	out := make([]poolView, 0, len(names))
	for _, name := range names {
		v := newPoolView(snap, name)
		if ps, ok := provisioning[name]; ok {
			v.Provisioning = &ps
		}
		out = append(out, v)
	}
	return out
}

func newPoolView(snap *fleet.Snapshot, name string) poolView {
	pv := snap.Pools[name]
	now := time.Now()
	v := poolView{Name: name, Label: pv.Spec.Label, Prefix: pv.Spec.LabelPrefix, Port: pv.Spec.Port, Members: []int64{}, Routable: []int64{}, States: map[string]int{}}
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
	v.SpendPerHour = v.SpendRate
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

type statusView struct {
	Generation          uint64     `json:"generation"`
	LastSuccess         *time.Time `json:"last_success"`
	LastAttempt         *time.Time `json:"last_attempt"`
	LastError           string     `json:"last_error,omitempty"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	StaleSeconds        float64    `json:"stale_seconds"`
	SkippedRows         int        `json:"skipped_rows"`
	Instances           int        `json:"instances"`
	WatchersRunning     int        `json:"watchers_running"`
	SpendPerHour        float64    `json:"spend_per_hour"` // fleet-wide, costs.go
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func onlyGET(r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET", r.Method))
	}
	return nil
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
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
