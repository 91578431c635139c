// Command vastai-demo runs a complete local demo with no vast.ai account:
// a simulated vast.ai API (vastsim) with three running GPU instances, each
// serving an OpenAI-compatible engine on loopback, and Caddy with the
// caddy-vastai plugin in front of them.
//
//	go run ./cmd/vastai-demo
//
// Then try the lines it prints: requests through the proxy, the dashboard,
// `caddy vastai top`, and the simulator's fault controls (hang or kill an
// engine, make an instance exit, make the API fail or rate-limit) to watch
// the plugin react. Stop it with Ctrl-C: it stops Caddy and removes its
// temporary folder (which holds a private SSH key).
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/crypto/ssh"

	_ "github.com/caddy-vastai/caddy-vastai"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const demoKey = "demo-key"

func main() {
	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vastai-demo:", err)
		os.Exit(1)
	}
}

// signalContext ends on SIGINT or SIGTERM, so that the deferred clean-up
// of run (stop Caddy, remove the temporary folder) runs.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// demo is one run's settings and addresses.
type demo struct {
	listen, admin, simURL, dir string
	instances                  int
	ids                        []int64
	teamKey                    string // the demo client key of the /team/ route
}

// run is main without the process globals: it serves until ctx ends, then
// stops Caddy and the simulator and removes the temporary folder.
func run(ctx context.Context, args []string, out io.Writer) (err error) {
	fs := flag.NewFlagSet("vastai-demo", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "address of the demo's proxy")
	simAddr := fs.String("sim", "127.0.0.1:8787", "address of the simulated vast.ai API")
	admin := fs.String("admin", "localhost:2019", "address of Caddy's admin endpoint (the dashboard and `caddy vastai`)")
	instances := fs.Int("instances", 3, "number of simulated GPU instances")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d := &demo{listen: *listen, admin: *admin, instances: *instances}

	sim := vastsim.New(vastsim.Options{APIKey: demoKey, LoadingDelay: 5 * time.Second})
	defer sim.Close()
	if d.simURL, err = sim.Start(*simAddr); err != nil {
		return fmt.Errorf("starting the simulated vast.ai API on %s: %w", *simAddr, err)
	}
	for i := 1; i <= d.instances; i++ {
		id, err := sim.Launch(vastsim.LaunchSpec{Label: fmt.Sprintf("llm-%d", i), GPUName: "RTX 4090", NumGPUs: 1, DPH: 0.35 + 0.05*float64(i), Running: true})
		if err != nil {
			return fmt.Errorf("launching simulated instance: %w", err)
		}
		d.ids = append(d.ids, id)
	}

	if d.dir, err = os.MkdirTemp("", "vastai-demo-"); err != nil {
		return err
	}
	// Registered before anything is written there: the folder holds a
	// private key and goes away on every exit path.
	defer os.RemoveAll(d.dir)
	if err := os.Setenv("VAST_API_KEY", demoKey); err != nil {
		return err
	}
	// A client key for the /team/ route, new on every run; the config
	// names it as {env.VASTAI_DEMO_TEAM_KEY}, so it is not in the config.
	if d.teamKey, err = randomKey(); err != nil {
		return err
	}
	if err := os.Setenv("VASTAI_DEMO_TEAM_KEY", d.teamKey); err != nil {
		return err
	}
	cfgJSON, err := d.config()
	if err != nil {
		return err
	}
	fmt.Fprint(out, d.banner())
	if err := caddy.Load(cfgJSON, true); err != nil {
		return fmt.Errorf("starting Caddy: %w", err)
	}
	defer func() {
		if err := caddy.Stop(); err != nil {
			fmt.Fprintln(out, "stopping Caddy:", err)
		}
	}()
	if err := d.waitReady(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "Caddy is ready (logging only warnings). Temporary folder: %s\n%s", d.dir, d.tryLines())
	<-ctx.Done()
	fmt.Fprintln(out, "\nvastai-demo: stopping Caddy and removing", d.dir)
	return nil
}

// demoCaddyfile is the demo's configuration; its verbs are, in order, the
// admin address, the allowed origins, the storage folder, the simulator's
// URL, the SSH key file and the listen address.
const demoCaddyfile = `{
	admin %s {
		origins %s
	}
	storage file_system %s
	log {
		level WARN
	}
	vastai {
		api_key {env.VAST_API_KEY}
		api_url %s
		poll_interval 2s
		gateway_id demo
		ssh {
			key %s
			metrics_interval 5s
		}
		# Routes to the instances labelled llm-*.
		pool llm {
			label_prefix llm-
			port 8000
			token jupyter_token
			health {
				interval 2s
			}
		}
		# One client key for the /team/ route, with a daily budget.
		keys {
			price_per_mtok_in 0.5
			price_per_mtok_out 1.5
			key team-demo {
				secret {env.VASTAI_DEMO_TEAM_KEY}
				rpm 120
				budget 1 day
			}
		}
		# Provisions instances on demand: POST /vastai/pools/gen/instances.
		pool gen {
			health {
				interval 2s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 2
				max_price_per_hour 1
			}
		}
	}
}

http://%s {
	handle_path /gen/* {
		vastai_proxy gen {
			lb_try_duration 10s
		}
	}
	# The same pool behind client keys: usage and spend per key.
	handle_path /team/* {
		vastai_keys llm
		vastai_proxy llm {
			lb_policy vastai_least_load
			lb_try_duration 10s
		}
	}
	vastai_proxy llm {
		lb_policy vastai_least_load
		lb_try_duration 10s
	}
}
`

// config writes the SSH key and the Caddyfile into the temporary folder and
// returns the adapted JSON config.
func (d *demo) config() ([]byte, error) {
	// The simulated instances accept any SSH key: make one for GPU metrics.
	keyFile := filepath.Join(d.dir, "id_ed25519")
	if err := writeKey(keyFile); err != nil {
		return nil, err
	}
	// A browser that opens the dashboard by its URL sends no Origin, which
	// Caddy's admin refuses unless "" is an allowed origin; the loopback
	// spellings of the admin address are the only others allowed.
	_, port, err := net.SplitHostPort(d.admin)
	if err != nil {
		return nil, fmt.Errorf("-admin %q: %w", d.admin, err)
	}
	origins := fmt.Sprintf(`%s 127.0.0.1:%s [::1]:%s ""`, d.admin, port, port)
	caddyfile := fmt.Sprintf(demoCaddyfile, d.admin, origins, filepath.Join(d.dir, "storage"), d.simURL, keyFile, d.listen)
	if err := os.WriteFile(filepath.Join(d.dir, "Caddyfile"), []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, fmt.Errorf("adapting the demo Caddyfile: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "Caddyfile:%d: %s\n", w.Line, w.Message)
	}
	return cfg, nil
}

// waitReady waits until the plugin has listed the simulated account.
func (d *demo) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if ok, _ := d.ready(ctx); ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("caddy did not list the simulated instances within 60s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *demo) ready(ctx context.Context) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.adminURL()+"/vastai/status", nil)
	if err != nil {
		return false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var st struct {
		LastSuccess *time.Time `json:"last_success"`
		Instances   int        `json:"instances"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return false, nil
	}
	return st.LastSuccess != nil && st.Instances >= d.instances, nil
}

func (d *demo) adminURL() string { return "http://" + d.admin }

func (d *demo) proxyURL() string {
	if strings.HasPrefix(d.listen, ":") {
		return "http://localhost" + d.listen
	}
	return "http://" + d.listen
}

func (d *demo) banner() string {
	return fmt.Sprintf(`
caddy-vastai demo
  simulated vast.ai API: %s  (key %q, %d instances labelled llm-1..llm-%d)
  Caddyfile:             %s
  proxy:                 %s
  admin API:             %s/vastai/instances

Starting Caddy...
`, d.simURL, demoKey, d.instances, d.instances, filepath.Join(d.dir, "Caddyfile"), d.proxyURL(), d.adminURL())
}

// tryLines is what to try, printed once Caddy is ready so it stays in view.
func (d *demo) tryLines() string {
	proxy, admin, sim := d.proxyURL(), d.adminURL(), d.simURL
	id := "<id>"
	if len(d.ids) > 0 {
		id = fmt.Sprint(d.ids[0])
	}
	_, port, _ := net.SplitHostPort(d.admin)
	top := "go run ./cmd/caddy vastai top"
	if d.admin != "localhost:2019" {
		top += " --address " + d.admin
	}
	var b strings.Builder
	fmt.Fprintf(&b, `
Watch the fleet:
  dashboard:  %s/vastai/ui/   (admin stays on localhost; from another machine: ssh -L %s:%s <this host>)
  terminal:   %s
  costs:      curl -s %s/vastai/costs?by=instance

Try:
  curl -s %s/v1/models
  curl -s %s/v1/completions -H 'Content-Type: application/json' -d '{"model":"vastsim/tiny-llm","prompt":"Hello","max_tokens":8}'
  curl -sN %s/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"vastsim/tiny-llm","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}'
  curl -s %s/vastai/instances        # states, probes, GPU figures over SSH
  curl -s %s/vastai/pools/llm
  curl -s %s/metrics | grep caddy_vastai

With a client key (usage and spend per key; a wrong key gets 401):
  curl -s %s/team/v1/completions -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{"model":"vastsim/tiny-llm","prompt":"Hello","max_tokens":8}'
  %s
  curl -s %s/vastai/keys

Provision an instance (about 10s in the simulator), then use it:
  curl -s -X POST %s/vastai/pools/gen/instances
  curl -s %s/vastai/operations
  curl -s %s/gen/v1/models
  curl -s -X DELETE %s/vastai/instances/<id>

Cause failures and watch the plugin react (the simulator's controls; %s/_sim/ lists them):
  curl -s -X POST %s/_sim/instances/%s/hang      # the engine hangs: probes time out, it leaves routing
  curl -s -X POST %s/_sim/instances/%s/kill      # the engine refuses connections
  curl -s -X POST %s/_sim/instances/%s/unready   # the engine answers the 502 placeholder
  curl -s -X POST %s/_sim/instances/%s/exit      # the instance exits (actual_status "exited")
  curl -s -X POST %s/_sim/instances/%s/recover   # back to running and answering
  curl -s -X PUT %s/_sim/faults -d '{"status":500}'        # the API fails: routing keeps the last fleet
  curl -s -X PUT %s/_sim/faults -d '{"rate_limit":true}'   # the API rate-limits (429)
  curl -s -X DELETE %s/_sim/faults                         # the API recovers
  curl -s %s/_sim/instances                                # what the simulator has billed

Stop with Ctrl-C (removes the temporary folder).
`, admin, port, d.admin, top, admin,
		proxy, proxy, proxy, admin, admin, admin,
		proxy, d.teamKey, strings.Replace(top, " top", " usage --period day", 1), admin,
		admin, admin, proxy, admin,
		sim, sim, id, sim, id, sim, id, sim, id, sim, id, sim, sim, sim, sim)
	return b.String()
}

// randomKey returns a new client key secret.
func randomKey() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return fmt.Sprintf("cvk_demo_%x", b), nil
}

// writeKey writes a new ed25519 private key in OpenSSH format.
func writeKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "vastai-demo")
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}
