package vastai

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// quietHealthPool probes rarely and does not scrape the engines' /metrics
// (the scraper has its own connections), so that after readiness the
// engines see only the test's own requests.
const quietHealthPool = `		pool llm {
			label_prefix llm-
			health {
				path /health
				interval 1h
				timeout 2s
				grace 1m
			}
		}
		engines {
			off
		}`

// TestOneInstancesSSHChangeKeepsTheOthersConnections moves instance A's
// SSH connection (its direct path drops, it reconnects through the proxy)
// and checks that B's idle keep-alive connection is still reused: in
// tunnel mode only A's connections may be closed, and in direct mode, where
// traffic does not use SSH at all, none.
func TestOneInstancesSSHChangeKeepsTheOthersConnections(t *testing.T) {
	for _, tc := range []struct {
		name      string
		transport string
	}{
		{"tunnel", "\n\t\ttransport vastai {\n\t\t\ttunnel ssh\n\t\t}"},
		{"direct", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			keyFile, pub := writeSSHKey(t, dir)
			sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
			ids := launch(t, sim, 2, "llm-")
			a, b := ids[0], ids[1]
			startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), quietHealthPool, `	vastai_proxy llm {
		lb_policy round_robin`+tc.transport+`
	}`))
			waitRoutable(t, 30*time.Second, ids)
			waitFor(t, 30*time.Second, "both SSH connections up on the direct path", func() bool {
				return sshPath(t, a) == "direct" && sshPath(t, b) == "direct"
			})
			client := &http.Client{Timeout: 20 * time.Second}
			serve := func() {
				t.Helper()
				got := map[string]int{}
				for i := 0; i < 40 && (got[strconv.FormatInt(a, 10)] < 2 || got[strconv.FormatInt(b, 10)] < 2); i++ {
					resp, body := completion(t, client)
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("request: %d %s", resp.StatusCode, body)
					}
					got[resp.Header.Get(InstanceHeader)]++
				}
			}
			serve()
			connsB := sim.Engine(b).ConnsOpened

			// A's direct path goes away: its SSH connection is lost and
			// comes back through the proxy (two connection changes of A).
			sim.SetSSHPath(a, false, true)
			waitFor(t, 60*time.Second, "A's SSH connection to move to the proxy", func() bool { return sshPath(t, a) == "proxy" })
			serve()
			if now := sim.Engine(b).ConnsOpened; now != connsB {
				t.Errorf("instance B's engine accepted %d new connections after instance A's SSH change: B's idle connections were flushed", now-connsB)
			}
		})
	}
}

func sshPath(t testing.TB, id int64) string {
	var in gpuInstance
	if code, _ := adminGET(t, "/vastai/instances/"+strconv.FormatInt(id, 10), &in); code != http.StatusOK || in.SSH == nil {
		return ""
	}
	return in.SSH.Path
}

// TestTunnelPoolsCloseOnlyTheChangedInstance checks the per-instance pools
// directly: closing instance 1's idle connections makes its next request
// dial again, while instance 2 keeps reusing its connection.
func TestTunnelPoolsCloseOnlyTheChangedInstance(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]int{}
	addrs := map[string]string{}
	for _, name := range []string{"one", "two"} {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				mu.Lock()
				conns[name]++
				mu.Unlock()
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		addrs[name+".test:80"] = srv.Listener.Addr().String()
	}
	base := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addrs[addr])
	}}
	var p tunnelPools
	get := func(id int64, host string) {
		t.Helper()
		resp, err := (&http.Client{Transport: p.get(base, id)}).Get("http://" + host + "/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get(1, "one.test")
	get(2, "two.test")
	if n := p.closeIdle(1); n != 1 {
		t.Errorf("closeIdle touched %d pools, want 1", n)
	}
	if n := p.closeIdle(3); n != 0 {
		t.Errorf("closeIdle of an instance without pools touched %d", n)
	}
	get(1, "one.test")
	get(2, "two.test")
	mu.Lock()
	defer mu.Unlock()
	if conns["one"] != 2 || conns["two"] != 1 {
		t.Errorf("connections: instance 1 %d (want 2: its idle one was closed), instance 2 %d (want 1: reused)", conns["one"], conns["two"])
	}
	p.prune(func(id int64) bool { return id == 2 }, nil)
	if _, ok := p.byID.Load(int64(1)); ok {
		t.Error("prune kept the pool of a gone instance")
	}
	base.CloseIdleConnections()
	p.prune(func(int64) bool { return false }, nil)
}
