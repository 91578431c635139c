package vastai

// The JSON configuration of the vastai app: every type Caddy decodes, with
// its doc comments, and the conversions into the engine packages' types.
// Validation lives in app.go (App.Validate) and the engine packages.

import (
	"fmt"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// DefaultAPIURL is the vast.ai API base used when api_url is not set; it
// is vastclient's default, named here for the app's users.
const DefaultAPIURL = vastclient.DefaultBaseURL

// App is the vastai app: the control plane that watches a vast.ai account
// and keeps an up-to-date, immutable view of every pool's instances for the
// vastai upstream source and transport.
type App struct {
	// The vast.ai API key. Placeholders such as {env.VAST_API_KEY} are
	// resolved when the config is loaded; the resolved key never appears in
	// the config, logs, errors, metrics or the admin API. Required.
	APIKey string `json:"api_key,omitempty"`

	// Base URL of the vast.ai API. Default: https://console.vast.ai
	// (DefaultAPIURL).
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

	// Reading the engines' own load figures (/metrics) for the vastai
	// selection policies, the admin API, the dashboard and metrics.
	// Default: every routable instance every 2s.
	Engines *EnginesConfig `json:"engines,omitempty"`

	// Client API keys, their limits, budgets and prices (checked by the
	// vastai_keys handler). Keys created through the admin API need no
	// config; this block defines keys in the config and sets the prices.
	Keys *KeysConfig `json:"keys,omitempty"`

	storage caddyStorage
	apiKey  string
	// literalSecrets names the fields that hold a literal secret.
	literalSecrets []string
	specs          []fleet.PoolSpec
	lifecycle      lifecycle.Config
	state          *state
	logger         *zap.Logger
	// modelRouting is set by a vastai_models handler's Provision (before
	// Start) so that the state learns the engines' models.
	modelRouting bool
	keys         keySettings
	keysErr      error
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

	// Size the pool to its load, between min and max, instead of keeping
	// provision's min_instances; with min 0, hold requests while the pool
	// wakes from zero. Needs provision.
	Autoscale *AutoscaleConfig `json:"autoscale,omitempty"`
}

// AutoscaleConfig sizes a provisioned pool to its load. The load is the
// pool's in-flight requests plus the requests its engines report waiting
// (and, at zero, the requests held). Every decision_interval the desired
// count becomes ceil(average load over stable_window / target_load),
// within [min, max]: up after scale_up_delay of agreeing decisions (at
// once when the panic_window average reaches panic_threshold times
// capacity), down by one instance per scale_down_delay, to zero only
// after idle_to_zero without a request. Budgets, max_instances and
// min_credit still apply. Scale-down drains before it stops (warm) or
// destroys.
type AutoscaleConfig struct {
	// The fewest instances kept. 0 (the default) lets the pool go to zero
	// after idle_to_zero; requests that arrive then are held while one
	// instance starts.
	Min int `json:"min,omitempty"`

	// The most instances the autoscaler asks for; required, at least 1
	// and at least min, and at most provision's max_instances when set.
	Max int `json:"max,omitempty"`

	// The load one instance should carry: in-flight plus engine-waiting
	// requests. Default: 8.
	TargetLoad float64 `json:"target_load,omitempty"`

	// How often the desired count is decided. Default: 10s.
	DecisionInterval caddy.Duration `json:"decision_interval,omitempty"`

	// The window whose average load sets the desired count. Default: 60s.
	StableWindow caddy.Duration `json:"stable_window,omitempty"`

	// The short window that detects bursts. Default: 6s.
	PanicWindow caddy.Duration `json:"panic_window,omitempty"`

	// The multiple of capacity (ready instances x target_load) the panic
	// window's average must reach to scale up at once and block
	// scale-down. Default: 2.
	PanicThreshold float64 `json:"panic_threshold,omitempty"`

	// How long the load must keep asking for more instances before the
	// count rises. Default: 30s.
	ScaleUpDelay caddy.Duration `json:"scale_up_delay,omitempty"`

	// How long the load must keep asking for fewer instances before the
	// count falls by one, and the least time between two scale-downs.
	// Default: 10m.
	ScaleDownDelay caddy.Duration `json:"scale_down_delay,omitempty"`

	// With min 0, how long without any request sends the pool to zero.
	// Default: 15m.
	IdleToZero caddy.Duration `json:"idle_to_zero,omitempty"`

	// How long a scale-down waits for the instance's requests (streams
	// included) to finish. An instance still serving after it is kept and
	// returned to routing. Default: 2m.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	// How many requests may be held while the pool has no ready instance;
	// one more gets 503 capacity_unavailable at once. Default: 64.
	MaxPending int `json:"max_pending,omitempty"`

	// How long one request is held at most before a 503
	// capacity_unavailable with Retry-After. Default: 60s.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// A warm pool of stopped instances (disk and weights kept, storage
	// billed): scale-down stops instead of destroying, and scale-up starts
	// the cheapest stopped instance before creating. Default: none.
	Warm *WarmConfig `json:"warm,omitempty"`
}

// WarmConfig is a pool's warm pool. On vast.ai a stopped instance gives
// its GPU back: a start waits ("scheduling") if someone else rented it,
// so a start is given up after start_timeout and the next warm instance,
// then a new one, is tried.
type WarmConfig struct {
	// The most stopped instances kept. Required, at least 1.
	Stopped int `json:"stopped,omitempty"`

	// How long a start may take to reach ready. Default: 90s.
	StartTimeout caddy.Duration `json:"start_timeout,omitempty"`

	// A stopped instance older than this is destroyed, with verification.
	// Default: 7d.
	MaxStoppedAge caddy.Duration `json:"max_stopped_age,omitempty"`
}

// HealthConfig configures a pool's active probes. Probes carry the
// instance's Bearer token and take the same path as traffic.
// The fields, their JSON and their docs are fleet.HealthSpec's.
type HealthConfig struct {
	fleet.HealthSpec
}

func (h *HealthConfig) spec() fleet.HealthSpec {
	if h == nil {
		return fleet.HealthSpec{}
	}
	return h.HealthSpec
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

// DefaultGatewayID names the gateway when gateway_id is not set.
const DefaultGatewayID = "default"

func (a *App) gatewayID() string {
	if a.GatewayID == "" {
		return DefaultGatewayID
	}
	return a.GatewayID
}

// SSHConfig configures SSH to the instances: GPU metrics with nvidia-smi,
// and the tunnel transport. Connections are made as root, directly to
// public_ipaddr and the port mapped to 22/tcp first, else through vast.ai's
// SSH proxy.
type SSHConfig struct {
	// Private key files; every one is tried. The keys of the agent at
	// SSH_AUTH_SOCK are used too when that variable is set.
	Keys []string `json:"keys,omitempty"`

	// How host keys are checked: "storage" (default) trusts the first key
	// an instance presents and remembers it in Caddy's storage, refusing a
	// changed key; "insecure" accepts any key (a man in the middle could
	// then read tokens and traffic).
	KnownHosts string `json:"known_hosts,omitempty"`

	// Time limit for opening an SSH connection. Default: 20s.
	ConnectTimeout caddy.Duration `json:"connect_timeout,omitempty"`

	// How often GPU metrics are collected from each instance. Default: 15s.
	MetricsInterval caddy.Duration `json:"metrics_interval,omitempty"`
}

// Known-hosts policies.
const (
	KnownHostsStorage  = "storage"
	KnownHostsInsecure = "insecure"
)

// DefaultMetricsInterval is how often GPU metrics are collected by default.
const DefaultMetricsInterval = 15 * time.Second

func (c *SSHConfig) validate() error {
	if c == nil {
		return nil
	}
	if len(c.Keys) == 0 {
		return fmt.Errorf("ssh: key: at least one private key file is required")
	}
	// Unreadable keys are a configuration error now, not a connection
	// error for every instance later.
	for _, f := range c.Keys {
		pem, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("ssh: key: %w", err)
		}
		if _, err := ssh.ParsePrivateKey(pem); err != nil {
			return fmt.Errorf("ssh: key %s: %w", f, err)
		}
	}
	switch c.KnownHosts {
	case "", KnownHostsStorage, KnownHostsInsecure:
	default:
		return fmt.Errorf("ssh: known_hosts: %q is not storage or insecure", c.KnownHosts)
	}
	if c.ConnectTimeout < 0 || c.MetricsInterval < 0 {
		return fmt.Errorf("ssh: durations must not be negative")
	}
	return nil
}

// ProvisionConfig describes the instances a pool wants: what to run, on
// which offers, how many, and within which limits. Instances created for a
// pool are labelled "cv:<gateway_id>:<pool>:<operation>" at creation, get a
// generated per-instance token in WEB_PASSWORD (the pool's default token
// source then becomes "env WEB_PASSWORD"), and are recorded in Caddy's
// storage before vast.ai is called.
type ProvisionConfig struct {
	// The engine's template carries the fields, their JSON names and their
	// documentation; env values here may still hold placeholders.
	lifecycle.PoolTemplate
}

// template converts the configuration for the lifecycle manager.
func (p *ProvisionConfig) template(port int, repl *caddy.Replacer) lifecycle.PoolTemplate {
	t := p.PoolTemplate
	t.Env = make(map[string]string, len(p.Env)+1)
	// Values may hold placeholders such as {env.HF_TOKEN}: secrets stay
	// out of the config and are resolved when it is loaded.
	for k, v := range p.Env {
		t.Env[k] = repl.ReplaceAll(v, "")
	}
	// The engine port must be mapped or the instance is unreachable.
	port = fleet.EnginePort(port)
	portKey := fmt.Sprintf("-p %d:%d", port, port)
	if _, ok := t.Env[portKey]; !ok {
		t.Env[portKey] = "1"
	}
	return t
}

// EnginesConfig configures the scraping of every routable instance's
// engine metrics page (vLLM, SGLang, TGI; an engine without one, such as
// Ollama, is routed on the gateway's own in-flight count). Scrapes carry
// the instance's Bearer token and take the same path as traffic, run in
// parallel with bounded concurrency, and never run on the request path.
type EnginesConfig struct {
	// Turn engine scraping off: the selection policies then use the
	// gateway's in-flight counts only.
	Disabled bool `json:"disabled,omitempty"`

	// The engines' metrics path. Default: /metrics.
	MetricsPath string `json:"metrics_path,omitempty"`

	// How often each instance is scraped. Default: 2s; minimum 100ms.
	ScrapeInterval caddy.Duration `json:"scrape_interval,omitempty"`

	// Bound on one scrape. Default: scrape_interval.
	ScrapeTimeout caddy.Duration `json:"scrape_timeout,omitempty"`

	// Figures older than this are ignored for routing (a slow or failing
	// engine then counts with the gateway's in-flight count only).
	// Default: 6s; must exceed scrape_interval.
	StaleAfter caddy.Duration `json:"stale_after,omitempty"`

	// Scrapes in flight at once, over all instances. Default: 16.
	MaxConcurrentScrapes int `json:"max_concurrent_scrapes,omitempty"`
}

// KeysConfig configures client API keys: the keys defined in the config,
// how often the keys and spend in storage are read and written, and what a
// token costs. A request is charged its tokens at the pool's price per
// million tokens when one is set (pool_prices, else price_per_mtok_in and
// price_per_mtok_out); otherwise its share of the instance's time: the
// instance's dph_total times the request's duration, divided by the
// requests the instance was serving at once (counted when it ends). That
// default needs no price to be set and follows what vast.ai bills: time,
// whatever the tokens; a slow request on a busy instance costs a share,
// one alone costs the whole instance for its duration. Idle time is
// charged to no key (the cost ledger has it).
type KeysConfig struct {
	// Keys defined in the config, by name. Their secrets should be
	// placeholders ({env.TEAM_A_KEY}); a literal one is warned about (or
	// refused, with refuse_literal_secrets) like the other secrets.
	Keys map[string]*ClientKey `json:"keys,omitempty"`

	// How often the keys created through the admin API, revocations and
	// the other gateways' spend are read from storage: a revocation takes
	// effect on every gateway within this. Default: 2s; minimum 100ms.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// How often this gateway's spend is written to storage (and on
	// shutdown). Default: 5s; at most 10s.
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// Dollars per million prompt tokens, for every pool without its own
	// price in pool_prices. Unset (with price_per_mtok_out): requests are
	// charged their share of the instance's time.
	PricePerMTokIn float64 `json:"price_per_mtok_in,omitempty"`

	// Dollars per million completion tokens; see price_per_mtok_in.
	PricePerMTokOut float64 `json:"price_per_mtok_out,omitempty"`

	// Prices per million tokens by pool, overriding the two above.
	PoolPrices map[string]*TokenPrice `json:"pool_prices,omitempty"`

	// The worst-case dollars per million tokens reserved for a request to
	// a pool charged by instance time, whose real cost is known only when
	// it ends. Default: 5.
	ReservePricePerMTok float64 `json:"reserve_price_per_mtok,omitempty"`

	// The max_tokens a reservation assumes for a request that gives none.
	// Default: 1024.
	DefaultMaxTokens int `json:"default_max_tokens,omitempty"`
}

// ClientKey is one key defined in the config.
type ClientKey struct {
	// The secret clients send as "Authorization: Bearer <secret>" or
	// "x-api-key: <secret>". Use a placeholder such as {env.TEAM_A_KEY};
	// only its SHA-256 is kept once the config is loaded. Required.
	Secret string `json:"secret,omitempty"`

	// Pools the key may reach; empty: all.
	Pools []string `json:"pools,omitempty"`

	// Models the key may request; empty: all.
	Models []string `json:"models,omitempty"`

	// Requests per minute (0: no limit).
	RPM int `json:"rpm,omitempty"`

	// Prompt plus completion tokens per minute (0: no limit).
	TPM int `json:"tpm,omitempty"`

	// Requests in flight at once (0: no limit).
	MaxParallel int `json:"max_parallel,omitempty"`

	// Dollars the key may spend per budget_period (0: no budget).
	Budget float64 `json:"budget,omitempty"`

	// The budget's period: "day", "month" (default) or "total".
	BudgetPeriod string `json:"budget_period,omitempty"`

	// When the key stops working: a date (2027-01-01, midnight UTC) or an
	// RFC 3339 time. Default: never.
	Expires string `json:"expires,omitempty"`
}

// TokenPrice is a price per million tokens.
type TokenPrice struct {
	// Dollars per million prompt tokens.
	In float64 `json:"in,omitempty"`
	// Dollars per million completion tokens.
	Out float64 `json:"out,omitempty"`
}
