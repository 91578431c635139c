// Package tui is `caddy vastai top`: a live, full-screen view of the fleet
// read from the admin API, with keys to drain, destroy and provision.
//
// It knows the admin API only through the API interface, so it does not
// depend on Caddy; the CLI passes its admin client, tests a fake or a plain
// HTTP client.
package tui

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// API is the admin API as the view needs it. Do sends one request (body
// encoded as JSON when not nil) and decodes the answer into out (when not
// nil). Errors for requests the admin API answered carry its message.
type API interface {
	Do(ctx context.Context, method, path string, body any, out any) error
}

// Options tune the view.
type Options struct {
	// Refresh is how often the view reloads; 0 means every second.
	Refresh time.Duration
	// Pool limits the view to one pool (and makes it the pool `p`
	// provisions into when no instance is selected).
	Pool string
}

// DefaultRefresh is the refresh interval when Options.Refresh is 0.
const DefaultRefresh = time.Second

// ErrNoAPI is returned by Run without an API to talk to.
var ErrNoAPI = errors.New("tui: no admin API client")

// Run shows the view until the operator quits (q or Ctrl-C) or ctx ends,
// and restores the terminal either way. An interrupted or cancelled view is
// not an error.
func Run(ctx context.Context, api API, opts Options) error {
	if api == nil {
		return ErrNoAPI
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	p := tea.NewProgram(newModel(ctx, api, opts), tea.WithAltScreen(), tea.WithContext(ctx))
	_, err := p.Run()
	switch {
	case err == nil, errors.Is(err, tea.ErrInterrupted):
		return nil
	case errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil:
		return nil
	}
	return fmt.Errorf("tui: %w", err)
}

// The types below decode what the view shows of the admin API's answers.
// Fields another version of the gateway may lack are pointers, so that an
// absent figure is shown as absent rather than as zero.

// Status is GET /vastai/status.
type Status struct {
	Generation          uint64     `json:"generation"`
	LastSuccess         *time.Time `json:"last_success"`
	LastAttempt         *time.Time `json:"last_attempt"`
	LastError           string     `json:"last_error"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	StaleSeconds        float64    `json:"stale_seconds"`
	Instances           int        `json:"instances"`
	WatchersRunning     int        `json:"watchers_running"`
	SpendPerHour        *float64   `json:"spend_per_hour"`
	MaxSpendPerHour     *float64   `json:"max_spend_per_hour"`
}

// Instance is one entry of GET /vastai/instances.
type Instance struct {
	ID           int64      `json:"id"`
	Pool         *string    `json:"pool"`
	Label        string     `json:"label"`
	ActualStatus *string    `json:"actual_status"`
	StatusMsg    string     `json:"status_msg"`
	Upstream     *string    `json:"upstream"`
	Routable     bool       `json:"routable"`
	Reason       string     `json:"reason"`
	State        string     `json:"state"`
	StateSince   *time.Time `json:"state_since"`
	LastProbe    *Probe     `json:"last_probe"`
	GPUs         []GPU      `json:"gpus"`
	GPUError     string     `json:"gpu_error"`
	SSH          *SSH       `json:"ssh"`
	GPUName      string     `json:"gpu_name"`
	NumGPUs      int        `json:"num_gpus"`
	DPHTotal     float64    `json:"dph_total"`
	PublicIPAddr string     `json:"public_ipaddr"`
	MachineID    int64      `json:"machine_id"`
	StartDate    *time.Time `json:"start_date"`
	Accrued      float64    `json:"accrued_dollars"`
	// InFlight and RequestsTotal are the gateway's request counters, when
	// it exposes them; requests/s is derived from RequestsTotal between
	// refreshes.
	InFlight      *int64  `json:"in_flight"`
	RequestsTotal *uint64 `json:"requests_total"`
}

// PoolName is the instance's pool, "" when it belongs to none.
func (in *Instance) PoolName() string {
	if in.Pool == nil {
		return ""
	}
	return *in.Pool
}

// Probe is an instance's last health probe.
type Probe struct {
	Time      time.Time `json:"time"`
	Status    int       `json:"status"`
	LatencyMS float64   `json:"latency_ms"`
	Error     string    `json:"error"`
	OK        bool      `json:"ok"`
}

// GPU is one GPU's figures from nvidia-smi; unknown figures are nil.
type GPU struct {
	Index          int      `json:"index"`
	Name           string   `json:"name"`
	UtilizationGPU *float64 `json:"utilization_gpu"`
	MemoryUsedMiB  *float64 `json:"memory_used_mib"`
	MemoryTotalMiB *float64 `json:"memory_total_mib"`
	TemperatureC   *float64 `json:"temperature_c"`
	PowerDrawW     *float64 `json:"power_draw_w"`
}

// SSH is the instance's SSH connection.
type SSH struct {
	Path       string `json:"path"`
	LastError  string `json:"last_error"`
	Reconnects int    `json:"reconnects"`
}

// Pool is one entry of GET /vastai/pools.
type Pool struct {
	Name         string         `json:"name"`
	Members      []int64        `json:"members"`
	Routable     []int64        `json:"routable"`
	States       map[string]int `json:"states"`
	SpendRate    float64        `json:"spend_rate_dollars_per_hour"`
	Accrued      float64        `json:"accrued_dollars"`
	Provisioning *Provisioning  `json:"provisioning"`
}

// Provisioning is a pool's lifecycle figures, budgets included.
type Provisioning struct {
	MinInstances    int     `json:"min_instances"`
	MaxInstances    int     `json:"max_instances"`
	Active          int     `json:"active"`
	InProgress      int     `json:"in_progress"`
	Destroying      int     `json:"destroying"`
	SpendPerHour    float64 `json:"spend_per_hour"`
	MaxSpendPerHour float64 `json:"max_spend_per_hour"`
	MaxPricePerHour float64 `json:"max_price_per_hour"`
}

// Operation is one entry of GET /vastai/operations.
type Operation struct {
	ID              string    `json:"id"`
	Kind            string    `json:"kind"`
	Pool            string    `json:"pool"`
	State           string    `json:"state"`
	Reason          string    `json:"reason"`
	Error           string    `json:"error"`
	Created         time.Time `json:"created"`
	Updated         time.Time `json:"updated"`
	Ended           time.Time `json:"ended"`
	InstanceID      int64     `json:"instance_id"`
	Attempts        []Attempt `json:"attempts"`
	Drain           bool      `json:"drain"`
	DestroyAttempts int       `json:"destroy_attempts"`
}

// Final reports whether the operation is over.
func (o *Operation) Final() bool { return o.State == "succeeded" || o.State == "failed" }

// Attempt is one try of a provisioning.
type Attempt struct {
	OfferID    int64     `json:"offer_id"`
	MachineID  int64     `json:"machine_id"`
	GPUName    string    `json:"gpu_name"`
	Price      float64   `json:"price"`
	InstanceID int64     `json:"instance_id"`
	Started    time.Time `json:"started"`
	State      string    `json:"state"`
	Error      string    `json:"error"`
}

// snapshot is one refresh: every part that loaded, and the error of every
// part that did not (the view keeps showing the previous value then).
type snapshot struct {
	at         time.Time
	status     *Status
	instances  []Instance
	pools      []Pool
	operations []Operation
	errs       map[string]error // by part: status, instances, pools, operations
}

// dataMsg carries a finished refresh into Update.
type dataMsg snapshot

// fetchTimeout bounds one refresh, so a hung admin API turns into an error
// shown on screen rather than a view that silently stops changing.
const fetchTimeout = 10 * time.Second

// fetch loads the four parts in a tea.Cmd: Update never waits for the admin
// API.
func fetch(ctx context.Context, api API, now func() time.Time) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		s := snapshot{errs: map[string]error{}}
		var st Status
		if err := api.Do(ctx, "GET", "/vastai/status", nil, &st); err != nil {
			s.errs["status"] = err
		} else {
			s.status = &st
		}
		if err := api.Do(ctx, "GET", "/vastai/instances", nil, &s.instances); err != nil {
			s.errs["instances"] = err
			s.instances = nil
		}
		if err := api.Do(ctx, "GET", "/vastai/pools", nil, &s.pools); err != nil {
			s.errs["pools"] = err
			s.pools = nil
		}
		if err := api.Do(ctx, "GET", "/vastai/operations", nil, &s.operations); err != nil {
			s.errs["operations"] = err
			s.operations = nil
		}
		s.at = now()
		return dataMsg(s)
	}
}

// action is a change the operator confirmed.
type action struct {
	kind string // drain, destroy, provision
	id   int64
	pool string
}

func (a action) prompt() string {
	switch a.kind {
	case "drain":
		return fmt.Sprintf("Drain instance %d (pool %s): stop routing to it, then destroy it? [y/n]", a.id, orDash(a.pool))
	case "destroy":
		return fmt.Sprintf("Destroy instance %d (pool %s) now, cutting requests in flight? [y/n]", a.id, orDash(a.pool))
	default:
		return fmt.Sprintf("Provision one more instance into pool %s? [y/n]", a.pool)
	}
}

// actionMsg is the admin API's answer to a confirmed action.
type actionMsg struct {
	act action
	err error
}

func run(ctx context.Context, api API, a action) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		var err error
		switch a.kind {
		case "drain":
			err = api.Do(ctx, "POST", fmt.Sprintf("/vastai/instances/%d/drain", a.id), nil, nil)
		case "destroy":
			err = api.Do(ctx, "DELETE", fmt.Sprintf("/vastai/instances/%d", a.id), nil, nil)
		case "provision":
			err = api.Do(ctx, "POST", "/vastai/pools/"+url.PathEscape(a.pool)+"/instances", map[string]int{"count": 1}, nil)
		}
		return actionMsg{act: a, err: err}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
