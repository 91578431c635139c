package tui_test

// A real Caddy with the plugin, in-process, against vastsim: the minimal
// part of the root package's e2e helpers that the tmux test needs. Caddy
// is started with caddy.Load on free ports rather than through caddytest,
// whose fixed admin port 2999 could reach another test binary's Caddy on a
// shared machine.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/crypto/ssh"

	_ "github.com/caddy-vastai/caddy-vastai"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const testAPIKey = "sim-test-key-0123456789"

// testClientKey is the secret of the config's client key team-a.
const testClientKey = "cvk_tui-team-a-secret-0123456789ab"

// httpAPI is tui.API over plain HTTP to an admin address, the way the
// CLI's admin client talks to Caddy.
type httpAPI struct{ base string }

func (a httpAPI) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding the body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeSSHKey writes a fresh ed25519 key for the gateway's SSH side.
func writeSSHKey(t testing.TB, dir string) (string, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "caddy-vastai test")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return path, sshPub
}

// fleet is a running simulator and a Caddy managing a pool "llm" in it.
type fleet struct {
	sim   *vastsim.Sim
	admin string // host:port of Caddy's admin endpoint
	api   httpAPI
}

// startFleet starts vastsim and an in-process Caddy with a provisioning
// pool llm (and SSH, for GPU figures) and a client key team-a; both stop
// when the test ends.
func startFleet(t *testing.T) *fleet {
	t.Helper()
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := vastsim.New(vastsim.Options{APIKey: testAPIKey, LoadingDelay: 500 * time.Millisecond, SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	if _, err := sim.Start(""); err != nil {
		t.Fatalf("starting vastsim: %v", err)
	}
	t.Cleanup(sim.Close)
	t.Setenv("VASTAI_TUI_KEY", testAPIKey)
	t.Setenv("VASTAI_TUI_CLIENT_KEY", testClientKey)
	admin := fmt.Sprintf("localhost:%d", freePort(t))
	cfg := fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	grace_period 1ns
	skip_install_trust
	storage file_system %s
	log {
		level ERROR
	}
	vastai {
		api_key {env.VASTAI_TUI_KEY}
		api_url %s
		poll_interval 500ms
		lease_ttl 3s
		provision_poll_interval 300ms
		pool llm {
			health {
				interval 200ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 5
				max_price_per_hour 2
				max_spend_per_hour 5
				ready_timeout 30s
			}
		}
		ssh {
			key %s
			known_hosts storage
			connect_timeout 5s
			metrics_interval 300ms
		}
		keys {
			key team-a {
				secret {env.VASTAI_TUI_CLIENT_KEY}
				rpm 60
				budget 10 day
			}
		}
	}
}
:%[2]d {
	vastai_proxy llm
}
`, admin, freePort(t), freePort(t), filepath.Join(dir, "storage"), sim.URL(), keyFile)
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfgJSON, warnings, err := adapter.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapting the config: %v", err)
	}
	for _, w := range warnings {
		t.Logf("config warning: %s", w)
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("starting Caddy: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping Caddy: %v", err)
		}
	})
	return &fleet{sim: sim, admin: admin, api: httpAPI{base: "http://" + admin}}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
