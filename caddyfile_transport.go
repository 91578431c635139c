package vastai

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport vastai {
//		tunnel ssh    # optional: carry requests over the instances' SSH connections
//		<any option of the http transport>
//		# keepalive_idle_conns_per_host defaults to 512, keepalive_idle_conns to 4096
//	}
//
// The options of the http transport are handed to its own parser, so they
// are spelled and checked exactly as under transport http.
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if t.HTTPTransport == nil {
		t.HTTPTransport = new(reverseproxy.HTTPTransport)
	}
	d.Next() // transport name
	head := caddyfile.Segment{d.Token()}
	for d.NextArg() {
		head = append(head, d.Token())
	}
	// The http transport's options, between the block's own braces (kept
	// as they are: line numbers tell nested blocks apart).
	var body caddyfile.Segment
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if len(body) == 0 {
			d.Prev()
			body = append(body, d.Token()) // {
			d.Next()
		}
		switch d.Val() {
		case "tunnel":
			if err := t.unmarshalTunnel(d); err != nil {
				return err
			}
		default:
			body = append(body, d.NextSegment()...)
		}
	}
	tokens := head
	if len(body) > 1 {
		tokens = append(append(tokens, body...), d.Token()) // }
	}
	return t.HTTPTransport.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}

// unmarshalTunnel reads "tunnel ssh".
func (t *Transport) unmarshalTunnel(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Err("tunnel: expected ssh")
	}
	if d.Val() != "ssh" {
		return d.Errf("tunnel: %q is not supported (use ssh)", d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if t.Tunnel != "" {
		return d.Err("tunnel already specified")
	}
	t.Tunnel = "ssh"
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Transport)(nil)
