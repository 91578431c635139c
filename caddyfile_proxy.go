package vastai

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// DefaultProxyRequestBuffers is the request_buffers vastai_proxy sets
// unless the block sets its own: bodies up to 4 MiB (prompts) are read
// before the request is held or proxied.
const DefaultProxyRequestBuffers = 4 << 20

// parseVastaiProxy parses the vastai_proxy directive: a reverse_proxy with
// the vastai upstream source and transport preset. Syntax:
//
//	vastai_proxy [<matcher>] <pool> | * {
//		<any reverse_proxy subdirective except dynamic and upstreams>
//		request_buffers <size>     # default 4MiB (DefaultProxyRequestBuffers)
//		transport vastai { ... }   # optional, to set http transport options
//	}
//
// `vastai_proxy *` sends each request to the pool the vastai_models
// handler chose for its model. Caddy reads a leading * as the match-all
// matcher and removes it, so a missing pool name means the same.
func parseVastaiProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	pool := ByModelPool
	if d.NextArg() {
		pool = d.Val()
		// Remove the pool name so reverse_proxy does not take it for an
		// upstream address.
		d.DeleteN(1)
	}
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
	if rp.RequestBuffers == 0 {
		// A body read before the proxy waits lets Go notice a client that
		// leaves while its request is held (hold.go): the connection is
		// watched only once the body has been read. It also lets a retry
		// resend the body.
		rp.RequestBuffers = DefaultProxyRequestBuffers
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	return rp, nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic vastai <pool>   # or * for the pool vastai_models chose
//
// or
//
//	dynamic vastai {
//		pool <pool>
//	}
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		u.Pool = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "pool":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if u.Pool != "" {
				return d.Err("pool already specified")
			}
			u.Pool = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized vastai upstreams option %q", d.Val())
		}
	}
	if u.Pool == "" {
		return d.Err("vastai upstreams: a pool name is required")
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Upstreams)(nil)
