package sshpool

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func TestPoolRunThroughSSHD(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host1"))
	fw := sshdtest.NewForwarder(t, s.Addr)
	p := newTestPool(t, testPoolConfig(t, e))
	ep := Endpoint{ID: 101, Direct: fw.Addr}

	// Concurrent first callers share one dial.
	var wg sync.WaitGroup
	outs := make([][]byte, 16)
	errs := make([]error, 16)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = p.Run(ctxT(t, 20*time.Second), ep, "nvidia-smi "+testCommandArgs)
		}()
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("Run %d: %v", i, errs[i])
		}
	}
	if n := fw.Accepted.Load(); n != 1 {
		t.Errorf("%d TCP connections for 16 concurrent first calls, want 1 shared dial", n)
	}
	// Every caller gets the command's whole stdout. (That nvidia-smi's
	// real query parses is gpumetrics' TestQueryThroughSSHD.)
	for i, out := range outs {
		if string(out) != fakeNvidiaSMI {
			t.Errorf("Run %d printed %q, want %q", i, out, fakeNvidiaSMI)
		}
	}
	if got := e.NvidiaSMIArgs(); got != testCommandArgs {
		t.Errorf("nvidia-smi got args %q, want %q", got, testCommandArgs)
	}
	st := p.Status(ep.ID)
	if st.Path != PathDirect || st.Reconnects != 0 || st.LastError != "" || st.ConnectedSince.IsZero() {
		t.Errorf("Status = %+v", st)
	}
	if got := p.Status(999); got.Path != PathDown {
		t.Errorf("Status of unknown id = %+v", got)
	}

	// A failing command is an error carrying stderr; the connection stays.
	_, err := p.Run(ctxT(t, 10*time.Second), ep, "echo oops >&2; exit 3")
	var exitErr *ssh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 || !strings.Contains(err.Error(), "oops") {
		t.Errorf("Run of failing command: err = %v", err)
	}
	if n := fw.Accepted.Load(); n != 1 {
		t.Errorf("%d connections after a failed command, want 1", n)
	}
}

func TestPoolTOFU(t *testing.T) {
	e := newEnv(t)
	keyA := e.NewHostKey("hostA")
	s1 := e.StartServer(keyA)
	fw := sshdtest.NewForwarder(t, s1.Addr)
	store := NewMemoryHostKeyStore()
	cfg := testPoolConfig(t, e)
	cfg.HostKeys = store
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 7, Direct: fw.Addr}

	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Load(context.Background(), "ssh_known_hosts/7-direct"); err != nil {
		t.Fatalf("host key not stored under ssh_known_hosts/7-direct: %v", err)
	}

	// "Restart" the instance's sshd with a new host key.
	s1.Stop()
	s2 := e.StartServer(e.NewHostKey("hostB"))
	fw.SetTarget(s2.Addr)
	fw.Cut()
	waitFor(t, 10*time.Second, "host key change reported in Status", func() bool {
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
	s3 := e.StartServer(keyA)
	fw.SetTarget(s3.Addr)
	waitFor(t, 10*time.Second, "reconnect with the trusted key", func() bool {
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
	fw.SetTarget(s2.Addr)
	if _, err := p2.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatalf("InsecureIgnoreHostKeys: %v", err)
	}
}

func TestPoolTriesEveryKey(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))

	t.Run("second key file", func(t *testing.T) {
		cfg := testPoolConfig(t, e)
		cfg.KeyFiles = []string{e.WrongKeyFile, e.KeyFile}
		p := newTestPool(t, cfg)
		if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.Addr}, "true"); err != nil {
			t.Fatalf("wrong key first, right key second: %v", err)
		}
	})
	t.Run("only a wrong key", func(t *testing.T) {
		cfg := testPoolConfig(t, e)
		cfg.KeyFiles = []string{e.WrongKeyFile}
		p := newTestPool(t, cfg)
		_, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.Addr}, "true")
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
		if err := keyring.Add(agent.AddedKey{PrivateKey: e.ClientKey}); err != nil {
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
		cfg := testPoolConfig(t, e)
		cfg.KeyFiles = []string{e.WrongKeyFile}
		cfg.UseAgent = true
		p := newTestPool(t, cfg)
		if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.Addr}, "true"); err != nil {
			t.Fatalf("agent key: %v", err)
		}
	})
}

func TestPoolTunnelStreamsSSE(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	p := newTestPool(t, testPoolConfig(t, e))
	srv := sshdtest.NewSSEServer(t)
	ep := Endpoint{ID: 3, Direct: s.Addr}

	st := openSSE(t, p, ep, srv)
	if st.Resp.StatusCode != 200 {
		t.Fatalf("status %d", st.Resp.StatusCode)
	}
	if got := st.Event(t); !bytes.Equal(got, srv.Events[0]) {
		t.Fatalf("first event %q", got)
	}
	st.ReadRest(t, srv, 1)

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
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	direct := sshdtest.NewForwarder(t, "") // down: connections are reset
	proxy := sshdtest.NewForwarder(t, s.Addr)
	cfg := testPoolConfig(t, e)
	changes := recordChanges(&cfg)
	p := newTestPool(t, cfg)
	srv := sshdtest.NewSSEServer(t)
	ep := Endpoint{ID: 42, Direct: direct.Addr, Proxy: proxy.Addr}

	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(ep.ID); st.Path != PathProxy {
		t.Fatalf("Status = %+v, want proxy", st)
	}
	if direct.Accepted.Load() == 0 {
		t.Error("direct path was not tried first")
	}

	// A stream in flight on the proxy connection.
	stream := openSSE(t, p, ep, srv)
	if got := stream.Event(t); !bytes.Equal(got, srv.Events[0]) {
		t.Fatalf("first event %q", got)
	}

	direct.SetTarget(s.Addr)
	waitFor(t, 10*time.Second, "move to the direct path", func() bool {
		return p.Status(ep.ID).Path == PathDirect
	})
	if n := proxy.Active.Load(); n != 1 {
		t.Fatalf("proxy connections open during the stream = %d, want 1 (draining)", n)
	}
	// New work uses the direct connection.
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if n := proxy.Accepted.Load(); n != 1 {
		t.Errorf("proxy connections = %d, want 1", n)
	}

	// The old stream completes intact, then the proxy connection closes.
	stream.ReadRest(t, srv, 1)
	stream.Resp.Body.Close()
	stream.Transport.CloseIdleConnections()
	waitFor(t, 10*time.Second, "drained proxy connection to close", func() bool {
		return proxy.Active.Load() == 0
	})
	if st := p.Status(ep.ID); st.Path != PathDirect || st.Reconnects != 0 {
		t.Errorf("Status = %+v", st)
	}
	changes.want(t, 42, PathProxy, PathDirect)
}

func TestPoolKeepaliveRebuildsDeadConnection(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	fw := sshdtest.NewForwarder(t, s.Addr)
	cfg := testPoolConfig(t, e)
	cfg.KeepaliveInterval = 200 * time.Millisecond
	changes := recordChanges(&cfg)
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 5, Direct: fw.Addr}
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	// The path dies silently (no FIN, no RST): only keepalives notice.
	fw.Freeze()
	waitFor(t, 10*time.Second, "reconnect after keepalive failure", func() bool {
		st := p.Status(ep.ID)
		return st.Path == PathDirect && st.Reconnects == 1
	})
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
	if n := fw.Accepted.Load(); n != 2 {
		t.Errorf("connections = %d, want 2", n)
	}
	changes.want(t, 5, PathDirect, PathDown, PathDirect)
	if st := p.Status(ep.ID); st.LastError != "" {
		t.Errorf("LastError after reconnect = %q", st.LastError)
	}
}

func TestPoolRunTimeoutClosesSessionOnly(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	fw := sshdtest.NewForwarder(t, s.Addr)
	p := newTestPool(t, testPoolConfig(t, e))
	ep := Endpoint{ID: 6, Direct: fw.Addr}
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
	if n := fw.Accepted.Load(); n != 1 {
		t.Errorf("connections = %d, want 1: a command timeout must not close the connection", n)
	}
}

func TestPoolBackoff(t *testing.T) {
	e := newEnv(t)
	down := sshdtest.NewForwarder(t, "")
	cfg := testPoolConfig(t, e)
	cfg.BackoffMin = time.Hour
	cfg.BackoffMax = 2 * time.Hour
	p := newTestPool(t, cfg)
	ep := Endpoint{ID: 8, Direct: down.Addr}
	_, err := p.Run(ctxT(t, 10*time.Second), ep, "true")
	if err == nil || errors.Is(err, ErrBackoff) {
		t.Fatalf("first attempt: err = %v", err)
	}
	_, err = p.Run(ctxT(t, 10*time.Second), ep, "true")
	if !errors.Is(err, ErrBackoff) {
		t.Fatalf("second attempt: err = %v, want ErrBackoff", err)
	}
	if n := down.Accepted.Load(); n != 1 {
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
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	fw := sshdtest.NewForwarder(t, s.Addr)
	p := newTestPool(t, testPoolConfig(t, e))
	srv := sshdtest.NewSSEServer(t)
	ep := Endpoint{ID: 9, Direct: fw.Addr}

	stream := openSSE(t, p, ep, srv)
	stream.Event(t)
	p.Forget(ep.ID)
	if st := p.Status(ep.ID); st.Path != PathDown {
		t.Errorf("Status after Forget = %+v", st)
	}
	stream.ReadRest(t, srv, 1)
	if n := fw.Active.Load(); n != 1 {
		t.Errorf("open connections before the tunnel closed = %d, want 1", n)
	}
	stream.Resp.Body.Close()
	stream.Transport.CloseIdleConnections()
	waitFor(t, 10*time.Second, "forgotten connection to close", func() bool {
		return fw.Active.Load() == 0
	})
	// The id can be used again.
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); err != nil {
		t.Fatal(err)
	}
}

func TestPoolEndpointChange(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	fw1 := sshdtest.NewForwarder(t, s.Addr)
	fw2 := sshdtest.NewForwarder(t, s.Addr)
	cfg := testPoolConfig(t, e)
	cfg.HostKeys = NewMemoryHostKeyStore()
	p := newTestPool(t, cfg)
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 11, Direct: fw1.Addr}, "true"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 11, Direct: fw2.Addr}, "true"); err != nil {
		t.Fatal(err)
	}
	if fw2.Accepted.Load() != 1 {
		t.Error("new address not used")
	}
	waitFor(t, 10*time.Second, "old address's connection to close", func() bool {
		return fw1.Active.Load() == 0
	})
}

func TestPoolClose(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	bh := sshdtest.NewBlackHole(t)
	p, err := NewPool(testPoolConfig(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctxT(t, 10*time.Second), Endpoint{ID: 1, Direct: s.Addr}, "true"); err != nil {
		t.Fatal(err)
	}
	// A dial stuck in a black hole must not hold Close up.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p.Run(ctx, Endpoint{ID: 2, Direct: bh.Addr}, "true")
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked")
	}
	if _, err := p.Run(ctxT(t, time.Second), Endpoint{ID: 1, Direct: s.Addr}, "true"); !errors.Is(err, ErrPoolClosed) {
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
	e := newEnv(t)
	s1 := e.StartServer(e.NewHostKey("ed"))
	fw := sshdtest.NewForwarder(t, s1.Addr)
	p := newTestPool(t, testPoolConfig(t, e))
	ep := Endpoint{ID: 12, Direct: fw.Addr}
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
	s2 := e.StartServer(e.WriteFile("rsa_host", pem.EncodeToMemory(block)))
	fw.SetTarget(s2.Addr)
	fw.Cut()
	waitFor(t, 10*time.Second, "host key change reported", func() bool {
		return strings.Contains(p.Status(ep.ID).LastError, ErrHostKeyChanged.Error())
	})
	if _, err := p.Run(ctxT(t, 10*time.Second), ep, "true"); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("err = %v, want ErrHostKeyChanged", err)
	}
}
