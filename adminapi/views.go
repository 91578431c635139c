// Package adminapi holds the JSON shapes of the /vastai/ admin API, shared
// by the server (package vastai), the CLI (cli) and the terminal view (tui),
// so the three cannot drift.
//
// The field order is the encoding order of the server's responses: keep it.
// Fields a client may find missing (an older gateway) are pointers, so that
// an absent figure decodes as absent rather than as zero.
package adminapi

import (
	"time"

	"github.com/caddy-vastai/caddy-vastai/gpumetrics"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// Instance is one entry of GET /vastai/instances (and the body of
// GET /vastai/instances/{id}).
type Instance struct {
	// ID is vast.ai's instance id.
	ID int64 `json:"id"`
	// Pool is the pool the instance belongs to; null when none.
	Pool *string `json:"pool"`
	// Label is the instance's vast.ai label.
	Label string `json:"label"`
	// ActualStatus is vast.ai's actual_status; null when it reports none.
	ActualStatus *string `json:"actual_status"`
	// IntendedStatus is vast.ai's intended_status.
	IntendedStatus string `json:"intended_status,omitempty"`
	// StatusMsg is vast.ai's status message.
	StatusMsg string `json:"status_msg,omitempty"`
	// Upstream is the dial address requests go to; null when unknown.
	Upstream *string `json:"upstream"`
	// Routable is true when requests are sent to the instance.
	Routable bool `json:"routable"`
	// Reason explains why the instance is not routable.
	Reason string `json:"reason,omitempty"`
	// State is the fleet state (ready, loading, unhealthy, ...).
	State string `json:"state"`
	// StateSince is when the instance entered State.
	StateSince *time.Time `json:"state_since"`
	// Ready is State == "ready".
	Ready bool `json:"ready"`
	// LastProbe is the last health probe; null before the first.
	LastProbe *Probe `json:"last_probe"`
	// GPUs are the nvidia-smi figures, when SSH collects them.
	GPUs []GPU `json:"gpus,omitempty"`
	// GPUError is why the last GPU collection failed.
	GPUError string `json:"gpu_error,omitempty"`
	// SSH is the instance's SSH connection, when the pool uses SSH.
	SSH *SSH `json:"ssh,omitempty"`
	// GPUName is vast.ai's GPU model name.
	GPUName string `json:"gpu_name"`
	// NumGPUs is how many GPUs the instance has.
	NumGPUs int `json:"num_gpus"`
	// DPHTotal is vast.ai's total price, in $/h.
	DPHTotal float64 `json:"dph_total"`
	// PublicIPAddr is the instance's public address.
	PublicIPAddr string `json:"public_ipaddr,omitempty"`
	// MachineID is vast.ai's host machine id.
	MachineID int64 `json:"machine_id,omitempty"`
	// StartDate is vast.ai's start_date.
	StartDate *time.Time `json:"start_date,omitempty"`
	// Accrued is what the instance has cost since StartDate, in dollars.
	Accrued float64 `json:"accrued_dollars"`
	// FirstSeen is when a listing first showed the instance.
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is when a listing last showed the instance.
	LastSeen time.Time `json:"last_seen"`
	// MissedListings counts listings in a row that lacked the instance.
	MissedListings int `json:"missed_listings"`
	// InFlight is the number of proxied requests in flight to the
	// instance now; RequestsTotal counts the requests it was sent since
	// the gateway started. Both are null for an instance that never
	// received traffic.
	InFlight      *int64  `json:"in_flight"`
	RequestsTotal *uint64 `json:"requests_total"`
	// Engine is the engine's own load, from its metrics page; null while
	// the instance is not scraped (not routable, or scraping is off).
	Engine *Engine `json:"engine"`
	// Models are the model ids the engine reported on GET /v1/models,
	// sorted; absent unless a vastai_models handler is loaded and a read
	// succeeded. ModelsError is why the last read failed.
	Models      []string `json:"models,omitempty"`
	ModelsError string   `json:"models_error,omitempty"`
}

// Engine is the last scrape of an instance's engine metrics.
type Engine struct {
	// Kind is vllm, sglang or tgi; empty while unknown.
	Kind string `json:"kind,omitempty"`
	// Waiting and Running are the engine's queued requests and its
	// running batch.
	Waiting float64 `json:"waiting"`
	Running float64 `json:"running"`
	// KVCacheUse is the fraction (0-1) of the KV cache in use; null when
	// the engine does not report it.
	KVCacheUse *float64 `json:"kv_cache_use"`
	// At is when the figures were read; null before the first success.
	At *time.Time `json:"at"`
	// Fresh is true while the figures are recent enough (stale_after) to
	// be used for routing.
	Fresh bool `json:"fresh"`
	// Error is why the last scrape failed.
	Error string `json:"error,omitempty"`
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
	// Time is when the probe ran.
	Time time.Time `json:"time"`
	// Status is the HTTP status; absent when no answer came.
	Status int `json:"status,omitempty"`
	// LatencyMS is how long the probe took, in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// Error is why the probe failed.
	Error string `json:"error,omitempty"`
	// OK is true when the probe passed.
	OK bool `json:"ok"`
}

// GPU is one GPU's figures from nvidia-smi; unknown figures are null.
type GPU struct {
	gpumetrics.GPU
	// CollectedAt is when the figures were read.
	CollectedAt time.Time `json:"collected_at"`
}

// SSH is an instance's SSH connection.
type SSH struct {
	// Path is how the connection is made (direct, proxy, ...).
	Path string `json:"path"`
	// LastError is the last connection error.
	LastError string `json:"last_error,omitempty"`
	// ConnectedSince is when the current connection was made.
	ConnectedSince *time.Time `json:"connected_since,omitempty"`
	// Reconnects counts reconnections.
	Reconnects int `json:"reconnects"`
}

// Pool is one entry of GET /vastai/pools (and the body of
// GET /vastai/pools/{name}).
type Pool struct {
	// Name is the pool's name.
	Name string `json:"name"`
	// Label is the exact vast.ai label that selects the pool's instances.
	Label string `json:"label,omitempty"`
	// Prefix is the label prefix that selects them.
	Prefix string `json:"label_prefix,omitempty"`
	// Port is the instance port requests go to.
	Port int `json:"port"`
	// Members are the ids of the pool's instances.
	Members []int64 `json:"members"`
	// Routable are the ids requests are sent to.
	Routable []int64 `json:"routable"`
	// States counts members by state.
	States map[string]int `json:"states"`
	// SpendRate is the pool's billing rate now, in $/h.
	SpendRate float64 `json:"spend_rate_dollars_per_hour"`
	// SpendPerHour is the same rate under the name /vastai/status uses.
	SpendPerHour *float64 `json:"spend_per_hour"`
	// Accrued is what the pool's instances have cost so far (from
	// start_date at their current rates), in dollars.
	Accrued float64 `json:"accrued_dollars"`
	// Provisioning is the lifecycle manager's view (records, operations in
	// progress, budgets) for pools with a provision block.
	Provisioning *lifecycle.PoolStatus `json:"provisioning,omitempty"`
	// Autoscale is the autoscaler's latest decision and the pool's size,
	// for pools with an autoscale block.
	Autoscale *Autoscale `json:"autoscale,omitempty"`
}

// Autoscale is an autoscaled pool's latest decision: how many instances
// it wants, how many are ready, and why.
type Autoscale struct {
	Min        int     `json:"min"`
	Max        int     `json:"max"`
	TargetLoad float64 `json:"target_load"`
	// Desired is the count the pool converges to; Current is its ready
	// count at the decision.
	Desired int `json:"desired"`
	Current int `json:"current"`
	// Reason is the decision's machine word (scale_up, scale_down, panic,
	// idle_to_zero, from_zero, hold, at_max, at_min); Explanation says it
	// with the figures.
	Reason      string `json:"reason"`
	Explanation string `json:"explanation"`
	// StableLoad and PanicLoad are the two windows' average load
	// (in-flight plus engine-waiting requests, plus held ones).
	StableLoad float64    `json:"stable_load"`
	PanicLoad  float64    `json:"panic_load"`
	Panicking  bool       `json:"panicking"`
	DecidedAt  *time.Time `json:"decided_at"`
	// ChangedAt is when the desired count last changed.
	ChangedAt *time.Time `json:"changed_at"`
	// Waiting says why no decision was made yet (after a start, until the
	// lifecycle manager has read its records).
	Waiting string `json:"waiting,omitempty"`
	// Held is the number of requests held now (the pool has no ready
	// instance); HeldTotal counts the held requests that were sent on,
	// Rejected the ones that got a 503, by reason (max_pending, max_wait).
	Held      int               `json:"held"`
	HeldTotal uint64            `json:"held_total"`
	Rejected  map[string]uint64 `json:"rejected"`
	// Scale is the lifecycle manager's view of the pool's size: serving,
	// provisioning, starting, leaving, stopped (warm), the last refusal.
	Scale *lifecycle.PoolScale `json:"scale,omitempty"`
}

// Status is GET /vastai/status: the watcher's health, whether listings
// work, how fresh the routing data is and how long a listing takes.
type Status struct {
	// Generation counts successful listings.
	Generation uint64 `json:"generation"`
	// LastSuccess is when a listing last succeeded.
	LastSuccess *time.Time `json:"last_success"`
	// LastAttempt is when a listing was last tried.
	LastAttempt *time.Time `json:"last_attempt"`
	// LastError is why the last listing failed.
	LastError string `json:"last_error,omitempty"`
	// ListingOK is true when the last listing succeeded.
	ListingOK bool `json:"listing_ok"`
	// NeverSucceeded is true until a listing succeeds: nothing is routed.
	NeverSucceeded bool `json:"never_succeeded"`
	// AuthError is true while vast.ai rejects the API key.
	AuthError bool `json:"auth_error"`
	// Problem explains, in a sentence, what is wrong; empty when nothing is.
	Problem string `json:"problem,omitempty"`
	// ConsecutiveFailures counts failed listings in a row.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// StaleSeconds is how long listings have failed: since the last
	// success, or since the first attempt when none succeeded; 0 while
	// listings succeed.
	StaleSeconds float64 `json:"stale_seconds"`
	// ListingSeconds is how long the last successful listing took (null
	// before the first).
	ListingSeconds *float64 `json:"listing_seconds"`
	// ListingPages is how many pages the last listing had.
	ListingPages int `json:"listing_pages"`
	// ListingLabels are the exact labels the listing asks vast.ai for
	// (all pools select exact labels); null means the whole account.
	ListingLabels []string `json:"listing_labels"`
	// DataAgeSeconds is the age of the oldest routing data: the time since
	// the last successful listing started (null before the first).
	DataAgeSeconds *float64 `json:"data_age_seconds"`
	// ProbeFailingPools are pools whose every instance fails its health
	// probe although vast.ai reports them running: usually a config
	// change (probe path, model, token). They are not replaced.
	ProbeFailingPools []string `json:"probe_failing_pools,omitempty"`
	// SkippedRows counts listing rows that could not be read.
	SkippedRows int `json:"skipped_rows"`
	// Instances is how many instances the listing holds.
	Instances int `json:"instances"`
	// WatchersRunning is how many watcher loops run (1 when healthy).
	WatchersRunning int `json:"watchers_running"`
	// SpendPerHour is the fleet-wide billing rate now, in $/h; the server
	// always sends it, older gateways did not.
	SpendPerHour *float64 `json:"spend_per_hour"`
}
