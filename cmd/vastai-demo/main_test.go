package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The demo prints its lines again once Caddy is ready, and on SIGINT stops
// Caddy and removes its temporary folder (it holds a private key).
func TestDemoIsReadyThenCleansUpOnSIGINT(t *testing.T) {
	listen, simAddr, admin := freeAddr(t), freeAddr(t), freeAddr(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	ctxDone := make(chan struct{})
	go func() {
		// main's own signal context, so the real SIGINT path is tested.
		ctx, stop := signalContext()
		defer stop()
		err := run(ctx, []string{"-listen", listen, "-sim", simAddr, "-admin", admin, "-instances", "2"}, pw)
		close(ctxDone)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out strings.Builder
	dir := ""
	deadline := time.After(120 * time.Second)
	for dir == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended early: %v\n%s", <-done, out.String())
			}
			out.WriteString(l + "\n")
			if m := regexp.MustCompile(`^Caddy is ready .*Temporary folder: (\S+)$`).FindStringSubmatch(l); m != nil {
				dir = m[1]
			}
		case <-deadline:
			t.Fatalf("the demo never became ready:\n%s", out.String())
		}
	}
	// The rest of the ready block: Try lines, the dashboard, top and the
	// fault controls.
	for !strings.Contains(out.String(), "Stop with Ctrl-C") {
		select {
		case l := <-lines:
			out.WriteString(l + "\n")
		case <-time.After(30 * time.Second):
			t.Fatalf("incomplete ready block:\n%s", out.String())
		}
	}
	text := out.String()
	ready := text[strings.Index(text, "Caddy is ready"):]
	for _, want := range []string{"Try:", "/vastai/ui/", "vastai top --address " + admin, "/_sim/instances/", "/hang", "/exit", `"rate_limit":true`, "/_sim/faults"} {
		if !strings.Contains(ready, want) {
			t.Errorf("the lines printed once ready lack %q:\n%s", want, ready)
		}
	}
	if _, err := os.Stat(dir + "/id_ed25519"); err != nil {
		t.Fatalf("the private key is not where the demo said: %v", err)
	}
	// The proxy works, and the printed fault control does something.
	resp, err := http.Get("http://" + listen + "/v1/models")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/models through the demo: %v %v", resp, err)
	}
	resp.Body.Close()
	// The printed client key works on /team/, a wrong one is refused.
	m := regexp.MustCompile(`Authorization: Bearer (cvk_demo_[0-9a-f]+)`).FindStringSubmatch(ready)
	if m == nil {
		t.Fatalf("no client key in the ready block:\n%s", ready)
	}
	for _, c := range []struct {
		key  string
		want int
	}{{m[1], http.StatusOK}, {m[1] + "x", http.StatusUnauthorized}} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/team/v1/completions",
			strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"Hello","max_tokens":4}`))
		req.Header.Set("Authorization", "Bearer "+c.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("POST /team/v1/completions with a key ending %q: %d, want %d", c.key[len(c.key)-3:], resp.StatusCode, c.want)
		}
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after SIGINT: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the demo did not stop on SIGINT")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temporary folder %s still there after SIGINT (%v)", dir, err)
	}
	if _, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		t.Fatalf("the proxy still listens on %s after the stop", listen)
	}
	<-ctxDone
}
