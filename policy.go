package vastai

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/routing"
)

func init() {
	caddy.RegisterModule(LeastLoad{})
	caddy.RegisterModule(CacheAware{})
}

// Capacity weightings of the vastai selection policies.
const (
	CapacityThroughput = "throughput"
	CapacityGPUs       = "gpus"
	CapacityNone       = "none"
)

// kvSaturated is the KV-cache use at which an engine that also queues is
// skipped while others have room.
const kvSaturated = 0.95

// PolicyOptions are the options both vastai selection policies share.
//
// Whatever the policy, a request with the header X-Vastai-Instance: <id>
// goes to that instance while it is routable (the response header of the
// same name says which instance served a request, so a client can stick to
// it for KV-cache reuse); and saturated instances (engine queueing with
// its KV cache ≥ 95% full, or max_requests reached) are skipped while
// others have room.
type PolicyOptions struct {
	// A request header naming the session (for example X-Session-ID):
	// requests of a session go to the same instance (bounded-load
	// consistent hashing) until that instance's load exceeds
	// session_load_factor × the average, then to the session's next
	// choice. Empty: no sessions.
	SessionHeader string `json:"session_header,omitempty"`

	// The bound of a session's instance, as a multiple of the average
	// load. Default: 1.25; at least 1.
	SessionLoadFactor float64 `json:"session_load_factor,omitempty"`

	// Requests in flight to one instance at which it counts as saturated
	// (0: no limit). A pinned request is not sent beyond it either.
	MaxRequests int `json:"max_requests,omitempty"`

	// What an instance's load is divided by: "throughput" (default: what
	// the engine generates per second when its batch is full, measured
	// from its /metrics as per-request decode speed × batch size, so a
	// burst goes to the instances that finish it soonest; the GPU count
	// until an engine's speed is known), "gpus" (its GPU count, so a
	// 4-GPU instance takes four times the requests of a 1-GPU one) or
	// "none".
	Capacity string `json:"capacity,omitempty"`
}

// LeastLoad is a reverse_proxy selection policy that sends each request
// to the instance with the least load: the gateway's own in-flight count
// (counted in when the instance is chosen, out exactly once when the
// response ends, and kept across config reloads) plus the engine's queue
// while its scraped figures are fresh, divided by the instance's capacity.
// Ties go to one of the tied instances at random.
type LeastLoad struct {
	PolicyOptions
	sel selector
}

// CaddyModule returns the Caddy module information.
func (LeastLoad) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.vastai_least_load",
		New: func() caddy.Module { return new(LeastLoad) },
	}
}

// Provision finds the vastai app.
func (p *LeastLoad) Provision(ctx caddy.Context) error {
	return p.sel.provision(ctx, "vastai_least_load", p.PolicyOptions, nil)
}

// Select chooses an upstream from the pool.
func (p *LeastLoad) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return p.sel.pick(pool, r, nil)
}

// CacheAware is a reverse_proxy selection policy that sends a request to
// the instance most likely to hold its prompt's prefix in the KV cache,
// unless that would unbalance the fleet. Each pool has a bounded index of
// the prompt blocks recently sent to each instance (an instance leaving
// the pool drops its entries). A match of at least cache_threshold of the
// prompt's blocks wins while the fleet is balanced; otherwise, and
// whenever max − min load > balance_abs and max > balance_rel × min, the
// least loaded wins (keeping the longest match among the lightly loaded).
type CacheAware struct {
	PolicyOptions

	// The fraction of a prompt's blocks that must match for the match to
	// decide. Default: 0.3.
	CacheThreshold *float64 `json:"cache_threshold,omitempty"`

	// The imbalance test's absolute gap, in requests. Default: 8.
	BalanceAbs *float64 `json:"balance_abs,omitempty"`

	// The imbalance test's ratio. Default: 1.5.
	BalanceRel *float64 `json:"balance_rel,omitempty"`

	// Characters per hashed prompt block. Default: 64 (about 16 tokens).
	BlockChars int `json:"block_chars,omitempty"`

	// Blocks hashed per request (the first max_blocks × block_chars
	// characters of the prompt). Default: 256.
	MaxBlocks int `json:"max_blocks,omitempty"`

	// Block hashes kept per instance; memory is about 36 bytes each
	// (16384 per instance for 100 instances: about 56 MiB). Default:
	// 16384.
	EntriesPerInstance int `json:"entries_per_instance,omitempty"`

	// Bytes of a request body read to find its prompt; the body is passed
	// on intact. Default: 1MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	sel selector
}

// CaddyModule returns the Caddy module information.
func (CacheAware) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.vastai_cache_aware",
		New: func() caddy.Module { return new(CacheAware) },
	}
}

// Provision finds the vastai app and checks the options.
func (p *CacheAware) Provision(ctx caddy.Context) error {
	tune := func(dst *float64, v *float64, def float64, name string, lo float64) error {
		*dst = def
		if v != nil {
			if *v < lo || math.IsNaN(*v) {
				return fmt.Errorf("%s: %v is below %v", name, *v, lo)
			}
			*dst = *v
		}
		return nil
	}
	var c cacheSettings
	if err := errors.Join(
		tune(&c.threshold, p.CacheThreshold, routing.DefaultCacheThreshold, "cache_threshold", 0),
		tune(&c.abs, p.BalanceAbs, routing.DefaultBalanceAbs, "balance_abs", 0),
		tune(&c.rel, p.BalanceRel, routing.DefaultBalanceRel, "balance_rel", 1),
	); err != nil {
		return err
	}
	if c.threshold > 1 {
		return fmt.Errorf("cache_threshold: %v is above 1", c.threshold)
	}
	if p.BlockChars < 0 || p.MaxBlocks < 0 || p.EntriesPerInstance < 0 || p.MaxBody < 0 {
		return errors.New("block_chars, max_blocks, entries_per_instance and max_body must not be negative")
	}
	c.blockChars, c.maxBlocks, c.entries, c.maxBody = p.BlockChars, p.MaxBlocks, p.EntriesPerInstance, p.MaxBody
	return p.sel.provision(ctx, "vastai_cache_aware", p.PolicyOptions, &c)
}

// Select chooses an upstream from the pool.
func (p *CacheAware) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return p.sel.pick(pool, r, p.sel.cache)
}

// cacheSettings are a CacheAware policy's resolved options.
type cacheSettings struct {
	threshold, abs, rel            float64
	blockChars, maxBlocks, entries int
	maxBody                        int64
}

// selector is the part both policies share: the candidates from the
// snapshot, pinning, the decision and its accounting.
type selector struct {
	name   string
	opts   PolicyOptions
	cache  *cacheSettings
	policy routing.Policy
	st     *state
}

func (s *selector) provision(ctx caddy.Context, name string, opts PolicyOptions, cache *cacheSettings) error {
	switch opts.Capacity {
	case "":
		opts.Capacity = CapacityThroughput
	case CapacityThroughput, CapacityGPUs, CapacityNone:
	default:
		return fmt.Errorf("capacity: %q is not throughput, gpus or none", opts.Capacity)
	}
	switch {
	case opts.SessionLoadFactor == 0:
		opts.SessionLoadFactor = routing.DefaultSessionFactor
	case opts.SessionLoadFactor < 1 || math.IsNaN(opts.SessionLoadFactor):
		return fmt.Errorf("session_load_factor: %v is below 1", opts.SessionLoadFactor)
	}
	if opts.MaxRequests < 0 {
		return fmt.Errorf("max_requests: %d is negative", opts.MaxRequests)
	}
	app, err := lookupApp(ctx)
	if err != nil {
		return err
	}
	s.name, s.opts, s.cache, s.st = name, opts, cache, app.state
	s.policy = routing.Policy{Loads: &s.st.inflight.loads, SessionFactor: opts.SessionLoadFactor}
	if cache != nil {
		s.policy.CacheThreshold, s.policy.BalanceAbs, s.policy.BalanceRel = cache.threshold, cache.abs, cache.rel
	}
	return nil
}

// pick builds the candidates from the upstreams Caddy offers (skipping
// those its own health checks or limits rule out), decides, and counts the
// request in on the chosen instance before it is dispatched.
func (s *selector) pick(pool reverseproxy.UpstreamPool, r *http.Request, cache *cacheSettings) *reverseproxy.Upstream {
	if isHoldReject(pool) {
		return pool[0] // hold.go: the transport answers 503 for it
	}
	snap := s.st.watcher.Snapshot()
	cands := make([]routing.Candidate, 0, len(pool))
	ups := make([]*reverseproxy.Upstream, 0, len(pool))
	poolName := ""
	for _, u := range pool {
		if !u.Available() {
			continue
		}
		route, ok := snap.Route(u.Dial)
		if !ok {
			continue
		}
		poolName = route.Pool
		cands = append(cands, s.candidate(snap, route.ID))
		ups = append(ups, u)
	}
	if len(cands) == 0 {
		return nil
	}
	if s.opts.Capacity == CapacityThroughput {
		s.st.speeds.Weigh(cands)
	}
	in := routing.Pick{Cands: cands}
	if v := r.Header.Get(InstanceHeader); v != "" {
		in.Pinned, _ = strconv.ParseInt(v, 10, 64)
	}
	if s.opts.SessionHeader != "" {
		in.Session = r.Header.Get(s.opts.SessionHeader)
	}
	policy := s.policy
	if cache != nil {
		idx := s.st.prefixIndex(poolName, *cache, snap)
		policy.Index = idx
		in.Blocks = idx.Blocks(requestInfo(r, cache.maxBody).Text)
	}
	i, reason := policy.Choose(in)
	if i < 0 {
		return nil
	}
	s.st.inflight.reserve(r, cands[i].ID)
	s.st.routes.decided(poolName, s.name, reason)
	return ups[i]
}

// candidate is one instance's load figures: lock-free reads only.
func (s *selector) candidate(snap *fleet.Snapshot, id int64) routing.Candidate {
	c := routing.Candidate{ID: id, Capacity: 1}
	if s.opts.Capacity != CapacityNone {
		if m, ok := snap.Member(id); ok && m.Instance.NumGPUs > 1 {
			c.Capacity = float64(m.Instance.NumGPUs)
		}
	}
	if es, ok := s.st.engineState(id); ok {
		c.Waiting = int64(math.Round(es.Waiting))
		c.Saturated = es.Waiting > 0 && es.HasKVCacheUse() && es.KVCacheUse >= kvSaturated
	}
	if s.opts.MaxRequests > 0 && s.st.inflight.count(id) >= int64(s.opts.MaxRequests) {
		c.Saturated, c.Full = true, true
	}
	return c
}

// prefixIndexKey names one pool's index for one set of index settings.
type prefixIndexKey struct {
	pool                           string
	blockChars, maxBlocks, entries int
}

// prefixIndexEntry is an index and the snapshot generation it was last
// pruned at.
type prefixIndexEntry struct {
	idx *routing.PrefixIndex
	gen atomic.Uint64
}

// prefixIndex returns the pool's prefix index, which survives reloads
// with the state. When the fleet changed since the last prune, the
// instances that left the pool drop their entries (one request per
// snapshot generation does that).
func (s *state) prefixIndex(pool string, c cacheSettings, snap *fleet.Snapshot) *routing.PrefixIndex {
	key := prefixIndexKey{pool, c.blockChars, c.maxBlocks, c.entries}
	v, ok := s.prefixes.Load(key)
	if !ok {
		v, _ = s.prefixes.LoadOrStore(key, &prefixIndexEntry{idx: routing.NewPrefixIndex(c.blockChars, c.maxBlocks, c.entries)})
	}
	e := v.(*prefixIndexEntry)
	if old := e.gen.Load(); old != snap.Generation && e.gen.CompareAndSwap(old, snap.Generation) {
		e.idx.Retain(func(id int64) bool {
			m, ok := snap.Member(id)
			return ok && m.Pool == pool
		})
	}
	return e.idx
}

// Interface guards
var (
	_ caddy.Provisioner     = (*LeastLoad)(nil)
	_ reverseproxy.Selector = (*LeastLoad)(nil)
	_ caddy.Provisioner     = (*CacheAware)(nil)
	_ reverseproxy.Selector = (*CacheAware)(nil)
)
