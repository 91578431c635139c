package cli_test

// Test helpers: an in-process Caddy with the plugin (loaded with
// caddy.Load, so that the admin endpoint can be a unix socket, which
// caddytest cannot use), vastsim for vast.ai, and a way to run `caddy
// vastai ...` in-process with captured output and exit code.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-vastai/caddy-vastai"
	"github.com/caddy-vastai/caddy-vastai/cli"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const testKey = "sim-cli-key-0123456789"

// result is one in-process run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCLI runs `caddy vastai args...` without a terminal.
func runCLI(t testing.TB, args ...string) result {
	t.Helper()
	return runIO(t, cli.IO{}, "", args...)
}

// runIO runs the CLI with the given terminal flags and stdin.
func runIO(t testing.TB, io cli.IO, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	io.In, io.Out, io.Err = strings.NewReader(stdin), &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := cli.Run(ctx, args, io)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// mustRun runs the CLI and fails the test unless it exits 0.
func mustRun(t testing.TB, args ...string) result {
	t.Helper()
	r := runCLI(t, args...)
	if r.code != 0 {
		t.Fatalf("caddy vastai %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// runJSON runs the CLI with --json and decodes its output.
func runJSON(t testing.TB, out any, args ...string) {
	t.Helper()
	r := mustRun(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("caddy vastai %s --json: not JSON: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
}

func newSim(t testing.TB, opts vastsim.Options) *vastsim.Sim {
	t.Helper()
	if opts.APIKey == "" {
		opts.APIKey = testKey
	}
	sim := vastsim.New(opts)
	if _, err := sim.Start(""); err != nil {
		t.Fatalf("starting vastsim: %v", err)
	}
	t.Cleanup(sim.Close)
	return sim
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyfileFor renders the test config: one provisioning pool "llm" over
// the simulator, with the admin endpoint at admin.
func caddyfileFor(t testing.TB, admin, simURL string) string {
	return fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	grace_period 1ns
	persist_config off
	skip_install_trust
	storage file_system %s
	log {
		level ERROR
	}
	vastai {
		api_key %s
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
				max_instances 3
				max_price_per_hour 2
				ready_timeout 30s
			}
		}
	}
}
`, admin, freePort(t), freePort(t), t.TempDir(), testKey, simURL)
}

// startCaddy adapts and loads cfg into the in-process Caddy, and leaves
// Caddy with no apps and no admin endpoint when the test ends.
func startCaddy(t testing.TB, cfg string) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	js, warn, err := adapter.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapting the config: %v (%v)", err, warn)
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("loading the config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Load([]byte(`{"admin":{"disabled":true,"config":{"persist":false}}}`), true); err != nil {
			t.Errorf("unloading: %v", err)
		}
	})
}

// shortDir is a temporary folder with a path short enough for a unix
// socket (108 bytes at most).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cvcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
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

// table is a parsed CLI table.
type table struct {
	header []string
	rows   []map[string]string
	starts []int // byte offset of each column in the header line
}

var colSep = regexp.MustCompile(`\S+(?: \S+)*`)

// parseTable parses the first table in out: the header line, then rows up
// to the first blank line. It fails the test unless every cell starts at
// its header's column: that is what "aligned" means.
func parseTable(t testing.TB, out string) table {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		t.Fatalf("no table in %q", out)
	}
	var tb table
	for _, loc := range colSep.FindAllStringIndex(lines[0], -1) {
		tb.header = append(tb.header, lines[0][loc[0]:loc[1]])
		tb.starts = append(tb.starts, loc[0])
	}
	for _, line := range lines[1:] {
		if strings.TrimSpace(line) == "" {
			break
		}
		row := map[string]string{}
		runes := []rune(line)
		for i, h := range tb.header {
			start := tb.starts[i]
			if start > 0 && (start > len(runes) || runes[start-1] != ' ' || runes[start] == ' ') {
				t.Fatalf("column %s is not aligned in line %q of\n%s", h, line, out)
			}
			end := len(runes)
			if i+1 < len(tb.starts) && tb.starts[i+1] <= len(runes) {
				end = tb.starts[i+1]
			}
			row[h] = strings.TrimSpace(string(runes[start:end]))
		}
		tb.rows = append(tb.rows, row)
	}
	return tb
}

// fieldsOf parses "Key:  value" lines.
func fieldsOf(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && !strings.HasPrefix(line, " ") {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

var rateRe = regexp.MustCompile(`^\$\d+\.\d{2,3}/h$`)

// termIO pretends stdin and stdout are a terminal (prompts allowed).
func termIO() cli.IO { return cli.IO{Terminal: true} }

// colorIO pretends stdout is a colour terminal.
func colorIO() cli.IO { return cli.IO{Terminal: true, Color: true} }
