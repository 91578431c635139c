package vastai

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("vastai_models", parseVastaiModels)
	// Before reverse_proxy, and so before vastai_proxy (ordered after it):
	// the proxy reads the pool this handler chose.
	httpcaddyfile.RegisterDirectiveOrder("vastai_models", httpcaddyfile.Before, "reverse_proxy")
}

// parseVastaiModels parses the vastai_models directive; see
// ModelRouter.UnmarshalCaddyfile.
func parseVastaiModels(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(ModelRouter)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return m, nil
}

// UnmarshalCaddyfile sets up the handler. Syntax:
//
//	vastai_models [<matcher>] {
//		pools <pool...>         # the pools served, in order of preference; default all
//		alias <model> <pool>    # repeatable; wins over the ids the engines report
//		default <pool>          # pool of requests without a model; default the only pool
//		max_body <size>         # bound of the body read for the model; default 1MiB
//		retry_after <duration>  # Retry-After of the 503 for a model with no ready instance; default 10s
//	}
//
// Pair it with `vastai_proxy *`, which sends each request to the pool
// chosen here.
func (m *ModelRouter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("vastai_models: unexpected argument %q (options go in the block)", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := m.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalOption parses one option of the vastai_models block.
func (m *ModelRouter) unmarshalOption(d *caddyfile.Dispenser) error {
	const prefix = "vastai_models: "
	switch opt := d.Val(); opt {
	case "pools":
		m.Pools = append(m.Pools, d.RemainingArgs()...)
		if len(m.Pools) == 0 {
			return d.Errf("%spools: at least one pool name is required", prefix)
		}
	case "alias":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("%salias: expected <model> <pool>", prefix)
		}
		if _, dup := m.Aliases[args[0]]; dup {
			return d.Errf("%salias: %q is defined more than once", prefix, args[0])
		}
		if m.Aliases == nil {
			m.Aliases = map[string]string{}
		}
		m.Aliases[args[0]] = args[1]
	case "default":
		if !d.AllArgs(&m.Default) {
			return d.Errf("%sdefault: expected one pool name", prefix)
		}
	case "max_body":
		var raw string
		if !d.AllArgs(&raw) {
			return d.Errf("%smax_body: expected one size", prefix)
		}
		n, err := humanize.ParseBytes(raw)
		if err != nil || n == 0 || n > 1<<40 {
			return d.Errf("%smax_body: %q is not a positive size (such as 64KiB or 1MiB)", prefix, raw)
		}
		m.MaxBody = int64(n)
	case "retry_after":
		return durationArg(d, prefix, &m.RetryAfter)
	default:
		return d.Errf("%sunrecognized option %q", prefix, opt)
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*ModelRouter)(nil)
