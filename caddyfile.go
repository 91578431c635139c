package vastai

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// Caddyfile parsing lives in the caddyfile*.go files, one per block:
//
//	caddyfile.go            the vastai global option (App) and the argument helpers
//	caddyfile_pool.go       pool { ... }, its token and health { ... }
//	caddyfile_provision.go  provision { ... } and offer { ... }
//	caddyfile_ssh.go        ssh { ... } and engines { ... }
//	caddyfile_proxy.go      the vastai_proxy directive and dynamic vastai
//	caddyfile_models.go     the vastai_models directive
//	caddyfile_transport.go  transport vastai { ... }
//	caddyfile_keys.go       keys { ... } and the vastai_keys directive
//
// Every option has its own case; an error names the block and the option.

func init() {
	httpcaddyfile.RegisterGlobalOption("vastai", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("vastai_proxy", parseVastaiProxy)
	httpcaddyfile.RegisterDirectiveOrder("vastai_proxy", httpcaddyfile.After, "reverse_proxy")
}

// parseGlobalOption parses the vastai global option into apps.vastai; see
// App.UnmarshalCaddyfile for the syntax.
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

// UnmarshalCaddyfile sets up the app from the vastai global option. Syntax:
//
//	vastai {
//		api_key       <key>         # required; use {env.VAST_API_KEY}
//		api_url       <url>         # default https://console.vast.ai
//		poll_interval <duration>    # default 10s
//		max_concurrent_probes <n>   # default 64
//		gateway_id         <id>     # default "default"; labels cv:<id>:<pool>:<op>
//		reconcile_interval <duration>       # default 5m
//		lease_ttl          <duration>       # default 2m: takeover delay after a crash
//		provision_poll_interval <duration>  # default 5s
//		orphans            adopt | destroy | ignore
//		max_spend_per_hour <$/h>            # gateway budget
//		min_credit         <$>              # refuse new instances below this credit
//		refuse_literal_secrets              # fail the load on a secret not written as {env.NAME} / {file.PATH}
//		pool <name> {                       # repeatable
//			label        <label>            # exact label match
//			label_prefix <prefix>           # label prefix match
//			port         <port>             # engine container port, default 8000
//			token jupyter_token | env <NAME> | static <value>
//			health {
//				path                <path>       # default /health
//				method              <method>     # default GET
//				body                <json>       # e.g. a 1-token completion
//				expect              <status...>  # default 200
//				interval            <duration>   # default 5s
//				timeout             <duration>   # default 5s
//				healthy_threshold   <n>          # default 1
//				unhealthy_threshold <n>          # default 2
//				grace               <duration>   # default 30m
//			}
//			provision {
//				image            <image>
//				template_hash_id <hash>
//				disk             <GB>
//				env              <KEY> <VALUE>   # repeatable
//				onstart          <script>
//				args             <arg...>
//				runtype          <runtype>
//				type             on-demand | bid <price>
//				order            <field> asc|desc  # repeatable
//				offer {
//					gpu_name         <name>        # "RTX 4090"
//					num_gpus         <n>
//					min_gpu_ram      <GB>          # tolerant: 24 matches 24564 MB cards
//					max_dph          <$/h>
//					min_reliability  <0-1>
//					verified
//					countries        <CC...>
//					min_direct_ports <n>
//					min_cuda         <version>
//					filter           <field> <op> <value>  # any vast.ai offer filter
//					limit            <n>
//				}
//				min_instances      <n>
//				max_instances      <n>
//				max_price_per_hour <$/h>
//				max_spend_per_hour <$/h>
//				max_lifetime       <duration>
//				ready_timeout      <duration>
//				max_attempts       <n>
//			}
//		}
//		ssh {
//			key              <file>              # repeatable; SSH_AUTH_SOCK is used too
//			known_hosts      storage | insecure  # default storage (trust on first use)
//			connect_timeout  <duration>          # default 20s
//			metrics_interval <duration>          # default 15s
//		}
//		engines {                             # engine /metrics for routing
//			scrape_interval <duration>          # default 2s
//			scrape_timeout  <duration>          # default scrape_interval
//			stale_after     <duration>          # default 6s
//			metrics_path    <path>              # default /metrics
//			max_concurrent_scrapes <n>          # default 16
//			off                                 # route on in-flight counts only
//		}
//		keys { ... }                          # client keys: see unmarshalKeys (caddyfile_keys.go)
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch opt := d.Val(); opt {
		case "api_key":
			err = oneArg(d, &a.APIKey)
		case "api_url":
			err = oneArg(d, &a.APIURL)
		case "poll_interval":
			err = durationArg(d, "", &a.PollInterval)
		case "max_concurrent_probes":
			err = positiveInt(d, &a.MaxConcurrentProbes)
		case "gateway_id":
			err = oneArg(d, &a.GatewayID)
		case "reconcile_interval":
			err = durationArg(d, "", &a.ReconcileInterval)
		case "lease_ttl":
			err = durationArg(d, "", &a.LeaseTTL)
		case "provision_poll_interval":
			err = durationArg(d, "", &a.ProvisionPollInterval)
		case "orphans":
			err = orphansArg(d, &a.Orphans)
		case "max_spend_per_hour":
			err = positiveFloat(d, &a.MaxSpendPerHour)
		case "min_credit":
			err = positiveFloat(d, &a.MinCredit)
		case "refuse_literal_secrets":
			err = flagArg(d, "", &a.RefuseLiteralSecrets)
		case "pool":
			err = a.unmarshalPool(d)
		case "ssh":
			if err = blockStart(d, "", a.SSH != nil); err == nil {
				a.SSH, err = unmarshalSSH(d)
			}
		case "engines":
			if err = blockStart(d, "", a.Engines != nil); err == nil {
				a.Engines, err = unmarshalEngines(d)
			}
		case "keys":
			if err = blockStart(d, "", a.Keys != nil); err == nil {
				a.Keys, err = unmarshalKeys(d) // caddyfile_keys.go
			}
		default:
			err = d.Errf("unrecognized vastai option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// orphansArg reads the orphans policy.
func orphansArg(d *caddyfile.Dispenser, dst *string) error {
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	switch v {
	case lifecycle.OrphansAdopt, lifecycle.OrphansDestroy, lifecycle.OrphansIgnore:
	default:
		return d.Errf("orphans: %q is not adopt, destroy or ignore", v)
	}
	*dst = v
	return nil
}

// The argument helpers below read the arguments of the option the
// dispenser is on into dst. Errors read "<prefix><option>: <problem>";
// prefix names the enclosing block (for example `pool "llm": health: `), or
// is empty.

// optErrf is an error about option opt of the block prefix names.
func optErrf(d *caddyfile.Dispenser, prefix, opt, format string, args ...any) error {
	return d.Errf("%s%s: "+format, append([]any{prefix, opt}, args...)...)
}

// blockStart checks that the option opens a block (no arguments) and is not
// given twice (defined reports an earlier one).
func blockStart(d *caddyfile.Dispenser, prefix string, defined bool) error {
	opt := d.Val()
	if d.NextArg() {
		return optErrf(d, prefix, opt, "expected a block")
	}
	if defined {
		return d.Errf("%s%s is defined more than once", prefix, opt)
	}
	return nil
}

// oneArg reads exactly one argument.
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

// flagArg sets dst for an option that takes no argument.
func flagArg(d *caddyfile.Dispenser, prefix string, dst *bool) error {
	opt := d.Val()
	if d.NextArg() {
		return optErrf(d, prefix, opt, "takes no argument")
	}
	*dst = true
	return nil
}

// durationArg reads exactly one positive duration.
func durationArg(d *caddyfile.Dispenser, prefix string, dst *caddy.Duration) error {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(raw)
	if err != nil || dur <= 0 {
		return optErrf(d, prefix, opt, "must be positive, got %q (a duration such as 30s or 5m)", raw)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// positiveInt reads exactly one positive integer.
func positiveInt(d *caddyfile.Dispenser, dst *int) error {
	return intArg(d, dst, 1, "a positive integer")
}

// nonNegativeInt reads exactly one integer >= 0.
func nonNegativeInt(d *caddyfile.Dispenser, dst *int) error {
	return intArg(d, dst, 0, "a whole number")
}

func intArg(d *caddyfile.Dispenser, dst *int, minimum int, want string) error {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < minimum {
		return d.Errf("%s: %q is not %s", opt, raw, want)
	}
	*dst = n
	return nil
}

// positiveFloat reads exactly one positive number.
func positiveFloat(d *caddyfile.Dispenser, dst *float64) error {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || f <= 0 {
		return d.Errf("%s: %q is not a positive number", opt, raw)
	}
	*dst = f
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
