package vastai

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalSSH parses the ssh block of the vastai global option; see
// App.UnmarshalCaddyfile for the syntax.
func unmarshalSSH(d *caddyfile.Dispenser) (*SSHConfig, error) {
	const in = "ssh: "
	c := new(SSHConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "key":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				err = optErrf(d, in, opt, "a private key file is required")
			}
			c.Keys = append(c.Keys, keys...)
		case "known_hosts":
			err = knownHostsArg(d, in, &c.KnownHosts)
		case "connect_timeout":
			err = durationArg(d, in, &c.ConnectTimeout)
		case "metrics_interval":
			err = durationArg(d, in, &c.MetricsInterval)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(c.Keys) == 0 {
		return nil, d.Errf("%skey: at least one private key file is required", in)
	}
	return c, nil
}

// knownHostsArg reads the host key policy.
func knownHostsArg(d *caddyfile.Dispenser, prefix string, dst *string) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	if v != KnownHostsStorage && v != KnownHostsInsecure {
		return optErrf(d, prefix, opt, "%q is not storage or insecure", v)
	}
	*dst = v
	return nil
}

// unmarshalEngines parses the engines block of the vastai global option;
// see App.UnmarshalCaddyfile for the syntax.
func unmarshalEngines(d *caddyfile.Dispenser) (*EnginesConfig, error) {
	const in = "engines: "
	c := new(EnginesConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "scrape_interval":
			err = durationArg(d, in, &c.ScrapeInterval)
		case "scrape_timeout":
			err = durationArg(d, in, &c.ScrapeTimeout)
		case "stale_after":
			err = durationArg(d, in, &c.StaleAfter)
		case "metrics_path":
			err = oneArg(d, &c.MetricsPath)
		case "max_concurrent_scrapes":
			err = positiveInt(d, &c.MaxConcurrentScrapes)
		case "off":
			err = flagArg(d, in, &c.Disabled)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}
