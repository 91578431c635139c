package sshpool

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
)

// fakeNvidiaSMI is what the fake nvidia-smi of newEnv prints: the pool
// only carries bytes, so any output will do.
const fakeNvidiaSMI = "0, GPU-x, Tesla T4, 10, 5, 100, 15360, 40, 27.5, 70\n"

// testCommandArgs are arguments the tests pass to the fake nvidia-smi, to
// check that a command reaches the host unchanged.
const testCommandArgs = "--query-gpu=index,name --format=csv,noheader"

// newEnv returns the keys and fake nvidia-smi shared by a test's sshd
// servers; it skips the test when sshd cannot run.
func newEnv(t *testing.T) *sshdtest.Env {
	t.Helper()
	return sshdtest.NewEnv(t, []byte(fakeNvidiaSMI))
}

func genKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// testPoolConfig returns a config logging in with e's key, with test-sized
// timings.
func testPoolConfig(t *testing.T, e *sshdtest.Env) PoolConfig {
	return PoolConfig{
		KeyFiles:            []string{e.KeyFile},
		HostKeys:            NewMemoryHostKeyStore(),
		ConnectTimeout:      5 * time.Second,
		KeepaliveInterval:   time.Second,
		BackoffMin:          20 * time.Millisecond,
		BackoffMax:          200 * time.Millisecond,
		DirectRetryInterval: 100 * time.Millisecond,
		Logger:              zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	}
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

// openSSE requests srv's stream through pool tunnels to ep.
func openSSE(t *testing.T, p *Pool, ep Endpoint, srv *sshdtest.SSEServer) *sshdtest.SSEStream {
	t.Helper()
	return sshdtest.OpenSSE(t, func(ctx context.Context, addr string) (net.Conn, error) {
		return p.DialContext(ctx, ep, addr)
	}, srv)
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
	waitFor(t, 5*time.Second, fmt.Sprintf("OnConnChange calls %q", want), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return strings.Join(c.got, ",") == strings.Join(want, ",")
	})
}

// eventually waits until cond holds, failing the test at the deadline. It
// is the package's only wait helper.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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
