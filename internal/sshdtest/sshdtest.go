// Package sshdtest runs a real OpenSSH sshd on loopback for tests: a fresh
// host key, one authorized client key, root login by key only, TCP
// forwarding allowed, and a fake nvidia-smi first on the PATH.
package sshdtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

// Server is a running sshd.
type Server struct {
	// Port is the loopback port sshd listens on.
	Port int
	// KeyFile is the authorized client private key (OpenSSH format).
	KeyFile string

	t   testing.TB
	dir string
	cmd *exec.Cmd
}

// Start runs sshd until the test ends. nvidiaSMI is what the fake
// nvidia-smi prints.
func Start(t testing.TB, nvidiaSMI string) *Server {
	t.Helper()
	Require(t)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation dir
		t.Fatal(err)
	}
	s := &Server{t: t, dir: t.TempDir()}
	pub := s.writeKey("client_key")
	s.KeyFile = filepath.Join(s.dir, "client_key")
	s.write("authorized_keys", ssh.MarshalAuthorizedKey(pub), 0o600)
	s.writeKey("host_key")
	s.write("bin/nvidia-smi", []byte("#!/bin/sh\ncat "+filepath.Join(s.dir, "nvidia-smi.out")+"\n"), 0o755)
	s.SetNvidiaSMI(nvidiaSMI)
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.start(); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("starting sshd: %v", err)
	return nil
}

// SetNvidiaSMI changes what the fake nvidia-smi prints.
func (s *Server) SetNvidiaSMI(out string) {
	s.write("nvidia-smi.out", []byte(out), 0o644)
}

func (s *Server) start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.Port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
SetEnv PATH=%s:/usr/local/bin:/usr/bin:/bin
`, s.Port, filepath.Join(s.dir, "host_key"), filepath.Join(s.dir, "sshd.pid"), filepath.Join(s.dir, "authorized_keys"), filepath.Join(s.dir, "bin"))
	cfgPath := s.write("sshd_config", []byte(cfg), 0o600)
	s.cmd = exec.Command(Path, "-D", "-e", "-f", cfgPath)
	s.cmd.Stderr, _ = os.Create(filepath.Join(s.dir, "sshd.log"))
	if err := s.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if s.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	log, _ := os.ReadFile(filepath.Join(s.dir, "sshd.log"))
	return fmt.Errorf("sshd did not listen on port %d: %s", s.Port, log)
}

// Stop ends sshd.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *Server) writeKey(name string) ssh.PublicKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		s.t.Fatal(err)
	}
	s.write(name, pem.EncodeToMemory(block), 0o600)
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		s.t.Fatal(err)
	}
	return sp
}

func (s *Server) write(name string, data []byte, mode os.FileMode) string {
	path := filepath.Join(s.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		s.t.Fatal(err)
	}
	return path
}
