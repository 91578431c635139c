package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func testSigner(t *testing.T) ssh.Signer {
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

// startRun runs the command and returns its instance lines; it stops it at
// the end of the test.
func startRun(t *testing.T, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard, func(string) string { return "" })
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("run did not return")
		}
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	for len(out) < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended after %q", out)
			}
			out = append(out, l)
		case <-time.After(5 * time.Second):
			t.Fatalf("no output after %q", out)
		}
	}
	go func() {
		for range lines {
		}
	}()
	return out[1:]
}

var sshLineRE = regexp.MustCompile(`ssh-direct=(127\.0\.0\.1:\d+) ssh-proxy=(127\.0\.0\.1:\d+) ssh-hostkey=(SHA256:\S+)$`)

func TestRunPrintsSSHAddresses(t *testing.T) {
	key, stranger := testSigner(t), testSigner(t)
	file := filepath.Join(t.TempDir(), "authorized_keys")
	if err := os.WriteFile(file, append([]byte("# gateway\n"), ssh.MarshalAuthorizedKey(key.PublicKey())...), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := startRun(t, "-listen", "127.0.0.1:0", "-instances", "1", "-ssh-authorized-keys", file)
	m := sshLineRE.FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("instance line %q", lines[0])
	}
	for _, addr := range m[1:3] {
		var seen ssh.PublicKey
		cl, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(key)}, Timeout: 5 * time.Second,
			HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error { seen = k; return nil },
		})
		if err != nil {
			t.Fatalf("ssh %s: %v", addr, err)
		}
		if ssh.FingerprintSHA256(seen) != m[3] {
			t.Fatalf("host key %s, printed %s", ssh.FingerprintSHA256(seen), m[3])
		}
		sess, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		sess.Stdout = &out
		if err := sess.Run("nvidia-smi --query-gpu=name --format=csv,noheader"); err != nil || !strings.Contains(out.String(), "RTX 4090") {
			t.Fatalf("nvidia-smi via %s: %v %q", addr, err, out.String())
		}
		cl.Close()
		if cl, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(stranger)}, Timeout: 5 * time.Second,
			HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		}); err == nil {
			cl.Close()
			t.Fatalf("%s accepted a key outside the authorized_keys file", addr)
		}
	}
}

func TestRunWithoutSSH(t *testing.T) {
	lines := startRun(t, "-listen", "127.0.0.1:0", "-instances", "1", "-ssh=false")
	if strings.Contains(lines[0], "ssh-") || !strings.Contains(lines[0], "engine=http://") {
		t.Fatalf("instance line %q", lines[0])
	}
}

func TestRunRejectsBadAuthorizedKeys(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(bad, []byte("not a key\n"), 0o600)
	_ = os.WriteFile(empty, []byte("# nothing\n\n"), 0o600)
	for _, f := range []string{bad, empty, filepath.Join(dir, "missing")} {
		if err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-ssh-authorized-keys", f}, io.Discard, io.Discard, func(string) string { return "" }); err == nil {
			t.Errorf("%s: no error", f)
		}
	}
}
