// Command vastsim runs the vast.ai API simulator standalone, for demos and
// manual testing of the gateway: it serves the REST API and starts a few
// running instances, each with its own OpenAI-compatible engine on
// loopback.
//
//	vastsim -listen 127.0.0.1:8787 -instances 3
//
// Point the gateway's API base URL at the printed URL and use the same API
// key (-api-key, default $VAST_API_KEY or "demo-key").
//
// Each instance also runs an SSH server (user root, public keys only) with
// a direct and a proxy address, printed with the instance, e.g.
//
//	ssh -p <port> root@127.0.0.1 nvidia-smi
//
// Any key is accepted unless -ssh-authorized-keys names an authorized_keys
// file; -ssh=false turns SSH off.
//
// The simulator's fault controls are served under /_sim/ next to the API
// (see vastsim.ControlPrefix): make an engine hang or fail, an instance
// exit, the API fail or rate-limit, and recover, e.g.
//
//	curl -s -X POST http://127.0.0.1:8787/_sim/instances/<id>/hang
//	curl -s -X PUT http://127.0.0.1:8787/_sim/faults -d '{"status":500}'
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "vastsim:", err)
		os.Exit(2)
	}
}

// run is main without the process globals, so that tests can drive it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("vastsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defKey := getenv("VAST_API_KEY")
	if defKey == "" {
		defKey = "demo-key"
	}
	listen := fs.String("listen", "127.0.0.1:8787", "address of the simulated API")
	apiKey := fs.String("api-key", defKey, "bearer key the API requires (default $VAST_API_KEY, else demo-key)")
	n := fs.Int("instances", 3, "instances to launch, already running, labelled llm-1..N")
	loading := fs.Duration("loading-delay", 3*time.Second, "time a created instance takes to reach running")
	starting := fs.Duration("start-delay", 0, "time a started (previously stopped) instance takes to reach running (default: loading-delay)")
	ready := fs.Duration("engine-ready-delay", 0, "time an engine answers the portal placeholder after running")
	destroy := fs.Duration("destroy-delay", time.Second, "time a destroyed instance stays visible")
	tokens := fs.Duration("token-interval", 50*time.Millisecond, "pause between streamed tokens")
	rl := fs.Bool("rate-limits", false, "enforce vast.ai's per-endpoint minimum intervals")
	authStatus := fs.Int("auth-error-status", 401, "HTTP status for a bad API key (401 documented, 404 observed)")
	sshOn := fs.Bool("ssh", true, "run an SSH server (nvidia-smi, tunnels) for every instance")
	sshKeys := fs.String("ssh-authorized-keys", "", "authorized_keys file for the SSH servers (default: accept any key)")
	verbose := fs.Bool("v", false, "log simulator events")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 0 {
		return fmt.Errorf("-instances must be >= 0")
	}

	opts := vastsim.Options{
		APIKey:           *apiKey,
		AuthErrorStatus:  *authStatus,
		LoadingDelay:     *loading,
		StartDelay:       *starting,
		EngineReadyDelay: *ready,
		DestroyDelay:     *destroy,
		TokenInterval:    *tokens,
		RateLimits:       *rl,
		SSHDisabled:      !*sshOn,
	}
	if *sshKeys != "" {
		keys, err := readAuthorizedKeys(*sshKeys)
		if err != nil {
			return err
		}
		opts.SSHAuthorizedKeys = keys
	}
	if *verbose {
		logger := log.New(stderr, "", log.LstdFlags)
		opts.Logf = logger.Printf
	}
	sim := vastsim.New(opts)
	defer sim.Close()
	url, err := sim.Start(*listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "vastsim API: %s (api key %q)\n", url, *apiKey)
	for i := 1; i <= *n; i++ {
		id, err := sim.Launch(vastsim.LaunchSpec{Label: fmt.Sprintf("llm-%d", i), Running: true})
		if err != nil {
			return err
		}
		for _, in := range sim.Instances() {
			if in.ID == id {
				fmt.Fprintf(stdout, "instance %d label=%s engine=http://%s token=%s%s\n", id, in.Label, in.EngineAddr, in.JupyterToken, sshSummary(sim, id))
			}
		}
	}
	fmt.Fprint(stdout, controlLines(url))
	<-ctx.Done()
	fmt.Fprintln(stdout, "vastsim: shutting down")
	return nil
}

// controlLines lists the fault controls served next to the API.
func controlLines(url string) string {
	return fmt.Sprintf(`fault controls: %[1]s%[2]s (GET lists them; no API key needed)
  curl -s -X POST %[1]s%[2]sinstances/<id>/hang|kill|unready|exit|recover
  curl -s -X PUT %[1]s%[2]sfaults -d '{"status":500}'   (or {"rate_limit":true}, {"latency":"3s"})
  curl -s -X DELETE %[1]s%[2]sfaults
  curl -s %[1]s%[2]sinstances   (states and what each instance has billed)
`, url, vastsim.ControlPrefix)
}

// sshSummary describes an instance's SSH addresses and host key for the
// instance line, or "" when it has none.
func sshSummary(sim *vastsim.Sim, id int64) string {
	direct, proxy := sim.SSHAddrs(id)
	var b strings.Builder
	if direct != "" {
		fmt.Fprintf(&b, " ssh-direct=%s", direct)
	}
	if proxy != "" {
		fmt.Fprintf(&b, " ssh-proxy=%s", proxy)
	}
	if b.Len() > 0 {
		if hk := sim.HostKey(id); hk != nil {
			fmt.Fprintf(&b, " ssh-hostkey=%s", ssh.FingerprintSHA256(hk))
		}
	}
	return b.String()
}

// readAuthorizedKeys parses an OpenSSH authorized_keys file.
func readAuthorizedKeys(path string) ([]ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys := []ssh.PublicKey{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys", path)
	}
	return keys, nil
}
