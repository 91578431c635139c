// Command caddy is Caddy with its standard modules and the caddy-vastai
// plugin, for builds without xcaddy: go build ./cmd/caddy
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-vastai/caddy-vastai"
)

func main() {
	caddycmd.Main()
}
