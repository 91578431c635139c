package gpumetrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
	"github.com/caddy-vastai/caddy-vastai/sshpool"
)

func f(v float64) *float64 { return &v }

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stripAnnotations drops the "#" lines the gpushopper fixtures use to name
// the command; they are not command output.
func stripAnnotations(b []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

func utilTemp(idx int, util, temp *float64) GPU {
	return GPU{Index: idx, UtilizationGPU: util, TemperatureC: temp}
}

// checkLineErrors asserts that err reports exactly the given malformed lines.
func checkLineErrors(t *testing.T, err error, want []int) {
	t.Helper()
	var got []int
	var walk func(error)
	walk = func(e error) {
		if le, ok := e.(*LineError); ok {
			got = append(got, le.Line)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	if len(want) > 0 && !errors.Is(err, ErrMalformedLine) {
		t.Errorf("errors.Is(err, ErrMalformedLine) = false, err %v", err)
	}
	if !equalInts(got, want) {
		t.Errorf("malformed lines = %v, want %v (err %v)", got, want, err)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func assertGPUs(t *testing.T, got, want []GPU) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d GPUs, want %d: %s", len(got), len(want), mustJSON(got))
	}
	for i := range want {
		if g, w := mustJSON(got[i]), mustJSON(want[i]); g != w {
			t.Errorf("GPU %d:\n got  %s\n want %s", i, g, w)
		}
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// runCollector runs c until the test ends.
func runCollector(t *testing.T, c *Collector) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// fakeRunner answers Run calls from a per-id script.
type fakeRunner struct {
	mu    sync.Mutex
	out   map[int64][]byte
	err   map[int64]error
	block map[int64]bool // wait for ctx, like a black hole
	calls map[int64]int
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{out: map[int64][]byte{}, err: map[int64]error{}, block: map[int64]bool{}, calls: map[int64]int{}}
}

func (f *fakeRunner) set(id int64, out string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out[id], f.err[id] = []byte(out), err
}

func (f *fakeRunner) run(ctx context.Context, ep sshpool.Endpoint, cmd string) ([]byte, error) {
	f.mu.Lock()
	f.calls[ep.ID]++
	out, err, block := f.out[ep.ID], f.err[ep.ID], f.block[ep.ID]
	f.mu.Unlock()
	if cmd != Query {
		return nil, errors.New("unexpected command " + cmd)
	}
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return out, err
}

func (f *fakeRunner) callCount(id int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[id]
}

// newEnv returns the keys and fake nvidia-smi shared by a test's sshd
// servers, the fake printing query_full_3gpu.txt; it skips the test when
// sshd cannot run.
func newEnv(t *testing.T) *sshdtest.Env {
	t.Helper()
	return sshdtest.NewEnv(t, readFixture(t, "query_full_3gpu.txt"))
}

// testPoolConfig returns a config logging in with e's key, with test-sized
// timings.
func testPoolConfig(t *testing.T, e *sshdtest.Env) sshpool.PoolConfig {
	return sshpool.PoolConfig{
		KeyFiles:            []string{e.KeyFile},
		HostKeys:            sshpool.NewMemoryHostKeyStore(),
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

func newTestPool(t *testing.T, cfg sshpool.PoolConfig) *sshpool.Pool {
	t.Helper()
	p, err := sshpool.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// openSSE requests srv's stream through pool tunnels to ep.
func openSSE(t *testing.T, p *sshpool.Pool, ep sshpool.Endpoint, srv *sshdtest.SSEServer) *sshdtest.SSEStream {
	t.Helper()
	return sshdtest.OpenSSE(t, func(ctx context.Context, addr string) (net.Conn, error) {
		return p.DialContext(ctx, ep, addr)
	}, srv)
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
