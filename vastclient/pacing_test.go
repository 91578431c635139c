package vastclient

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// schedulingNoise bounds how much later one request may be delivered to the
// server's handler than another, relative to when the client started it.
const schedulingNoise = 10 * time.Millisecond

// pacedClient returns a client whose endpoint ep is paced at interval, with
// every other endpoint unpaced.
func pacedClient(t *testing.T, url string, ep Endpoint, interval time.Duration) *Client {
	cfg := testConfig(url)
	cfg.Pacing[ep] = interval
	return newTestClient(t, cfg)
}

func okServer(t *testing.T) *fakeServer {
	return newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		if r.URL.Path == "/api/v0/users/current/" {
			writeJSON(w, 200, `{"id": 1}`)
			return
		}
		writeJSON(w, 200, `{"success": true, "instances": [], "next_token": null}`)
	})
}

// TestPacingServerGap checks the spacing as a loopback server sees it. A
// warm-up call on an unpaced endpoint opens the keep-alive connection first,
// so that both paced requests travel the same way and dial time does not
// shrink the observed gap.
//
// The pacer spaces request starts; the server records arrivals, which lag
// the starts by a delivery time that CPU contention can stretch for one
// request more than for the other (up to 80ms was seen with -race on a
// machine running four busy loops per two cores). The margin keeps the test
// meaningful (without pacing the gap is well under a millisecond) without
// making it flaky; TestPacingExactFakeClock checks the exact bound.
func TestPacingServerGap(t *testing.T) {
	const interval = 200 * time.Millisecond
	f := okServer(t)
	c := pacedClient(t, f.URL, EndpointList, interval)
	ctx := testCtx(t)
	if _, err := c.CurrentUser(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.ListInstances(ctx, ListOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests", len(reqs))
	}
	gap := reqs[2].At.Sub(reqs[1].At)
	if gap < interval-interval/4 {
		t.Errorf("server saw list requests %s apart, want at least %s", gap, interval)
	}
	t.Logf("server-side gap: %s", gap)
}

// TestPacingExactFakeClock runs the client and the server in a synctest
// bubble over an in-memory network, where the clock only moves while every
// goroutine waits: the server-side arrival times are then exact, for
// sequential and concurrent callers.
func TestPacingExactFakeClock(t *testing.T) {
	const interval = 200 * time.Millisecond
	const callers = 5
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		arrivals := map[string][]time.Time{}
		cfg := pipeServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			arrivals[r.URL.Path] = append(arrivals[r.URL.Path], time.Now())
			mu.Unlock()
			if r.URL.Path == "/api/v0/users/current/" {
				writeJSON(w, 200, `{"id": 1}`)
				return
			}
			writeJSON(w, 200, `{"instances": []}`)
		}))
		cfg.Pacing[EndpointList] = interval
		cfg.Pacing[EndpointUser] = interval
		c := newTestClient(t, cfg)
		ctx := context.Background()

		// Sequential calls.
		for i := 0; i < 2; i++ {
			if _, err := c.ListInstances(ctx, ListOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// Concurrent callers share the pacing.
		var wg sync.WaitGroup
		for i := 0; i < callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.CurrentUser(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()

		mu.Lock()
		defer mu.Unlock()
		list, user := arrivals["/api/v1/instances/"], arrivals["/api/v0/users/current/"]
		if len(list) != 2 || len(user) != callers {
			t.Fatalf("arrivals: %d list, %d user", len(list), len(user))
		}
		if gap := list[1].Sub(list[0]); gap < interval {
			t.Errorf("list requests %s apart, want at least %s", gap, interval)
		}
		sort.Slice(user, func(i, j int) bool { return user[i].Before(user[j]) })
		for i := 1; i < len(user); i++ {
			if gap := user[i].Sub(user[i-1]); gap < interval {
				t.Errorf("concurrent requests %d and %d arrived %s apart, want at least %s", i-1, i, gap, interval)
			}
		}
		// Pacing is a minimum, not a delay: the first user call was not
		// held back by the list endpoint's pacing.
		if !user[0].Equal(list[1]) {
			t.Errorf("first user call at %s, want %s (no cross-endpoint wait)", user[0], list[1])
		}
	})
}

func TestPacingPerEndpoint(t *testing.T) {
	f := okServer(t)
	c := pacedClient(t, f.URL, EndpointList, time.Hour)
	ctx := testCtx(t)
	if _, err := c.ListInstances(ctx, ListOptions{}); err != nil {
		t.Fatal(err)
	}
	// Another endpoint is not held back by the list's next slot, an hour away.
	if _, err := c.CurrentUser(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPacingHonoursContext(t *testing.T) {
	f := okServer(t)
	c := pacedClient(t, f.URL, EndpointList, time.Hour)
	if _, err := c.ListInstances(testCtx(t), ListOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("deadline", func(t *testing.T) {
		// A deadline far enough that "returned at once" and "waited for
		// the deadline" cannot be confused on a loaded machine.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.ListInstances(ctx, ListOptions{})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		// The slot is an hour away, past the deadline: no point waiting.
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("returned after %s", d)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			// Cancel once the call is parked in the pacer.
			for !c.pacers[EndpointList].hasWaiter() {
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		_, err := c.ListInstances(ctx, ListOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	if f.count() != 1 {
		t.Errorf("server saw %d requests, want 1", f.count())
	}
}

func TestPacerReleasesUnusedSlot(t *testing.T) {
	p := &pacer{interval: time.Hour}
	if err := p.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	first := p.next
	p.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if err := p.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.next.Equal(first) {
		t.Errorf("abandoned waits kept their slots: next moved from %s to %s", first, p.next)
	}
}

func TestPacingDisabled(t *testing.T) {
	p := &pacer{}
	for i := 0; i < 1000; i++ {
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var nilPacer *pacer
	if err := nilPacer.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestBackoffHonoursContext(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		writeText(w, 503, "Service Unavailable")
	})
	// The client logs just before it sleeps; the hook tells the test that
	// the call is now in its backoff.
	backingOff := make(chan struct{}, 10)
	core, _ := observer.New(zap.DebugLevel)
	logger := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		if strings.Contains(e.Message, "retrying") {
			backingOff <- struct{}{}
		}
		return nil
	}))
	cfg := testConfig(f.URL)
	cfg.BackoffBase = time.Hour
	cfg.BackoffMax = time.Hour
	cfg.Logger = logger
	c := newTestClient(t, cfg)

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-backingOff; cancel() }()
		_, err := c.ListInstances(ctx, ListOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if !errors.Is(err, ErrServer) {
			t.Errorf("err = %v, want the last answer (503) kept", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		// As above: a deadline far from "at once" (one 503 round trip).
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		start := time.Now()
		err := c.DestroyInstance(ctx, 5)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrServer) {
			t.Fatalf("err = %v, want context.DeadlineExceeded and ErrServer", err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("returned after %s", d)
		}
	})
	if f.count() != 2 {
		t.Errorf("server saw %d requests, want 2", f.count())
	}
}

func TestBackoffDelay(t *testing.T) {
	base, max := 100*time.Millisecond, time.Second
	for attempt := 1; attempt <= 10; attempt++ {
		want := base << (attempt - 1)
		if want > max {
			want = max
		}
		for i := 0; i < 50; i++ {
			d := backoffDelay(base, max, attempt)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
	if d := backoffDelay(time.Second, time.Second, 1000); d > time.Second {
		t.Errorf("delay %s above max", d)
	}
}

// hasWaiter reports whether a caller holds a reservation beyond the next
// free slot, i.e. is parked in wait.
func (p *pacer) hasWaiter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Until(p.next) > p.interval
}

// TestPacerSpacesLateStarts covers a slot holder that woke late: the next
// caller is spaced from the real start, not from the slot.
func TestPacerSpacesLateStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 100 * time.Millisecond
		p := &pacer{interval: interval}
		t0 := time.Now()
		// The previous slot was at t0-100ms, but its holder only started at
		// t0-30ms; the next slot (t0) is free.
		p.next = t0
		p.last = t0.Add(-30 * time.Millisecond)
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(t0); got != 70*time.Millisecond {
			t.Errorf("waited %s, want 70ms", got)
		}
		// The reservation after it moved too.
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(t0); got != 170*time.Millisecond {
			t.Errorf("second wait ended at +%s, want +170ms", got)
		}
	})
}
