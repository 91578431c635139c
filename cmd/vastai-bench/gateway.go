package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
)

// keyEnv carries the simulated API key into the config as a placeholder:
// a literal key in the config would be logged as a warning.
const keyEnv = "VASTAI_BENCH_API_KEY"

// policyModule is the Caddy module ID of a selection policy.
func policyModule(name string) string {
	return "http.reverse_proxy.selection_policies." + name
}

// policyBuilt reports whether the policy's module is compiled in.
func policyBuilt(name string) bool {
	_, err := caddy.GetModule(policyModule(name))
	return err == nil
}

// freeAddr picks a free loopback port. Another process could take it
// before Caddy binds it; on a test machine that is rare and fails loudly.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// selectionPolicy is the selection_policy JSON of name. Only the vastai
// policies know session_header (Caddy refuses unknown fields).
func selectionPolicy(name, sessionHeader string) map[string]any {
	p := map[string]any{"policy": name}
	if sessionHeader != "" && strings.HasPrefix(name, "vastai_") {
		p["session_header"] = sessionHeader
	}
	return p
}

// gateway is one running Caddy in front of a fleet.
type gateway struct {
	proxyURL, adminURL string
}

// gatewayConfig is the JSON config of the benchmark's Caddy: the vastai
// app on the simulator, and one site proxying to the pool with policy.
func gatewayConfig(simURL, storage, admin, listen string, policy map[string]any) ([]byte, error) {
	vastai := map[string]any{
		"api_key": "{env." + keyEnv + "}", "api_url": simURL, "poll_interval": "500ms",
		"pools": map[string]any{"llm": map[string]any{
			"label_prefix": "llm-", "port": 8000,
			"token":  map[string]any{"source": "jupyter_token"},
			"health": map[string]any{"interval": "1s"},
		}},
		"engines": map[string]any{"scrape_interval": "250ms", "stale_after": "2s"},
	}
	proxy := map[string]any{
		"handler":           "reverse_proxy",
		"dynamic_upstreams": map[string]any{"source": "vastai", "pool": "llm"},
		"transport":         map[string]any{"protocol": "vastai"},
		"load_balancing": map[string]any{
			"selection_policy": policy,
			"try_duration":     "5s",
		},
	}
	server := map[string]any{
		"listen":          []string{listen},
		"automatic_https": map[string]any{"disable": true},
		"routes":          []any{map[string]any{"handle": []any{proxy}}},
	}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": admin, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"storage": map[string]any{"module": "file_system", "root": storage},
		"apps": map[string]any{
			"vastai": vastai,
			"http":   map[string]any{"grace_period": "2s", "servers": map[string]any{"bench": server}},
		},
	}
	return json.Marshal(cfg)
}

// startGateway loads a Caddy for policy in front of f and waits until it
// routes to every instance with fresh engine figures.
func startGateway(ctx context.Context, f *fleet, policy map[string]any, storage string) (*gateway, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := gatewayConfig(f.url, storage, admin, listen, policy)
	if err != nil {
		return nil, err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return nil, fmt.Errorf("starting Caddy with policy %v: %w", policy["policy"], err)
	}
	g := &gateway{proxyURL: "http://" + listen, adminURL: "http://" + admin}
	if err := g.waitRoutable(ctx, len(f.ids)); err != nil {
		_ = caddy.Stop()
		return nil, err
	}
	return g, nil
}

// errNotRoutable means the fleet did not become routable in time.
var errNotRoutable = errors.New("the simulated instances did not all become routable")

// waitRoutable polls the admin API until n instances are routable and
// have engine figures, so that every policy starts from the same state.
func (g *gateway) waitRoutable(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ready, err := g.routable(ctx)
		if ready >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w within 30s (%d of %d ready; last error: %v)", errNotRoutable, ready, n, err)
		case <-tick.C:
		}
	}
}

func (g *gateway) routable(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.adminURL+"/vastai/instances", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var list []adminapi.Instance
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return 0, fmt.Errorf("decoding /vastai/instances: %w", err)
	}
	ready := 0
	for _, in := range list {
		if in.Routable && in.Engine != nil {
			ready++
		}
	}
	return ready, nil
}
