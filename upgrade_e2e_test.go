package vastai

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpgradedConnectionsPassThrough proxies a connection upgrade (as a
// WebSocket does) through vastai_proxy. The vast.ai API here is a minimal
// hand-written imitation serving one captured-shape instance, so the test
// also shows the plugin working against something other than vastsim.
func TestUpgradedConnectionsPassThrough(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	var badAuth atomic.Int64
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			badAuth.Add(1)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.URL.Path == "/health" {
			return
		}
		if !strings.EqualFold(r.Header.Get("Upgrade"), "echo") {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = rw.Flush()
		_, _ = io.Copy(conn, rw) // echo until the client closes
	}))
	defer engine.Close()
	_, port, _ := net.SplitHostPort(engine.Listener.Addr().String())

	instance := fmt.Sprintf(`{"id": 4242, "actual_status": "running", "intended_status": "running", "cur_state": "running",
		"label": "llm-ws", "public_ipaddr": "127.0.0.1", "jupyter_token": %q, "extra_env": [["-p 8000:8000", "1"]],
		"ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": %q}, {"HostIp": "::", "HostPort": %q}]},
		"gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4, "gpu_util": null, "ssh_host": "ssh5.vast.ai", "ssh_port": 10882}`, token, port, port)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testAPIKey {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"success": false, "error": "auth_error", "msg": "Invalid user key"}`)
			return
		}
		if r.URL.Path != "/api/v1/instances/" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"success": false, "error": "not_found", "msg": "Not found."}`)
			return
		}
		_, _ = io.WriteString(w, `{"success": true, "instances_found": 1, "total_instances": 1, "label_counts": {"llm-ws": 1}, "next_token": null, "instances": [`+instance+`]}`)
	}))
	defer api.Close()

	startCaddy(t, testConfig(api.URL, llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 10*time.Second, []int64{4242})

	conn, err := net.DialTimeout("tcp", "127.0.0.1:9080", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(conn, "GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\nAuthorization: Bearer client\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade through the proxy: %d %s", resp.StatusCode, body)
	}
	for _, msg := range []string{"ping\n", "pong\n"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo over the upgraded connection: %q, %v", got, err)
		}
	}
	if n := badAuth.Load(); n != 0 {
		t.Errorf("%d requests reached the engine without its token", n)
	}
}
