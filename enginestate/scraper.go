package enginestate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults of the Scraper's fields.
const (
	DefaultInterval      = 2 * time.Second
	DefaultStaleAfter    = 6 * time.Second
	DefaultMaxConcurrent = 16
)

// Sentinel errors recorded in Result.Err.
var (
	// ErrStatus wraps a non-200 answer (SGLang without --enable-metrics
	// answers 404; a portal placeholder answers 502).
	ErrStatus = errors.New("enginestate: /metrics answered a non-200 status")
	// ErrUnknownEngine means the page parsed but held no known engine's
	// metrics (an engine we cannot read, or a proxy's own page).
	ErrUnknownEngine = errors.New("enginestate: no known engine metrics on the page")
	// ErrNoScrapeSlot means every scrape slot stayed busy for a whole
	// scrape timeout.
	ErrNoScrapeSlot = errors.New("enginestate: no free scrape slot within the scrape timeout")
)

// Target is one engine to scrape.
type Target struct {
	// ID identifies the instance; Get and Snapshot are keyed by it.
	ID int64
	// URL is the full address of the engine's metrics page
	// (e.g. http://host:port/metrics). It must not carry secrets: it may
	// appear in errors with its query and user info removed.
	URL string
	// Do sends the request; the caller injects the instance's token and
	// tunnel here. nil uses the Scraper's Client.
	Do func(*http.Request) (*http.Response, error)
}

// Result is the last outcome of scraping one target.
type Result struct {
	// State holds the last figures read successfully, kept across failed
	// scrapes so that they age out by StaleAfter rather than vanish on one
	// lost scrape; zero (ok false) before the first success.
	State State
	// OK reports whether State holds figures.
	OK bool
	// Err is the most recent scrape's failure, nil after a success. Its
	// text never contains headers or URL query strings.
	Err error
	// Scraped is when the most recent scrape finished.
	Scraped time.Time
}

// Scraper scrapes a changing set of engines' /metrics pages in the
// background and publishes the results as an immutable snapshot, so that
// the request path reads engine load without a lock or a network call.
// Set the fields before Run; zero fields take defaults.
type Scraper struct {
	// Targets returns the engines to scrape; it is called once per
	// interval, from Run's goroutine, and must not block.
	Targets func() []Target
	// Interval between scrapes of each target; default DefaultInterval.
	Interval time.Duration
	// Timeout bounds one scrape, including the wait for a scrape slot;
	// default Interval, so the scrapes of one target never pile up.
	Timeout time.Duration
	// StaleAfter: Get ignores figures older than this; default
	// DefaultStaleAfter.
	StaleAfter time.Duration
	// MaxConcurrent bounds the scrapes in flight; default
	// DefaultMaxConcurrent.
	MaxConcurrent int
	// MaxBodyBytes bounds a page; default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Client sends the requests of targets without Do; default
	// http.DefaultClient.
	Client *http.Client
	// Log receives scrape failures on transitions only; nil discards.
	Log *zap.Logger
	// Now is the clock; default time.Now. Tests replace it.
	Now func() time.Time
	// OnState, if set, receives every successfully read state, from the
	// scrape's goroutine (one call per instance at a time); it must not
	// block.
	OnState func(id int64, st State)

	mu       sync.Mutex // serialises writers of snap and inflight
	inflight map[int64]bool
	live     map[int64]bool // ids returned by the last Targets call
	snap     atomic.Pointer[map[int64]Result]
}

func (s *Scraper) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Scraper) staleAfter() time.Duration {
	if s.StaleAfter > 0 {
		return s.StaleAfter
	}
	return DefaultStaleAfter
}

// Get returns the engine state of instance id if it was read within
// StaleAfter. It is lock-free and allocation-free.
func (s *Scraper) Get(id int64) (State, bool) {
	m := s.snap.Load()
	if m == nil {
		return State{}, false
	}
	r, ok := (*m)[id]
	if !ok || !r.OK || s.now().Sub(r.State.At) > s.staleAfter() {
		return State{}, false
	}
	return r.State, true
}

// Snapshot returns the last result of every current target, fresh or not,
// for display (admin API, dashboard). The map is shared and immutable:
// callers must not modify it.
func (s *Scraper) Snapshot() map[int64]Result {
	if m := s.snap.Load(); m != nil {
		return *m
	}
	return nil
}

// Run scrapes every target each Interval until ctx ends, then waits for the
// scrapes in flight. A target whose previous scrape is still running is
// skipped for that tick, so a slow engine delays only itself. Call Run once.
func (s *Scraper) Run(ctx context.Context) {
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = interval
	}
	n := s.MaxConcurrent
	if n <= 0 {
		n = DefaultMaxConcurrent
	}
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		s.dispatch(ctx, sem, &wg, timeout)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// dispatch refreshes the target set, drops the results of departed
// targets and starts a scrape for every target without one in flight.
func (s *Scraper) dispatch(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup, timeout time.Duration) {
	var targets []Target
	if s.Targets != nil {
		targets = s.Targets()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == nil {
		s.inflight = make(map[int64]bool)
	}
	s.live = make(map[int64]bool, len(targets))
	for _, t := range targets {
		s.live[t.ID] = true
	}
	s.pruneLocked()
	for _, t := range targets {
		if s.inflight[t.ID] {
			continue
		}
		s.inflight[t.ID] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.scrapeOne(ctx, t, sem, timeout)
			s.mu.Lock()
			delete(s.inflight, t.ID)
			s.mu.Unlock()
		}()
	}
}

// pruneLocked republishes the snapshot without departed targets.
func (s *Scraper) pruneLocked() {
	old := s.Snapshot()
	next := make(map[int64]Result, len(s.live))
	for id, r := range old {
		if s.live[id] {
			next[id] = r
		}
	}
	if len(next) != len(old) || old == nil {
		s.snap.Store(&next)
	}
}

// scrapeOne scrapes t within timeout and publishes the outcome.
func (s *Scraper) scrapeOne(ctx context.Context, t Target, sem chan struct{}, timeout time.Duration) {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case sem <- struct{}{}:
	case <-sctx.Done():
		if ctx.Err() == nil {
			s.publish(t.ID, State{}, false, ErrNoScrapeSlot)
		}
		return
	}
	st, ok, err := s.fetch(sctx, t)
	<-sem
	if ctx.Err() != nil {
		return // shutting down: an aborted scrape says nothing of the engine
	}
	s.publish(t.ID, st, ok, err)
}

// fetch requests and parses one page.
func (s *Scraper) fetch(ctx context.Context, t Target) (State, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return State{}, false, fmt.Errorf("enginestate: instance %d: bad metrics URL: %w", t.ID, redact(err))
	}
	// Ask for the classic text format: OpenMetrics is not what the
	// text parser reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	do := t.Do
	if do == nil {
		c := s.Client
		if c == nil {
			c = http.DefaultClient
		}
		do = c.Do
	}
	resp, err := do(req)
	if err != nil {
		return State{}, false, fmt.Errorf("enginestate: instance %d: scrape: %w", t.ID, redact(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
		return State{}, false, fmt.Errorf("enginestate: instance %d: %w: %d", t.ID, ErrStatus, resp.StatusCode)
	}
	limit := s.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	st, ok, err := ParseLimit(resp.Body, limit)
	if err != nil {
		return State{}, false, fmt.Errorf("enginestate: instance %d: %w", t.ID, err)
	}
	if !ok {
		return State{}, false, fmt.Errorf("enginestate: instance %d: %w", t.ID, ErrUnknownEngine)
	}
	st.At = s.now()
	return st, true, nil
}

// redact drops the URL (which might carry a query or user info) from a
// transport error, keeping its cause.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// publish records a scrape outcome for id unless the target left while it
// was being scraped. A failure keeps the previous figures (they age out by
// StaleAfter).
func (s *Scraper) publish(id int64, st State, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.live[id] {
		return
	}
	old := s.Snapshot()
	prev := old[id]
	r := Result{State: prev.State, OK: prev.OK, Err: err, Scraped: s.now()}
	if ok {
		r.State, r.OK = st, true
	}
	next := make(map[int64]Result, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[id] = r
	s.snap.Store(&next)
	s.logTransition(id, prev.Err, err)
	if ok && s.OnState != nil {
		s.OnState(id, st)
	}
}

// logTransition logs failures and recoveries, not every failed scrape, so
// a broken engine scraped every interval does not flood the log.
func (s *Scraper) logTransition(id int64, prev, cur error) {
	if s.Log == nil {
		return
	}
	switch {
	case cur != nil && (prev == nil || prev.Error() != cur.Error()):
		s.Log.Warn("engine metrics scrape failed", zap.Int64("instance", id), zap.Error(cur))
	case cur == nil && prev != nil:
		s.Log.Info("engine metrics scrape recovered", zap.Int64("instance", id))
	}
}
