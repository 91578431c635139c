package vastai

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy vastai_least_load {
//		session_header      <header>   # e.g. X-Session-ID
//		session_load_factor <factor>   # default 1.25
//		max_requests        <n>        # per instance; saturated beyond
//		capacity            throughput|gpus|none  # default throughput
//	}
func (p *LeastLoad) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		ok, err := p.PolicyOptions.unmarshalOption(d)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("vastai_least_load: unrecognized option %q", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy vastai_cache_aware {
//		cache_threshold      <0-1>      # default 0.3
//		balance_abs          <n>        # default 8
//		balance_rel          <ratio>    # default 1.5
//		block_chars          <n>        # default 64
//		max_blocks           <n>        # default 256
//		entries_per_instance <n>        # default 16384
//		max_body             <size>     # default 1MiB
//		session_header       <header>
//		session_load_factor  <factor>
//		max_requests         <n>
//		capacity             throughput|gpus|none
//	}
func (p *CacheAware) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	const in = "vastai_cache_aware: "
	for d.NextBlock(0) {
		if ok, err := p.PolicyOptions.unmarshalOption(d); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		var err error
		switch opt := d.Val(); opt {
		case "cache_threshold":
			p.CacheThreshold, err = floatOpt(d, in)
		case "balance_abs":
			p.BalanceAbs, err = floatOpt(d, in)
		case "balance_rel":
			p.BalanceRel, err = floatOpt(d, in)
		case "block_chars":
			err = positiveInt(d, &p.BlockChars)
		case "max_blocks":
			err = positiveInt(d, &p.MaxBlocks)
		case "entries_per_instance":
			err = positiveInt(d, &p.EntriesPerInstance)
		case "max_body":
			var raw string
			if err = oneArg(d, &raw); err == nil {
				var n uint64
				n, err = humanize.ParseBytes(raw)
				if err != nil || n == 0 {
					err = optErrf(d, in, opt, "%q is not a size such as 1MiB", raw)
				}
				p.MaxBody = int64(n)
			}
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalOption reads a shared option; it reports false for an option
// that is not one.
func (o *PolicyOptions) unmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "session_header":
		return true, oneArg(d, &o.SessionHeader)
	case "session_load_factor":
		return true, positiveFloat(d, &o.SessionLoadFactor)
	case "max_requests":
		return true, positiveInt(d, &o.MaxRequests)
	case "capacity":
		return true, oneArg(d, &o.Capacity)
	}
	return false, nil
}

// floatOpt reads one number.
func floatOpt(d *caddyfile.Dispenser, prefix string) (*float64, error) {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return nil, err
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil {
		return nil, optErrf(d, prefix, opt, "%q is not a number", raw)
	}
	return &f, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*LeastLoad)(nil)
	_ caddyfile.Unmarshaler = (*CacheAware)(nil)
)
