// Package vastai is a Caddy plugin that fronts inference engines running on
// rented vast.ai GPU instances. This package holds the Caddy modules; the
// engine lives in the Caddy-free packages vastclient (the vast.ai REST
// client), fleet (the watcher and its immutable snapshots) and vastsim (a
// simulated vast.ai for tests and the demo).
//
// Where things happen:
//   - module.go: the app (apps.vastai): configuration, validation, start/stop.
//   - state.go: what survives config reloads, including the single watcher loop.
//   - upstreams.go: the request path's upstream list (a snapshot read).
//   - transport.go: per-instance Bearer tokens on every proxied attempt.
//   - admin.go: the /vastai/ admin API.
//   - caddyfile.go: the vastai global option and the vastai_proxy directive.
//   - metrics.go: Prometheus collectors.
package vastai

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultAPIURL is the vast.ai API base used when api_url is not set.
const DefaultAPIURL = "https://console.vast.ai"

// App is the vastai app: the control plane that watches a vast.ai account
// and keeps an up-to-date, immutable view of every pool's instances for the
// vastai upstream source and transport.
type App struct {
	// The vast.ai API key. Placeholders such as {env.VAST_API_KEY} are
	// resolved when the config is loaded; the resolved key never appears in
	// the config, logs, errors, metrics or the admin API. Required.
	APIKey string `json:"api_key,omitempty"`

	// Base URL of the vast.ai API. Default: https://console.vast.ai.
	APIURL string `json:"api_url,omitempty"`

	// How often the instance list is fetched. Default: 10s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// Pools of instances, by name. Upstream sources refer to a pool by name.
	// Each instance belongs to at most one pool: the one whose selector
	// matches its label most precisely (exact label, then the longest
	// label prefix, then a pool with no selector).
	Pools map[string]*Pool `json:"pools,omitempty"`

	// Maximum number of health probes in flight at once, over all pools.
	// Default: 64.
	MaxConcurrentProbes int `json:"max_concurrent_probes,omitempty"`

	// SSH access to the instances, for GPU metrics (nvidia-smi) and the
	// tunnel transport. Without it, no SSH connection is ever made.
	SSH *SSHConfig `json:"ssh,omitempty"`

	// Names this gateway in the labels of the instances it creates
	// ("cv:<gateway_id>:<pool>:<operation>") and in its storage keys;
	// [a-z0-9-]{1,32}. Gateways sharing a vast.ai account need distinct
	// ids: each only ever touches instances labelled with its own.
	// Default: "default".
	GatewayID string `json:"gateway_id,omitempty"`

	// How often the fleet is reconciled: orphans (our label, no record),
	// ghosts (a record, no instance), pools below min_instances, instances
	// past max_lifetime, unconfirmed destroys. Default: 5m.
	ReconcileInterval caddy.Duration `json:"reconcile_interval,omitempty"`

	// What reconciliation does with an instance that carries this
	// gateway's label but has no record: "adopt" (default), "destroy"
	// (only after two consecutive sightings) or "ignore".
	Orphans string `json:"orphans,omitempty"`

	// Gateway budget in $/hour over all pools: a provisioning that would
	// exceed it is refused (0: none).
	MaxSpendPerHour float64 `json:"max_spend_per_hour,omitempty"`

	// New instances are refused while the account credit is below this
	// many dollars (0: no check).
	MinCredit float64 `json:"min_credit,omitempty"`

	// How long an in-progress provisioning stays leased to the process
	// working on it. After a crash, another process (or the restarted one)
	// takes it over once the lease expires. Default: 2m.
	LeaseTTL caddy.Duration `json:"lease_ttl,omitempty"`

	// How often a provisioning in progress checks its instance's state.
	// Default: 5s.
	ProvisionPollInterval caddy.Duration `json:"provision_poll_interval,omitempty"`

	// Refuse to load a config that holds a secret (api_key, a static
	// token, a provision env value) literally instead of as {env.NAME} or
	// {file.PATH} placeholders. Caddy serves the config as written at GET
	// /config/, so only those placeholders keep a secret out of it; a
	// Caddyfile {$VAR} is expanded when the Caddyfile is adapted and is
	// literal too. Without this option each literal secret is logged as a
	// warning naming the field, and the config loads.
	RefuseLiteralSecrets bool `json:"refuse_literal_secrets,omitempty"`

	storage caddyStorage
	apiKey  string
	// literalSecrets names the fields that hold a literal secret.
	literalSecrets []string
	specs          []fleet.PoolSpec
	lifecycle      lifecycle.Config
	state          *state
	logger         *zap.Logger
}

// Pool selects instances of the account and says how to reach their engine.
type Pool struct {
	// Select instances whose label equals this value.
	Label string `json:"label,omitempty"`

	// Select instances whose label starts with this value. With neither
	// label nor label_prefix, the pool selects every instance on the account.
	LabelPrefix string `json:"label_prefix,omitempty"`

	// The engine's container port, reached at public_ipaddr and the host
	// port vast.ai maps to "<port>/tcp". Default: 8000.
	Port int `json:"port,omitempty"`

	// Where each instance's Bearer token comes from. Default: the
	// instance's jupyter_token.
	Token *TokenConfig `json:"token,omitempty"`

	// Active health probes of the engines. Only instances whose engine
	// passes them receive traffic. Default: GET /health every 5s.
	Health *HealthConfig `json:"health,omitempty"`

	// What to provision for this pool, and its size and price limits.
	// Without it the pool only routes to instances created elsewhere.
	Provision *ProvisionConfig `json:"provision,omitempty"`
}

// HealthConfig configures a pool's active probes. Probes carry the
// instance's Bearer token and take the same path as traffic.
type HealthConfig struct {
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
	Interval caddy.Duration `json:"interval,omitempty"`

	// Time limit of one probe. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Consecutive successes that make an instance ready. Default: 1.
	HealthyThreshold int `json:"healthy_threshold,omitempty"`

	// Consecutive failures (probes, or connection errors and 5xx of live
	// traffic) that make a ready instance unhealthy. Default: 2.
	UnhealthyThreshold int `json:"unhealthy_threshold,omitempty"`

	// Start-up grace: while an engine is starting (pulling weights can
	// take many minutes), failing probes do not make it unhealthy; past
	// the grace it is reported as failed. Default: 30m.
	Grace caddy.Duration `json:"grace,omitempty"`
}

func (h *HealthConfig) spec() fleet.HealthSpec {
	if h == nil {
		return fleet.HealthSpec{}
	}
	return fleet.HealthSpec{
		Path: h.Path, Method: h.Method, Body: h.Body, Expect: h.Expect,
		Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout),
		HealthyThreshold: h.HealthyThreshold, UnhealthyThreshold: h.UnhealthyThreshold,
		Grace: time.Duration(h.Grace),
	}
}

// TokenConfig says where an instance's Bearer token comes from.
type TokenConfig struct {
	// "jupyter_token" (default), "env" (a variable of the instance's
	// extra_env) or "static" (one token for every instance).
	Source string `json:"source,omitempty"`

	// The extra_env variable name, for source "env" (for example
	// WEB_PASSWORD).
	Name string `json:"name,omitempty"`

	// The token, for source "static". Placeholders such as {env.TOKEN} are
	// resolved when the config is loaded.
	Value string `json:"value,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "vastai",
		New: func() caddy.Module { return new(App) },
	}
}

// Sentinel errors for configuration problems.
var (
	ErrMissingAPIKey = errors.New("api_key is required")
	ErrUnknownPool   = errors.New("unknown pool")
	ErrNotConfigured = errors.New("the vastai app is not configured (add a vastai global option or apps.vastai)")
)

// Provision resolves placeholders and builds the pool specs. It does not
// touch the running watcher: a provisioned config may never start, so the
// new configuration is applied in Start.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.storage = ctx.Storage()
	a.literalSecrets = a.literalSecretFields()
	if !a.RefuseLiteralSecrets {
		for _, f := range a.literalSecrets {
			a.logger.Warn("literal secret in the config: GET /config/ serves it to anyone who can reach the admin endpoint; write it as {env.NAME} or {file.PATH}",
				zap.String("field", f))
		}
	}
	repl := caddy.NewReplacer()
	a.apiKey = strings.TrimSpace(repl.ReplaceAll(a.APIKey, ""))
	a.specs = a.specs[:0]
	for name, p := range a.Pools {
		if p == nil {
			p = new(Pool)
			a.Pools[name] = p
		}
		spec := fleet.PoolSpec{Name: name, Label: p.Label, LabelPrefix: p.LabelPrefix, Port: p.Port, Health: p.Health.spec()}
		if p.Provision != nil {
			spec.ManagedPrefix = lifecycle.PoolLabelPrefix(a.gatewayID(), name)
		}
		if p.Token != nil {
			spec.Token = fleet.TokenSource{Kind: p.Token.Source}
			switch p.Token.Source {
			case fleet.TokenEnv:
				spec.Token.Value = p.Token.Name
			case fleet.TokenStatic:
				spec.Token.Value = repl.ReplaceAll(p.Token.Value, "")
			}
		}
		a.specs = append(a.specs, spec)
	}
	fleet.SortPools(a.specs)
	a.lifecycle = a.lifecycleConfig(repl)

	st, _, err := states.LoadOrNew(stateKey, func() (caddy.Destructor, error) {
		return newState(), nil
	})
	if err != nil {
		return fmt.Errorf("loading shared state: %w", err)
	}
	a.state = st.(*state)
	return a.state.registerMetrics(ctx)
}

// Validate reports configuration mistakes, naming the field.
func (a *App) Validate() error {
	if a.apiKey == "" {
		if a.APIKey != "" {
			return fmt.Errorf("%w: %q resolved to an empty value", ErrMissingAPIKey, a.APIKey)
		}
		return ErrMissingAPIKey
	}
	if a.RefuseLiteralSecrets && len(a.literalSecrets) > 0 {
		return fmt.Errorf("%s: a literal secret, which GET /config/ would serve; write it as {env.NAME} or {file.PATH} (refuse_literal_secrets is on)",
			strings.Join(a.literalSecrets, ", "))
	}
	if _, err := a.apiURL(); err != nil {
		return err
	}
	if a.PollInterval < 0 {
		return fmt.Errorf("poll_interval: must not be negative, got %s", time.Duration(a.PollInterval))
	}
	if err := a.SSH.validate(); err != nil {
		return err
	}
	if err := a.lifecycle.Validate(); err != nil {
		return withoutSentinel(err, lifecycle.ErrInvalidConfig)
	}
	if a.MaxConcurrentProbes < 0 {
		return errors.New("max_concurrent_probes: must not be negative")
	}
	if a.PollInterval > 0 && time.Duration(a.PollInterval) < 500*time.Millisecond {
		return fmt.Errorf("poll_interval: %s is below the minimum of 500ms", time.Duration(a.PollInterval))
	}
	for _, spec := range a.specs {
		if err := spec.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// secretPlaceholder matches the placeholders that are resolved when the
// config is loaded and never stored in it.
var secretPlaceholder = regexp.MustCompile(`\{(env|file)\.[^{}]+\}`)

// isLiteralSecret reports whether a secret-bearing value holds anything
// but {env.NAME} and {file.PATH} placeholders (and spaces).
func isLiteralSecret(v string) bool {
	return strings.TrimSpace(secretPlaceholder.ReplaceAllString(v, "")) != ""
}

// literalSecretFields names the secret-bearing fields written literally:
// api_key, static tokens and provision env values (Docker options such as
// "-p 8000:8000" excepted). New secret fields belong here.
func (a *App) literalSecretFields() []string {
	var out []string
	if isLiteralSecret(a.APIKey) {
		out = append(out, "api_key")
	}
	names := make([]string, 0, len(a.Pools))
	for n := range a.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		p := a.Pools[name]
		if p == nil {
			continue
		}
		if p.Token != nil && p.Token.Source == fleet.TokenStatic && isLiteralSecret(p.Token.Value) {
			out = append(out, "pools."+name+".token.value")
		}
		if p.Provision == nil {
			continue
		}
		keys := make([]string, 0, len(p.Provision.Env))
		for k := range p.Provision.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !strings.HasPrefix(k, "-") && isLiteralSecret(p.Provision.Env[k]) {
				out = append(out, "pools."+name+".provision.env."+k)
			}
		}
	}
	return out
}

// withoutSentinel drops sentinel from an error made with
// fmt.Errorf("%w: %w", sentinel, detail): Caddy already reports
// "invalid configuration", so only the detail is worth saying.
func withoutSentinel(err, sentinel error) error {
	u, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var rest []error
	for _, e := range u.Unwrap() {
		if e != sentinel {
			rest = append(rest, e)
		}
	}
	if len(rest) == 0 {
		return err
	}
	return errors.Join(rest...)
}

func (a *App) apiURL() (string, error) {
	raw := a.APIURL
	if raw == "" {
		raw = DefaultAPIURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("api_url: %q is not an absolute http(s) URL", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

// Start hands this configuration to the shared state. The shared state owns
// the one watcher loop; starting a reloaded config reconfigures that loop
// instead of starting another. Start never fails because vast.ai is
// unreachable: API trouble is reported in logs, metrics and the admin API.
func (a *App) Start() error {
	base, err := a.apiURL()
	if err != nil {
		return err
	}
	interval := time.Duration(a.PollInterval)
	if interval == 0 {
		interval = fleet.DefaultPollInterval
	}
	return a.state.apply(a.logger, clientSettings{baseURL: base, apiKey: a.apiKey}, fleet.Config{
		Pools:               a.specs,
		PollInterval:        interval,
		MaxConcurrentProbes: a.MaxConcurrentProbes,
	}, a.SSH, prefixedStore{a.storage, "vastai/"}, a.lifecycle, a.storage)
}

// Stop does nothing: on a reload the new app has already taken over the
// shared watcher, and on shutdown Cleanup releases it. Nothing is ever
// destroyed on stop.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's reference to the shared state; the watcher
// stops when the last reference goes (process exit or vastai removed from
// the config).
func (a *App) Cleanup() error {
	if a.state == nil {
		return nil
	}
	_, err := states.Delete(stateKey)
	return err
}

// poolNames lists the configured pools for error messages.
func (a *App) poolNames() string {
	names := make([]string, 0, len(a.Pools))
	for n := range a.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// lookupApp finds the configured vastai app from another module.
func lookupApp(ctx caddy.Context) (*App, error) {
	appIface, err := ctx.AppIfConfigured("vastai")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, ErrNotConfigured
		}
		return nil, fmt.Errorf("loading the vastai app: %w", err)
	}
	app, ok := appIface.(*App)
	if !ok {
		return nil, fmt.Errorf("vastai app has unexpected type %T", appIface)
	}
	return app, nil
}

// caddyStorage is the part of Caddy's storage the plugin uses: host keys,
// provisioning records and the reconciliation lock.
type caddyStorage interface {
	lifecycle.Store
}

// prefixedStore keeps the plugin's keys under one folder of Caddy's storage.
type prefixedStore struct {
	s      caddyStorage
	prefix string
}

func (p prefixedStore) Load(ctx context.Context, key string) ([]byte, error) {
	return p.s.Load(ctx, p.prefix+key)
}

func (p prefixedStore) Store(ctx context.Context, key string, value []byte) error {
	return p.s.Store(ctx, p.prefix+key, value)
}

// clientSettings identify a vast.ai client; the client (and its per-endpoint
// pacing) is reused across reloads while they do not change.
type clientSettings struct {
	baseURL string
	apiKey  string
}

func (c clientSettings) newClient(log *zap.Logger) (*vastclient.Client, error) {
	return vastclient.New(vastclient.Config{BaseURL: c.baseURL, APIKey: c.apiKey, Logger: log})
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
