package gpumetrics

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func TestPoolRunThroughSSHD(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host1"))
	fw := newForwarder(t, s.addr)
	p := newTestPool(t, e.testPoolConfig(t))
	ep := Endpoint{ID: 101, Direct: fw.addr}

	// Concurrent first callers share one dial.
	var wg sync.WaitGroup
	outs := make([][]byte, 16)
	errs := make([]error, 16)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = p.Run(ctxT(t, 20*time.Second), ep, Query)
		}()
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("Run %d: %v", i, errs[i])
		}
	}
	if n := fw.accepted.Load(); n != 1 {
		t.Errorf("%d TCP connections for 16 concurrent first calls, want 1 shared dial", n)
	}
	gpus, err := Parse(outs[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 3 || gpus[0].Name != "NVIDIA H100 80GB HBM3" || *gpus[0].PowerDrawW != 512.31 ||
		gpus[1].UtilizationGPU != nil || *gpus[1].MemoryTotalMiB != 81920 || gpus[2].TemperatureC != nil {
		t.Errorf("parsed %s", mustJSON(gpus))
	}
	args, err := os.ReadFile(filepath.Join(e.dir, "nvidia-smi.args"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimPrefix(Query, "nvidia-smi "); strings.TrimSpace(string(args)) != want {
		t.Errorf("nvidia-smi got args %q, want %q", args, want)
	}
	st := p.Status(ep.ID)
	if st.Path != PathDirect || st.Reconnects != 0 || st.LastError != "" || st.ConnectedSince.IsZero() {
		t.Errorf("Status = %+v", st)
	}
	if got := p.Status(999); got.Path != PathDown {
		t.Errorf("Status of unknown id = %+v", got)
	}

	// A failing command is an error carrying stderr; the connection stays.
	_, err = p.Run(ctxT(t, 10*time.Second), ep, "echo oops >&2; exit 3")
	var exitErr *ssh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 || !strings.Contains(err.Error(), "oops") {
		t.Errorf("Run of failing command: err = %v", err)
	}
	if n := fw.accepted.Load(); n != 1 {
		t.Errorf("%d connections after a failed command, want 1", n)
	}
}

func TestPoolTOFU(t *testing.T) {
	e := newSSHEnv(t)
	keyA := e.newHostKey("hostA")
	s1 := e.startSSHD(keyA)
	fw := newForwarder(t, s1.addr)
	store := NewMemoryHostKeyStore()
	cfg := e.testPoolConfig(t)
	cfg.HostKeys = store
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 7, Direct: fw.addr}

	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Load(context.Background(), "ssh_known_hosts/7-direct"); err != nil {
		t.Fatalf("host key not stored under ssh_known_hosts/7-direct: %v", err)
	}

	// "Restart" the instance's sshd with a new host key.
	s1.stop()
	s2 := e.startSSHD(e.newHostKey("hostB"))
	fw.setTarget(s2.addr)
	fw.cut()
	eventually(t, 10*time.Second, "host key change reported in Status", func() bool {
		return strings.Contains(p.Status(ep.ID).LastError, ErrHostKeyChanged.Error())
	})
	_, err := p.Run(ctxT(t, 10*time.Second), ep, "true")
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("Run against a changed host key: err = %v, want ErrHostKeyChanged", err)
	}
	if st := p.Status(ep.ID); st.Path != PathDown {
		t.Errorf("Status = %+v, want down", st)
	}

	// Back with the original key: the background reconnect succeeds.
	s3 := e.startSSHD(keyA)
	fw.setTarget(s3.addr)
	eventually(t, 10*time.Second, "reconnect with the trusted key", func() bool {
		st := p.Status(ep.ID)
		return st.Path == PathDirect && st.Reconnects == 1
	})
	if st := p.Status(ep.ID); st.LastError != "" {
		t.Errorf("LastError after reconnect = %q", st.LastError)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}

	// With InsecureIgnoreHostKeys the new key is accepted.
	cfg.InsecureIgnoreHostKeys = true
	p2 := newTestPool(t, cfg)
	fw.setTarget(s2.addr)
	if _, err := p2.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatalf("InsecureIgnoreHostKeys: %v", err)
	}
}

func TestPoolTriesEveryKey(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))

	t.Run("second key file", func(t *testing.T) {
		cfg := e.testPoolConfig(t)
		cfg.KeyFiles = []string{e.wrongKey, e.keyFile}
		p := newTestPool(t, cfg)
		if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.addr}, "true"); err != nil {
			t.Fatalf("wrong key first, right key second: %v", err)
		}
	})
	t.Run("only a wrong key", func(t *testing.T) {
		cfg := e.testPoolConfig(t)
		cfg.KeyFiles = []string{e.wrongKey}
		p := newTestPool(t, cfg)
		_, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.addr}, "true")
		if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Fatalf("err = %v, want an authentication failure", err)
		}
	})
	t.Run("agent after a wrong key file", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "agent.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		keyring := agent.NewKeyring()
		if err := keyring.Add(agent.AddedKey{PrivateKey: e.clientKey}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		t.Cleanup(func() { ln.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					agent.ServeAgent(keyring, c)
				}()
			}
		}()
		t.Setenv("SSH_AUTH_SOCK", sock)
		cfg := e.testPoolConfig(t)
		cfg.KeyFiles = []string{e.wrongKey}
		cfg.UseAgent = true
		p := newTestPool(t, cfg)
		if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.addr}, "true"); err != nil {
			t.Fatalf("agent key: %v", err)
		}
	})
}

// sseServer streams the vastproxy SSE fixture one event at a time: each
// event after the first waits for the test to ask for it, which proves that
// the events arrive incrementally rather than buffered.
type sseServer struct {
	*httptest.Server
	events [][]byte
	next   chan struct{}
}

func newSSEServer(t *testing.T) *sseServer {
	raw := readFixture(t, "sse_stream__handler_test_sseBackendServer.txt")
	s := &sseServer{next: make(chan struct{})}
	for _, ev := range bytes.SplitAfter(raw, []byte("\n\n")) {
		if len(ev) > 0 {
			s.events = append(s.events, ev)
		}
	}
	if len(s.events) != 4 {
		t.Fatalf("fixture has %d events, want 4", len(s.events))
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i, ev := range s.events {
			if i > 0 {
				select {
				case <-s.next:
				case <-r.Context().Done():
					return
				}
			}
			w.Write(ev)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// sseStream is an open SSE response read through a tunnel.
type sseStream struct {
	resp *http.Response
	r    *bufio.Reader
	tr   *http.Transport
}

// openSSE requests the SSE stream through pool tunnels to ep.
func openSSE(t *testing.T, p *Pool, ep Endpoint, srv *sseServer) *sseStream {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return p.DialContext(ctx, ep, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequestWithContext(ctxT(t, 30*time.Second), "GET", srv.URL+"/v1/chat/completions", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("request through tunnel: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return &sseStream{resp: resp, r: bufio.NewReader(resp.Body), tr: tr}
}

// event reads one SSE event (up to and including its blank line).
func (s *sseStream) event(t *testing.T) []byte {
	t.Helper()
	var ev []byte
	for {
		line, err := s.r.ReadBytes('\n')
		ev = append(ev, line...)
		if err != nil {
			t.Fatalf("reading SSE event: %v (got %q)", err, ev)
		}
		if len(line) == 1 {
			return ev
		}
	}
}

// readRest asks for and reads events from..end, checking them byte for byte.
func (s *sseStream) readRest(t *testing.T, srv *sseServer, from int) {
	t.Helper()
	for i := from; i < len(srv.events); i++ {
		srv.next <- struct{}{}
		if got := s.event(t); !bytes.Equal(got, srv.events[i]) {
			t.Fatalf("event %d = %q, want %q", i, got, srv.events[i])
		}
	}
}

func TestPoolTunnelStreamsSSE(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	p := newTestPool(t, e.testPoolConfig(t))
	srv := newSSEServer(t)
	ep := Endpoint{ID: 3, Direct: s.addr}

	st := openSSE(t, p, ep, srv)
	if st.resp.StatusCode != 200 {
		t.Fatalf("status %d", st.resp.StatusCode)
	}
	if got := st.event(t); !bytes.Equal(got, srv.events[0]) {
		t.Fatalf("first event %q", got)
	}
	st.readRest(t, srv, 1)

	// Tunnels to a closed port fail cleanly.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if _, err := p.DialContext(ctxT(t, 10*time.Second), ep, closed); err == nil {
		t.Error("tunnel to a closed port succeeded")
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Errorf("connection unusable after a failed tunnel: %v", err)
	}
}

func TestPoolProxyToDirectDrains(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	direct := newForwarder(t, "") // down: connections are reset
	proxy := newForwarder(t, s.addr)
	cfg := e.testPoolConfig(t)
	changes := recordChanges(&cfg)
	p := newTestPool(t, cfg)
	srv := newSSEServer(t)
	ep := Endpoint{ID: 42, Direct: direct.addr, Proxy: proxy.addr}

	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(ep.ID); st.Path != PathProxy {
		t.Fatalf("Status = %+v, want proxy", st)
	}
	if direct.accepted.Load() == 0 {
		t.Error("direct path was not tried first")
	}

	// A stream in flight on the proxy connection.
	stream := openSSE(t, p, ep, srv)
	if got := stream.event(t); !bytes.Equal(got, srv.events[0]) {
		t.Fatalf("first event %q", got)
	}

	direct.setTarget(s.addr)
	eventually(t, 10*time.Second, "move to the direct path", func() bool {
		return p.Status(ep.ID).Path == PathDirect
	})
	if n := proxy.active.Load(); n != 1 {
		t.Fatalf("proxy connections open during the stream = %d, want 1 (draining)", n)
	}
	// New work uses the direct connection.
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if n := proxy.accepted.Load(); n != 1 {
		t.Errorf("proxy connections = %d, want 1", n)
	}

	// The old stream completes intact, then the proxy connection closes.
	stream.readRest(t, srv, 1)
	stream.resp.Body.Close()
	stream.tr.CloseIdleConnections()
	eventually(t, 10*time.Second, "drained proxy connection to close", func() bool {
		return proxy.active.Load() == 0
	})
	if st := p.Status(ep.ID); st.Path != PathDirect || st.Reconnects != 0 {
		t.Errorf("Status = %+v", st)
	}
	changes.want(t, 42, PathProxy, PathDirect)
}

// connChanges records OnConnChange calls.
type connChanges struct {
	mu  sync.Mutex
	got []string
}

func recordChanges(cfg *PoolConfig) *connChanges {
	c := &connChanges{}
	cfg.OnConnChange = func(id int64, path string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.got = append(c.got, fmt.Sprint(id, " ", path))
	}
	return c
}

func (c *connChanges) want(t *testing.T, id int64, paths ...string) {
	t.Helper()
	var want []string
	for _, p := range paths {
		want = append(want, fmt.Sprint(id, " ", p))
	}
	eventually(t, 5*time.Second, fmt.Sprintf("OnConnChange calls %q", want), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return strings.Join(c.got, ",") == strings.Join(want, ",")
	})
}

func TestPoolKeepaliveRebuildsDeadConnection(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	fw := newForwarder(t, s.addr)
	cfg := e.testPoolConfig(t)
	cfg.KeepaliveInterval = 200 * time.Millisecond
	changes := recordChanges(&cfg)
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 5, Direct: fw.addr}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	// The path dies silently (no FIN, no RST): only keepalives notice.
	fw.freeze()
	eventually(t, 10*time.Second, "reconnect after keepalive failure", func() bool {
		st := p.Status(ep.ID)
		return st.Path == PathDirect && st.Reconnects == 1
	})
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if n := fw.accepted.Load(); n != 2 {
		t.Errorf("connections = %d, want 2", n)
	}
	changes.want(t, 5, PathDirect, PathDown, PathDirect)
	if st := p.Status(ep.ID); st.LastError != "" {
		t.Errorf("LastError after reconnect = %q", st.LastError)
	}
}

func TestPoolRunTimeoutClosesSessionOnly(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	fw := newForwarder(t, s.addr)
	p := newTestPool(t, e.testPoolConfig(t))
	ep := Endpoint{ID: 6, Direct: fw.addr}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Run(ctx, ep, "sleep 30")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %s after its deadline", d)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if n := fw.accepted.Load(); n != 1 {
		t.Errorf("connections = %d, want 1: a command timeout must not close the connection", n)
	}
}

func TestPoolBackoff(t *testing.T) {
	e := newSSHEnv(t)
	down := newForwarder(t, "")
	cfg := e.testPoolConfig(t)
	cfg.BackoffMin = time.Hour
	cfg.BackoffMax = 2 * time.Hour
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 8, Direct: down.addr}
	_, err := p.Run(ctxT(t, 10*time.Second), ep, "true")
	if err == nil || errors.Is(err, ErrBackoff) {
		t.Fatalf("first attempt: err = %v", err)
	}
	_, err = p.Run(ctxT(t, 10*time.Second), ep, "true")
	if !errors.Is(err, ErrBackoff) {
		t.Fatalf("second attempt: err = %v, want ErrBackoff", err)
	}
	if n := down.accepted.Load(); n != 1 {
		t.Errorf("dials = %d, want 1 during backoff", n)
	}
	if st := p.Status(ep.ID); st.Path != PathDown || st.LastError == "" {
		t.Errorf("Status = %+v", st)
	}
}

func TestBackoffDoubling(t *testing.T) {
	p := &Pool{cfg: PoolConfig{BackoffMin: 10 * time.Second, BackoffMax: 5 * time.Minute}}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second}
	for i, w := range want {
		if got := p.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := p.backoff(1000); got != 5*time.Minute {
		t.Errorf("backoff(1000) = %s", got)
	}
}

func TestPoolForgetDrains(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	fw := newForwarder(t, s.addr)
	p := newTestPool(t, e.testPoolConfig(t))
	srv := newSSEServer(t)
	ep := Endpoint{ID: 9, Direct: fw.addr}

	stream := openSSE(t, p, ep, srv)
	stream.event(t)
	p.Forget(ep.ID)
	if st := p.Status(ep.ID); st.Path != PathDown {
		t.Errorf("Status after Forget = %+v", st)
	}
	stream.readRest(t, srv, 1)
	if n := fw.active.Load(); n != 1 {
		t.Errorf("open connections before the tunnel closed = %d, want 1", n)
	}
	stream.resp.Body.Close()
	stream.tr.CloseIdleConnections()
	eventually(t, 10*time.Second, "forgotten connection to close", func() bool {
		return fw.active.Load() == 0
	})
	// The id can be used again.
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
}

func TestPoolEndpointChange(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	fw1 := newForwarder(t, s.addr)
	fw2 := newForwarder(t, s.addr)
	cfg := e.testPoolConfig(t)
	cfg.HostKeys = NewMemoryHostKeyStore()
	p := newTestPool(t, cfg)
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 11, Direct: fw1.addr}, "true"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 11, Direct: fw2.addr}, "true"); err != nil {
		t.Fatal(err)
	}
	if fw2.accepted.Load() != 1 {
		t.Error("new address not used")
	}
	eventually(t, 10*time.Second, "old address's connection to close", func() bool {
		return fw1.active.Load() == 0
	})
}

func TestPoolClose(t *testing.T) {
	e := newSSHEnv(t)
	s := e.startSSHD(e.newHostKey("host"))
	bh := newBlackHole(t)
	p, err := NewPool(e.testPoolConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.addr}, "true"); err != nil {
		t.Fatal(err)
	}
	// A dial stuck in a black hole must not hold Close up.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p.Run(ctx, Endpoint{ID: 2, Direct: bh.addr}, "true")
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked")
	}
	if _, err := p.Run(ctxT(t, time.Second), Endpoint{ID: 1, Direct: s.addr}, "true"); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("Run after Close: err = %v", err)
	}
	p.Close() // idempotent
}

func TestNewPoolErrors(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	_, err := NewPool(PoolConfig{})
	if err == nil || !strings.Contains(err.Error(), `"key"`) {
		t.Errorf("no key source: err = %v, want a message naming \"key\"", err)
	}
	if _, err := NewPool(PoolConfig{UseAgent: true}); err == nil {
		t.Error("UseAgent without SSH_AUTH_SOCK and without key files: no error")
	}
	if _, err := NewPool(PoolConfig{KeyFiles: []string{filepath.Join(t.TempDir(), "missing")}}); err == nil {
		t.Error("missing key file: no error")
	}
	// A passphrase-protected key is reported without its content.
	_, priv := genKey(t)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "locked")
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = NewPool(PoolConfig{KeyFiles: []string{file}})
	if err == nil || !strings.Contains(err.Error(), "passphrase") || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("passphrase-protected key: err = %v", err)
	}
	if _, err := (&Pool{}).acquire(context.Background(), Endpoint{ID: 1}); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("empty endpoint: err = %v", err)
	}
}

func TestMemoryHostKeyStore(t *testing.T) {
	s := NewMemoryHostKeyStore()
	var _ HostKeyStore = s
	if _, err := s.Load(context.Background(), "k"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing key: err = %v, want fs.ErrNotExist", err)
	}
	v := []byte("v")
	if err := s.Store(context.Background(), "k", v); err != nil {
		t.Fatal(err)
	}
	v[0] = 'x'
	got, err := s.Load(context.Background(), "k")
	if err != nil || string(got) != "v" {
		t.Errorf("Load = %q, %v", got, err)
	}
}

func TestPoolHostKeyTypeChange(t *testing.T) {
	e := newSSHEnv(t)
	s1 := e.startSSHD(e.newHostKey("ed"))
	fw := newForwarder(t, s1.addr)
	p := newTestPool(t, e.testPoolConfig(t))
	ep := Endpoint{ID: 12, Direct: fw.addr}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	// Same instance id, now with only an RSA host key.
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(rsaKey, "")
	if err != nil {
		t.Fatal(err)
	}
	s2 := e.startSSHD(e.write("rsa_host", pem.EncodeToMemory(block)))
	fw.setTarget(s2.addr)
	fw.cut()
	eventually(t, 10*time.Second, "host key change reported", func() bool {
		return strings.Contains(p.Status(ep.ID).LastError, ErrHostKeyChanged.Error())
	})
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("err = %v, want ErrHostKeyChanged", err)
	}
}
