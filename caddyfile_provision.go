package vastai

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// unmarshalProvision parses a pool's provision block; see
// App.UnmarshalCaddyfile for the syntax.
func unmarshalProvision(d *caddyfile.Dispenser, pool string) (*ProvisionConfig, error) {
	p := new(ProvisionConfig)
	in := fmt.Sprintf("pool %q: provision: ", pool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "image":
			err = oneArg(d, &p.Image)
		case "template_hash_id":
			err = oneArg(d, &p.TemplateHashID)
		case "disk":
			err = positiveFloat(d, &p.Disk)
		case "env":
			err = envArg(d, in, &p.Env)
		case "onstart":
			err = oneArg(d, &p.Onstart)
		case "args":
			if p.Args = d.RemainingArgs(); len(p.Args) == 0 {
				err = optErrf(d, in, opt, "at least one argument is required")
			}
		case "runtype":
			err = oneArg(d, &p.Runtype)
		case "type":
			err = typeArg(d, in, &p.Type, &p.BidPrice)
		case "order":
			err = orderArg(d, in, &p.Order)
		case "offer":
			var f *lifecycle.OfferFilter
			if f, err = unmarshalOffer(d, pool); f != nil {
				p.Offer = *f
			}
		case "min_instances":
			err = nonNegativeInt(d, &p.MinInstances)
		case "max_instances":
			err = nonNegativeInt(d, &p.MaxInstances)
		case "max_price_per_hour":
			err = positiveFloat(d, &p.MaxPricePerHour)
		case "max_spend_per_hour":
			err = positiveFloat(d, &p.MaxSpendPerHour)
		case "max_lifetime":
			err = durationArg(d, in, (*caddy.Duration)(&p.MaxLifetime))
		case "ready_timeout":
			err = durationArg(d, in, (*caddy.Duration)(&p.ReadyTimeout))
		case "max_attempts":
			err = nonNegativeInt(d, &p.MaxAttempts)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	// The rules live in lifecycle, shared with JSON configs; checking here
	// too only makes the error carry the Caddyfile's line.
	if err := lifecycle.ValidatePool(pool, p.template(0, caddy.NewReplacer())); err != nil {
		// lifecycle names the pool; say which block too.
		return nil, d.Errf("%s", strings.ReplaceAll(err.Error(), fmt.Sprintf("pool %q: ", pool), in))
	}
	return p, nil
}

// envArg reads one <KEY> <VALUE> pair of the instance environment.
func envArg(d *caddyfile.Dispenser, prefix string, dst *map[string]string) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) != 2 {
		return optErrf(d, prefix, opt, "expected <KEY> <VALUE>")
	}
	if err := lifecycle.CheckEnvKey(args[0]); err != nil {
		return optErrf(d, prefix, opt, "%v", err)
	}
	if *dst == nil {
		*dst = map[string]string{}
	}
	(*dst)[args[0]] = args[1]
	return nil
}

// typeArg reads "on-demand" or "bid <price>".
func typeArg(d *caddyfile.Dispenser, prefix string, typ *string, bid *float64) error {
	opt := d.Val()
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == lifecycle.TypeOnDemand:
		*typ = lifecycle.TypeOnDemand
	case len(args) == 2 && args[0] == lifecycle.TypeBid:
		price, err := strconv.ParseFloat(args[1], 64)
		if err != nil || price <= 0 {
			return optErrf(d, prefix, opt, "bid price %q is not a positive number", args[1])
		}
		*typ, *bid = lifecycle.TypeBid, price
	default:
		return optErrf(d, prefix, opt, "expected on-demand or bid <price>")
	}
	return nil
}

// orderArg reads one <field> asc|desc pair of the offer order.
func orderArg(d *caddyfile.Dispenser, prefix string, dst *[][2]string) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) != 2 || (args[1] != "asc" && args[1] != "desc") {
		return optErrf(d, prefix, opt, "expected <field> asc|desc")
	}
	*dst = append(*dst, [2]string{args[0], args[1]})
	return nil
}

// unmarshalOffer parses the offer block of a provision block; see
// App.UnmarshalCaddyfile for the syntax.
func unmarshalOffer(d *caddyfile.Dispenser, pool string) (*lifecycle.OfferFilter, error) {
	f := new(lifecycle.OfferFilter)
	in := fmt.Sprintf("pool %q: provision: offer: ", pool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "gpu_name":
			err = oneArg(d, &f.GPUName)
		case "num_gpus":
			err = nonNegativeInt(d, &f.NumGPUs)
		case "min_gpu_ram":
			err = positiveFloat(d, &f.MinGPURAMGB)
		case "max_dph":
			err = positiveFloat(d, &f.MaxDPH)
		case "min_reliability":
			err = positiveFloat(d, &f.MinReliability)
		case "verified":
			err = flagArg(d, in, &f.Verified)
		case "countries":
			if f.Countries = d.RemainingArgs(); len(f.Countries) == 0 {
				err = optErrf(d, in, opt, "at least one country code is required")
			}
		case "min_direct_ports":
			err = nonNegativeInt(d, &f.MinDirectPorts)
		case "min_cuda":
			err = positiveFloat(d, &f.MinCUDA)
		case "filter":
			err = filterArg(d, in, &f.Extra)
		case "limit":
			err = nonNegativeInt(d, &f.Limit)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := f.Validate(); err != nil {
		return nil, d.Errf("%s%v", in, err)
	}
	return f, nil
}

// filterArg reads one <field> <op> <value> offer filter.
func filterArg(d *caddyfile.Dispenser, prefix string, dst *map[string]map[string]any) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) != 3 {
		return optErrf(d, prefix, opt, "expected <field> <op> <value>")
	}
	if err := lifecycle.CheckFilterOperator(args[1]); err != nil {
		return optErrf(d, prefix, opt, "%v", err)
	}
	if *dst == nil {
		*dst = map[string]map[string]any{}
	}
	if (*dst)[args[0]] == nil {
		(*dst)[args[0]] = map[string]any{}
	}
	(*dst)[args[0]][args[1]] = filterValue(args[1], args[2])
	return nil
}

// filterValue turns a Caddyfile token into a JSON value for an offer
// filter: numbers and booleans as such, comma lists for in/notin.
func filterValue(op, raw string) any {
	scalar := func(s string) any {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return f
		}
		if b, err := strconv.ParseBool(s); err == nil {
			return b
		}
		return s
	}
	if op == "in" || op == "notin" {
		var out []any
		for _, part := range strings.Split(raw, ",") {
			out = append(out, scalar(strings.TrimSpace(part)))
		}
		return out
	}
	return scalar(raw)
}
