package autoscale

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

func newHold(t *testing.T, cfg HoldConfig) (*Hold, *atomic.Int64) {
	t.Helper()
	wakes := new(atomic.Int64)
	cfg.Wake = func() { wakes.Add(1) }
	h, err := NewHold(cfg)
	if err != nil {
		t.Fatalf("NewHold: %v", err)
	}
	return h, wakes
}

type held struct {
	arrival, rank uint64
	err           error
}

// TestHoldManyWaiters: 1000 concurrent waiters, some cancelled while
// held and some while the release runs. Cancelled ones leave at once and
// are not counted, the rest are released in arrival order, Wake ran
// once, and no goroutine is left.
func TestHoldManyWaiters(t *testing.T) {
	const n = 1000
	base := runtime.NumGoroutine()
	h, wakes := newHold(t, HoldConfig{MaxPending: n, MaxWait: 10 * time.Minute})
	res := make([]held, n)
	cancels := make([]context.CancelFunc, n)
	var wg sync.WaitGroup
	for i := range n {
		ctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		wg.Go(func() {
			a, r, err := h.wait(ctx, nil)
			res[i] = held{a, r, err}
		})
	}
	waitFor(t, "1000 held", func() bool { return h.Len() == n })
	if got := wakes.Load(); got != 1 {
		t.Fatalf("Wake called %d times for one episode", got)
	}
	perm := rand.Perm(n)
	early, racing := perm[:300], perm[300:400]
	var cw sync.WaitGroup
	for _, part := range [][]int{early[:150], early[150:]} {
		cw.Go(func() {
			for _, i := range part {
				cancels[i]()
			}
		})
	}
	cw.Wait()
	waitFor(t, "cancelled waiters gone", func() bool { return h.Len() == n-len(early) })
	cw.Go(func() {
		for _, i := range racing {
			cancels[i]()
		}
	})
	h.Release()
	cw.Wait()
	wg.Wait()
	checkOrder(t, res, early)
	if h.Len() != 0 || wakes.Load() != 1 {
		t.Errorf("after the release: Len %d, %d wakes", h.Len(), wakes.Load())
	}
	for _, c := range cancels {
		c()
	}
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

// checkOrder: the early-cancelled got context.Canceled and no rank, every
// other waiter got nil or (if cancelled during the release) Canceled, and
// the released ones' ranks follow their arrival.
func checkOrder(t *testing.T, res []held, early []int) {
	t.Helper()
	isEarly := map[int]bool{}
	for _, i := range early {
		isEarly[i] = true
	}
	var got []held
	for i, r := range res {
		switch {
		case isEarly[i] && (r.rank != 0 || !errors.Is(r.err, context.Canceled)):
			t.Fatalf("waiter %d cancelled while held: %+v", i, r)
		case !isEarly[i] && r.err != nil && !errors.Is(r.err, context.Canceled):
			t.Fatalf("waiter %d: %+v", i, r)
		case r.rank > 0:
			got = append(got, r)
		}
	}
	if len(got) < len(res)-len(early)-100 {
		t.Fatalf("%d released, want at least %d", len(got), len(res)-len(early)-100)
	}
	sort.Slice(got, func(a, b int) bool { return got[a].arrival < got[b].arrival })
	for k := 1; k < len(got); k++ {
		if got[k].rank <= got[k-1].rank {
			t.Fatalf("arrival %d released as %d, after arrival %d released as %d",
				got[k].arrival, got[k].rank, got[k-1].arrival, got[k-1].rank)
		}
	}
}

// TestHoldWakeOncePerEpisode: one Wake per empty-to-held transition of a
// blocked Hold, none while open.
func TestHoldWakeOncePerEpisode(t *testing.T) {
	h, wakes := newHold(t, HoldConfig{})
	hold := func(k int) (context.CancelFunc, *sync.WaitGroup) {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range k {
			wg.Go(func() { _ = h.Wait(ctx) })
		}
		waitFor(t, "waiters held", func() bool { return h.Len() == k })
		return cancel, &wg
	}
	steps := []struct {
		name  string
		do    func()
		wakes int64
	}{
		{"50 wait", func() { c, wg := hold(50); c(); wg.Wait() }, 1},
		{"all gave up, one more", func() { c, wg := hold(1); c(); wg.Wait() }, 2},
		{"released", func() {
			_, wg := hold(5)
			h.Release()
			wg.Wait()
		}, 3},
		{"open passes", func() {
			if err := h.Wait(context.Background()); err != nil {
				t.Errorf("Wait on an open Hold: %v", err)
			}
		}, 3},
		{"blocked again", func() {
			if n := h.Block(); n != 0 {
				t.Errorf("Block: %d held", n)
			}
			_, wg := hold(3)
			h.Release()
			wg.Wait()
		}, 4},
	}
	for _, s := range steps {
		s.do()
		if got := wakes.Load(); got != s.wakes {
			t.Fatalf("after %q: %d wakes, want %d", s.name, got, s.wakes)
		}
		if h.Len() != 0 {
			t.Fatalf("after %q: Len %d", s.name, h.Len())
		}
	}
}

// TestHoldErrors: a full queue refuses at once, MaxWait times out, an
// ended ctx returns its error; none stays counted.
func TestHoldErrors(t *testing.T) {
	background := func() context.Context { return context.Background() }
	expired := func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	deadline := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	cases := []struct {
		name  string
		cfg   HoldConfig
		ahead int // waiters already held
		ctx   func() context.Context
		want  error
		wakes int64
	}{
		{"full", HoldConfig{MaxPending: 3}, 3, background, ErrHoldFull, 1},
		{"timeout", HoldConfig{MaxWait: 20 * time.Millisecond}, 0, background, ErrHoldTimeout, 1},
		{"ctx already done", HoldConfig{}, 0, expired, context.Canceled, 0},
		{"ctx deadline", HoldConfig{}, 0, deadline, context.DeadlineExceeded, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, wakes := newHold(t, tc.cfg)
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range tc.ahead {
				wg.Go(func() { _ = h.Wait(ctx) })
			}
			waitFor(t, "waiters ahead", func() bool { return h.Len() == tc.ahead })
			if err := h.Wait(tc.ctx()); !errors.Is(err, tc.want) {
				t.Errorf("Wait: %v, want %v", err, tc.want)
			}
			if h.Len() != tc.ahead || wakes.Load() != tc.wakes {
				t.Errorf("Len %d wakes %d, want %d %d", h.Len(), wakes.Load(), tc.ahead, tc.wakes)
			}
			stop()
			wg.Wait()
			if h.Len() != 0 {
				t.Errorf("Len %d after all left", h.Len())
			}
		})
	}
}

// TestHoldBlockDuringRelease: Block stops the baton; the rest stay held,
// are reported, and go at the next Release.
func TestHoldBlockDuringRelease(t *testing.T) {
	h, _ := newHold(t, HoldConfig{})
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() { errs[i] = h.Wait(context.Background()) })
	}
	waitFor(t, "20 held", func() bool { return h.Len() == 20 })
	h.mu.Lock() // Release and Block with no waiter running in between
	h.open = true
	h.passLocked()
	h.open = false
	h.publish()
	h.mu.Unlock()
	waitFor(t, "the baton dropped", func() bool { return h.word.Load()&wordBaton == 0 })
	if n := h.Len(); n != 19 {
		t.Fatalf("after a release of one and a Block: %d held, want 19", n)
	}
	h.Release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
}

// TestHoldFastPath: an open, empty Hold costs no allocation.
func TestHoldFastPath(t *testing.T) {
	h, _ := newHold(t, HoldConfig{})
	h.Release()
	ctx := context.Background()
	if allocs := testing.AllocsPerRun(1000, func() { _ = h.Wait(ctx) }); allocs != 0 {
		t.Errorf("fast path: %v allocs", allocs)
	}
}

// TestHoldConfig: negative limits are refused, naming the field.
func TestHoldConfig(t *testing.T) {
	for field, cfg := range map[string]HoldConfig{
		"MaxPending": {MaxPending: -1},
		"MaxWait":    {MaxWait: -1},
	} {
		_, err := NewHold(cfg)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

// TestHoldWaitTurnKeepsTheNextBackUntilPass: with WaitTurn, the second
// held request leaves only when the first calls pass (or PassTimeout
// passes), so requests reach the upstream in arrival order.
func TestHoldWaitTurnKeepsTheNextBackUntilPass(t *testing.T) {
	for _, tc := range []struct {
		name      string
		callPass  bool
		passAfter time.Duration
	}{
		{"pass called", true, time.Hour},
		{"pass timeout", false, 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newHold(t, HoldConfig{PassTimeout: tc.passAfter})
			type result struct {
				i    int
				pass func()
				held bool
				err  error
			}
			out := make(chan result, 2)
			for i := 0; i < 2; i++ {
				go func() {
					p, held, err := h.WaitTurn(context.Background())
					out <- result{i, p, held, err}
				}()
				waitFor(t, "waiter queued", func() bool { return h.Len() == i+1 })
			}
			h.Release()
			first := <-out
			if first.i != 0 || first.err != nil || !first.held {
				t.Fatalf("first out: %+v, want waiter 0 held and released", first)
			}
			if tc.callPass {
				select {
				case r := <-out:
					t.Fatalf("waiter %d left before the first passed", r.i)
				case <-time.After(50 * time.Millisecond):
				}
				first.pass()
				first.pass() // a second call does nothing
			}
			second := <-out
			if second.i != 1 || second.err != nil {
				t.Fatalf("second out: %+v, want waiter 1", second)
			}
			second.pass()
			if p, held, err := h.WaitTurn(context.Background()); err != nil || held {
				t.Fatalf("open and empty: held %v err %v, want through at once", held, err)
			} else {
				p()
			}
		})
	}
}
