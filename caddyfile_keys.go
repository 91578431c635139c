package vastai

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("vastai_keys", parseVastaiKeys)
	// Before reverse_proxy, and so before vastai_proxy (after
	// reverse_proxy) and vastai_models (registered before reverse_proxy by
	// a later file, so it lands between this directive and reverse_proxy):
	// a request is refused before any routing work.
	httpcaddyfile.RegisterDirectiveOrder("vastai_keys", httpcaddyfile.Before, "reverse_proxy")
}

// parseVastaiKeys parses the vastai_keys directive. Syntax:
//
//	vastai_keys [<matcher>] [<pool>] {
//		pool     <pool>    # the pool this route sends to, for keys limited to pools
//		max_body <bytes>   # default 4 MiB
//		no_usage_injection # do not add stream_options.include_usage to streams
//	}
func parseVastaiKeys(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	k := new(KeysHandler)
	err := k.UnmarshalCaddyfile(h.Dispenser)
	return k, err
}

// UnmarshalCaddyfile sets up the handler; see parseVastaiKeys.
func (k *KeysHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		k.Pool = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "pool":
			if k.Pool != "" {
				return d.Err("vastai_keys: pool is given more than once")
			}
			if err := oneArg(d, &k.Pool); err != nil {
				return err
			}
		case "max_body":
			var raw string
			if err := oneArg(d, &raw); err != nil {
				return err
			}
			n, err := strconv.ParseInt(raw, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("vastai_keys: max_body: %q is not a positive number of bytes", raw)
			}
			k.MaxBody = n
		case "no_usage_injection":
			if err := flagArg(d, "vastai_keys: ", &k.NoUsageInjection); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized vastai_keys option %q", opt)
		}
	}
	return nil
}

// unmarshalKeys parses the keys block of the vastai global option:
//
//	keys {
//		poll_interval  <duration>          # default 2s: revocations reach every gateway within it
//		flush_interval <duration>          # default 5s, at most 10s
//		price_per_mtok_in  <$>             # per million prompt tokens, every pool
//		price_per_mtok_out <$>             # per million completion tokens
//		pool_price <pool> <$in> <$out>     # repeatable; overrides the two above
//		reserve_price_per_mtok <$>         # default 5: reservation for instance-time pools
//		default_max_tokens <n>             # default 1024
//		key <name> {                       # repeatable
//			secret       {env.TEAM_A_KEY}    # required; only its SHA-256 is kept
//			pools        <pool...>
//			models       <model...>
//			rpm          <n>
//			tpm          <n>
//			max_parallel <n>
//			budget       <$> [day|month|total]   # default month
//			expires      <2027-01-01 | RFC 3339>
//		}
//	}
func unmarshalKeys(d *caddyfile.Dispenser) (*KeysConfig, error) {
	c := &KeysConfig{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "poll_interval":
			err = durationArg(d, "keys: ", &c.PollInterval)
		case "flush_interval":
			err = durationArg(d, "keys: ", &c.FlushInterval)
		case "price_per_mtok_in":
			err = positiveFloat(d, &c.PricePerMTokIn)
		case "price_per_mtok_out":
			err = positiveFloat(d, &c.PricePerMTokOut)
		case "reserve_price_per_mtok":
			err = positiveFloat(d, &c.ReservePricePerMTok)
		case "default_max_tokens":
			err = positiveInt(d, &c.DefaultMaxTokens)
		case "pool_price":
			err = unmarshalPoolPrice(d, c)
		case "key":
			err = unmarshalClientKey(d, c)
		default:
			err = d.Errf("keys: unrecognized option %q", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

func unmarshalPoolPrice(d *caddyfile.Dispenser, c *KeysConfig) error {
	args := d.RemainingArgs()
	if len(args) != 3 {
		return d.Err("keys: pool_price: want <pool> <$ per Mtok in> <$ per Mtok out>")
	}
	in, err1 := strconv.ParseFloat(args[1], 64)
	out, err2 := strconv.ParseFloat(args[2], 64)
	if err1 != nil || err2 != nil || in < 0 || out < 0 {
		return d.Errf("keys: pool_price %s: prices must be numbers >= 0", args[0])
	}
	if c.PoolPrices == nil {
		c.PoolPrices = map[string]*TokenPrice{}
	}
	c.PoolPrices[args[0]] = &TokenPrice{In: in, Out: out}
	return nil
}

func unmarshalClientKey(d *caddyfile.Dispenser, c *KeysConfig) error {
	var name string
	if err := oneArgBlock(d, &name); err != nil {
		return err
	}
	if _, dup := c.Keys[name]; dup {
		return d.Errf("keys: key %s is defined more than once", name)
	}
	k := &ClientKey{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := unmarshalClientKeyOption(d, name, k); err != nil {
			return err
		}
	}
	if c.Keys == nil {
		c.Keys = map[string]*ClientKey{}
	}
	c.Keys[name] = k
	return nil
}

func unmarshalClientKeyOption(d *caddyfile.Dispenser, name string, k *ClientKey) error {
	switch opt := d.Val(); opt {
	case "secret":
		return oneArg(d, &k.Secret)
	case "pools":
		k.Pools = d.RemainingArgs()
	case "models":
		k.Models = d.RemainingArgs()
	case "rpm":
		return positiveInt(d, &k.RPM)
	case "tpm":
		return positiveInt(d, &k.TPM)
	case "max_parallel":
		return positiveInt(d, &k.MaxParallel)
	case "expires":
		return oneArg(d, &k.Expires)
	case "budget":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("keys: key %s: budget: want <$> [day|month|total]", name)
		}
		b, err := strconv.ParseFloat(args[0], 64)
		if err != nil || b <= 0 {
			return d.Errf("keys: key %s: budget: %q is not a positive number of dollars", name, args[0])
		}
		k.Budget = b
		if len(args) == 2 {
			switch args[1] {
			case "day", "month", "total":
				k.BudgetPeriod = args[1]
			default:
				return d.Errf("keys: key %s: budget: period %q is not day, month or total", name, args[1])
			}
		}
	default:
		return d.Errf("keys: key %s: unrecognized option %q", name, opt)
	}
	if (d.Val() == "pools" && len(k.Pools) == 0) || (d.Val() == "models" && len(k.Models) == 0) {
		return d.Errf("keys: key %s: %s: at least one name is required", name, d.Val())
	}
	return nil
}

// oneArgBlock reads the one argument of an option that opens a block.
func oneArgBlock(d *caddyfile.Dispenser, dst *string) error {
	opt := d.Val()
	if !d.NextArg() {
		return d.Errf("keys: %s: a name is required", opt)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("keys: %s %s: too many arguments", opt, *dst)
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*KeysHandler)(nil)
