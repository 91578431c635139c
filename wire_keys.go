package vastai

// Wiring of the client keys (package keys): one registry per
// reload-surviving state, so that a key's limits, reservations and spend
// hold across reloads, and one loop that polls storage for keys created
// or revoked through the admin API (here or on another gateway sharing
// the storage) and for the other gateways' spend, and writes this
// gateway's spend. Started by state.apply, stopped (after a last flush) by
// state.Destruct; a reload with the same storage and gateway id keeps
// both and only swaps the config keys and prices.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/keys"
)

// Defaults of the keys block.
const (
	defaultKeysPoll     = 2 * time.Second
	defaultKeysFlush    = 5 * time.Second
	maxKeysFlush        = 10 * time.Second
	defaultReservePrice = 5.0 // $ per million tokens
	defaultMaxTokens    = 1024
	keysStoragePrefix   = "vastai/keys"
	minKeysPollInterval = 100 * time.Millisecond
)

// keyPricing is what a token costs, by pool; swapped whole on a reload.
type keyPricing struct {
	pools     map[string]keys.TokenRate
	fallback  *keys.TokenRate // nil: charge instance time
	reserve   float64         // $ per token reserved for instance-time pools
	worst     keys.TokenRate  // the dearest rate of any pool, for a request whose pool is not known yet
	maxTokens int
}

// setWorst finds the dearest rate a request to any of pools may pay: a
// reservation made before the pool is known must hold wherever it goes.
func (p *keyPricing) setWorst(pools []string) {
	p.worst = keys.TokenRate{}
	for _, name := range pools {
		r, ok := p.rate(name)
		if !ok {
			r = keys.TokenRate{In: p.reserve, Out: p.reserve}
		}
		p.worst.In, p.worst.Out = max(p.worst.In, r.In), max(p.worst.Out, r.Out)
	}
}

// rate is the price per token of pool, ok false for instance time.
func (p *keyPricing) rate(pool string) (keys.TokenRate, bool) {
	if r, ok := p.pools[pool]; ok {
		return r, true
	}
	if p.fallback != nil {
		return *p.fallback, true
	}
	return keys.TokenRate{}, false
}

// keySettings is a config's keys, resolved.
type keySettings struct {
	keys        []keys.Key
	poll, flush time.Duration
	pricing     *keyPricing
	gateway     string
}

// keysRuntime is the state's registry and its loop.
type keysRuntime struct {
	reg         *keys.Registry
	pricing     atomic.Pointer[keyPricing]
	gateway     string
	poll, flush time.Duration
	cancel      context.CancelFunc
	done        chan struct{}
}

// applyKeysLocked installs a config's keys. The registry (with every
// key's limits, reservations and spend) is kept across reloads, and only
// replaced when the gateway id changes; the loop restarts when its
// intervals change. The caller holds s.mu.
func (s *state) applyKeysLocked(log *zap.Logger, ks keySettings, store caddyStorage) {
	if store == nil {
		return
	}
	rt := s.keyRT
	if rt != nil && (rt.gateway != ks.gateway || rt.poll != ks.poll || rt.flush != ks.flush) {
		s.stopKeysLocked()
		if rt.gateway == ks.gateway {
			rt = &keysRuntime{reg: rt.reg, gateway: rt.gateway}
		} else {
			rt = nil
		}
	}
	if rt == nil {
		rt = &keysRuntime{reg: keys.New(store, keysStoragePrefix, ks.gateway), gateway: ks.gateway}
	}
	rt.reg.SetStore(store)
	rt.pricing.Store(ks.pricing)
	rt.reg.SetConfigKeys(ks.keys)
	if rt.done == nil {
		rt.poll, rt.flush, rt.done = ks.poll, ks.flush, make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		rt.cancel = cancel
		klog := log.Named("keys")
		go func() {
			defer close(rt.done)
			rt.reg.Run(ctx, ks.poll, ks.flush, func(op string, err error) {
				klog.Warn("client keys: storage", zap.String("op", op), zap.Error(err))
			})
		}()
	}
	s.keyRT = rt
	s.keys.Store(rt)
}

// stopKeysLocked stops the loop, which flushes the spend a last time.
func (s *state) stopKeysLocked() {
	rt := s.keyRT
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
	s.keyRT = nil
	s.keys.Store(nil)
}

// keySettings resolves the keys block: each configured secret's
// placeholders, then its hash; the secret itself is dropped.
// pools names the app's pools, for the worst-case rate.
func (c *KeysConfig) settings(repl *caddy.Replacer, gateway string, pools []string) (keySettings, error) {
	ks := keySettings{poll: defaultKeysPoll, flush: defaultKeysFlush, gateway: gateway,
		pricing: &keyPricing{pools: map[string]keys.TokenRate{}, reserve: defaultReservePrice / 1e6, maxTokens: defaultMaxTokens}}
	defer ks.pricing.setWorst(pools)
	if c == nil {
		return ks, nil
	}
	if err := c.validate(); err != nil {
		return ks, err
	}
	if c.PollInterval > 0 {
		ks.poll = time.Duration(c.PollInterval)
	}
	if c.FlushInterval > 0 {
		ks.flush = time.Duration(c.FlushInterval)
	}
	p := ks.pricing
	if c.PricePerMTokIn > 0 || c.PricePerMTokOut > 0 {
		p.fallback = &keys.TokenRate{In: c.PricePerMTokIn / 1e6, Out: c.PricePerMTokOut / 1e6}
	}
	for pool, tp := range c.PoolPrices {
		if !slices.Contains(pools, pool) {
			return ks, fmt.Errorf("keys: pool_prices: %w %q (pools: %s)", ErrUnknownPool, pool, strings.Join(pools, ", "))
		}
		if tp != nil {
			p.pools[pool] = keys.TokenRate{In: tp.In / 1e6, Out: tp.Out / 1e6}
		}
	}
	if c.ReservePricePerMTok > 0 {
		p.reserve = c.ReservePricePerMTok / 1e6
	}
	if c.DefaultMaxTokens > 0 {
		p.maxTokens = c.DefaultMaxTokens
	}
	for _, name := range slices.Sorted(maps.Keys(c.Keys)) {
		k, err := c.Keys[name].key(name, repl)
		if err != nil {
			return ks, err
		}
		for _, p := range k.Pools {
			if !slices.Contains(pools, p) {
				return ks, fmt.Errorf("keys: key %s: pools: %w %q (pools: %s)", name, ErrUnknownPool, p, strings.Join(pools, ", "))
			}
		}
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
}

func (c *KeysConfig) validate() error {
	switch {
	case c.PollInterval < 0 || c.FlushInterval < 0:
		return errors.New("keys: poll_interval and flush_interval must not be negative")
	case c.PollInterval > 0 && time.Duration(c.PollInterval) < minKeysPollInterval:
		return fmt.Errorf("keys: poll_interval: %s is below the minimum of %s", time.Duration(c.PollInterval), minKeysPollInterval)
	case time.Duration(c.FlushInterval) > maxKeysFlush:
		return fmt.Errorf("keys: flush_interval: %s is above the maximum of %s", time.Duration(c.FlushInterval), maxKeysFlush)
	case c.PricePerMTokIn < 0 || c.PricePerMTokOut < 0 || c.ReservePricePerMTok < 0 || c.DefaultMaxTokens < 0:
		return errors.New("keys: prices and default_max_tokens must not be negative")
	}
	return nil
}

// key resolves one configured key.
func (c *ClientKey) key(name string, repl *caddy.Replacer) (keys.Key, error) {
	if c == nil {
		return keys.Key{}, fmt.Errorf("keys: key %s: a secret is required", name)
	}
	secret := strings.TrimSpace(repl.ReplaceAll(c.Secret, ""))
	if secret == "" {
		return keys.Key{}, fmt.Errorf("keys: key %s: secret is empty (an unset variable?)", name)
	}
	exp, err := keys.ParseExpires(c.Expires)
	if err != nil {
		return keys.Key{}, fmt.Errorf("keys: key %s: %w", name, err)
	}
	k := keys.Key{Name: name, Hash: keys.Hash(secret), Source: keys.SourceConfig, Limits: keys.Limits{
		Pools: c.Pools, Models: c.Models, RPM: c.RPM, TPM: c.TPM, MaxParallel: c.MaxParallel,
		Budget: c.Budget, Period: keys.Period(c.BudgetPeriod), Expires: exp,
	}}
	if err := k.Validate(); err != nil {
		return keys.Key{}, fmt.Errorf("keys: %w", err)
	}
	return k, nil
}

// keyRegistry returns the running registry, nil before the app started.
// Lock-free; safe on the request path.
func (s *state) keyRegistry() (*keys.Registry, *keyPricing) {
	rt := s.keys.Load()
	if rt == nil {
		return nil, nil
	}
	return rt.reg, rt.pricing.Load()
}

// keyMetrics are the per-key counters. They live in the state, so counts
// survive reloads; the request path finds its counters in sync.Maps. Key
// names label them, never secrets; refusals before a key is known count
// under key "".
type keyMetrics struct {
	once     sync.Once
	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	spend    *prometheus.CounterVec
	cache    sync.Map // keyMetricKey → *keyCounters
}

// keyCounters are one key's counters for one pool and status: the
// request path makes one map lookup per request.
type keyCounters struct {
	requests, tokensIn, tokensOut, spend prometheus.Counter
}

type keyMetricKey struct {
	key, pool string
	code      int
}

func (m *keyMetrics) init() {
	m.once.Do(func() {
		opts := func(name, help string) prometheus.CounterOpts {
			return prometheus.CounterOpts{Namespace: "caddy", Subsystem: "vastai", Name: name, Help: help}
		}
		m.requests = prometheus.NewCounterVec(opts("key_requests_total",
			"Requests by client key, pool and status code (401: no valid key; 403: pool or model not allowed; 429: a limit or the budget)."),
			[]string{"key", "pool", "code"})
		m.tokens = prometheus.NewCounterVec(opts("key_tokens_total",
			"Tokens by client key and direction (in: prompt, out: completion), from the responses' usage or estimated."),
			[]string{"key", "direction"})
		m.spend = prometheus.NewCounterVec(opts("key_spend_dollars_total", "Dollars charged to each client key by this gateway."),
			[]string{"key"})
	})
}

func (m *keyMetrics) counters(key, pool string, code int) *keyCounters {
	k := keyMetricKey{key, pool, code}
	if c, ok := m.cache.Load(k); ok {
		return c.(*keyCounters)
	}
	m.init()
	c := &keyCounters{
		requests: m.requests.WithLabelValues(key, pool, strconv.Itoa(code)),
		tokensIn: m.tokens.WithLabelValues(key, "in"), tokensOut: m.tokens.WithLabelValues(key, "out"),
		spend: m.spend.WithLabelValues(key),
	}
	v, _ := m.cache.LoadOrStore(k, c)
	return v.(*keyCounters)
}

// request counts one request's outcome.
func (m *keyMetrics) request(key, pool string, status int) {
	m.counters(key, pool, status).requests.Inc()
}

// finished counts a settled request, its tokens and its spend.
func (m *keyMetrics) finished(key, pool string, status int, o keys.Outcome) {
	c := m.counters(key, pool, status)
	c.requests.Inc()
	if o.TokensIn > 0 {
		c.tokensIn.Add(float64(o.TokensIn))
	}
	if o.TokensOut > 0 {
		c.tokensOut.Add(float64(o.TokensOut))
	}
	if o.Dollars > 0 {
		c.spend.Add(o.Dollars)
	}
}

// register adds the counters to a config's registry.
func (m *keyMetrics) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	m.init()
	for _, c := range []prometheus.Collector{m.requests, m.tokens, m.spend} {
		var are prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !errors.As(err, &are) {
			return err
		}
	}
	return nil
}
