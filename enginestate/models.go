package enginestate

// Model learning: which model ids each engine serves, read from its
// OpenAI-compatible GET /v1/models in the background, so that model
// routing picks a pool from a snapshot and never from the network.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults of the ModelLearner's fields.
const (
	DefaultModelRefresh      = 30 * time.Second
	DefaultModelRetry        = 2 * time.Second
	DefaultModelTick         = 250 * time.Millisecond
	DefaultModelTimeout      = 5 * time.Second
	DefaultModelMaxBodyBytes = 1 << 20
)

// Sentinel errors recorded in InstanceModels.Err.
var (
	// ErrModelsStatus wraps a non-200 answer to GET /v1/models.
	ErrModelsStatus = errors.New("enginestate: /v1/models answered a non-200 status")
	// ErrModelsBody means the answer was not an OpenAI model list, or
	// exceeded the size bound.
	ErrModelsBody = errors.New("enginestate: /v1/models did not answer a readable model list")
)

// ModelTarget is one engine whose model list to learn.
type ModelTarget struct {
	// ID identifies the instance.
	ID int64
	// Pool is the pool the instance serves; its ids count for that pool.
	Pool string
	// URL is the full address of the engine's model list
	// (http://host:port/v1/models). It must not carry secrets.
	URL string
	// Do sends the request (the caller injects the token and tunnel);
	// nil uses the learner's Client.
	Do func(*http.Request) (*http.Response, error)
}

// InstanceModels is what was learned of one instance.
type InstanceModels struct {
	// Pool is the instance's pool.
	Pool string
	// IDs are the model ids it reported, sorted; kept across failed reads.
	IDs []string
	// Learned is true once a read succeeded.
	Learned bool
	// Err is the last read's failure, nil after a success.
	Err error
	// Fetched is when the last read finished.
	Fetched time.Time
}

// PoolModels is the model view of one pool.
type PoolModels struct {
	// Ready are the ids its routable, learned instances report, sorted.
	Ready []string
	// Known is Ready, or, while no routable instance of the pool has been
	// learned, the last non-empty Ready: a pool scaled to zero still
	// knows its models, so their requests wait for an instance instead of
	// being refused as unknown.
	Known []string
	// Pending counts routable instances whose list is not learned yet.
	Pending int

	ready, known map[string]bool
}

// Serves reports whether a routable instance of the pool reports model.
func (p *PoolModels) Serves(model string) bool { return p != nil && p.ready[model] }

// Knows reports whether the pool serves or served model.
func (p *PoolModels) Knows(model string) bool { return p != nil && p.known[model] }

// Models is an immutable snapshot of what the engines serve. Nothing in it
// may be modified.
type Models struct {
	// Instances maps a routable instance id to its learned models.
	Instances map[int64]InstanceModels
	// Pools maps a pool name to its models; pools that never had a
	// learned instance are absent.
	Pools map[string]*PoolModels
}

// Pool returns the model view of a pool, nil when nothing is known. It is
// nil-safe.
func (m *Models) Pool(name string) *PoolModels {
	if m == nil {
		return nil
	}
	return m.Pools[name]
}

// Instance returns what was learned of a routable instance. It is
// nil-safe.
func (m *Models) Instance(id int64) (InstanceModels, bool) {
	if m == nil {
		return InstanceModels{}, false
	}
	in, ok := m.Instances[id]
	return in, ok
}

// ModelLearner reads every target's model list when it appears, then
// every Refresh, and publishes a Models snapshot. Set the fields before
// Run; zero fields take defaults.
type ModelLearner struct {
	// Targets returns the engines to learn; called every Tick from Run's
	// goroutine; it must not block.
	Targets func() []ModelTarget
	// Refresh is the interval between reads of a learned instance.
	Refresh time.Duration
	// Retry is the interval between reads of an instance not learned yet;
	// it doubles with each failure, up to Refresh, so an engine without
	// /v1/models is not asked every few seconds forever.
	Retry time.Duration
	// Tick is how often the target set is looked at, which bounds how
	// long a new instance waits for its first read.
	Tick time.Duration
	// Timeout bounds one read, including the wait for a slot.
	Timeout time.Duration
	// MaxConcurrent bounds the reads in flight; default DefaultMaxConcurrent.
	MaxConcurrent int
	// MaxBodyBytes bounds an answer; a larger one is an error.
	MaxBodyBytes int64
	// Client sends the requests of targets without Do.
	Client *http.Client
	// Log receives read failures and model changes on transitions only.
	Log *zap.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time

	mu         sync.Mutex // serialises writers of recs, remembered and snap
	recs       map[int64]*modelRec
	remembered map[string][]string // pool -> last non-empty Ready
	snap       atomic.Pointer[Models]
}

// modelRec is the learner's mutable record of one target.
type modelRec struct {
	InstanceModels
	inflight bool
	failures int // consecutive failed reads
}

// Snapshot returns the current models; never nil after Run started.
// Lock-free.
func (l *ModelLearner) Snapshot() *Models { return l.snap.Load() }

func (l *ModelLearner) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Run learns until ctx ends, then waits for the reads in flight. Call it
// once.
func (l *ModelLearner) Run(ctx context.Context) {
	n := l.MaxConcurrent
	if n <= 0 {
		n = DefaultMaxConcurrent
	}
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	l.mu.Lock()
	l.recs = make(map[int64]*modelRec)
	l.remembered = make(map[string][]string)
	l.publishLocked()
	l.mu.Unlock()
	ticker := time.NewTicker(orDefault(l.Tick, DefaultModelTick))
	defer ticker.Stop()
	for {
		l.dispatch(ctx, sem, &wg)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// dispatch syncs the records with the targets (a departed instance drops
// its ids) and starts the reads that are due.
func (l *ModelLearner) dispatch(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) {
	var targets []ModelTarget
	if l.Targets != nil {
		targets = l.Targets()
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	changed := l.syncLocked(targets)
	for _, t := range targets {
		r := l.recs[t.ID]
		if r.inflight || !l.dueLocked(r, now) {
			continue
		}
		r.inflight = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.learnOne(ctx, t, sem)
		}()
	}
	if changed {
		l.publishLocked()
	}
}

// syncLocked adds new targets and removes departed ones; it reports
// whether the published view must change.
func (l *ModelLearner) syncLocked(targets []ModelTarget) bool {
	changed := false
	live := make(map[int64]bool, len(targets))
	for _, t := range targets {
		live[t.ID] = true
		r, ok := l.recs[t.ID]
		switch {
		case !ok:
			l.recs[t.ID] = &modelRec{InstanceModels: InstanceModels{Pool: t.Pool}}
			changed = true
		case r.Pool != t.Pool:
			r.Pool, changed = t.Pool, true
		}
	}
	for id := range l.recs {
		if !live[id] {
			delete(l.recs, id)
			changed = true
		}
	}
	return changed
}

func (l *ModelLearner) dueLocked(r *modelRec, now time.Time) bool {
	if r.Fetched.IsZero() {
		return true
	}
	refresh := orDefault(l.Refresh, DefaultModelRefresh)
	if r.Learned {
		return now.Sub(r.Fetched) >= refresh
	}
	every := orDefault(l.Retry, DefaultModelRetry)
	for i := 1; i < r.failures && every < refresh; i++ {
		every *= 2
	}
	return now.Sub(r.Fetched) >= min(every, refresh)
}

// learnOne reads one target within the timeout and records the outcome.
func (l *ModelLearner) learnOne(ctx context.Context, t ModelTarget, sem chan struct{}) {
	rctx, cancel := context.WithTimeout(ctx, orDefault(l.Timeout, DefaultModelTimeout))
	defer cancel()
	var ids []string
	var err error
	select {
	case sem <- struct{}{}:
		ids, err = l.fetch(rctx, t)
		<-sem
	case <-rctx.Done():
		err = fmt.Errorf("enginestate: instance %d: no free slot to read /v1/models: %w", t.ID, rctx.Err())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.recs[t.ID]
	if !ok {
		return // left routing while being read
	}
	r.inflight = false
	if ctx.Err() != nil {
		return // shutting down: an aborted read says nothing of the engine
	}
	l.recordLocked(t.ID, r, ids, err)
	l.publishLocked()
}

// recordLocked stores a read's outcome; a failure keeps the last ids.
func (l *ModelLearner) recordLocked(id int64, r *modelRec, ids []string, err error) {
	prevErr, prevIDs, wasLearned := r.Err, r.IDs, r.Learned
	r.Fetched, r.Err = l.now(), err
	r.failures++
	if err == nil {
		r.IDs, r.Learned, r.failures = ids, true, 0
	}
	if l.Log == nil {
		return
	}
	switch {
	case err != nil && (prevErr == nil || prevErr.Error() != err.Error()):
		l.Log.Warn("reading the engine's model list failed", zap.Int64("instance", id), zap.Error(err))
	case err == nil && (!wasLearned || !slices.Equal(prevIDs, ids)):
		l.Log.Info("engine models learned", zap.Int64("instance", id), zap.String("pool", r.Pool), zap.Strings("models", ids))
	case err == nil && prevErr != nil:
		l.Log.Info("reading the engine's model list recovered", zap.Int64("instance", id))
	}
}

// fetch reads and parses one model list.
func (l *ModelLearner) fetch(ctx context.Context, t ModelTarget) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("enginestate: instance %d: bad models URL: %w", t.ID, redact(err))
	}
	req.Header.Set("Accept", "application/json")
	do := t.Do
	if do == nil {
		c := l.Client
		if c == nil {
			c = http.DefaultClient
		}
		do = c.Do
	}
	resp, err := do(req)
	if err != nil {
		return nil, fmt.Errorf("enginestate: instance %d: reading /v1/models: %w", t.ID, redact(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("enginestate: instance %d: %w: %d", t.ID, ErrModelsStatus, resp.StatusCode)
	}
	limit := l.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultModelMaxBodyBytes
	}
	ids, err := ParseModelList(resp.Body, limit)
	if err != nil {
		return nil, fmt.Errorf("enginestate: instance %d: %w", t.ID, err)
	}
	return ids, nil
}

// ParseModelList reads an OpenAI model list ({"object":"list","data":
// [{"id":...}]}) of at most limit bytes and returns its ids, sorted and
// without duplicates or empty ids.
func ParseModelList(r io.Reader, limit int64) ([]string, error) {
	body, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModelsBody, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrModelsBody, limit)
	}
	var list struct {
		Data *[]struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil || list.Data == nil {
		return nil, fmt.Errorf("%w: no data list", ErrModelsBody)
	}
	ids := make([]string, 0, len(*list.Data))
	for _, m := range *list.Data {
		if m.ID != "" {
			ids = append(ids, m.ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// publishLocked rebuilds and publishes the snapshot from the records.
func (l *ModelLearner) publishLocked() {
	m := &Models{Instances: make(map[int64]InstanceModels, len(l.recs)), Pools: map[string]*PoolModels{}}
	ready := map[string]map[string]bool{}
	pending := map[string]int{}
	for id, r := range l.recs {
		m.Instances[id] = r.InstanceModels
		if !r.Learned {
			pending[r.Pool]++
			continue
		}
		if ready[r.Pool] == nil {
			ready[r.Pool] = map[string]bool{}
		}
		for _, model := range r.IDs {
			ready[r.Pool][model] = true
		}
	}
	for pool, set := range ready {
		if ids := sortedKeys(set); len(ids) > 0 {
			l.remembered[pool] = ids
		}
	}
	for pool, known := range l.remembered {
		p := &PoolModels{Ready: sortedKeys(ready[pool]), Pending: pending[pool], ready: ready[pool]}
		if _, learned := ready[pool]; learned {
			known = p.Ready
		}
		p.Known, p.known = known, setOf(known)
		m.Pools[pool] = p
	}
	for pool, n := range pending {
		if m.Pools[pool] == nil {
			m.Pools[pool] = &PoolModels{Pending: n}
		}
	}
	l.snap.Store(m)
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func setOf(ids []string) map[string]bool {
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set
}
