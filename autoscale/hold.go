package autoscale

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors of Hold.Wait; the caller answers both with 503 and
// Retry-After (capacity_unavailable).
var (
	// ErrHoldFull: MaxPending requests were already held at arrival.
	ErrHoldFull = errors.New("autoscale: hold queue full")
	// ErrHoldTimeout: no instance became ready within MaxWait.
	ErrHoldTimeout = errors.New("autoscale: held past max wait")
)

// Hold defaults, after routing-and-scaling.md §5.2 (cold_queue).
const (
	DefaultMaxPending = 64
	DefaultMaxWait    = 60 * time.Second
)

// HoldConfig sets a Hold. Zero values select the defaults.
type HoldConfig struct {
	// MaxPending is how many requests may be held at once; one more gets
	// ErrHoldFull at once. Default 64.
	MaxPending int `json:"max_pending,omitempty"`
	// MaxWait is the longest one request is held before ErrHoldTimeout.
	// Default 60s: long holds hide saturation (OmniRoute cut 120s to 15s).
	MaxWait time.Duration `json:"max_wait,omitempty"`
	// Wake starts a wake-up of the pool. It is called once per episode:
	// when the first request arrives at an empty, blocked Hold, however
	// many follow. It runs on that request's goroutine, outside the lock,
	// so it must only signal (e.g. a non-blocking send to the scaling
	// loop) and return.
	Wake func() `json:"-"`
	// PassTimeout bounds how long a WaitTurn caller may keep the next
	// held request back. Default 1s.
	PassTimeout time.Duration `json:"-"`
}

// word bits: the fast path reads them in one atomic load.
const (
	wordOpen  = 1 << 0
	wordBaton = 1 << 1
	lenShift  = 2
)

// Hold is a bounded FIFO of requests waiting for a pool to have a ready
// instance. It starts blocked. Release opens it and lets the held
// requests go in arrival order; Block closes it when the pool has nothing
// ready again.
//
// Order: Release wakes only the head of the queue. Each woken waiter,
// before its Wait returns, wakes the next one (a baton), so waiter k+1
// cannot run before waiter k has left the queue and been scheduled, and
// requests that arrive while the baton is moving join the tail instead of
// overtaking. Arrival is the moment a waiter enters the queue under the
// lock. What each caller does after Wait returns is up to the scheduler.
type Hold struct {
	cfg  HoldConfig
	word atomic.Int64 // open | baton | len<<lenShift, written under mu

	mu         sync.Mutex
	open       bool
	baton      bool // a woken waiter has yet to pass the baton on
	head, tail *waiter
	n          int
	arrivals   uint64
	releases   uint64
}

// waiter is one held request. ch is closed when it is released.
type waiter struct {
	ch         chan struct{}
	prev, next *waiter
	released   bool
	arrival    uint64
	rank       uint64
}

// NewHold applies cfg's defaults, validates it and returns a blocked Hold.
func NewHold(cfg HoldConfig) (*Hold, error) {
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.PassTimeout <= 0 {
		cfg.PassTimeout = time.Second
	}
	switch {
	case cfg.MaxPending < 0:
		return nil, fmt.Errorf("%w: MaxPending (%d) must not be negative", ErrConfig, cfg.MaxPending)
	case cfg.MaxWait < 0:
		return nil, fmt.Errorf("%w: MaxWait (%v) must not be negative", ErrConfig, cfg.MaxWait)
	}
	return &Hold{cfg: cfg}, nil
}

// Len is the number of requests held now; one atomic load.
func (h *Hold) Len() int { return int(h.word.Load() >> lenShift) }

// Open reports whether the Hold lets requests through (Release was called
// after the last Block).
func (h *Hold) Open() bool { return h.word.Load()&wordOpen != 0 }

// Wait returns nil at once when the Hold is open and no one is held (one
// atomic load, no lock, no allocation). Otherwise it holds the caller in
// arrival order until Release lets it go (nil), ctx ends (ctx.Err(); it
// leaves the queue at once), or MaxWait passes (ErrHoldTimeout); a full
// queue gives ErrHoldFull at once.
func (h *Hold) Wait(ctx context.Context) error {
	if h.word.Load() == wordOpen {
		return nil
	}
	_, _, err := h.wait(ctx, nil)
	return err
}

// WaitTurn is Wait for a caller that keeps the next held request back
// until it has sent its own on: after a release (err nil, held true) the
// next waiter is woken only when the caller calls pass (later calls do
// nothing), or PassTimeout after the release if it never does. Held
// requests thus reach the upstream in arrival order, not merely leave the
// Hold in it. pass is never nil; held is false when the caller was not
// queued (open Hold, nothing ahead), where pass does nothing.
func (h *Hold) WaitTurn(ctx context.Context) (pass func(), held bool, err error) {
	if h.word.Load() == wordOpen {
		return noPass, false, nil
	}
	var p func()
	a, _, err := h.wait(ctx, &p)
	if p == nil {
		p = noPass
	}
	return p, err == nil && a > 0, err
}

func noPass() {}

// wait is Wait's slow path; it also returns the waiter's arrival and
// release sequence numbers (1-based, 0 when not queued or not released)
// for tests. With keep non-nil, a released waiter does not wake the next
// one: *keep is set to the function that does (see WaitTurn).
func (h *Hold) wait(ctx context.Context, keep *func()) (arrival, rank uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	w, wake, err := h.enqueue()
	if w == nil {
		return 0, 0, err
	}
	if wake && h.cfg.Wake != nil {
		h.cfg.Wake()
	}
	timer := time.NewTimer(h.cfg.MaxWait)
	defer timer.Stop()
	select {
	case <-w.ch:
		if keep != nil && ctx.Err() == nil {
			*keep = h.passLater()
			return w.arrival, w.rank, nil
		}
		h.mu.Lock()
		h.passLocked()
		h.mu.Unlock()
		return w.arrival, w.rank, ctx.Err()
	case <-ctx.Done():
		return h.leave(ctx, w, ctx.Err())
	case <-timer.C:
		return h.leave(ctx, w, ErrHoldTimeout)
	}
}

// enqueue appends a waiter, or returns none with nil (open and no one
// ahead) or ErrHoldFull. wake is true for the first waiter of an empty,
// blocked queue.
func (h *Hold) enqueue() (w *waiter, wake bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.open && h.n == 0 && !h.baton {
		return nil, false, nil
	}
	if h.n >= h.cfg.MaxPending {
		return nil, false, ErrHoldFull
	}
	wake = !h.open && h.n == 0
	h.arrivals++
	w = &waiter{ch: make(chan struct{}), arrival: h.arrivals, prev: h.tail}
	if h.tail != nil {
		h.tail.next = w
	} else {
		h.head = w
	}
	h.tail = w
	h.n++
	h.publish()
	return w, wake, nil
}

// passLater returns the function that passes a released waiter's baton
// on, once, and arms the PassTimeout that calls it if the caller does not.
func (h *Hold) passLater() func() {
	var once sync.Once
	var t *time.Timer
	pass := func() {
		once.Do(func() {
			h.mu.Lock()
			if t != nil { // t is written under mu
				t.Stop()
			}
			h.passLocked()
			h.mu.Unlock()
		})
	}
	h.mu.Lock()
	t = time.AfterFunc(h.cfg.PassTimeout, pass)
	h.mu.Unlock()
	return pass
}

// leave takes a waiter whose ctx ended or whose time ran out out of the
// queue. If it was released meanwhile it holds the baton: it passes it
// on and counts as released (nil unless its ctx ended).
func (h *Hold) leave(ctx context.Context, w *waiter, err error) (uint64, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.released {
		h.passLocked()
		return w.arrival, w.rank, ctx.Err()
	}
	h.unlinkLocked(w)
	h.publish()
	return w.arrival, 0, err
}

// passLocked wakes the head if the Hold is open, or drops the baton.
func (h *Hold) passLocked() {
	w := h.head
	if !h.open || w == nil {
		h.baton = false
		h.publish()
		return
	}
	h.unlinkLocked(w)
	h.releases++
	w.released, w.rank = true, h.releases
	h.baton = true
	h.publish()
	close(w.ch)
}

func (h *Hold) unlinkLocked(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		h.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		h.tail = w.prev
	}
	w.prev, w.next = nil, nil
	h.n--
}

func (h *Hold) publish() {
	v := int64(h.n) << lenShift
	if h.open {
		v |= wordOpen
	}
	if h.baton {
		v |= wordBaton
	}
	h.word.Store(v)
}

// Release opens the Hold because an instance is ready: the held requests
// go in arrival order, and later ones pass at once.
func (h *Hold) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.open = true
	if !h.baton {
		h.passLocked()
	}
}

// Block closes the Hold because the pool has no ready instance: later
// requests are held, and the first of an empty queue calls Wake. It
// returns how many are still held (a Block during a release stops the
// baton); Wake is not called for them, so a caller that gets more than 0
// starts the wake-up itself.
func (h *Hold) Block() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.open = false
	h.publish()
	return h.n
}
