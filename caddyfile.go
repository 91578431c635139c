package vastai

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("vastai", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("vastai_proxy", parseVastaiProxy)
	httpcaddyfile.RegisterDirectiveOrder("vastai_proxy", httpcaddyfile.After, "reverse_proxy")
}

// parseGlobalOption parses the vastai global option into apps.vastai.
// Syntax:
//
//	vastai {
//		api_key       <key>         # required; use {env.VAST_API_KEY}
//		api_url       <url>         # default https://console.vast.ai
//		poll_interval <duration>    # default 10s
//		pool <name> {
//			label        <label>     # exact label match
//			label_prefix <prefix>    # label prefix match
//			port         <port>      # engine container port, default 8000
//			token jupyter_token | env <NAME> | static <value>
//			health {
//				path                <path>         # default /health
//				method              <method>       # default GET
//				body                <json>         # e.g. a 1-token completion
//				expect              <status...>    # default 200
//				interval            <duration>     # default 5s
//				timeout             <duration>     # default 5s
//				healthy_threshold   <n>            # default 1
//				unhealthy_threshold <n>            # default 2
//				grace               <duration>     # default 30m
//			}
//			provision { ... }   # see unmarshalProvision
//		}
//		max_concurrent_probes <n>    # default 64
//		gateway_id         <id>                 # default "default"; labels cv:<id>:<pool>:<op>
//		reconcile_interval <duration>           # default 5m
//		lease_ttl          <duration>           # default 2m: takeover delay after a crash
//		provision_poll_interval <duration>      # default 5s
//		orphans            adopt | destroy | ignore
//		max_spend_per_hour <$/h>                # gateway budget
//		min_credit         <$>                  # refuse new instances below this credit
//		refuse_literal_secrets                  # fail the load on a secret not written as {env.NAME} / {file.PATH}
//		ssh {
//			key              <file>               # repeatable; SSH_AUTH_SOCK is used too
//			known_hosts      storage | insecure   # default storage (trust on first use)
//			connect_timeout  <duration>           # default 20s
//			metrics_interval <duration>           # default 15s
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the vastai global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "vastai", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens; see
// parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "api_key":
			if err := oneArg(d, &a.APIKey); err != nil {
				return err
			}
		case "api_url":
			if err := oneArg(d, &a.APIURL); err != nil {
				return err
			}
		case "poll_interval":
			dur, err := durationArg(d, "")
			if err != nil {
				return err
			}
			a.PollInterval = dur
		case "max_concurrent_probes":
			n, err := positiveInt(d)
			if err != nil {
				return err
			}
			a.MaxConcurrentProbes = n
		case "gateway_id", "orphans":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			if opt == "gateway_id" {
				a.GatewayID = v
			} else {
				switch v {
				case lifecycle.OrphansAdopt, lifecycle.OrphansDestroy, lifecycle.OrphansIgnore:
				default:
					return d.Errf("orphans: %q is not adopt, destroy or ignore", v)
				}
				a.Orphans = v
			}
		case "reconcile_interval", "lease_ttl", "provision_poll_interval":
			dur, err := durationArg(d, "")
			if err != nil {
				return err
			}
			switch opt {
			case "reconcile_interval":
				a.ReconcileInterval = dur
			case "lease_ttl":
				a.LeaseTTL = dur
			case "provision_poll_interval":
				a.ProvisionPollInterval = dur
			}
		case "max_spend_per_hour", "min_credit":
			f, err := positiveFloat(d)
			if err != nil {
				return err
			}
			if opt == "max_spend_per_hour" {
				a.MaxSpendPerHour = f
			} else {
				a.MinCredit = f
			}
		case "refuse_literal_secrets":
			if d.NextArg() {
				return d.Err("refuse_literal_secrets: takes no argument")
			}
			a.RefuseLiteralSecrets = true
		case "ssh":
			if d.NextArg() {
				return d.Err("ssh: expected a block")
			}
			if a.SSH != nil {
				return d.Err("ssh is defined more than once")
			}
			sc, err := unmarshalSSH(d)
			if err != nil {
				return err
			}
			a.SSH = sc
		case "pool":
			if !d.NextArg() {
				return d.Err("pool: a pool name is required")
			}
			name := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if _, dup := a.Pools[name]; dup {
				return d.Errf("pool %q is defined more than once", name)
			}
			p := new(Pool)
			if err := p.unmarshalCaddyfile(d, name); err != nil {
				return err
			}
			if a.Pools == nil {
				a.Pools = map[string]*Pool{}
			}
			a.Pools[name] = p
		default:
			return d.Errf("unrecognized vastai option %q", opt)
		}
	}
	return nil
}

func (p *Pool) unmarshalCaddyfile(d *caddyfile.Dispenser, name string) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "label":
			if err := oneArg(d, &p.Label); err != nil {
				return err
			}
		case "label_prefix":
			if err := oneArg(d, &p.LabelPrefix); err != nil {
				return err
			}
		case "port":
			var raw string
			if err := oneArg(d, &raw); err != nil {
				return err
			}
			port, err := strconv.Atoi(raw)
			if err != nil || port < 1 || port > 65535 {
				return d.Errf("pool %q: port: %q is not a port number (1-65535)", name, raw)
			}
			p.Port = port
		case "token":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("pool %q: token: expected jupyter_token, env <NAME> or static <value>", name)
			}
			tc := &TokenConfig{Source: args[0]}
			switch args[0] {
			case fleet.TokenJupyter:
				if len(args) != 1 {
					return d.Errf("pool %q: token: jupyter_token takes no argument", name)
				}
			case fleet.TokenEnv:
				if len(args) != 2 {
					return d.Errf("pool %q: token: env needs exactly one variable name", name)
				}
				tc.Name = args[1]
			case fleet.TokenStatic:
				if len(args) != 2 {
					return d.Errf("pool %q: token: static needs exactly one value", name)
				}
				tc.Value = args[1]
			default:
				return d.Errf("pool %q: token: unknown token source %q (want jupyter_token, env <NAME> or static <value>)", name, args[0])
			}
			p.Token = tc
		case "provision":
			if d.NextArg() {
				return d.Errf("pool %q: provision: expected a block", name)
			}
			if p.Provision != nil {
				return d.Errf("pool %q: provision is defined more than once", name)
			}
			pc, err := unmarshalProvision(d, name)
			if err != nil {
				return err
			}
			p.Provision = pc
		case "health":
			if d.NextArg() {
				return d.Errf("pool %q: health: expected a block", name)
			}
			if p.Health != nil {
				return d.Errf("pool %q: health is defined more than once", name)
			}
			h, err := unmarshalHealth(d, name)
			if err != nil {
				return err
			}
			p.Health = h
		default:
			return d.Errf("pool %q: unrecognized option %q", name, opt)
		}
	}
	if p.Label != "" && p.LabelPrefix != "" {
		return d.Errf("pool %q: label and label_prefix are mutually exclusive", name)
	}
	return nil
}

func unmarshalHealth(d *caddyfile.Dispenser, pool string) (*HealthConfig, error) {
	h := new(HealthConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		errf := func(format string, args ...any) error {
			return d.Errf("pool %q: health: %s: "+format, append([]any{pool, opt}, args...)...)
		}
		switch opt {
		case "path", "method", "body":
			var v string
			if err := oneArg(d, &v); err != nil {
				return nil, err
			}
			switch opt {
			case "path":
				if !strings.HasPrefix(v, "/") {
					return nil, errf("%q must start with /", v)
				}
				h.Path = v
			case "method":
				h.Method = strings.ToUpper(v)
			case "body":
				if !json.Valid([]byte(v)) {
					return nil, errf("not valid JSON (quote the body if it has spaces)")
				}
				h.Body = v
			}
		case "expect":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, errf("at least one status code is required")
			}
			for _, a := range args {
				code, err := strconv.Atoi(a)
				if err != nil || code < 100 || code > 599 {
					return nil, errf("%q is not an HTTP status code", a)
				}
				h.Expect = append(h.Expect, code)
			}
		case "interval", "timeout", "grace":
			dur, err := durationArg(d, fmt.Sprintf("pool %q: health: ", pool))
			if err != nil {
				return nil, err
			}
			switch opt {
			case "interval":
				h.Interval = dur
			case "timeout":
				h.Timeout = dur
			case "grace":
				h.Grace = dur
			}
		case "healthy_threshold", "unhealthy_threshold":
			n, err := positiveInt(d)
			if err != nil {
				return nil, err
			}
			if opt == "healthy_threshold" {
				h.HealthyThreshold = n
			} else {
				h.UnhealthyThreshold = n
			}
		default:
			return nil, d.Errf("pool %q: health: unrecognized option %q", pool, opt)
		}
	}
	return h, nil
}

func unmarshalSSH(d *caddyfile.Dispenser) (*SSHConfig, error) {
	c := new(SSHConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.Err("ssh: key: a private key file is required")
			}
			c.Keys = append(c.Keys, args...)
		case "known_hosts":
			var v string
			if err := oneArg(d, &v); err != nil {
				return nil, err
			}
			if v != KnownHostsStorage && v != KnownHostsInsecure {
				return nil, d.Errf("ssh: known_hosts: %q is not storage or insecure", v)
			}
			c.KnownHosts = v
		case "connect_timeout", "metrics_interval":
			dur, err := durationArg(d, "ssh: ")
			if err != nil {
				return nil, err
			}
			if opt == "connect_timeout" {
				c.ConnectTimeout = dur
			} else {
				c.MetricsInterval = dur
			}
		default:
			return nil, d.Errf("ssh: unrecognized option %q", opt)
		}
	}
	if len(c.Keys) == 0 {
		return nil, d.Err("ssh: key: at least one private key file is required")
	}
	return c, nil
}

// durationArg reads exactly one positive duration argument; errors name the
// option after prefix (for example `pool "llm": health: `).
func durationArg(d *caddyfile.Dispenser, prefix string) (caddy.Duration, error) {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(raw)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s%s: must be positive, got %q (a duration such as 30s or 5m)", prefix, opt, raw)
	}
	return caddy.Duration(dur), nil
}

// positiveInt reads exactly one positive integer argument.
func positiveInt(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n <= 0 {
		return 0, d.Errf("%s: %q is not a positive integer", opt, raw)
	}
	return n, nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	opt := d.Val()
	if !d.NextArg() {
		return d.Errf("%s: missing value", opt)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: too many arguments", opt)
	}
	return nil
}

// parseVastaiProxy parses the vastai_proxy directive: a reverse_proxy with
// the vastai upstream source and transport preset. Syntax:
//
//	vastai_proxy [<matcher>] <pool> {
//		<any reverse_proxy subdirective except dynamic and upstreams>
//		transport vastai { ... }   # optional, to set http transport options
//	}
func parseVastaiProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	if !d.NextArg() {
		return nil, d.Err("vastai_proxy: a pool name is required")
	}
	pool := d.Val()
	// Remove the pool name so reverse_proxy does not take it for an
	// upstream address.
	d.DeleteN(1)
	if d.NextArg() {
		return nil, d.Errf("vastai_proxy: unexpected argument %q (upstreams come from the pool)", d.Val())
	}

	userTransport := false
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "dynamic":
			return nil, d.Err("vastai_proxy: dynamic upstreams are preset to the vastai pool; use reverse_proxy for another source")
		case "to":
			return nil, d.Err("vastai_proxy: upstreams come from the vastai pool; 'to' is not allowed")
		case "transport":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if d.Val() != "vastai" {
				return nil, d.Errf("vastai_proxy: transport must be vastai (it injects each instance's token), got %q", d.Val())
			}
			userTransport = true
		}
	}
	d.Reset()

	rp := &reverseproxy.Handler{
		DynamicUpstreamsRaw: caddyconfig.JSONModuleObject(Upstreams{Pool: pool}, "source", "vastai", nil),
	}
	if !userTransport {
		rp.TransportRaw = caddyconfig.JSONModuleObject(Transport{}, "protocol", "vastai", nil)
	}
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	return rp, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
