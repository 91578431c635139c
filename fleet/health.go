package fleet

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
)

// Instance states. Only StateReady instances receive traffic.
const (
	// StateProvisioning: vast.ai reports no container yet (null or "created").
	StateProvisioning = "provisioning"
	// StateLoading: vast.ai is pulling the image or starting the container.
	StateLoading = "loading"
	// StateStarting: the container runs but the engine is not ready yet.
	StateStarting = "starting"
	// StateReady: the engine passes its probes; the instance is routable.
	StateReady = "ready"
	// StateUnhealthy: a ready engine failed unhealthy_threshold probes or
	// live requests in a row.
	StateUnhealthy = "unhealthy"
	// StateFailed: the instance will not serve without intervention: it
	// exited, went offline or unknown, or its engine never became ready
	// within the start-up grace.
	StateFailed = "failed"
	// StateStopped: stopped or frozen (a stopped instance still bills disk).
	StateStopped = "stopped"
	// StateGone: being destroyed, or missing from the latest listing.
	StateGone = "gone"
)

// PlaceholderHeader marks vast.ai's Instance Portal "not ready" page; its
// presence means the engine is not ready whatever the status code.
const PlaceholderHeader = "X-Portal-Placeholder"

// HealthSpec configures a pool's active probes. It carries the health
// block's JSON and doc comments; the root package's HealthConfig embeds it.
type HealthSpec struct {
	// Path of the probe request. Default: /health.
	Path string `json:"path,omitempty"`

	// HTTP method of the probe. Default: GET.
	Method string `json:"method,omitempty"`

	// Optional JSON request body, so that a tiny generation (for example a
	// one-token completion) can be the probe: a hung engine can still
	// answer /health.
	Body string `json:"body,omitempty"`

	// Status codes that mean healthy. Default: [200]. A response with
	// the X-Portal-Placeholder header is never healthy.
	Expect []int `json:"expect,omitempty"`

	// Time between probes of one instance. Default: 5s.
	Interval jsondur.Duration `json:"interval,omitempty"`

	// Time limit of one probe. Default: 5s.
	Timeout jsondur.Duration `json:"timeout,omitempty"`

	// Consecutive successes that make an instance ready. Default: 1.
	HealthyThreshold int `json:"healthy_threshold,omitempty"`

	// Consecutive failures (probes, or connection errors and 5xx of live
	// traffic) that make a ready instance unhealthy. Default: 2.
	UnhealthyThreshold int `json:"unhealthy_threshold,omitempty"`

	// Start-up grace: while an engine is starting (pulling weights can
	// take many minutes), failing probes do not make it unhealthy; past
	// the grace it is reported as failed. Default: 30m.
	Grace jsondur.Duration `json:"grace,omitempty"`

	// fallbackPath is probed when the default path answers 404: not every
	// engine has /health (Ollama, some OpenAI-compatible servers), but all
	// of them list /v1/models.
	fallbackPath string
}

// DefaultProbeFallbackPath is probed when the default probe path is 404.
const DefaultProbeFallbackPath = "/v1/models"

// Health defaults.
const (
	DefaultProbePath          = "/health"
	DefaultProbeInterval      = 5 * time.Second
	DefaultProbeTimeout       = 5 * time.Second
	DefaultHealthyThreshold   = 1
	DefaultUnhealthyThreshold = 2
	DefaultGrace              = 30 * time.Minute
)

// WithDefaults fills unset fields.
func (h HealthSpec) WithDefaults() HealthSpec {
	if h.Path == "" {
		h.Path = DefaultProbePath
		if h.Method == "" && h.Body == "" {
			h.fallbackPath = DefaultProbeFallbackPath
		}
	}
	if h.Method == "" {
		h.Method = http.MethodGet
	}
	if len(h.Expect) == 0 {
		h.Expect = []int{http.StatusOK}
	}
	if h.Interval <= 0 {
		h.Interval = jsondur.Duration(DefaultProbeInterval)
	}
	if h.Timeout <= 0 {
		h.Timeout = jsondur.Duration(DefaultProbeTimeout)
	}
	if h.HealthyThreshold <= 0 {
		h.HealthyThreshold = DefaultHealthyThreshold
	}
	if h.UnhealthyThreshold <= 0 {
		h.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if h.Grace <= 0 {
		h.Grace = jsondur.Duration(DefaultGrace)
	}
	return h
}

// Validate reports configuration mistakes, naming the field.
func (h HealthSpec) Validate() error {
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		return fmt.Errorf("health: path %q must start with /", h.Path)
	}
	if h.Method != "" && strings.ToUpper(h.Method) != h.Method {
		return fmt.Errorf("health: method %q must be upper case", h.Method)
	}
	for _, c := range h.Expect {
		if c < 100 || c > 599 {
			return fmt.Errorf("health: expect: %d is not an HTTP status code", c)
		}
	}
	for name, d := range map[string]jsondur.Duration{"interval": h.Interval, "timeout": h.Timeout, "grace": h.Grace} {
		if d < 0 {
			return fmt.Errorf("health: %s must not be negative", name)
		}
	}
	if h.HealthyThreshold < 0 || h.UnhealthyThreshold < 0 {
		return errors.New("health: thresholds must not be negative")
	}
	return nil
}

func (h HealthSpec) expects(code int) bool {
	for _, c := range h.Expect {
		if c == code {
			return true
		}
	}
	return false
}

// ProbeResult is the outcome of one active probe.
type ProbeResult struct {
	Time    time.Time     `json:"time"`
	Status  int           `json:"status,omitempty"`
	Latency time.Duration `json:"latency_ns"`
	Error   string        `json:"error,omitempty"`
	OK      bool          `json:"ok"`
}

// probeCell holds an instance's latest probe result. It outlives snapshots,
// so the admin API sees every probe without a snapshot being rebuilt for
// results that change no state.
type probeCell struct{ p atomic.Pointer[ProbeResult] }

// healthRec is the watcher's mutable health record of one instance.
type healthRec struct {
	state      string
	since      time.Time
	reason     string
	okStreak   int
	failStreak int
	cell       *probeCell
}

// apiState maps vast.ai's view of an instance to a state, or "" when the
// container runs and the probes decide.
func apiState(actual, curState, nextState string) (string, string) {
	if curState == "unloaded" || nextState == "unloaded" {
		return StateGone, "being destroyed (cur_state unloaded)"
	}
	switch actual {
	case "running":
		return "", ""
	case "", "created":
		return StateProvisioning, "actual_status is " + quoteStatus(actual)
	case "loading", "rebooting", "recycling":
		return StateLoading, "actual_status is " + quoteStatus(actual)
	case "stopped", "frozen":
		return StateStopped, "actual_status is " + quoteStatus(actual)
	case "exited", "offline", "unknown", "destroyed":
		return StateFailed, "actual_status is " + quoteStatus(actual)
	default:
		// vast.ai's set of statuses is not closed: an unknown one is
		// "not ready", never an error.
		return StateLoading, "unrecognised actual_status " + quoteStatus(actual)
	}
}

// step advances an instance's state after its row was refreshed or a probe
// or traffic signal arrived. It returns true when the state changed.
func (h *healthRec) step(now time.Time, actual, curState, nextState string, spec HealthSpec) bool {
	prev := h.state
	if st, why := apiState(actual, curState, nextState); st != "" {
		h.set(now, st, why)
		h.okStreak, h.failStreak = 0, 0
		return h.state != prev
	}
	switch h.state {
	case StateStarting, StateReady, StateUnhealthy:
	case StateFailed:
		if !strings.HasPrefix(h.reason, "engine not ready") {
			// It was failed by status and is running again: start over.
			h.set(now, StateStarting, "waiting for the engine's first successful probe")
		}
	default:
		h.set(now, StateStarting, "waiting for the engine's first successful probe")
		h.okStreak, h.failStreak = 0, 0
	}
	switch h.state {
	case StateStarting, StateFailed:
		if h.okStreak >= spec.HealthyThreshold {
			h.set(now, StateReady, "")
		} else if h.state == StateStarting && now.Sub(h.since) > spec.Grace.D() {
			h.set(now, StateFailed, fmt.Sprintf("engine not ready within the start-up grace of %s", spec.Grace))
		}
	case StateReady:
		if h.failStreak >= spec.UnhealthyThreshold {
			h.set(now, StateUnhealthy, fmt.Sprintf("%d consecutive failures", h.failStreak))
		}
	case StateUnhealthy:
		if h.okStreak >= spec.HealthyThreshold {
			h.set(now, StateReady, "")
		}
	}
	return h.state != prev
}

func (h *healthRec) set(now time.Time, state, reason string) {
	if h.state != state {
		h.since = now
	}
	h.state, h.reason = state, reason
}

// observe records one success or failure (a probe or live traffic).
func (h *healthRec) observe(ok bool) {
	if ok {
		h.okStreak++
		h.failStreak = 0
	} else {
		h.failStreak++
		h.okStreak = 0
	}
}

// probing reports whether the engine of an instance in this state is probed.
func probing(state string) bool {
	switch state {
	case StateStarting, StateReady, StateUnhealthy:
		return true
	}
	return false
}
