package vastai

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-vastai/caddy-vastai/fleet"
)

// unmarshalPool parses one pool of the vastai global option. Syntax (see
// App.UnmarshalCaddyfile for the blocks inside):
//
//	pool <name> {
//		label        <label>
//		label_prefix <prefix>
//		port         <port>
//		token jupyter_token | env <NAME> | static <value>
//		health { ... }
//		provision { ... }
//		autoscale { ... }   # caddyfile_autoscale.go
//	}
func (a *App) unmarshalPool(d *caddyfile.Dispenser) error {
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
	return nil
}

// unmarshalCaddyfile parses the block of pool name.
func (p *Pool) unmarshalCaddyfile(d *caddyfile.Dispenser, name string) error {
	in := fmt.Sprintf("pool %q: ", name)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "label":
			err = oneArg(d, &p.Label)
		case "label_prefix":
			err = oneArg(d, &p.LabelPrefix)
		case "port":
			err = portArg(d, in, &p.Port)
		case "token":
			p.Token, err = unmarshalToken(d, in)
		case "provision":
			if err = blockStart(d, in, p.Provision != nil); err == nil {
				p.Provision, err = unmarshalProvision(d, name)
			}
		case "health":
			if err = blockStart(d, in, p.Health != nil); err == nil {
				p.Health, err = unmarshalHealth(d, name)
			}
		case "autoscale":
			if err = blockStart(d, in, p.Autoscale != nil); err == nil {
				p.Autoscale, err = unmarshalAutoscale(d, name) // caddyfile_autoscale.go
			}
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return err
		}
	}
	if p.Label != "" && p.LabelPrefix != "" {
		return d.Errf("%slabel and label_prefix are mutually exclusive", in)
	}
	return nil
}

// portArg reads a TCP port number.
func portArg(d *caddyfile.Dispenser, prefix string, dst *int) error {
	opt := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	port, err := strconv.Atoi(raw)
	if err != nil || port < 1 || port > 65535 {
		return optErrf(d, prefix, opt, "%q is not a port number (1-65535)", raw)
	}
	*dst = port
	return nil
}

// unmarshalToken parses a pool's token source:
//
//	token jupyter_token | env <NAME> | static <value>
func unmarshalToken(d *caddyfile.Dispenser, prefix string) (*TokenConfig, error) {
	const opt = "token"
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, optErrf(d, prefix, opt, "expected jupyter_token, env <NAME> or static <value>")
	}
	tc := &TokenConfig{Source: args[0]}
	switch args[0] {
	case fleet.TokenJupyter:
		if len(args) != 1 {
			return nil, optErrf(d, prefix, opt, "jupyter_token takes no argument")
		}
	case fleet.TokenEnv:
		if len(args) != 2 {
			return nil, optErrf(d, prefix, opt, "env needs exactly one variable name")
		}
		tc.Name = args[1]
	case fleet.TokenStatic:
		if len(args) != 2 {
			return nil, optErrf(d, prefix, opt, "static needs exactly one value")
		}
		tc.Value = args[1]
	default:
		return nil, optErrf(d, prefix, opt, "unknown token source %q (want jupyter_token, env <NAME> or static <value>)", args[0])
	}
	return tc, nil
}

// unmarshalHealth parses a pool's health block; see App.UnmarshalCaddyfile
// for the syntax.
func unmarshalHealth(d *caddyfile.Dispenser, pool string) (*HealthConfig, error) {
	h := new(HealthConfig)
	in := fmt.Sprintf("pool %q: health: ", pool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "path":
			err = healthPathArg(d, in, &h.Path)
		case "method":
			if err = oneArg(d, &h.Method); err == nil {
				h.Method = strings.ToUpper(h.Method)
			}
		case "body":
			err = jsonArg(d, in, &h.Body)
		case "expect":
			err = statusCodesArg(d, in, &h.Expect)
		case "interval":
			err = durationArg(d, in, (*caddy.Duration)(&h.Interval))
		case "timeout":
			err = durationArg(d, in, (*caddy.Duration)(&h.Timeout))
		case "grace":
			err = durationArg(d, in, (*caddy.Duration)(&h.Grace))
		case "healthy_threshold":
			err = positiveInt(d, &h.HealthyThreshold)
		case "unhealthy_threshold":
			err = positiveInt(d, &h.UnhealthyThreshold)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return h, nil
}

// healthPathArg reads an absolute URL path.
func healthPathArg(d *caddyfile.Dispenser, prefix string, dst *string) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	if !strings.HasPrefix(v, "/") {
		return optErrf(d, prefix, opt, "%q must start with /", v)
	}
	*dst = v
	return nil
}

// jsonArg reads one argument that must be valid JSON.
func jsonArg(d *caddyfile.Dispenser, prefix string, dst *string) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	if !json.Valid([]byte(v)) {
		return optErrf(d, prefix, opt, "not valid JSON (quote the body if it has spaces)")
	}
	*dst = v
	return nil
}

// statusCodesArg reads one or more HTTP status codes.
func statusCodesArg(d *caddyfile.Dispenser, prefix string, dst *[]int) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return optErrf(d, prefix, opt, "at least one status code is required")
	}
	for _, a := range args {
		code, err := strconv.Atoi(a)
		if err != nil || code < 100 || code > 599 {
			return optErrf(d, prefix, opt, "%q is not an HTTP status code", a)
		}
		*dst = append(*dst, code)
	}
	return nil
}
