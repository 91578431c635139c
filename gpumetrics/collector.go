package gpumetrics

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/sshpool"
)

// Sample is the latest GPU reading of one instance. A Sample is immutable
// once published: readers must not modify GPUs.
type Sample struct {
	// GPUs and CollectedAt come from the last poll that produced GPU
	// lines; a failed poll keeps them, so readers see how old they are.
	GPUs        []GPU     `json:"gpus"`
	CollectedAt time.Time `json:"collected_at,omitzero"`
	// Err describes the failure of the most recent poll, "" if it
	// succeeded completely.
	Err string `json:"error,omitempty"`
}

// Runner runs a command on an instance and returns its stdout; a
// *sshpool.Pool is one. The ctx deadline bounds the call.
type Runner interface {
	Run(ctx context.Context, ep sshpool.Endpoint, cmd string) ([]byte, error)
}

// DefaultMaxConcurrentPolls is the default of Collector.MaxConcurrent.
const DefaultMaxConcurrentPolls = 16

// Collector polls nvidia-smi on a changing set of instances through a Runner.
// A failed poll is only recorded in the Sample: it never closes the
// connection, which HTTP tunnels share.
type Collector struct {
	// MaxConcurrent bounds the polls in flight; default
	// DefaultMaxConcurrentPolls. Set it before Run.
	MaxConcurrent int
	// Timeout bounds one poll, including waiting for the connection and a
	// poll slot; default the interval, so polls of an instance never pile
	// up. Set it before Run.
	Timeout time.Duration

	interval time.Duration
	log      *zap.Logger
	run      func(ctx context.Context, ep sshpool.Endpoint, cmd string) ([]byte, error)

	mu       sync.Mutex
	eps      map[int64]sshpool.Endpoint
	inflight map[int64]bool
	polled   map[int64]bool // polled at least once since added
	wake     chan struct{}

	// samples maps an instance id to its latest Sample. The map itself is
	// replaced (copy on write) only by SetEndpoints; each slot is updated
	// atomically by polls, so Sample never takes a lock.
	samples atomic.Pointer[map[int64]*atomic.Pointer[Sample]]
}

// NewCollector returns a Collector polling through r every interval
// (default 15s). log may be nil.
func NewCollector(r Runner, interval time.Duration, log *zap.Logger) *Collector {
	if interval <= 0 {
		interval = 15 * time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Collector{
		interval: interval,
		log:      log,
		eps:      make(map[int64]sshpool.Endpoint),
		inflight: make(map[int64]bool),
		polled:   make(map[int64]bool),
		wake:     make(chan struct{}, 1),
	}
	if r != nil {
		c.run = r.Run
	}
	empty := make(map[int64]*atomic.Pointer[Sample])
	c.samples.Store(&empty)
	return c
}

// SetEndpoints replaces the set of polled instances. New instances are
// polled at once (when Run is active); samples of removed ones are dropped.
// It does not touch the Runner: connection lifecycle belongs to its owner.
func (c *Collector) SetEndpoints(eps []sshpool.Endpoint) {
	c.mu.Lock()
	old := *c.samples.Load()
	next := make(map[int64]*atomic.Pointer[Sample], len(eps))
	nextEps := make(map[int64]sshpool.Endpoint, len(eps))
	for _, ep := range eps {
		nextEps[ep.ID] = ep
		if slot := old[ep.ID]; slot != nil {
			next[ep.ID] = slot
		} else {
			next[ep.ID] = new(atomic.Pointer[Sample])
		}
	}
	for id := range c.polled {
		if _, ok := nextEps[id]; !ok {
			delete(c.polled, id)
		}
	}
	c.eps = nextEps
	c.samples.Store(&next)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Sample returns the latest sample of instance id; false if the instance is
// not polled or has no sample yet. It is lock-free.
func (c *Collector) Sample(id int64) (Sample, bool) {
	slot := (*c.samples.Load())[id]
	if slot == nil {
		return Sample{}, false
	}
	s := slot.Load()
	if s == nil {
		return Sample{}, false
	}
	return *s, true
}

// Run polls every endpoint each interval until ctx ends, then waits for the
// polls in flight. Each instance is polled by its own goroutine, so a slow
// one only delays itself; an instance whose previous poll is still running
// is skipped for that tick. Call Run once.
func (c *Collector) Run(ctx context.Context) {
	maxPolls := c.MaxConcurrent
	if maxPolls <= 0 {
		maxPolls = DefaultMaxConcurrentPolls
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = c.interval
	}
	sem := make(chan struct{}, maxPolls)
	var wg sync.WaitGroup
	defer wg.Wait()
	ticker := time.NewTicker(c.interval)
	defer ticker.Stop()
	c.dispatch(ctx, sem, &wg, timeout, false)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			c.dispatch(ctx, sem, &wg, timeout, false)
		case <-c.wake:
			c.dispatch(ctx, sem, &wg, timeout, true)
		}
	}
}

// dispatch starts a poll for every endpoint without one in flight; with
// onlyNew, only for endpoints never polled yet.
func (c *Collector) dispatch(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup, timeout time.Duration, onlyNew bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ep := range c.eps {
		if c.inflight[id] || (onlyNew && c.polled[id]) {
			continue
		}
		c.inflight[id] = true
		c.polled[id] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.poll(ctx, ep, sem, timeout)
			c.mu.Lock()
			delete(c.inflight, ep.ID)
			c.mu.Unlock()
		}()
	}
}

// errNoPollSlot is recorded when every poll slot stayed busy for a whole
// poll timeout.
var errNoPollSlot = errors.New("gpumetrics: no free poll slot within the poll timeout")

// poll runs Query on one instance and publishes the result.
func (c *Collector) poll(ctx context.Context, ep sshpool.Endpoint, sem chan struct{}, timeout time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case sem <- struct{}{}:
	case <-pctx.Done():
		if ctx.Err() == nil {
			c.publish(ep.ID, nil, errNoPollSlot)
		}
		return
	}
	out, err := c.run(pctx, ep, Query)
	<-sem
	if ctx.Err() != nil {
		return // shutting down: an aborted poll is not an instance failure
	}
	var gpus []GPU
	if err == nil {
		gpus, err = Parse(out)
	}
	c.publish(ep.ID, gpus, err)
}

// publish stores a new Sample for id, built from the poll's GPUs and error.
// A poll without GPUs keeps the previous GPUs and CollectedAt.
func (c *Collector) publish(id int64, gpus []GPU, err error) {
	slot := (*c.samples.Load())[id]
	if slot == nil {
		return // removed by SetEndpoints while polling
	}
	prev := slot.Load()
	next := &Sample{}
	if len(gpus) > 0 {
		next.GPUs, next.CollectedAt = gpus, time.Now()
	} else if prev != nil {
		next.GPUs, next.CollectedAt = prev.GPUs, prev.CollectedAt
	}
	if err != nil {
		next.Err = err.Error()
	}
	// Each instance has one poll at a time, so this store cannot race
	// another publish for the same id.
	slot.Store(next)

	// Log transitions only: a broken instance polled every interval must
	// not flood the log.
	prevErr := ""
	if prev != nil {
		prevErr = prev.Err
	}
	switch {
	case next.Err != "" && next.Err != prevErr:
		c.log.Warn("GPU metrics poll failed", zap.Int64("instance", id), zap.String("error", next.Err))
	case next.Err == "" && prevErr != "":
		c.log.Info("GPU metrics poll recovered", zap.Int64("instance", id))
	}
}
