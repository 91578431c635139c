package vastai

import "github.com/caddy-vastai/caddy-vastai/cli"

// Every build with the plugin gets `caddy vastai ...`.
func init() {
	cli.Register()
}
