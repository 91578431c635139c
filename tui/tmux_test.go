package tui_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/tui"
)

// helperEnv carries the admin address to the helper process.
const helperEnv = "VASTAI_TUI_HELPER_ADMIN"

// TestTopHelperProcess is not a test: TestTopInTmux runs the test binary
// again with only this function, in a tmux pane, to get a real `top` on a
// real terminal.
func TestTopHelperProcess(t *testing.T) {
	addr := os.Getenv(helperEnv)
	if addr == "" {
		t.Skip("helper process of TestTopInTmux")
	}
	err := tui.Run(context.Background(), httpAPI{base: "http://" + addr}, tui.Options{Refresh: 500 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "top:", err)
		os.Exit(1)
	}
	// Exit before the testing package prints PASS over the restored shell.
	os.Exit(0)
}

// tmux drives one tmux server on a private socket.
type tmux struct {
	t    *testing.T
	path string
	sock string
}

func (x *tmux) run(args ...string) string {
	x.t.Helper()
	out, err := exec.Command(x.path, append([]string{"-L", x.sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
	if err != nil {
		x.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (x *tmux) screen() string { return x.run("capture-pane", "-p", "-t", "top") }

// typeLine types text literally, then Enter.
func (x *tmux) typeLine(text string) {
	x.t.Helper()
	x.run("send-keys", "-t", "top", "-l", text)
	x.run("send-keys", "-t", "top", "Enter")
}

func (x *tmux) keys(keys ...string) {
	x.t.Helper()
	x.run(append([]string{"send-keys", "-t", "top"}, keys...)...)
}

func (x *tmux) altScreen() bool {
	return strings.TrimSpace(x.run("display-message", "-p", "-t", "top", "#{alternate_on}")) == "1"
}

// waitScreen polls the pane until cond holds for its text.
func (x *tmux) waitScreen(within time.Duration, what string, cond func(string) bool) string {
	x.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := x.screen()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("timed out after %s waiting for %s; screen:\n%s", within, what, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// row finds the table row of an instance on the screen.
func row(screen string, id int64) string {
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^[ >] %d .*$`, id))
	return re.FindString(screen)
}

func TestTopInTmux(t *testing.T) {
	tmuxPath, err := exec.LookPath("tmux")
	if err != nil {
		if os.Getenv("VASTAI_REQUIRE_TMUX") != "" {
			t.Fatalf("VASTAI_REQUIRE_TMUX is set but tmux is missing: %v", err)
		}
		t.Skip("tmux is not installed")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := startFleet(t)
	ids := provision(t, f, 3)

	x := &tmux{t: t, path: tmuxPath, sock: fmt.Sprintf("caddy-vastai-tui-%d", os.Getpid())}
	t.Cleanup(func() { _ = exec.Command(tmuxPath, "-L", x.sock, "kill-server").Run() })
	dir := t.TempDir()
	x.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "45", "-c", dir, "env", "PS1=$ ", "sh")
	x.typeLine(fmt.Sprintf("stty -g > before; %s=%s %s -test.run='^TestTopHelperProcess$'; echo top-exit=$?", helperEnv, f.admin, exe))

	// Every instance appears with its state, GPU figures and the header.
	screen := x.waitScreen(60*time.Second, "every instance ready with GPU figures", func(s string) bool {
		for _, id := range ids {
			r := row(s, id)
			if !strings.Contains(r, " ready ") || !strings.Contains(r, "°C") || !regexp.MustCompile(` (direct|proxy) `).MatchString(r) {
				return false
			}
		}
		return strings.Contains(s, "3 instances (3 ready)") && strings.Contains(s, "routable 3")
	})
	if !x.altScreen() {
		t.Error("top does not use the alternate screen")
	}
	for _, want := range []string{"caddy vastai top", "spend $", "budget llm", "Operations in progress", "K keys", "q quit"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	t.Logf("screen:\n%s", screen)
	saveScreen(t, x, screen)

	// Filter down to one instance, then drain it with confirmation.
	target := ids[1]
	x.keys("/")
	x.run("send-keys", "-t", "top", "-l", fmt.Sprint(target))
	x.keys("Enter")
	x.waitScreen(30*time.Second, "the filter to leave one instance", func(s string) bool {
		return strings.Contains(s, fmt.Sprintf("filter: %q", fmt.Sprint(target))) && row(s, target) != "" &&
			row(s, ids[0]) == "" && row(s, ids[2]) == ""
	})
	x.keys("d")
	x.waitScreen(30*time.Second, "the drain confirmation", func(s string) bool {
		return strings.Contains(s, fmt.Sprintf("Drain instance %d (pool llm)", target))
	})
	if n := drainOps(t, f, target); n != 0 {
		t.Fatalf("a drain started before the confirmation: %d operation(s)", n)
	}
	x.keys("y")
	waitFor(t, 30*time.Second, "a drain operation for the instance", func() bool { return drainOps(t, f, target) > 0 })
	x.waitScreen(30*time.Second, "the drain acknowledged", func(s string) bool {
		return strings.Contains(s, fmt.Sprintf("draining instance %d", target))
	})
	for _, id := range []int64{ids[0], ids[2]} {
		if n := drainOps(t, f, id); n != 0 {
			t.Errorf("instance %d, filtered out, has %d destroy operation(s)", id, n)
		}
	}

	toggleKeysPanel(t, x)

	// Ctrl-C ends top and leaves the terminal as it found it.
	x.keys("C-c")
	x.waitScreen(30*time.Second, "top to exit", func(s string) bool { return strings.Contains(s, "top-exit=0") })
	if x.altScreen() {
		t.Error("the alternate screen is still on after Ctrl-C")
	}
	x.typeLine("stty -g > after && cmp before after && echo sane-$((6*7))")
	end := x.waitScreen(30*time.Second, "the shell to take input with the terminal settings restored", func(s string) bool {
		return strings.Contains(s, "sane-42") || strings.Contains(s, "differ")
	})
	if !strings.Contains(end, "sane-42") {
		t.Fatalf("terminal settings differ after Ctrl-C:\n%s", end)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "before")); len(b) == 0 {
		t.Fatal("no terminal settings were recorded before top ran")
	}
}

// toggleKeysPanel opens the client keys panel with K, finds the config's
// key in it, and closes it with K.
func toggleKeysPanel(t *testing.T, x *tmux) {
	t.Helper()
	x.keys("K")
	keys := x.waitScreen(30*time.Second, "the keys panel", func(s string) bool {
		return strings.Contains(s, "Client keys (1)") && regexp.MustCompile(`(?m)^  team-a +active +60 .* \$10\.00/day +\$0\.00 `).MatchString(s)
	})
	t.Logf("keys panel:\n%s", keys)
	x.keys("K")
	x.waitScreen(30*time.Second, "the keys panel closed", func(s string) bool { return !strings.Contains(s, "Client keys") })
}

// provision asks the admin API for n instances and waits until they are
// ready and routable, returning their ids in order.
func provision(t *testing.T, f *fleet, n int) []int64 {
	t.Helper()
	ctx := context.Background()
	var out struct {
		Operations []lifecycle.Operation `json:"operations"`
	}
	if err := f.api.Do(ctx, "POST", "/vastai/pools/llm/instances", map[string]int{"count": n}, &out); err != nil {
		t.Fatalf("provisioning: %v", err)
	}
	if len(out.Operations) != n {
		t.Fatalf("%d operations for %d instances", len(out.Operations), n)
	}
	var ids []int64
	waitFor(t, 90*time.Second, "the provisionings to succeed", func() bool {
		ids = ids[:0]
		for _, op := range out.Operations {
			var cur lifecycle.Operation
			if err := f.api.Do(ctx, "GET", "/vastai/operations/"+op.ID, nil, &cur); err != nil {
				return false
			}
			if cur.State == "failed" {
				t.Fatalf("operation %s failed: %s", cur.ID, cur.Error)
			}
			if cur.State != "succeeded" {
				return false
			}
			ids = append(ids, cur.InstanceID)
		}
		return true
	})
	return ids
}

// drainOps counts the destroy operations (drains included) of an instance.
func drainOps(t *testing.T, f *fleet, id int64) int {
	t.Helper()
	var ops []lifecycle.Operation
	if err := f.api.Do(context.Background(), "GET", "/vastai/operations", nil, &ops); err != nil {
		t.Fatalf("listing operations: %v", err)
	}
	n := 0
	for _, op := range ops {
		if op.InstanceID == id && op.Kind != "provision" {
			n++
		}
	}
	return n
}
