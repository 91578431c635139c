package vastsim

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metrics formats of EngineSpec.Metrics.
const (
	// MetricsDefault is what vastsim always served: vLLM names with a
	// model_name label, both kv_cache_usage_perc and the deprecated
	// gpu_cache_usage_perc (as vLLM 0.9-0.10 did).
	MetricsDefault = ""
	// MetricsVLLM is current vLLM V1: an engine="0" label as well, only
	// kv_cache_usage_perc, and the prefix cache counters.
	MetricsVLLM = "vllm"
	// MetricsVLLMLegacy emits gpu_cache_usage_perc only (older vLLM).
	MetricsVLLMLegacy = "vllm-legacy"
	// MetricsSGLang is SGLang with --enable-metrics (tp_rank/pp_rank labels).
	MetricsSGLang = "sglang"
	// MetricsTGI is Hugging Face TGI's queue and batch gauges.
	MetricsTGI = "tgi"
	// MetricsNone answers /metrics with 404, as SGLang without
	// --enable-metrics or Ollama.
	MetricsNone = "none"
)

// Defaults of EngineSpec's prefix cache.
const (
	DefaultPrefixBlockChars  = 64
	DefaultPrefixCacheBlocks = 4096
)

// ErrBadEngineSpec is wrapped by SetEngine and Launch for invalid specs.
var ErrBadEngineSpec = errors.New("vastsim: invalid engine spec")

// EngineSpec is how an instance's simulated engine behaves under load. The
// zero value is vastsim's original engine: unlimited concurrency, tokens
// every Options.TokenInterval, no prefill time.
type EngineSpec struct {
	// Slots is the number of requests generated at once (the batch);
	// requests beyond it wait in FIFO order. 0 means unlimited.
	Slots int
	// TokensPerSecond is each running request's decode speed; 0 uses
	// Options.TokenInterval. Different values make a heterogeneous fleet.
	TokensPerSecond float64
	// PrefillPerBlock is the time to first token added per prompt block
	// not found in the prefix cache; 0 makes prefill instant.
	PrefillPerBlock time.Duration
	// PrefixBlockChars is the prefix cache's block size in characters of
	// the flattened prompt; default DefaultPrefixBlockChars.
	PrefixBlockChars int
	// PrefixCacheBlocks caps the prefix cache (an LRU of block hashes);
	// default DefaultPrefixCacheBlocks.
	PrefixCacheBlocks int
	// KVBlocks is the KV cache's capacity in blocks: a running request
	// holds its prompt's blocks plus one per 16 output tokens, and KV use
	// is held/KVBlocks. 0 keeps the original figure, 5% per running
	// request.
	KVBlocks int
	// Metrics selects the /metrics format (MetricsDefault, MetricsVLLM,
	// MetricsVLLMLegacy, MetricsSGLang, MetricsTGI, MetricsNone).
	Metrics string
}

// validate names the first bad field.
func (sp EngineSpec) validate() error {
	switch {
	case sp.Slots < 0:
		return fmt.Errorf("%w: Slots %d is negative", ErrBadEngineSpec, sp.Slots)
	case sp.TokensPerSecond < 0 || math.IsNaN(sp.TokensPerSecond) || math.IsInf(sp.TokensPerSecond, 0):
		return fmt.Errorf("%w: TokensPerSecond %v must be a finite number >= 0", ErrBadEngineSpec, sp.TokensPerSecond)
	case sp.PrefillPerBlock < 0:
		return fmt.Errorf("%w: PrefillPerBlock %v is negative", ErrBadEngineSpec, sp.PrefillPerBlock)
	case sp.PrefixBlockChars < 0:
		return fmt.Errorf("%w: PrefixBlockChars %d is negative", ErrBadEngineSpec, sp.PrefixBlockChars)
	case sp.PrefixCacheBlocks < 0:
		return fmt.Errorf("%w: PrefixCacheBlocks %d is negative", ErrBadEngineSpec, sp.PrefixCacheBlocks)
	case sp.KVBlocks < 0:
		return fmt.Errorf("%w: KVBlocks %d is negative", ErrBadEngineSpec, sp.KVBlocks)
	}
	switch sp.Metrics {
	case MetricsDefault, MetricsVLLM, MetricsVLLMLegacy, MetricsSGLang, MetricsTGI, MetricsNone:
		return nil
	}
	return fmt.Errorf("%w: Metrics %q is not a known format", ErrBadEngineSpec, sp.Metrics)
}

func (sp EngineSpec) blockChars() int {
	if sp.PrefixBlockChars > 0 {
		return sp.PrefixBlockChars
	}
	return DefaultPrefixBlockChars
}

func (sp EngineSpec) cacheCap() int {
	if sp.PrefixCacheBlocks > 0 {
		return sp.PrefixCacheBlocks
	}
	return DefaultPrefixCacheBlocks
}

// tokenInterval is the pause between a running request's tokens.
func (sp EngineSpec) tokenInterval(def time.Duration) time.Duration {
	if sp.TokensPerSecond > 0 {
		return time.Duration(float64(time.Second) / sp.TokensPerSecond)
	}
	return def
}

// EngineLoad is the true state of an instance's engine, the figures its
// /metrics page reports.
type EngineLoad struct {
	// Waiting requests queued for a slot; Running requests in the batch.
	Waiting, Running int
	// KVCacheUse is the fraction of the KV cache in use (0-1).
	KVCacheUse float64
	// CachedBlocks is the prefix cache's size in blocks.
	CachedBlocks int
	// PrefixQueried and PrefixHit count prompt blocks looked up in the
	// prefix cache and found there.
	PrefixQueried, PrefixHit int64
}

// SetEngine changes an instance's engine behaviour; a running engine
// applies it to requests admitted from now on (more slots admit waiters at
// once; a smaller cache cap evicts). It survives engine restarts.
func (s *Sim) SetEngine(id int64, spec EngineSpec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil {
		return fmt.Errorf("vastsim: instance %d: %w", id, errNoInstance)
	}
	in.engSpec = spec
	if in.eng != nil {
		in.eng.q.setSpec(spec)
	}
	return nil
}

var errNoInstance = errors.New("no such instance")

// EngineLoad returns the true load of the instance's running engine; false
// if it has none.
func (s *Sim) EngineLoad(id int64) (EngineLoad, bool) {
	s.mu.Lock()
	in := s.instances[id]
	var q *engineQueue
	if in != nil && in.eng != nil {
		q = in.eng.q
	}
	s.mu.Unlock()
	if q == nil {
		return EngineLoad{}, false
	}
	return q.load(), true
}

// engineQueue is one engine incarnation's batch, FIFO wait queue, KV
// accounting and prefix cache. It has its own lock so that requests do not
// contend on s.mu.
type engineQueue struct {
	mu      sync.Mutex
	spec    EngineSpec
	running int
	held    int       // KV blocks held by running requests
	waiters list.List // of *waiter, oldest first
	cache   prefixLRU
	queried int64
	hits    int64
	// gens are the SGLang-mode generations by id, for /abort_request.
	gens map[string]context.CancelCauseFunc
}

// waiter is a request waiting for a slot; ready closes on admission.
type waiter struct {
	ready  chan struct{}
	blocks int
}

func newEngineQueue(spec EngineSpec) *engineQueue {
	q := &engineQueue{spec: spec, gens: map[string]context.CancelCauseFunc{}}
	q.cache.init()
	return q
}

func (q *engineQueue) setSpec(spec EngineSpec) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.spec = spec
	q.cache.trim(spec.cacheCap())
	q.admitLocked()
}

func (q *engineQueue) hasRoomLocked() bool {
	return q.spec.Slots <= 0 || q.running < q.spec.Slots
}

// admitLocked moves waiters into free slots in FIFO order.
func (q *engineQueue) admitLocked() {
	for q.waiters.Len() > 0 && q.hasRoomLocked() {
		w := q.waiters.Remove(q.waiters.Front()).(*waiter)
		q.running++
		q.held += w.blocks
		close(w.ready)
	}
}

// enqueue registers a request holding blocks of KV cache once running. It
// never blocks; wait then blocks until the request has a slot.
func (q *engineQueue) enqueue(blocks int) (w *waiter, e *list.Element) {
	q.mu.Lock()
	defer q.mu.Unlock()
	w = &waiter{ready: make(chan struct{}), blocks: blocks}
	if q.waiters.Len() == 0 && q.hasRoomLocked() {
		q.running++
		q.held += blocks
		close(w.ready)
		return w, nil
	}
	return w, q.waiters.PushBack(w)
}

// wait blocks until w runs (true) or ctx ends or the engine closes (false,
// with w out of the queue and nothing to release).
func (q *engineQueue) wait(ctx context.Context, closed <-chan struct{}, w *waiter, e *list.Element) bool {
	select {
	case <-w.ready:
		return true
	case <-ctx.Done():
	case <-closed:
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-w.ready: // admitted while we gave up: hand the slot on
		q.releaseLocked(w.blocks)
	default:
		q.waiters.Remove(e)
	}
	return false
}

// release frees a running request's slot and KV blocks.
func (q *engineQueue) release(blocks int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseLocked(blocks)
}

func (q *engineQueue) releaseLocked(blocks int) {
	q.running--
	q.held -= blocks
	q.admitLocked()
}

// register makes a generation abortable by its id until unregister.
func (q *engineQueue) register(id string, cancel context.CancelCauseFunc) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.gens[id] = cancel
}

func (q *engineQueue) unregister(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.gens, id)
}

// abort ends the generation id, or with all every one, waiting or
// running; the generation then frees its slot itself. It returns how many
// it signalled: an unknown id is a no-op, as in SGLang.
func (q *engineQueue) abort(id string, all bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !all {
		cancel, ok := q.gens[id]
		if ok {
			cancel(errAborted)
			return 1
		}
		return 0
	}
	for _, cancel := range q.gens {
		cancel(errAborted)
	}
	return len(q.gens)
}

// prefill looks a prompt's full blocks up in the prefix cache and returns
// how many leading blocks were cached and the prefill time of the total
// blocks not cached.
func (q *engineQueue) prefill(full []uint64, total int) (cached int, d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	cached = q.cache.match(full)
	q.queried += int64(total)
	q.hits += int64(cached)
	return cached, time.Duration(total-cached) * q.spec.PrefillPerBlock
}

// remember records a prefilled prompt's blocks in the prefix cache.
func (q *engineQueue) remember(blocks []uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cache.insert(blocks, q.spec.cacheCap())
}

func (q *engineQueue) load() EngineLoad {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := EngineLoad{
		Waiting: q.waiters.Len(), Running: q.running, CachedBlocks: q.cache.ll.Len(),
		PrefixQueried: q.queried, PrefixHit: q.hits,
	}
	if q.spec.KVBlocks > 0 {
		l.KVCacheUse = min(1, float64(q.held)/float64(q.spec.KVBlocks))
	} else {
		l.KVCacheUse = min(1, float64(q.running)*0.05)
	}
	return l
}

func (q *engineQueue) metricsFormat() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.spec.Metrics
}

// kvBlocks is the KV cache a request holds while running: its prompt
// blocks plus one block per 16 output tokens (vLLM's block size).
func kvBlocks(promptBlocks, outTokens int) int {
	return promptBlocks + (outTokens+15)/16
}

// prefixBlocks hashes the full blocks of text, size characters each, each
// hash chained to the previous one so that a block matches only after the
// same prefix; total counts the trailing partial block too, which, as in
// vLLM, is always prefilled and never cached.
func prefixBlocks(text string, size int) (full []uint64, total int) {
	total = (len(text) + size - 1) / size
	full = make([]uint64, 0, len(text)/size)
	var prev [8]byte
	for i := 0; i+size <= len(text); i += size {
		h := fnv.New64a()
		_, _ = h.Write(prev[:])
		_, _ = h.Write([]byte(text[i : i+size]))
		v := h.Sum64()
		binary.LittleEndian.PutUint64(prev[:], v)
		full = append(full, v)
	}
	return full, total
}

// prefixLRU is a bounded set of block hashes, most recently used first.
type prefixLRU struct {
	ll  list.List // of uint64
	idx map[uint64]*list.Element
}

func (c *prefixLRU) init() { c.idx = make(map[uint64]*list.Element) }

// match counts the leading blocks present.
func (c *prefixLRU) match(blocks []uint64) int {
	for i, b := range blocks {
		if _, ok := c.idx[b]; !ok {
			return i
		}
	}
	return len(blocks)
}

// insert adds or refreshes blocks, then evicts down to limit.
func (c *prefixLRU) insert(blocks []uint64, limit int) {
	for _, b := range blocks {
		if e, ok := c.idx[b]; ok {
			c.ll.MoveToFront(e)
		} else {
			c.idx[b] = c.ll.PushFront(b)
		}
	}
	c.trim(limit)
}

func (c *prefixLRU) trim(limit int) {
	for c.ll.Len() > limit {
		e := c.ll.Back()
		delete(c.idx, e.Value.(uint64))
		c.ll.Remove(e)
	}
}

// renderMetrics writes l in format for model; false for MetricsNone.
func renderMetrics(format, model string, l EngineLoad, st EngineStats) (string, bool) {
	var b strings.Builder
	metric := func(name, typ, help, labels string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s%s %s\n", name, help, name, typ, name, labels,
			strconv.FormatFloat(v, 'f', -1, 64))
	}
	hitRate := 0.0
	if l.PrefixQueried > 0 {
		hitRate = float64(l.PrefixHit) / float64(l.PrefixQueried)
	}
	switch format {
	case MetricsNone:
		return "", false
	case MetricsSGLang:
		lbl := fmt.Sprintf(`{engine_type="unified",model_name=%q,pp_rank="0",tp_rank="0"}`, model)
		metric("sglang:num_running_reqs", "gauge", "The number of running requests.", lbl, float64(l.Running))
		metric("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", lbl, float64(l.Waiting))
		metric("sglang:token_usage", "gauge", "The token usage.", lbl, l.KVCacheUse)
		metric("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", lbl, hitRate)
		metric("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", lbl, float64(st.PromptTokens))
		metric("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.", lbl, float64(st.GenerationTokens))
	case MetricsTGI:
		fmt.Fprintf(&b, "# TYPE tgi_queue_size gauge\ntgi_queue_size %d\n", l.Waiting)
		fmt.Fprintf(&b, "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size %d\n", l.Running)
		fmt.Fprintf(&b, "# TYPE tgi_request_count counter\ntgi_request_count %d\n", st.Completions)
	default:
		lbl := fmt.Sprintf(`{model_name=%q}`, model)
		if format == MetricsVLLM {
			lbl = fmt.Sprintf(`{engine="0",model_name=%q}`, model)
		}
		metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", lbl, float64(l.Running))
		metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", lbl, float64(l.Waiting))
		if format != MetricsVLLMLegacy {
			metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", lbl, l.KVCacheUse)
		}
		if format != MetricsVLLM {
			metric("vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", lbl, l.KVCacheUse)
		}
		metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", lbl, float64(st.PromptTokens))
		metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", lbl, float64(st.GenerationTokens))
		metric("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in blocks.", lbl, float64(l.PrefixQueried))
		metric("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in blocks.", lbl, float64(l.PrefixHit))
	}
	return b.String(), true
}
