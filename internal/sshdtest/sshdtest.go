// Package sshdtest runs real OpenSSH sshd servers on loopback for tests,
// and the network pieces those tests put around them.
//
// An Env holds what the servers of one test share: an authorized client
// key, a key sshd refuses, and a fake nvidia-smi first on the PATH whose
// output, exit code and delay the test controls. Each Server is one sshd
// with its own host key (root login by key only, TCP forwarding allowed).
// Forwarder and BlackHole stand between a client and sshd to break the
// network path; SSEServer streams events through tunnels one at a time.
package sshdtest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Path is the OpenSSH server the tests run.
const Path = "/usr/sbin/sshd"

// Require skips the test when a real sshd cannot run here, unless
// VASTAI_REQUIRE_SSHD=1 (set by CI), where that is a failure.
func Require(t testing.TB) {
	t.Helper()
	reason := ""
	if _, err := os.Stat(Path); err != nil {
		reason = Path + " not found (apt-get install -y openssh-server)"
	} else if os.Geteuid() != 0 {
		reason = "the sshd tests log in as root and must run as root"
	}
	if reason == "" {
		return
	}
	if os.Getenv("VASTAI_REQUIRE_SSHD") == "1" {
		t.Fatalf("VASTAI_REQUIRE_SSHD=1 but %s", reason)
	}
	t.Skipf("skipping real-sshd test: %s; set VASTAI_REQUIRE_SSHD=1 to make this a failure", reason)
}

// Env is a temp directory with client keys, host keys and a fake
// nvidia-smi, shared by the sshd servers of one test.
type Env struct {
	// Dir holds every file of the Env.
	Dir string
	// KeyFile is the authorized client private key (OpenSSH format).
	KeyFile string
	// WrongKeyFile is a client key sshd does not accept.
	WrongKeyFile string
	// ClientKey is the key in KeyFile, for tests that serve it from an agent.
	ClientKey ed25519.PrivateKey

	t testing.TB
}

// NewEnv prepares an Env whose fake nvidia-smi prints nvidiaSMI and exits
// 0. It skips the test when sshd cannot run (see Require).
func NewEnv(t testing.TB, nvidiaSMI []byte) *Env {
	t.Helper()
	Require(t)
	// sshd refuses to start without its privilege separation directory,
	// which a fresh container does not have.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	e := &Env{t: t, Dir: t.TempDir()}
	var pub ed25519.PublicKey
	pub, e.ClientKey = genKey(t)
	e.KeyFile = e.writePrivateKey("id_ed25519", e.ClientKey)
	_, wrong := genKey(t)
	e.WrongKeyFile = e.writePrivateKey("id_wrong", wrong)
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	e.WriteFile("authorized_keys", ssh.MarshalAuthorizedKey(sshPub))

	// The fake nvidia-smi records its arguments, sleeps nvidia-smi.sleep
	// seconds if that file exists, prints nvidia-smi.out and exits with the
	// code in nvidia-smi.exit; tests change it by rewriting those files.
	script := fmt.Sprintf(`#!/bin/sh
d=%q
echo "$@" > "$d/nvidia-smi.args"
if [ -f "$d/nvidia-smi.sleep" ]; then sleep "$(cat "$d/nvidia-smi.sleep")"; fi
cat "$d/nvidia-smi.out"
exit "$(cat "$d/nvidia-smi.exit" 2>/dev/null || echo 0)"
`, e.Dir)
	if err := os.MkdirAll(filepath.Join(e.Dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "bin", "nvidia-smi"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.SetNvidiaSMI(nvidiaSMI, 0)
	return e
}

func genKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// WriteFile writes Dir/name atomically (the fake nvidia-smi may be reading
// it) and returns its path.
func (e *Env) WriteFile(name string, data []byte) string {
	e.t.Helper()
	path := filepath.Join(e.Dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *Env) writePrivateKey(name string, key ed25519.PrivateKey) string {
	e.t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return e.WriteFile(name, pem.EncodeToMemory(block))
}

// NewHostKey writes a fresh ed25519 host key file and returns its path.
func (e *Env) NewHostKey(name string) string {
	_, priv := genKey(e.t)
	return e.writePrivateKey(name, priv)
}

// SetNvidiaSMI sets what the fake nvidia-smi prints and its exit code.
func (e *Env) SetNvidiaSMI(out []byte, exit int) {
	e.WriteFile("nvidia-smi.out", out)
	e.WriteFile("nvidia-smi.exit", []byte(fmt.Sprint(exit)))
}

// SetNvidiaSMISleep makes the fake nvidia-smi sleep before printing; 0
// stops it.
func (e *Env) SetNvidiaSMISleep(seconds int) {
	if seconds == 0 {
		os.Remove(filepath.Join(e.Dir, "nvidia-smi.sleep"))
		return
	}
	e.WriteFile("nvidia-smi.sleep", []byte(fmt.Sprint(seconds)))
}

// NvidiaSMIArgs returns the arguments of the fake nvidia-smi's last run.
func (e *Env) NvidiaSMIArgs() string {
	e.t.Helper()
	args, err := os.ReadFile(filepath.Join(e.Dir, "nvidia-smi.args"))
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.TrimSpace(string(args))
}

// Server is one running sshd.
type Server struct {
	// Addr is the loopback "host:port" sshd listens on.
	Addr string
	// Port is Addr's port.
	Port int
	// KeyFile is the authorized client private key (the Env's KeyFile).
	KeyFile string

	env     *Env
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// Start runs sshd with a fresh host key in a fresh Env until the test
// ends; nvidiaSMI is what the fake nvidia-smi prints.
func Start(t testing.TB, nvidiaSMI string) *Server {
	t.Helper()
	e := NewEnv(t, []byte(nvidiaSMI))
	return e.StartServer(e.NewHostKey("host_key"))
}

// SetNvidiaSMI changes what the fake nvidia-smi prints (exit code 0).
func (s *Server) SetNvidiaSMI(out string) {
	s.env.SetNvidiaSMI([]byte(out), 0)
}

// Logs returns what sshd logged so far.
func (s *Server) Logs() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// StartServer runs sshd on 127.0.0.1 with the given host key file until
// the test ends (or Stop).
func (e *Env) StartServer(hostKey string) *Server {
	t := e.t
	t.Helper()
	var lastErr error
	// The free port is found by listening and closing, which can race with
	// another process; a few attempts make that harmless.
	for attempt := 0; attempt < 5; attempt++ {
		s, err := e.tryStart(hostKey, attempt)
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		lastErr = err
	}
	t.Fatalf("starting sshd: %v", lastErr)
	return nil
}

// config is the sshd_config of every Server. MaxSessions and MaxStartups
// are raised because tests open many sessions and dials at once.
const config = `Port %d
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
SetEnv PATH=%s:/usr/local/bin:/usr/bin:/bin
`

func (e *Env) tryStart(hostKey string, attempt int) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfgPath := filepath.Join(e.Dir, fmt.Sprintf("sshd_config_%d_%d", port, attempt))
	cfg := fmt.Sprintf(config, port, hostKey, filepath.Join(e.Dir, fmt.Sprintf("sshd_%d.pid", port)),
		filepath.Join(e.Dir, "authorized_keys"), filepath.Join(e.Dir, "bin"))
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
	s := &Server{
		Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, KeyFile: e.KeyFile,
		env: e, logPath: logFile.Name(), done: make(chan struct{}),
	}
	s.cmd = exec.Command(Path, "-D", "-e", "-f", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitBanner(10 * time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// waitBanner waits until sshd sends its SSH banner.
func (s *Server) waitBanner(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("sshd exited: %s", s.Logs())
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "SSH-2.0-") {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond) // polling for readiness, bounded by deadline
	}
	return fmt.Errorf("sshd not ready on %s: %s", s.Addr, s.Logs())
}

// Stop kills the listening sshd. Per-connection sshd processes live on
// until their connections close, like on a real host.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}
