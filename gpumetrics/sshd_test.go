package gpumetrics

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
)

// sshdPath is the OpenSSH server the integration tests run.
const sshdPath = sshdtest.Path

// requireSSHD skips the test when a real sshd cannot be run, unless
// VASTAI_REQUIRE_SSHD=1 (set in CI), where that is a failure.
func requireSSHD(t *testing.T) { sshdtest.Require(t) }

// sshEnv is a temp directory with client keys, host keys and a fake
// nvidia-smi, shared by the sshd servers of one test.
type sshEnv struct {
	t         *testing.T
	dir       string
	keyFile   string // authorized client key
	wrongKey  string // a key sshd does not accept
	clientKey ed25519.PrivateKey
}

func newSSHEnv(t *testing.T) *sshEnv {
	t.Helper()
	requireSSHD(t)
	// sshd refuses to start without its privilege separation directory,
	// which a fresh container does not have.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	e := &sshEnv{t: t, dir: t.TempDir()}
	var pub ed25519.PublicKey
	pub, e.clientKey = genKey(t)
	e.keyFile = e.writePrivateKey("id_ed25519", e.clientKey)
	_, wrong := genKey(t)
	e.wrongKey = e.writePrivateKey("id_wrong", wrong)
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	e.write("authorized_keys", ssh.MarshalAuthorizedKey(sshPub))

	// The fake nvidia-smi prints nvidia-smi.out and exits with the code in
	// nvidia-smi.exit, after sleeping nvidia-smi.sleep seconds if present;
	// tests change its behaviour by rewriting those files.
	script := fmt.Sprintf(`#!/bin/sh
d=%q
echo "$@" > "$d/nvidia-smi.args"
if [ -f "$d/nvidia-smi.sleep" ]; then sleep "$(cat "$d/nvidia-smi.sleep")"; fi
cat "$d/nvidia-smi.out"
exit "$(cat "$d/nvidia-smi.exit" 2>/dev/null || echo 0)"
`, e.dir)
	if err := os.MkdirAll(filepath.Join(e.dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "bin", "nvidia-smi"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.setNvidiaSMI(readFixture(t, "query_full_3gpu.txt"), 0)
	return e
}

func genKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// write writes a file atomically (the fake nvidia-smi may be reading it).
func (e *sshEnv) write(name string, data []byte) string {
	e.t.Helper()
	path := filepath.Join(e.dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *sshEnv) writePrivateKey(name string, key ed25519.PrivateKey) string {
	e.t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return e.write(name, pem.EncodeToMemory(block))
}

// newHostKey writes a fresh host key file and returns its path.
func (e *sshEnv) newHostKey(name string) string {
	_, priv := genKey(e.t)
	return e.writePrivateKey(name, priv)
}

// setNvidiaSMI sets what the fake nvidia-smi prints and its exit code.
func (e *sshEnv) setNvidiaSMI(out []byte, exit int) {
	e.write("nvidia-smi.out", out)
	e.write("nvidia-smi.exit", []byte(fmt.Sprint(exit)))
}

// setNvidiaSMISleep makes the fake nvidia-smi sleep before printing; 0 stops it.
func (e *sshEnv) setNvidiaSMISleep(seconds int) {
	if seconds == 0 {
		os.Remove(filepath.Join(e.dir, "nvidia-smi.sleep"))
		return
	}
	e.write("nvidia-smi.sleep", []byte(fmt.Sprint(seconds)))
}

// sshd is one running OpenSSH server.
type sshd struct {
	addr    string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// logs returns what sshd logged so far.
func (s *sshd) logs() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// startSSHD runs sshd on 127.0.0.1 with the given host key until the test
// ends (or stop).
func (e *sshEnv) startSSHD(hostKey string) *sshd {
	t := e.t
	t.Helper()
	var lastErr error
	// The free port is found by listening and closing, which can race with
	// another process; a few attempts make that harmless.
	for attempt := 0; attempt < 5; attempt++ {
		s, err := e.tryStartSSHD(hostKey, attempt)
		if err == nil {
			t.Cleanup(s.stop)
			return s
		}
		lastErr = err
	}
	t.Fatalf("starting sshd: %v", lastErr)
	return nil
}

func (e *sshEnv) tryStartSSHD(hostKey string, attempt int) (*sshd, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfgPath := filepath.Join(e.dir, fmt.Sprintf("sshd_config_%s_%d", port, attempt))
	cfg := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
StrictModes no
UsePAM no
MaxSessions 64
MaxStartups 64
LogLevel VERBOSE
SetEnv PATH=%s:/usr/bin:/bin
`, port, hostKey, filepath.Join(e.dir, "sshd_"+port+".pid"), filepath.Join(e.dir, "authorized_keys"), filepath.Join(e.dir, "bin"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	// The log goes to a file, not a pipe: per-connection sshd processes
	// inherit it and outlive the listener, and exec would wait for a pipe.
	logFile, err := os.Create(cfgPath + ".log")
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	s := &sshd{addr: addr, logPath: logFile.Name(), done: make(chan struct{})}
	s.cmd = exec.Command(sshdPath, "-D", "-e", "-f", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.cmd.Wait()
		close(s.done)
	}()
	// Ready when it sends its banner.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil, fmt.Errorf("sshd exited: %s", s.logs())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "SSH-2.0-") {
				return s, nil
			}
		}
		time.Sleep(20 * time.Millisecond) // polling for readiness, bounded by deadline
	}
	s.stop()
	return nil, fmt.Errorf("sshd not ready on %s: %s", addr, s.logs())
}

// stop kills the listening sshd. Per-connection sshd processes live on
// until their connections close, like on a real host.
func (s *sshd) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// forwarder is a TCP relay standing between the pool and sshd, so tests can
// take a path down, bring it up, point it at another server, cut its
// connections or freeze them, and count connections.
type forwarder struct {
	ln       net.Listener
	addr     string
	accepted atomic.Int64 // connections accepted
	active   atomic.Int64 // relayed connections still open

	mu     sync.Mutex
	target string // "" refuses: accept and close at once
	conns  map[*relay]struct{}
	wg     sync.WaitGroup
}

type relay struct {
	a, b   net.Conn
	frozen atomic.Bool
	once   sync.Once
}

func (r *relay) close() {
	r.once.Do(func() {
		r.a.Close()
		r.b.Close()
	})
}

func newForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, addr: ln.Addr().String(), target: target, conns: make(map[*relay]struct{})}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.mu.Lock()
		target := f.target
		f.mu.Unlock()
		if target == "" {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		r := &relay{a: c, b: up}
		f.mu.Lock()
		f.conns[r] = struct{}{}
		f.mu.Unlock()
		f.active.Add(1)
		var pipes sync.WaitGroup
		pipes.Add(2)
		pipe := func(dst, src net.Conn) {
			defer pipes.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 && !r.frozen.Load() {
					if _, werr := dst.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			r.close()
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			go pipe(up, c)
			go pipe(c, up)
			pipes.Wait()
			f.mu.Lock()
			delete(f.conns, r)
			f.mu.Unlock()
			f.active.Add(-1)
		}()
	}
}

// setTarget changes where new connections go; "" refuses them.
func (f *forwarder) setTarget(target string) {
	f.mu.Lock()
	f.target = target
	f.mu.Unlock()
}

// cut closes every relayed connection, like a network reset.
func (f *forwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r := range f.conns {
		r.close()
	}
}

// freeze makes the open connections silently drop all traffic, like a
// network path that died without a reset.
func (f *forwarder) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r := range f.conns {
		r.frozen.Store(true)
	}
}

func (f *forwarder) close() {
	f.ln.Close()
	f.cut()
	f.wg.Wait()
}

// blackHole accepts TCP connections and never says anything.
type blackHole struct {
	ln       net.Listener
	addr     string
	accepted atomic.Int64
	open     atomic.Int64
}

func newBlackHole(t *testing.T) *blackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{ln: ln, addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.open.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c) // until the client gives up
				c.Close()
				b.open.Add(-1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return b
}

// testPoolConfig returns a config with test-sized timings.
func (e *sshEnv) testPoolConfig(t *testing.T) PoolConfig {
	return PoolConfig{
		KeyFiles:            []string{e.keyFile},
		HostKeys:            NewMemoryHostKeyStore(),
		ConnectTimeout:      5 * time.Second,
		KeepaliveInterval:   time.Second,
		BackoffMin:          20 * time.Millisecond,
		BackoffMax:          200 * time.Millisecond,
		DirectRetryInterval: 100 * time.Millisecond,
		Logger:              testLogger(t),
	}
}

func testLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

func newTestPool(t *testing.T, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// eventually waits until cond holds, failing the test at the deadline.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond) // re-check interval, bounded by the deadline
	}
}

// ctxT returns a context bounded by d, cancelled at the end of the test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
