package vastsim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// fullQuery is the exact command the gateway runs for GPU metrics.
const fullQuery = "nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,temperature.gpu,power.draw,power.limit --format=csv,noheader,nounits"

func newTestKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sshConnect dials an SSH server. A nil hostKey accepts any (the tests that
// care pin it); auth defaults to a fresh key.
func sshConnect(addr, user string, hostKey ssh.PublicKey, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	cb := ssh.InsecureIgnoreHostKey()
	if hostKey != nil {
		cb = ssh.FixedHostKey(hostKey)
	}
	return ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User: user, Auth: auth, HostKeyCallback: cb, Timeout: 5 * time.Second,
	})
}

func mustConnect(t *testing.T, addr string, key ssh.Signer) *ssh.Client {
	t.Helper()
	if key == nil {
		key = newTestKey(t)
	}
	c, err := sshConnect(addr, "root", nil, ssh.PublicKeys(key))
	if err != nil {
		t.Fatalf("ssh %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// run executes a command and returns stdout, stderr and the exit status.
func run(t *testing.T, c *ssh.Client, cmd string) (string, string, int) {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer sess.Close()
	var out, errOut bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errOut
	err = sess.Run(cmd)
	status := 0
	if err != nil {
		var ee *ssh.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %q: %v", cmd, err)
		}
		status = ee.ExitStatus()
	}
	return out.String(), errOut.String(), status
}

// refuses waits until nothing accepts TCP connections on addr.
func refuses(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, 5*time.Second, addr+" refusing connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		_ = c.Close()
		return false
	})
}

// closedWithin waits for an SSH client connection to end.
func closedWithin(t *testing.T, c *ssh.Client, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatal("SSH connection still open")
	}
}

func sshAddrs(t *testing.T, s *Sim, id int64) (string, string) {
	t.Helper()
	d, p := s.SSHAddrs(id)
	if d == "" || p == "" {
		t.Fatalf("instance %d SSH addrs %q %q", id, d, p)
	}
	return d, p
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, ps, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(ps)
	return p
}

// sshServerOf returns the running SSH server of an instance, for leak
// checks.
func sshServerOf(t *testing.T, s *Sim, id int64) *sshServer {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || in.ssh == nil || in.ssh.srv == nil {
		t.Fatalf("instance %d has no SSH server", id)
	}
	return in.ssh.srv
}

func TestSSHAuth(t *testing.T) {
	keyA, keyB := newTestKey(t), newTestKey(t)
	opts := fastOpts()
	opts.SSHAuthorizedKeys = []ssh.PublicKey{keyA.PublicKey()}
	s, c := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	direct, proxy := sshAddrs(t, s, id)

	for _, addr := range []string{direct, proxy} {
		if cl, err := sshConnect(addr, "ubuntu", nil, ssh.PublicKeys(keyA)); err == nil {
			cl.Close()
			t.Fatalf("%s: user ubuntu accepted", addr)
		}
		if cl, err := sshConnect(addr, "root", nil, ssh.PublicKeys(keyB)); err == nil {
			cl.Close()
			t.Fatalf("%s: unknown key accepted", addr)
		}
		if cl, err := sshConnect(addr, "root", nil, ssh.Password("root"), ssh.KeyboardInteractive(
			func(string, string, []string, []bool) ([]string, error) { return []string{"root"}, nil })); err == nil {
			cl.Close()
			t.Fatalf("%s: password accepted", addr)
		}
		cl := mustConnect(t, addr, keyA)
		if out, _, st := run(t, cl, "echo ok"); out != "ok\n" || st != 0 {
			t.Fatalf("echo: %q %d", out, st)
		}
	}
	st := s.SSHStats(id)
	for name, ps := range map[string]SSHPathStats{"direct": st.Direct, "proxy": st.Proxy} {
		if ps.Logins != 1 || ps.FailedHandshakes != 3 || ps.Connections != 4 || ps.Execs != 1 || ps.Active != 1 {
			t.Fatalf("%s stats %+v", name, ps)
		}
	}

	// A key attached through the API is authorized for that instance
	// only, until it is detached.
	other := launch(t, s, LaunchSpec{Running: true})
	_, otherProxy := sshAddrs(t, s, other)
	p := fmt.Sprintf("/api/v0/instances/%d/ssh/", id)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(keyB.PublicKey()))) + " gw@test"
	if r := c.do("POST", p, map[string]any{"ssh_key": line}); r.status != 200 {
		t.Fatalf("attach: %d %s", r.status, r.body)
	}
	mustConnect(t, proxy, keyB)
	if cl, err := sshConnect(otherProxy, "root", nil, ssh.PublicKeys(keyB)); err == nil {
		cl.Close()
		t.Fatal("key attached to another instance accepted")
	}
	var keys []sshKeyRec
	if err := json.Unmarshal([]byte(c.do("GET", p, nil).obj(t)["ssh_keys"].(string)), &keys); err != nil || len(keys) != 1 {
		t.Fatalf("ssh_keys %v %v", keys, err)
	}
	if r := c.do("DELETE", fmt.Sprintf("%s%d/", p, keys[0].ID), nil); r.status != 200 {
		t.Fatalf("detach: %d", r.status)
	}
	if cl, err := sshConnect(proxy, "root", nil, ssh.PublicKeys(keyB)); err == nil {
		cl.Close()
		t.Fatal("detached key still accepted")
	}

	// Without configured keys any key is accepted, still only for root.
	s2, _ := startSim(t, fastOpts())
	id2 := launch(t, s2, LaunchSpec{Running: true})
	d2, _ := sshAddrs(t, s2, id2)
	mustConnect(t, d2, nil)
	if cl, err := sshConnect(d2, "admin", nil, ssh.PublicKeys(keyA)); err == nil {
		cl.Close()
		t.Fatal("user admin accepted")
	}
}

type smiLine struct {
	index                            int
	uuid, name                       string
	util, memUtil, used, total, temp int
	power, limit                     float64
}

var uuidRE = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// parseSMI parses the full query's output the way a gateway would.
func parseSMI(t *testing.T, out string, wantGPUs int) []smiLine {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != wantGPUs {
		t.Fatalf("want %d GPU lines, got %q", wantGPUs, out)
	}
	var res []smiLine
	for _, l := range lines {
		f := strings.Split(l, ", ")
		if len(f) != 10 {
			t.Fatalf("want 10 fields, got %d in %q", len(f), l)
		}
		ints := make([]int, 10)
		for _, i := range []int{0, 3, 4, 5, 6, 7} {
			v, err := strconv.Atoi(f[i])
			if err != nil {
				t.Fatalf("field %d of %q: %v", i, l, err)
			}
			ints[i] = v
		}
		power, err1 := strconv.ParseFloat(f[8], 64)
		limit, err2 := strconv.ParseFloat(f[9], 64)
		if err1 != nil || err2 != nil || !strings.Contains(f[8], ".") || len(f[8])-strings.Index(f[8], ".") != 3 {
			t.Fatalf("power fields of %q", l)
		}
		res = append(res, smiLine{index: ints[0], uuid: f[1], name: f[2], util: ints[3], memUtil: ints[4],
			used: ints[5], total: ints[6], temp: ints[7], power: power, limit: limit})
	}
	return res
}

func TestSSHNvidiaSMI(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = 20 * time.Millisecond
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true, GPUName: "RTX 4090", NumGPUs: 2})
	direct, _ := sshAddrs(t, s, id)
	cl := mustConnect(t, direct, nil)

	smi := func() []smiLine {
		t.Helper()
		out, errOut, st := run(t, cl, fullQuery)
		if st != 0 || errOut != "" {
			t.Fatalf("nvidia-smi: status %d stderr %q", st, errOut)
		}
		return parseSMI(t, out, 2)
	}
	first := smi()
	for i, g := range first {
		if g.index != i || !uuidRE.MatchString(g.uuid) || g.name != "NVIDIA GeForce RTX 4090" {
			t.Fatalf("GPU %d identity %+v", i, g)
		}
		if g.total != 24564 || g.used >= g.total || g.used < g.total*8/10 {
			t.Fatalf("GPU %d memory %d/%d", i, g.used, g.total)
		}
		if g.temp < 30 || g.temp > 85 || g.limit != 450 || g.power <= 0 || g.power >= g.limit {
			t.Fatalf("GPU %d temp %d power %.2f/%.2f", i, g.temp, g.power, g.limit)
		}
		if g.util > 5 || g.memUtil > 5 {
			t.Fatalf("idle GPU %d utilization %d/%d", i, g.util, g.memUtil)
		}
	}
	if first[0].uuid == first[1].uuid {
		t.Fatal("GPUs share a uuid")
	}
	prev := first
	for range 5 {
		next := smi()
		if fmt.Sprint(next) == fmt.Sprint(prev) {
			t.Fatalf("successive readings identical: %+v", next)
		}
		for i := range next {
			if next[i].uuid != first[i].uuid || next[i].total != first[i].total {
				t.Fatal("identity changed between readings")
			}
		}
		prev = next
	}

	// Load: utilization follows the engine's in-flight generations.
	info := s.info(t, id)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := 2
	for range streams {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+info.EngineAddr+"/v1/completions",
			strings.NewReader(`{"prompt":"load","max_tokens":500,"stream":true}`))
		req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
		go func() {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, 5*time.Second, "generations in flight", func() bool { return s.Engine(id).InFlight == int64(streams) })
	for _, g := range smi() {
		if g.util < 50 || g.power < first[g.index].power+50 || g.memUtil < 20 {
			t.Fatalf("loaded GPU %d: util %d mem %d power %.2f", g.index, g.util, g.memUtil, g.power)
		}
	}
	cancel()
	waitFor(t, 5*time.Second, "generations finished", func() bool { return s.Engine(id).InFlight == 0 })
	for _, g := range smi() {
		if g.util > 5 {
			t.Fatalf("GPU %d still busy after load: %d", g.index, g.util)
		}
	}

	// Other formats and queries, as nvidia-smi prints them.
	out, _, st := run(t, cl, "nvidia-smi --query-gpu=name,memory.total,power.draw,temperature.gpu --format=csv")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if st != 0 || len(lines) != 3 || lines[0] != "name, memory.total [MiB], power.draw [W], temperature.gpu" ||
		!regexp.MustCompile(`^NVIDIA GeForce RTX 4090, 24564 MiB, \d+\.\d\d W, \d+$`).MatchString(lines[1]) {
		t.Fatalf("csv with header and units: %d %q", st, out)
	}
	if out, _, st := run(t, cl, "nvidia-smi --query-gpu=bogus.field --format=csv"); st != 2 || !strings.Contains(out, `"bogus.field" is not a valid field`) {
		t.Fatalf("unknown field: %d %q", st, out)
	}
	if out, _, st := run(t, cl, "nvidia-smi -L"); st != 0 || strings.Count(out, "(UUID: GPU-") != 2 {
		t.Fatalf("-L: %d %q", st, out)
	}
	if out, _, st := run(t, cl, "nvidia-smi"); st != 0 || !strings.Contains(out, "Driver Version:") || strings.Count(out, "RTX 4090") != 2 {
		t.Fatalf("table: %d %q", st, out)
	}
	if out, _, st := run(t, cl, `bash -lc '`+fullQuery+`'`); st != 0 {
		t.Fatalf("wrapped in bash -c: %d %q", st, out)
	} else {
		parseSMI(t, out, 2)
	}

	// A datacenter board on another instance: its own name and limit.
	a100 := launch(t, s, LaunchSpec{Running: true, GPUName: "A100 SXM4"})
	_, ap := sshAddrs(t, s, a100)
	g := parseSMI(t, func() string { o, _, _ := run(t, mustConnect(t, ap, nil), fullQuery); return o }(), 1)[0]
	if g.name != "NVIDIA A100-SXM4-80GB" || g.total != 81920 || g.limit != 400 || g.uuid == first[0].uuid {
		t.Fatalf("A100 reading %+v", g)
	}
}

func TestSSHNvidiaSMIForcedOutput(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	_, proxy := sshAddrs(t, s, id)
	cl := mustConnect(t, proxy, nil)

	na := "0, GPU-00000000-0000-0000-0000-000000000000, NVIDIA GeForce RTX 4090, [N/A], [N/A], 100, 24564, [N/A], [N/A], [Not Supported]\n"
	for _, tc := range []struct {
		out    string
		status int
	}{
		{na, 0},
		{"\x00\xffgarbage, not csv", 0},
		{"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9},
		{"", 6},
	} {
		s.SetNvidiaSMIOutput(id, tc.out, tc.status)
		out, _, st := run(t, cl, fullQuery)
		if out != tc.out || st != tc.status {
			t.Fatalf("forced %q/%d: got %q/%d", tc.out, tc.status, out, st)
		}
	}
	s.SetNvidiaSMIOutput(id, "", 0)
	out, _, st := run(t, cl, fullQuery)
	if st != 0 {
		t.Fatalf("restored: status %d", st)
	}
	parseSMI(t, out, 1)
}

func TestSSHExecAndRequests(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	direct, proxy := sshAddrs(t, s, id)
	cl := mustConnect(t, direct, nil)

	for cmd, want := range map[string]string{
		`echo hello "big  world"`: "hello big  world\n",
		`echo`:                    "\n",
		`echo -n ok`:              "ok",
		`echo 'nvidia-smi'`:       "nvidia-smi\n",
	} {
		if out, errOut, st := run(t, cl, cmd); out != want || errOut != "" || st != 0 {
			t.Fatalf("%s: %q %q %d", cmd, out, errOut, st)
		}
	}
	out, errOut, st := run(t, cl, "frobnicate --now")
	if st != 127 || out != "" || !strings.Contains(errOut, "frobnicate: command not found") {
		t.Fatalf("unknown command: %q %q %d", out, errOut, st)
	}

	ok, _, err := cl.SendRequest("keepalive@openssh.com", true, nil)
	if err != nil || !ok {
		t.Fatalf("keepalive: %v %v", ok, err)
	}
	if ok, _, err := cl.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0})); err != nil || ok {
		t.Fatalf("remote forwarding: %v %v", ok, err)
	}
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Shell(); err == nil {
		t.Fatal("interactive shell accepted")
	}
	sess.Close()

	pcl := mustConnect(t, proxy, nil)
	run(t, pcl, "echo via proxy")
	st2 := s.SSHStats(id)
	if st2.Direct.Execs != 5 || st2.Direct.Keepalives != 1 || st2.Direct.Sessions != 6 ||
		st2.Proxy.Execs != 1 || st2.Proxy.Sessions != 1 || st2.LastCommand != "echo via proxy" {
		t.Fatalf("stats %+v", st2)
	}
}

// tunnelClient is an HTTP client whose connections go through an SSH
// direct-tcpip channel to dest inside the instance.
func tunnelClient(cl *ssh.Client, dest string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return cl.DialContext(ctx, "tcp", dest)
		}},
	}
}

func TestSSHTunnelToEngine(t *testing.T) {
	opts := fastOpts()
	opts.TokenInterval = 30 * time.Millisecond
	s, _ := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true, Model: "Qwen/Qwen3-8B"})
	info := s.info(t, id)
	direct, proxy := sshAddrs(t, s, id)

	for _, tc := range []struct{ addr, dest string }{{direct, "127.0.0.1:8000"}, {proxy, "localhost:8000"}} {
		hc := tunnelClient(mustConnect(t, tc.addr, nil), tc.dest)
		get := func(token string) (int, string) {
			req, _ := http.NewRequest("GET", "http://instance/v1/models", nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("tunnel %s: %v", tc.dest, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if st, body := get(info.JupyterToken); st != 200 || !strings.Contains(body, `"Qwen/Qwen3-8B"`) {
			t.Fatalf("models through %s: %d %s", tc.dest, st, body)
		}
		if st, _ := get(""); st != 401 {
			t.Fatalf("unauthenticated through tunnel: %d", st)
		}
	}
	if e := s.Engine(id); e.Unauthorized != 2 || e.LastPath != "/v1/models" {
		t.Fatalf("engine stats %+v", e)
	}

	// An SSE stream arrives chunk by chunk while the engine generates.
	hc := tunnelClient(mustConnect(t, direct, nil), "127.0.0.1:8000")
	const n = 20
	req, _ := http.NewRequest("POST", "http://instance/v1/chat/completions", strings.NewReader(
		fmt.Sprintf(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":%d,"stream":true}`, n)))
	req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	events, sawInFlight, done := 0, false, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if line == "data: [DONE]" {
			done = true
			break
		}
		events++
		if events == 2 && s.Engine(id).InFlight == 1 {
			sawInFlight = true // a token reached us before generation ended
		}
	}
	if !done || events != n+1 || !sawInFlight {
		t.Fatalf("stream: done %v events %d incremental %v err %v", done, events, sawInFlight, sc.Err())
	}

	// Destinations outside the container are prohibited; a local port
	// nothing listens on is refused like sshd does.
	cl := mustConnect(t, proxy, nil)
	for dest, reason := range map[string]ssh.RejectionReason{
		"example.com:80":  ssh.Prohibited,
		"10.0.0.1:8000":   ssh.Prohibited,
		"127.0.0.1:9":     ssh.ConnectionFailed,
		"localhost:22":    ssh.ConnectionFailed,
		"127.0.0.1:65000": ssh.ConnectionFailed,
	} {
		c, err := cl.Dial("tcp", dest)
		var oce *ssh.OpenChannelError
		if err == nil {
			c.Close()
			t.Fatalf("%s: tunnel opened", dest)
		}
		if !errors.As(err, &oce) || oce.Reason != reason {
			t.Fatalf("%s: %v, want %v", dest, err, reason)
		}
	}
	st := s.SSHStats(id)
	if st.Direct.DirectTCPIP < 2 || st.Proxy.DirectTCPIP < 1 || st.Proxy.DirectTCPIPRejected != 5 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSSHHostKey(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	other := launch(t, s, LaunchSpec{Running: true})
	hk := s.HostKey(id)
	if hk == nil || hk.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("host key %v", hk)
	}
	if bytes.Equal(hk.Marshal(), s.HostKey(other).Marshal()) {
		t.Fatal("two instances share a host key")
	}
	direct, proxy := sshAddrs(t, s, id)
	key := newTestKey(t)
	seen := func(addr string) ssh.PublicKey {
		t.Helper()
		var got ssh.PublicKey
		cl, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(key)}, Timeout: 5 * time.Second,
			HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error { got = k; return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		cl.Close()
		return got
	}
	for _, addr := range []string{direct, proxy, direct, proxy} {
		if k := seen(addr); !bytes.Equal(k.Marshal(), hk.Marshal()) {
			t.Fatalf("%s presented %s, want %s", addr, ssh.FingerprintSHA256(k), ssh.FingerprintSHA256(hk))
		}
	}

	// Stable across a stop and start (new direct port, same key).
	p := fmt.Sprintf("/api/v0/instances/%d/", id)
	c.do("PUT", p, map[string]any{"state": "stopped"})
	refuses(t, direct)
	c.do("PUT", p, map[string]any{"state": "running"})
	waitFor(t, 5*time.Second, "running again", func() bool {
		return c.do("GET", p, nil).obj(t)["instances"].(map[string]any)["actual_status"] == "running"
	})
	d2, p2 := sshAddrs(t, s, id)
	if p2 != proxy {
		t.Fatalf("proxy port moved from %s to %s", proxy, p2)
	}
	cl, err := sshConnect(d2, "root", hk, ssh.PublicKeys(key))
	if err != nil {
		t.Fatalf("pinned key after restart: %v", err)
	}
	cl.Close()

	nk := s.RotateHostKey(id)
	if nk == nil || bytes.Equal(nk.Marshal(), hk.Marshal()) || !bytes.Equal(s.HostKey(id).Marshal(), nk.Marshal()) {
		t.Fatal("RotateHostKey did not change the key")
	}
	before := s.SSHStats(id).Proxy.FailedHandshakes
	if cl, err := sshConnect(p2, "root", hk, ssh.PublicKeys(key)); err == nil {
		cl.Close()
		t.Fatal("client pinned to the old key connected after rotation")
	}
	cl, err = sshConnect(p2, "root", nk, ssh.PublicKeys(key))
	if err != nil {
		t.Fatalf("new key: %v", err)
	}
	cl.Close()
	// The server counts the refused handshake in its own goroutine, which
	// may finish after the client has given up: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for s.SSHStats(id).Proxy.FailedHandshakes != before+1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.SSHStats(id).Proxy.FailedHandshakes; got != before+1 {
		t.Fatalf("failed handshakes %d -> %d", before, got)
	}
	if s.HostKey(999) != nil || s.RotateHostKey(999) != nil {
		t.Fatal("unknown instance has a host key")
	}
}

func TestSSHSetPath(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	direct, proxy := sshAddrs(t, s, id)
	show := func() map[string]any {
		return c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	}
	advertised := func() (string, int64) {
		in := show()
		hp := in["ports"].(map[string]any)["22/tcp"].([]any)[0].(map[string]any)["HostPort"].(string)
		return hp, inum(t, in["ssh_port"])
	}
	dcl := mustConnect(t, direct, nil)

	// Direct path down: its connections drop, it refuses new ones, the API
	// still advertises it, and the proxy path works.
	s.SetSSHPath(id, false, true)
	closedWithin(t, dcl, 5*time.Second)
	refuses(t, direct)
	if d, p := s.SSHAddrs(id); d != "" || p != proxy {
		t.Fatalf("addrs with direct closed: %q %q", d, p)
	}
	if hp, sp := advertised(); hp != strconv.Itoa(portOf(t, direct)) || sp != int64(portOf(t, proxy)) {
		t.Fatalf("advertised %s %d", hp, sp)
	}
	run(t, mustConnect(t, proxy, nil), "echo fallback")

	// Direct back on the same port.
	s.SetSSHPath(id, true, true)
	if d, _ := s.SSHAddrs(id); d != direct {
		t.Fatalf("direct reopened on %q, want %q", d, direct)
	}
	run(t, mustConnect(t, direct, nil), "echo back")

	// Proxy down; a reboot keeps both settings and ports.
	pcl := mustConnect(t, proxy, nil)
	s.SetSSHPath(id, true, false)
	closedWithin(t, pcl, 5*time.Second)
	refuses(t, proxy)
	run(t, mustConnect(t, direct, nil), "echo direct only")
	if r := c.do("PUT", fmt.Sprintf("/api/v0/instances/reboot/%d/", id), nil); r.status != 200 {
		t.Fatalf("reboot: %d", r.status)
	}
	waitFor(t, 5*time.Second, "running after reboot", func() bool { return show()["actual_status"] == "running" })
	if d, p := s.SSHAddrs(id); d != direct || p != "" {
		t.Fatalf("after reboot: %q %q", d, p)
	}
	refuses(t, proxy)
	s.SetSSHPath(id, true, true)
	run(t, mustConnect(t, proxy, nil), "echo proxy back")

	st := s.SSHStats(id)
	if st.Direct.Logins != 3 || st.Proxy.Logins != 3 || st.Direct.Execs != 2 || st.Proxy.Execs != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSSHInstanceJSON(t *testing.T) {
	opts := fastOpts()
	opts.LoadingDelay = 400 * time.Millisecond
	s, c := startSim(t, opts)
	show := func(id int64) map[string]any {
		return c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	}

	id := launch(t, s, LaunchSpec{Running: true})
	direct, proxy := sshAddrs(t, s, id)
	in := show(id)
	jb, _ := json.Marshal(in["ports"].(map[string]any)["22/tcp"])
	dp := strconv.Itoa(portOf(t, direct))
	jsonEq(t, jb, `[{"HostIp":"0.0.0.0","HostPort":"`+dp+`"},{"HostIp":"::","HostPort":"`+dp+`"}]`)
	if in["ssh_host"] != "127.0.0.1" || inum(t, in["ssh_port"]) != int64(portOf(t, proxy)) || in["image_runtype"] != "ssh ssh_direc ssh_proxy" {
		t.Fatalf("ssh_host %v ssh_port %v runtype %v", in["ssh_host"], in["ssh_port"], in["image_runtype"])
	}
	if inum(t, in["direct_port_start"]) > int64(portOf(t, direct)) || inum(t, in["direct_port_end"]) < int64(portOf(t, direct)) {
		t.Fatal("22/tcp outside the direct port range")
	}
	if s.info(t, id).Ports["22/tcp"] != portOf(t, direct) {
		t.Fatal("InstanceInfo.Ports lacks 22/tcp")
	}

	// Jupyter runtypes: clients add 1 to ssh_port on the proxy path.
	jid := launch(t, s, LaunchSpec{Running: true, Runtype: "jupyter_direct"})
	_, jproxy := sshAddrs(t, s, jid)
	jin := show(jid)
	if jin["ports"].(map[string]any)["22/tcp"] == nil || inum(t, jin["ssh_port"])+1 != int64(portOf(t, jproxy)) {
		t.Fatalf("jupyter ssh_port %v, proxy %s", jin["ssh_port"], jproxy)
	}
	mustConnect(t, fmt.Sprintf("127.0.0.1:%d", inum(t, jin["ssh_port"])+1), nil)

	// A runtype without ssh_direc has the proxy path only.
	aid := launch(t, s, LaunchSpec{Running: true, Runtype: "args"})
	if d, p := s.SSHAddrs(aid); d != "" || p == "" {
		t.Fatalf("args runtype addrs %q %q", d, p)
	} else {
		ain := show(aid)
		if ain["ports"].(map[string]any)["22/tcp"] != nil || inum(t, ain["ssh_port"]) != int64(portOf(t, p)) {
			t.Fatalf("args runtype JSON: %v %v", ain["ports"], ain["ssh_port"])
		}
		mustConnect(t, p, nil)
	}

	// Created through the API with ssh_direct: no 22/tcp and no SSH
	// service while loading, both once running.
	offerID := inum(t, findOffers(t, c, map[string]any{})[0]["id"])
	r := c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", offerID), map[string]any{
		"image": "vllm/vllm-openai:latest", "runtype": "ssh_direct", "env": map[string]string{"-p 8000:8000": "1"},
	})
	cid := inum(t, r.obj(t)["new_contract"])
	_, cproxy := sshAddrs(t, s, cid)
	if show(cid)["actual_status"] == "running" {
		t.Fatal("created instance running at once")
	}
	if cl, err := sshConnect(cproxy, "root", nil, ssh.PublicKeys(newTestKey(t))); err == nil {
		cl.Close()
		t.Fatal("SSH answered while loading")
	}
	if ports, _ := show(cid)["ports"].(map[string]any); ports["22/tcp"] != nil {
		t.Fatal("22/tcp published while loading")
	}
	waitFor(t, 5*time.Second, "created instance running", func() bool { return show(cid)["actual_status"] == "running" })
	cin := show(cid)
	if cin["ports"].(map[string]any)["22/tcp"] == nil || cin["ports"].(map[string]any)["8000/tcp"] == nil {
		t.Fatalf("ports %v", cin["ports"])
	}
	mustConnect(t, cproxy, nil)

	// "-p 22:22" opens the direct path even for an args runtype, and the
	// engine does not claim port 22.
	r = c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", inum(t, findOffers(t, c, map[string]any{})[0]["id"])), map[string]any{
		"image": "img", "runtype": "args", "env": map[string]string{"-p 8000:8000": "1", "-p 22:22": "1"},
	})
	pid := inum(t, r.obj(t)["new_contract"])
	s.SetStatus(pid, "running")
	pd, _ := sshAddrs(t, s, pid)
	hp := show(pid)["ports"].(map[string]any)["22/tcp"].([]any)[0].(map[string]any)["HostPort"]
	if hp != strconv.Itoa(portOf(t, pd)) {
		t.Fatalf("22/tcp %v, ssh direct %s", hp, pd)
	}
	mustConnect(t, pd, nil)
}

func TestSSHDisabled(t *testing.T) {
	opts := fastOpts()
	opts.SSHDisabled = true
	s, c := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})
	in := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	if in["ssh_host"] != "ssh5.vast.ai" || in["ports"].(map[string]any)["22/tcp"] != nil {
		t.Fatalf("ssh_host %v ports %v", in["ssh_host"], in["ports"])
	}
	if d, p := s.SSHAddrs(id); d != "" || p != "" || s.HostKey(id) != nil {
		t.Fatalf("SSH present while disabled: %q %q", d, p)
	}
	s.SetSSHPath(id, true, true) // no effect, no panic
	if d, p := s.SSHAddrs(id); d != "" || p != "" {
		t.Fatal("SetSSHPath started SSH while disabled")
	}
}

// TestSSHShutdown checks that each way a container goes away closes both
// paths, open connections and tunnels (even to a hung engine), and ends
// every goroutine of the server.
func TestSSHShutdown(t *testing.T) {
	causes := []struct {
		name string
		do   func(s *Sim, c *apiClient, id int64)
	}{
		{"destroy", func(s *Sim, c *apiClient, id int64) { c.do("DELETE", fmt.Sprintf("/api/v0/instances/%d/", id), nil) }},
		{"stop", func(s *Sim, c *apiClient, id int64) {
			c.do("PUT", fmt.Sprintf("/api/v0/instances/%d/", id), map[string]any{"state": "stopped"})
		}},
		{"kill", func(s *Sim, _ *apiClient, id int64) { s.KillEngine(id) }},
		{"exited", func(s *Sim, _ *apiClient, id int64) { s.SetStatus(id, "exited") }},
		{"remove", func(s *Sim, _ *apiClient, id int64) { s.Remove(id) }},
		{"close", func(s *Sim, _ *apiClient, _ int64) { s.Close() }},
	}
	for _, tc := range causes {
		t.Run(tc.name, func(t *testing.T) {
			s, c := startSim(t, fastOpts())
			id := launch(t, s, LaunchSpec{Running: true})
			info := s.info(t, id)
			direct, proxy := sshAddrs(t, s, id)
			srv := sshServerOf(t, s, id)

			cl := mustConnect(t, direct, nil)
			pcl := mustConnect(t, proxy, nil)
			sess, err := pcl.NewSession() // an idle open session
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			// A tunnel whose request the engine never answers.
			s.HangEngine(id, true)
			tun, err := cl.Dial("tcp", "127.0.0.1:8000")
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(tun, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", info.JupyterToken)
			waitFor(t, 5*time.Second, "request reached the engine", func() bool { return s.Engine(id).Requests == 1 })

			tc.do(s, c, id)
			refuses(t, direct)
			refuses(t, proxy)
			closedWithin(t, cl, 5*time.Second)
			closedWithin(t, pcl, 5*time.Second)
			_ = tun.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := tun.Read(make([]byte, 1)); err == nil || n != 0 {
				t.Fatalf("tunnel still answering: %d %v", n, err)
			}
			if !srv.wait(5 * time.Second) {
				t.Fatal("SSH server goroutines still running")
			}
			if d, p := s.SSHAddrs(id); d != "" || p != "" {
				t.Fatalf("addrs after %s: %q %q", tc.name, d, p)
			}
			if st := s.SSHStats(id); st.Direct.Active != 0 || st.Proxy.Active != 0 {
				t.Fatalf("active connections after %s: %+v", tc.name, st)
			}
		})
	}
}

// TestSSHRevive checks that an engine brought back by SetStatus("running")
// after KillEngine brings SSH back on the same ports and host key.
func TestSSHRevive(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	direct, proxy := sshAddrs(t, s, id)
	hk := s.HostKey(id)
	s.KillEngine(id)
	refuses(t, direct)
	s.SetStatus(id, "running")
	if d, p := s.SSHAddrs(id); d != direct || p != proxy {
		t.Fatalf("revived on %q %q, want %q %q", d, p, direct, proxy)
	}
	cl, err := sshConnect(direct, "root", hk, ssh.PublicKeys(newTestKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
}

// TestSSHClosedPathsEndTunnels closes both paths while the container (and
// a hung engine) stays up: the dropped connections must take their tunnels
// with them, so that no goroutine of the server is left waiting for an
// engine that never answers.
func TestSSHClosedPathsEndTunnels(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	info := s.info(t, id)
	direct, proxy := sshAddrs(t, s, id)
	srv := sshServerOf(t, s, id)
	s.HangEngine(id, true)
	for _, addr := range []string{direct, proxy} {
		tun, err := mustConnect(t, addr, nil).Dial("tcp", "localhost:8000")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(tun, "GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", info.JupyterToken)
	}
	waitFor(t, 5*time.Second, "requests reached the engine", func() bool { return s.Engine(id).Requests == 2 })
	s.SetSSHPath(id, false, false)
	if !srv.wait(5 * time.Second) {
		t.Fatal("goroutines left behind by closed paths")
	}
	if !s.Instances()[0].EngineUp {
		t.Fatal("engine went down with the SSH paths")
	}
	s.HangEngine(id, false)
	if r := engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil); r.status != 200 {
		t.Fatalf("engine after SSH paths closed: %d", r.status)
	}
}
