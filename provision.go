package vastai

// Caddyfile parsing of a pool's provision block (the JSON type is
// ProvisionConfig in config.go).

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// unmarshalProvision parses a pool's provision block. Syntax:
//
//	provision {
//		image            <image>
//		template_hash_id <hash>
//		disk             <GB>
//		env              <KEY> <VALUE>           # repeatable
//		onstart          <script>
//		args             <arg...>
//		runtype          <runtype>
//		type             on-demand | bid <price>
//		order            <field> asc|desc        # repeatable
//		offer {
//			gpu_name         <name>              # "RTX 4090"
//			num_gpus         <n>
//			min_gpu_ram      <GB>                # tolerant: 24 matches 24564 MB cards
//			max_dph          <$/h>
//			min_reliability  <0-1>
//			verified
//			countries        <CC...>
//			min_direct_ports <n>
//			min_cuda         <version>
//			filter           <field> <op> <value>  # any vast.ai offer filter
//			limit            <n>
//		}
//		min_instances      <n>
//		max_instances      <n>
//		max_price_per_hour <$/h>
//		max_spend_per_hour <$/h>
//		max_lifetime       <duration>
//		ready_timeout      <duration>
//		max_attempts       <n>
//	}
func unmarshalProvision(d *caddyfile.Dispenser, pool string) (*ProvisionConfig, error) {
	p := new(ProvisionConfig)
	errf := func(opt, format string, args ...any) error {
		return d.Errf("pool %q: provision: %s: "+format, append([]any{pool, opt}, args...)...)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "image", "template_hash_id", "onstart", "runtype":
			var v string
			if err := oneArg(d, &v); err != nil {
				return nil, err
			}
			switch opt {
			case "image":
				p.Image = v
			case "template_hash_id":
				p.TemplateHashID = v
			case "onstart":
				p.Onstart = v
			case "runtype":
				p.Runtype = v
			}
		case "disk", "max_price_per_hour", "max_spend_per_hour":
			f, err := positiveFloat(d)
			if err != nil {
				return nil, err
			}
			switch opt {
			case "disk":
				p.Disk = f
			case "max_price_per_hour":
				p.MaxPricePerHour = f
			case "max_spend_per_hour":
				p.MaxSpendPerHour = f
			}
		case "env":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, errf(opt, "expected <KEY> <VALUE>")
			}
			if strings.EqualFold(args[0], "WEB_PASSWORD") {
				return nil, errf(opt, "WEB_PASSWORD is generated per instance and cannot be set")
			}
			if p.Env == nil {
				p.Env = map[string]string{}
			}
			p.Env[args[0]] = args[1]
		case "args":
			p.Args = d.RemainingArgs()
			if len(p.Args) == 0 {
				return nil, errf(opt, "at least one argument is required")
			}
		case "type":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == lifecycle.TypeOnDemand:
				p.Type = lifecycle.TypeOnDemand
			case len(args) == 2 && args[0] == lifecycle.TypeBid:
				price, err := strconv.ParseFloat(args[1], 64)
				if err != nil || price <= 0 {
					return nil, errf(opt, "bid price %q is not a positive number", args[1])
				}
				p.Type, p.BidPrice = lifecycle.TypeBid, price
			default:
				return nil, errf(opt, "expected on-demand or bid <price>")
			}
		case "order":
			args := d.RemainingArgs()
			if len(args) != 2 || (args[1] != "asc" && args[1] != "desc") {
				return nil, errf(opt, "expected <field> asc|desc")
			}
			p.Order = append(p.Order, [2]string{args[0], args[1]})
		case "offer":
			f, err := unmarshalOffer(d, pool)
			if err != nil {
				return nil, err
			}
			p.Offer = f
		case "min_instances", "max_instances", "max_attempts":
			n, err := nonNegativeInt(d)
			if err != nil {
				return nil, err
			}
			switch opt {
			case "min_instances":
				p.MinInstances = n
			case "max_instances":
				p.MaxInstances = n
			case "max_attempts":
				p.MaxAttempts = n
			}
		case "max_lifetime", "ready_timeout":
			dur, err := durationArg(d, fmt.Sprintf("pool %q: provision: ", pool))
			if err != nil {
				return nil, err
			}
			if opt == "max_lifetime" {
				p.MaxLifetime = dur
			} else {
				p.ReadyTimeout = dur
			}
		default:
			return nil, d.Errf("pool %q: provision: unrecognized option %q", pool, opt)
		}
	}
	if p.Image == "" && p.TemplateHashID == "" {
		return nil, d.Errf("pool %q: provision: image: an image or a template_hash_id is required", pool)
	}
	if p.MaxInstances > 0 && p.MinInstances > p.MaxInstances {
		return nil, d.Errf("pool %q: provision: min_instances %d is above max_instances %d", pool, p.MinInstances, p.MaxInstances)
	}
	return p, nil
}

func unmarshalOffer(d *caddyfile.Dispenser, pool string) (*lifecycle.OfferFilter, error) {
	f := new(lifecycle.OfferFilter)
	errf := func(opt, format string, args ...any) error {
		return d.Errf("pool %q: provision: offer: %s: "+format, append([]any{pool, opt}, args...)...)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "gpu_name":
			if err := oneArg(d, &f.GPUName); err != nil {
				return nil, err
			}
		case "num_gpus", "min_direct_ports", "limit":
			n, err := nonNegativeInt(d)
			if err != nil {
				return nil, err
			}
			switch opt {
			case "num_gpus":
				f.NumGPUs = n
			case "min_direct_ports":
				f.MinDirectPorts = n
			case "limit":
				f.Limit = n
			}
		case "min_gpu_ram", "max_dph", "min_reliability", "min_cuda":
			v, err := positiveFloat(d)
			if err != nil {
				return nil, err
			}
			switch opt {
			case "min_gpu_ram":
				f.MinGPURAMGB = v
			case "max_dph":
				f.MaxDPH = v
			case "min_reliability":
				if v > 1 {
					return nil, errf(opt, "%v is above 1", v)
				}
				f.MinReliability = v
			case "min_cuda":
				f.MinCUDA = v
			}
		case "verified":
			if d.NextArg() {
				return nil, errf(opt, "takes no argument")
			}
			f.Verified = true
		case "countries":
			f.Countries = d.RemainingArgs()
			if len(f.Countries) == 0 {
				return nil, errf(opt, "at least one country code is required")
			}
		case "filter":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return nil, errf(opt, "expected <field> <op> <value>")
			}
			switch args[1] {
			case "eq", "neq", "gt", "gte", "lt", "lte", "in", "notin":
			default:
				return nil, errf(opt, "operator %q is not one of eq neq gt gte lt lte in notin", args[1])
			}
			if f.Extra == nil {
				f.Extra = map[string]map[string]any{}
			}
			if f.Extra[args[0]] == nil {
				f.Extra[args[0]] = map[string]any{}
			}
			f.Extra[args[0]][args[1]] = filterValue(args[1], args[2])
		default:
			return nil, d.Errf("pool %q: provision: offer: unrecognized option %q", pool, opt)
		}
	}
	return f, nil
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

func positiveFloat(d *caddyfile.Dispenser) (float64, error) {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || f <= 0 {
		return 0, d.Errf("%s: %q is not a positive number", opt, raw)
	}
	return f, nil
}

func nonNegativeInt(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return 0, d.Errf("%s: %q is not a whole number", opt, raw)
	}
	return n, nil
}
