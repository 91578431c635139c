package vastai

// The vastai app's Caddy lifecycle: Provision resolves placeholders and
// builds the engine configs, Validate names the faulty field, Start hands
// the config to the shared state (shared_state.go), Cleanup releases it.

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

func init() {
	caddy.RegisterModule(App{})
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
	a.keys, a.keysErr = a.Keys.settings(repl, a.gatewayID(), slices.Sorted(maps.Keys(a.Pools)))

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
	if a.keysErr != nil {
		return a.keysErr
	}
	if a.PollInterval < 0 {
		return fmt.Errorf("poll_interval: must not be negative, got %s", time.Duration(a.PollInterval))
	}
	if err := a.SSH.validate(); err != nil {
		return err
	}
	if err := a.Engines.validate(); err != nil {
		return err
	}
	// The autoscale block first: its messages name the JSON fields.
	for _, name := range slices.Sorted(maps.Keys(a.Pools)) {
		if p := a.Pools[name]; p.Autoscale != nil {
			if err := p.Autoscale.validate(name, p); err != nil {
				return err
			}
		}
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

// scalerConfigs are the autoscaled pools' settings.
func (a *App) scalerConfigs() map[string]scalerConfig {
	out := map[string]scalerConfig{}
	for name, p := range a.Pools {
		if p != nil && p.Autoscale != nil {
			out[name] = p.Autoscale.scaler()
		}
	}
	return out
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
// api_key, static tokens, client key secrets and provision env values (Docker options such as
// "-p 8000:8000" excepted). New secret fields belong here.
func (a *App) literalSecretFields() []string {
	var out []string
	if isLiteralSecret(a.APIKey) {
		out = append(out, "api_key")
	}
	if a.Keys != nil {
		for _, name := range slices.Sorted(maps.Keys(a.Keys.Keys)) {
			if k := a.Keys.Keys[name]; k != nil && isLiteralSecret(k.Secret) {
				out = append(out, "keys.keys."+name+".secret")
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(a.Pools)) {
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
		for _, k := range slices.Sorted(maps.Keys(p.Provision.Env)) {
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
	return a.state.apply(a.logger, applied{
		client: clientSettings{baseURL: base, apiKey: a.apiKey},
		fleet: fleet.Config{
			Pools:               a.specs,
			PollInterval:        interval,
			MaxConcurrentProbes: a.MaxConcurrentProbes,
		},
		ssh:       a.SSH,
		hostKeys:  prefixedStore{a.storage, "vastai/"},
		lifecycle: a.lifecycle,
		store:     a.storage,
		engines:   a.Engines.settings(),
		models:    a.modelRouting,
		keys:      a.keys,
		autoscale: a.scalerConfigs(),
	})
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
	names := slices.Sorted(maps.Keys(a.Pools))
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

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
