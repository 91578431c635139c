package lifecycle

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
)

// Orphan policies: what reconciliation does with an instance that carries
// this gateway's label but has no record.
const (
	// OrphansAdopt writes a record for the instance (its pool comes from the
	// label) and manages it from then on. It is the default: an orphan is
	// most likely an instance whose record was lost in a crash.
	OrphansAdopt = "adopt"
	// OrphansDestroy destroys the instance, with verification, once it has
	// been seen as an orphan in two consecutive successful reconciliations.
	OrphansDestroy = "destroy"
	// OrphansIgnore only reports the instance.
	OrphansIgnore = "ignore"
)

// Offer types.
const (
	// TypeOnDemand rents at the offer's price; the instance is not
	// interruptible. It is the default.
	TypeOnDemand = "on-demand"
	// TypeBid rents an interruptible instance at PoolTemplate.BidPrice.
	// vast.ai stops (does not destroy) an outbid instance; its disk keeps
	// billing.
	TypeBid = "bid"
)

// Defaults applied by New to zero Config and PoolTemplate fields.
const (
	DefaultReconcileInterval     = 5 * time.Minute
	DefaultBlocklistTTL          = 24 * time.Hour
	DefaultGhostConfirmations    = 3
	DefaultDestroyVerifyAttempts = 10
	DefaultReadyTimeout          = 30 * time.Minute
	DefaultMaxAttempts           = 3
	DefaultPollInterval          = 5 * time.Second
	DefaultStatusPollInterval    = 15 * time.Second
	DefaultDestroyBackoff        = 5 * time.Second
	DefaultDestroyBackoffMax     = 2 * time.Minute
	DefaultLeaseTTL              = 2 * time.Minute
	DefaultLockTimeout           = 2 * time.Minute
	DefaultDrainTimeout          = 10 * time.Minute
	DefaultScaleRetryInterval    = 15 * time.Second
	// Autoscale defaults (AutoscaleSpec, WarmSpec).
	DefaultAutoscaleDrainTimeout = 2 * time.Minute
	DefaultWarmStartTimeout      = 90 * time.Second
	DefaultWarmMaxStoppedAge     = 7 * 24 * time.Hour
	DefaultOfferCacheTTL         = 30 * time.Second
	DefaultRetention             = 7 * 24 * time.Hour
	DefaultOfferLimit            = 20
	DefaultOrder                 = "dph_total"
	// DefaultDisk is the disk size in GB when a pool sets none (the CLI's
	// default; vast.ai's own minimum is 8).
	DefaultDisk = 10
	// gpuRAMSlack is the tolerance on MinGPURAMGB. Drivers report less than
	// the marketing size (24564 MB for a "24 GB" RTX 4090), and a strict
	// ≥ 24576 filter excluded every 4090 in cloud-gpu-shopper.
	gpuRAMSlack = 0.02
)

// Sentinel errors for expected conditions. Test with errors.Is.
var (
	// ErrUnknownPool means the pool name is not configured.
	ErrUnknownPool = errors.New("unknown pool")
	// ErrMaxInstances means the request would take a pool beyond its
	// MaxInstances.
	ErrMaxInstances = errors.New("max_instances reached")
	// ErrBudget is matched by every *BudgetError.
	ErrBudget = errors.New("budget exceeded")
	// ErrNoOffers means no offer matches the pool's filter, price cap and
	// blocklist.
	ErrNoOffers = errors.New("no matching offer")
	// ErrNotOwned means the instance is not this gateway's (no record and no
	// "cv:<gateway>:" label); destroying it needs Force.
	ErrNotOwned = errors.New("not created or adopted by this gateway")
	// ErrInstanceNotFound means vast.ai does not know the instance.
	ErrInstanceNotFound = errors.New("instance not found")
	// ErrOperationNotFound means no operation has that id.
	ErrOperationNotFound = errors.New("operation not found")
	// ErrStopped means the Manager was stopped; it accepts no new work.
	ErrStopped = errors.New("manager stopped")
	// ErrInvalidConfig wraps configuration mistakes.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrInvalidRequest is matched by every *ValidationError: the request
	// itself is wrong (a caller's mistake, not vast.ai's).
	ErrInvalidRequest = errors.New("invalid request")
)

// ValidationError is a mistake in a request, naming the field.
type ValidationError struct {
	Field   string
	Problem string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Problem }

// Is makes errors.Is(err, ErrInvalidRequest) hold.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidRequest }

// OfferFilter selects offers. Zero fields do not filter. All filters are
// sent to vast.ai (unfiltered searches return a capped subset) and checked
// again on the answer.
type OfferFilter struct {
	// GPUName is vast.ai's spelling, with spaces ("RTX 4090").
	GPUName string `json:"gpu_name,omitempty"`
	// NumGPUs is the exact GPU count.
	NumGPUs int `json:"num_gpus,omitempty"`
	// MinGPURAMGB is the minimum memory per GPU in GB. It is compared with
	// the driver-reported MB (gpu_ram) as GB×1000 minus 2%, so a 24564 MB
	// card counts as 24 GB.
	MinGPURAMGB float64 `json:"min_gpu_ram_gb,omitempty"`
	// MaxDPH is the highest dph_total ($/hour, storage included).
	MaxDPH float64 `json:"max_dph,omitempty"`
	// MinReliability is the minimum reliability2 (0–1).
	MinReliability float64 `json:"min_reliability,omitempty"`
	// Verified restricts to verified machines.
	Verified bool `json:"verified,omitempty"`
	// Countries are two-letter geolocation codes ("US", "CA").
	Countries []string `json:"countries,omitempty"`
	// MinDirectPorts is the minimum direct_port_count; direct HTTP access to
	// the engine needs at least one.
	MinDirectPorts int `json:"min_direct_ports,omitempty"`
	// MinCUDA is the minimum cuda_max_good. Hosts have advertised more
	// than their driver supports; verify on the box as well.
	MinCUDA float64 `json:"min_cuda,omitempty"`
	// Extra are raw operator filters ({"inet_down": {"gte": 500}}); they
	// override the fields above on the same key.
	Extra map[string]map[string]any `json:"extra,omitempty"`
	// Limit caps the number of offers asked for (default 20). Only
	// meaningful in Offers overrides and templates.
	Limit int `json:"limit,omitempty"`
}

// PoolTemplate says what to provision for a pool and within which limits.
// The root package's ProvisionConfig embeds it, so these field comments are
// the JSON config's documentation.
type PoolTemplate struct {
	// Docker image to run; required unless template_hash_id is set.
	Image string `json:"image,omitempty"`

	// A vast.ai template instead of an image. Template hash ids change when
	// the template is edited; prefer pinning the image.
	TemplateHashID string `json:"template_hash_id,omitempty"`

	// Disk size in GB, at least 8. It cannot change later and bills even
	// while the instance is stopped. Default: 10.
	Disk float64 `json:"disk,omitempty"`

	// Environment variables and Docker options (for example "-p 8000:8000":
	// "1"). The pool's engine port is requested automatically. WEB_PASSWORD
	// is generated per instance and must not be set here.
	Env map[string]string `json:"env,omitempty"`

	// The onstart script (SSH and Jupyter runtypes replace the image's
	// entrypoint, so the engine is started here).
	Onstart string `json:"onstart,omitempty"`

	// Entrypoint arguments, for runtype "args".
	Args []string `json:"args,omitempty"`

	// vast.ai runtype: "args", "ssh_direct", "ssh_proxy", "jupyter_direct"...
	// (empty: vast.ai's default).
	Runtype string `json:"runtype,omitempty"`

	// Which offers may be rented. Omitted when empty, so a config without
	// one encodes without one.
	Offer OfferFilter `json:"offer,omitzero"`

	// Offer order as [field, "asc"|"desc"] pairs. Default: cheapest
	// (dph_total) first.
	Order [][2]string `json:"order,omitempty"`

	// "on-demand" (default) or "bid" (interruptible, at bid_price; vast.ai
	// stops an outbid instance, and its disk keeps billing).
	Type string `json:"type,omitempty"`

	// The bid in $/hour for type "bid" (sent as the create "price").
	BidPrice float64 `json:"bid_price,omitempty"`

	// Instances kept in the pool by reconciliation.
	MinInstances int `json:"min_instances,omitempty"`

	// Upper bound of the pool (0: none).
	MaxInstances int `json:"max_instances,omitempty"`

	// Highest price of one instance in $/hour; offers above it are never
	// used (0: no cap).
	MaxPricePerHour float64 `json:"max_price_per_hour,omitempty"`

	// Instances older than this are replaced: the new one is made ready
	// first, then the old one drained and destroyed (0: never).
	MaxLifetime jsondur.Duration `json:"max_lifetime,omitempty"`

	// How long an instance may stay in one start-up state (loading,
	// starting...) before it is destroyed and another offer tried. The
	// clock restarts when the state changes, so a slow image pull does not
	// eat the engine's start-up time. Default: 30m.
	ReadyTimeout jsondur.Duration `json:"ready_timeout,omitempty"`

	// Offers tried per provisioning before giving up. Default: 3.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// Pool budget in $/hour: running instances plus creates in progress
	// (0: none).
	MaxSpendPerHour float64 `json:"max_spend_per_hour,omitempty"`

	// Autoscale hands the pool's size to an autoscaler (the root
	// package's autoscale block sets it; it has no JSON of its own here).
	Autoscale AutoscaleSpec `json:"-"`
}

// AutoscaleSpec makes a pool autoscaled: reconciliation converges it to
// the count given to Manager.SetDesired instead of MinInstances (which
// must then be 0), starting warm instances before creating new ones, and
// scales down by draining and then stopping (warm pool) or destroying.
type AutoscaleSpec struct {
	// Enabled turns the rest on.
	Enabled bool
	// DrainTimeout bounds the drain of a scale-down. An instance still
	// serving requests after it is not removed: the scale-down is given up
	// and the instance returned to routing (default 2m).
	DrainTimeout time.Duration
	// Warm is the pool of stopped instances (Stopped 0: none).
	Warm WarmSpec
}

// WarmSpec is a pool's warm pool: scale-down stops instances (disk and
// weights kept, storage billed) up to Stopped, and scale-up starts the
// cheapest of them before creating.
type WarmSpec struct {
	// Stopped is the most stopped instances kept.
	Stopped int
	// StartTimeout is how long a start may take to reach ready before it
	// is given up (the GPU was rented by someone else: "scheduling");
	// default 90s.
	StartTimeout time.Duration
	// MaxStoppedAge destroys, with verification, a stopped instance older
	// than this (default 7 days).
	MaxStoppedAge time.Duration
}

// Config configures a Manager.
type Config struct {
	// GatewayID names this gateway in labels and storage keys:
	// [a-z0-9-]{1,32}. Gateways sharing a vast.ai account must use distinct
	// ids; each only ever touches instances labelled with its own.
	GatewayID string
	// Pools are the pool templates by name ([A-Za-z0-9_.-]{1,40}).
	Pools map[string]PoolTemplate
	// Orphans is the orphan policy: "adopt" (default), "destroy" or
	// "ignore".
	Orphans string
	// ReconcileInterval is the period of reconciliation in Run (default 5m).
	ReconcileInterval time.Duration
	// MaxSpendPerHour is the gateway budget in $/hour (0: none).
	MaxSpendPerHour float64
	// MinCredit refuses new instances while the account credit is below it
	// (0: no check).
	MinCredit float64
	// BlocklistTTL is how long a machine that failed a provisioning stays
	// excluded (default 24h).
	BlocklistTTL time.Duration
	// GhostConfirmations is the number of consecutive successful listings
	// that must omit a recorded instance before the show endpoint is asked
	// whether it is gone (default 3).
	GhostConfirmations int
	// DestroyVerifyAttempts is the number of failed verifications after
	// which a destroy is marked "destroy_failed" (default 10). Retrying
	// never stops.
	DestroyVerifyAttempts int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives structured logs (default: none); the caller names it
	// (the Caddy app uses "vastai.lifecycle").
	Logger *zap.Logger

	// PollInterval is how often a provisioning checks the routing side's
	// state (default 5s).
	PollInterval time.Duration
	// StatusPollInterval is how often a provisioning looks at the instance
	// row itself (default 15s).
	StatusPollInterval time.Duration
	// DestroyBackoff and DestroyBackoffMax shape the capped exponential
	// backoff between DELETE attempts (defaults 5s and 2m).
	DestroyBackoff    time.Duration
	DestroyBackoffMax time.Duration
	// LeaseTTL is how long an in-progress operation stays leased to the
	// process working on it without renewal (default 2m). A process that
	// dies loses its leases after LeaseTTL, and another one resumes.
	LeaseTTL time.Duration
	// FleetListingMaxAge lets reconciliation use the routing side's latest
	// successful listing (Fleet.Instances) instead of listing the account
	// itself when that listing is at most this old: one listing then feeds
	// both. 0 disables it (reconciliation always lists).
	FleetListingMaxAge time.Duration
	// LockTimeout bounds waiting for the Store lock (default 2m).
	LockTimeout time.Duration
	// DrainTimeout bounds Fleet.Drain before a drained instance is
	// destroyed anyway (default 10m).
	DrainTimeout time.Duration
	// OfferCacheTTL is how long an offer search is reused (default 30s).
	OfferCacheTTL time.Duration
	// Retention is how long finished operations and records of destroyed
	// instances are kept (default 7 days).
	Retention time.Duration
	// ScaleRetryInterval is how often Run reconciles again while an
	// autoscaled pool is not at its desired count (a refused or failed
	// scale-up is retried at this pace, never in a tight loop; default
	// 15s).
	ScaleRetryInterval time.Duration
}

var (
	gatewayIDRe = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	poolNameRe  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,40}$`)
	countryRe   = regexp.MustCompile(`^[A-Z]{2}$`)
)

// withDefaults returns a copy of c with defaults applied; the pools map
// and templates are copied too, so the caller's values are never shared.
func (c Config) withDefaults() Config {
	if c.Orphans == "" {
		c.Orphans = OrphansAdopt
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.BlocklistTTL <= 0 {
		c.BlocklistTTL = DefaultBlocklistTTL
	}
	if c.GhostConfirmations <= 0 {
		c.GhostConfirmations = DefaultGhostConfirmations
	}
	if c.DestroyVerifyAttempts <= 0 {
		c.DestroyVerifyAttempts = DefaultDestroyVerifyAttempts
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.StatusPollInterval <= 0 {
		c.StatusPollInterval = DefaultStatusPollInterval
	}
	if c.DestroyBackoff <= 0 {
		c.DestroyBackoff = DefaultDestroyBackoff
	}
	if c.DestroyBackoffMax <= 0 {
		c.DestroyBackoffMax = DefaultDestroyBackoffMax
	}
	if c.DestroyBackoffMax < c.DestroyBackoff {
		c.DestroyBackoffMax = c.DestroyBackoff
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = DefaultLockTimeout
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.OfferCacheTTL <= 0 {
		c.OfferCacheTTL = DefaultOfferCacheTTL
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.ScaleRetryInterval <= 0 {
		c.ScaleRetryInterval = DefaultScaleRetryInterval
	}
	pools := make(map[string]PoolTemplate, len(c.Pools))
	for name, p := range c.Pools {
		pools[name] = p.withDefaults()
	}
	c.Pools = pools
	return c
}

func (p PoolTemplate) withDefaults() PoolTemplate {
	if p.Type == "" {
		p.Type = TypeOnDemand
	}
	if len(p.Order) == 0 {
		p.Order = [][2]string{{DefaultOrder, "asc"}}
	} else {
		p.Order = append([][2]string(nil), p.Order...)
	}
	if p.Disk == 0 {
		p.Disk = DefaultDisk
	}
	if p.ReadyTimeout <= 0 {
		p.ReadyTimeout = jsondur.Duration(DefaultReadyTimeout)
	}
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.Offer.Limit <= 0 {
		p.Offer.Limit = DefaultOfferLimit
	}
	env := make(map[string]string, len(p.Env))
	for k, v := range p.Env {
		env[k] = v
	}
	p.Env = env
	p.Args = append([]string(nil), p.Args...)
	p.Offer = p.Offer.clone()
	if p.Autoscale.Enabled {
		a := &p.Autoscale
		if a.DrainTimeout <= 0 {
			a.DrainTimeout = DefaultAutoscaleDrainTimeout
		}
		if a.Warm.StartTimeout <= 0 {
			a.Warm.StartTimeout = DefaultWarmStartTimeout
		}
		if a.Warm.MaxStoppedAge <= 0 {
			a.Warm.MaxStoppedAge = DefaultWarmMaxStoppedAge
		}
	}
	return p
}

func (f OfferFilter) clone() OfferFilter {
	f.Countries = append([]string(nil), f.Countries...)
	if f.Extra != nil {
		extra := make(map[string]map[string]any, len(f.Extra))
		for k, ops := range f.Extra {
			m := make(map[string]any, len(ops))
			for op, v := range ops {
				m[op] = v
			}
			extra[k] = m
		}
		f.Extra = extra
	}
	return f
}

// Validate reports configuration mistakes, naming the field. It checks the
// configuration as given, before defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if !gatewayIDRe.MatchString(c.GatewayID) {
		bad("gateway_id %q must match [a-z0-9-]{1,32}", c.GatewayID)
	}
	switch c.Orphans {
	case "", OrphansAdopt, OrphansDestroy, OrphansIgnore:
	default:
		bad("orphans %q must be adopt, destroy or ignore", c.Orphans)
	}
	for _, msg := range notNonNegative(map[string]float64{
		"max_spend_per_hour": c.MaxSpendPerHour, "min_credit": c.MinCredit,
	}) {
		bad("%s", msg)
	}
	if c.GhostConfirmations < 0 || c.DestroyVerifyAttempts < 0 {
		bad("ghost_confirmations and destroy_verify_attempts must not be negative")
	}
	names := make([]string, 0, len(c.Pools))
	for name := range c.Pools {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := validatePool(name, c.Pools[name]); err != nil {
			errs = append(errs, err)
		}
		if gatewayIDRe.MatchString(c.GatewayID) && poolNameRe.MatchString(name) {
			// The longest label this pool can produce must fit.
			l := FormatLabel(c.GatewayID, name, strings.Repeat("0", opIDLen))
			if len(l) > MaxLabelLen {
				bad("pool %q: label %q would exceed %d characters", name, l, MaxLabelLen)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// ValidatePool reports a pool template's mistakes, each naming the field;
// the Caddyfile parser calls it too so both config paths share one rule set.
func ValidatePool(name string, p PoolTemplate) error { return validatePool(name, p) }

func validatePool(name string, p PoolTemplate) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("pool %q: "+format, append([]any{name}, args...)...))
	}
	if !poolNameRe.MatchString(name) {
		bad("name must match [A-Za-z0-9_.-]{1,40}")
	}
	if p.Image == "" && p.TemplateHashID == "" {
		bad("image: an image or a template_hash_id is required")
	}
	if p.Disk != 0 && p.Disk < 8 {
		bad("disk %v GB must be at least 8", p.Disk)
	}
	for k := range p.Env {
		if err := CheckEnvKey(k); err != nil {
			bad("env: %v", err)
		}
	}
	switch p.Type {
	case "", TypeOnDemand:
		if p.BidPrice != 0 {
			bad("bid_price needs type %q", TypeBid)
		}
	case TypeBid:
		if !(p.BidPrice >= 0.001 && p.BidPrice <= 128) {
			bad("bid_price %v must be between 0.001 and 128 $/hour", p.BidPrice)
		}
	default:
		bad("type %q must be %q or %q", p.Type, TypeOnDemand, TypeBid)
	}
	for _, o := range p.Order {
		if o[0] == "" || (o[1] != "asc" && o[1] != "desc") {
			bad("order entry %q must be [field, asc|desc]", o)
		}
	}
	if p.MinInstances < 0 || p.MaxInstances < 0 || p.MaxAttempts < 0 {
		bad("min_instances, max_instances and max_attempts must not be negative")
	}
	if p.MaxInstances > 0 && p.MinInstances > p.MaxInstances {
		bad("min_instances %d is above max_instances %d", p.MinInstances, p.MaxInstances)
	}
	for _, msg := range notNonNegative(map[string]float64{
		"max_price_per_hour": p.MaxPricePerHour, "max_spend_per_hour": p.MaxSpendPerHour,
	}) {
		bad("%s", msg)
	}
	if p.MaxPricePerHour > 0 && p.MaxSpendPerHour > 0 && p.MaxPricePerHour > p.MaxSpendPerHour {
		bad("max_price_per_hour %v is above max_spend_per_hour %v: no instance could ever start", p.MaxPricePerHour, p.MaxSpendPerHour)
	}
	for _, msg := range p.Offer.problems() {
		bad("offer.%s", msg)
	}
	if p.MaxLifetime < 0 || p.ReadyTimeout < 0 {
		bad("max_lifetime and ready_timeout must not be negative")
	}
	for _, msg := range p.Autoscale.problems(p.MinInstances) {
		bad("%s", msg)
	}
	return errors.Join(errs...)
}

// problems lists an autoscale block's mistakes, named as the root
// package's config names them.
func (a AutoscaleSpec) problems(minInstances int) []string {
	var out []string
	if a.Enabled && minInstances > 0 {
		out = append(out, fmt.Sprintf("min_instances %d cannot be set on an autoscaled pool (use autoscale min instead)", minInstances))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"autoscale.drain_timeout", a.DrainTimeout},
		{"autoscale.warm.start_timeout", a.Warm.StartTimeout},
		{"autoscale.warm.max_stopped_age", a.Warm.MaxStoppedAge},
	} {
		if f.v < 0 {
			out = append(out, fmt.Sprintf("%s %s must not be negative", f.name, f.v))
		}
	}
	if a.Warm.Stopped < 0 {
		out = append(out, fmt.Sprintf("autoscale.warm.stopped %d must not be negative", a.Warm.Stopped))
	}
	return out
}

// Validate reports the filter's mistakes, naming each field; every path
// that builds a filter (JSON config, Caddyfile, admin API) gets the same
// checks and the same words.
func (f OfferFilter) Validate() error {
	var errs []error
	for _, msg := range f.problems() {
		errs = append(errs, errors.New(msg))
	}
	return errors.Join(errs...)
}

// problems lists the filter's mistakes as "field: problem", in field order.
func (f OfferFilter) problems() []string {
	out := notNonNegative(map[string]float64{
		"max_dph": f.MaxDPH, "min_gpu_ram_gb": f.MinGPURAMGB, "min_cuda": f.MinCUDA,
	})
	switch {
	case f.MinReliability < 0:
		out = append(out, fmt.Sprintf("min_reliability: %v is below 0", f.MinReliability))
	case f.MinReliability > 1:
		out = append(out, fmt.Sprintf("min_reliability: %v is above 1", f.MinReliability))
	}
	for _, cc := range f.Countries {
		if !countryRe.MatchString(cc) {
			out = append(out, fmt.Sprintf("countries entry %q must be a two-letter upper-case code", cc))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(f.Extra)) {
		ops := f.Extra[k]
		if k == "" || len(ops) == 0 {
			out = append(out, fmt.Sprintf("extra %q needs a field name and at least one operator", k))
		}
		for _, op := range slices.Sorted(maps.Keys(ops)) {
			if err := CheckFilterOperator(op); err != nil {
				out = append(out, fmt.Sprintf("extra %q: %v", k, err))
			}
		}
	}
	return out
}

// FilterOperators are the operators of vast.ai's offer search: the only
// ones an OfferFilter.Extra entry may use (vast.ai answers others with an
// error at the first search, long after the config loaded).
var FilterOperators = []string{"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"}

// CheckFilterOperator refuses an operator that is not in FilterOperators.
func CheckFilterOperator(op string) error {
	if slices.Contains(FilterOperators, op) {
		return nil
	}
	return fmt.Errorf("operator %q is not one of %s", op, strings.Join(FilterOperators, " "))
}

// CheckEnvKey refuses an env key a pool may not set: an empty one, and
// EnvToken, which is generated per instance. EnvToken is matched without
// regard to case, on purpose: a "web_password" next to the generated
// WEB_PASSWORD is at best a typo of a setting that cannot work and at worst
// read by a case-insensitive consumer in the image; refusing it costs
// nothing.
func CheckEnvKey(key string) error {
	switch {
	case key == "":
		return errors.New("an empty key")
	case key == EnvToken:
		return fmt.Errorf("%s is generated per instance and cannot be set", EnvToken)
	case strings.EqualFold(key, EnvToken):
		return fmt.Errorf("%s: %s is generated per instance and cannot be set (env names are compared without case)", key, EnvToken)
	}
	return nil
}

// notNonNegative names each of the fields (money figures) that is negative,
// NaN or infinite, in field order.
func notNonNegative(fields map[string]float64) []string {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []string
	for _, name := range names {
		if v := fields[name]; v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			out = append(out, fmt.Sprintf("%s %v must be a non-negative number", name, v))
		}
	}
	return out
}
