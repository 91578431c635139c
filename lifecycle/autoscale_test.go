package lifecycle

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// asConfig is the harness config with pool "p" autoscaled (warm: the warm
// pool's size) and a fast scale retry.
func asConfig(h *harness, warm int, mod func(*Config)) Config {
	return h.config(func(c *Config) {
		p := testPool()
		p.Autoscale = AutoscaleSpec{Enabled: true, DrainTimeout: 5 * time.Second,
			Warm: WarmSpec{Stopped: warm, StartTimeout: 10 * time.Second}}
		c.Pools = map[string]PoolTemplate{"p": p}
		c.ScaleRetryInterval = 100 * time.Millisecond
		if mod != nil {
			mod(c)
		}
	})
}

// waitScale waits until pool "p"'s PoolScale satisfies cond.
func waitScale(t *testing.T, timeout time.Duration, m *Manager, what string, cond func(PoolScale) bool) PoolScale {
	t.Helper()
	var ps PoolScale
	waitFor(t, timeout, what, func() bool {
		ps, _ = m.PoolScale("p")
		return cond(ps)
	})
	return ps
}

// alive returns the simulator's instances of gateway "gw" not destroyed.
func (h *harness) alive() []int64 {
	var out []int64
	for _, in := range h.ours(true) {
		out = append(out, in.ID)
	}
	return out
}

func TestAutoscaleUpCreatesExactlyN(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 3} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			m := h.manager(asConfig(h, 0, nil))
			run(t, m)
			m.SetDesired("p", n)
			// Concurrent reconciliations and kicks must not create more.
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 3; j++ {
						m.Kick()
						_, _ = m.Reconcile(ctxT(t))
					}
				}()
			}
			wg.Wait()
			ps := waitScale(t, 20*time.Second, m, "the pool serving n", func(ps PoolScale) bool {
				return ps.Serving == n && ps.Provisioning == 0
			})
			for i := 0; i < 3; i++ {
				if _, err := m.Reconcile(ctxT(t)); err != nil {
					t.Fatal(err)
				}
			}
			if got := h.creates(); got != n {
				t.Errorf("%d creates, want %d", got, n)
			}
			if got := len(h.alive()); got != n {
				t.Errorf("%d instances alive, want %d", got, n)
			}
			if !ps.DesiredSet || ps.Desired != n || ps.Provisioning != 0 || ps.LastRefusal != "" {
				t.Errorf("PoolScale = %+v", ps)
			}
			for _, op := range m.Operations() {
				if op.Kind == KindProvision && op.Reason != TriggerAutoscale {
					t.Errorf("provisioning %s has reason %q, want %q", op.ID, op.Reason, TriggerAutoscale)
				}
			}
		})
	}
}

func TestAutoscaleDownDrainsAndDestroysOneVictimPerStep(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 0, nil))
	run(t, m)
	m.SetDesired("p", 2)
	waitScale(t, 20*time.Second, m, "two serving", func(ps PoolScale) bool { return ps.Serving == 2 })
	prices := map[int64]float64{}
	for _, r := range m.Instances() {
		prices[r.ID] = r.Price
	}
	for step, desired := range []int{1, 0} {
		m.SetDesired("p", desired)
		waitFor(t, 20*time.Second, "a victim destroyed", func() bool { return len(h.alive()) == desired })
		waitScale(t, 10*time.Second, m, "nothing leaving", func(ps PoolScale) bool {
			return ps.Serving == desired && ps.Leaving == 0
		})
		drained := h.fleet.drainedIDs()
		if len(drained) != step+1 {
			t.Fatalf("step %d: drained %v, want %d drains", step, drained, step+1)
		}
		if step == 0 {
			var other int64
			for id := range prices {
				if id != drained[0] {
					other = id
				}
			}
			if prices[drained[0]] < prices[other] {
				t.Errorf("victim %d ($%.4f) is not the most expensive (%d at $%.4f)", drained[0], prices[drained[0]], other, prices[other])
			}
		}
		if r := recordOf(m, drained[step]); r == nil || r.State != InstanceDestroyed {
			t.Errorf("victim record = %+v, want destroyed", r)
		}
	}
	if s := m.Stats(); s.ScaleDowns != 2 || s.Stops != 0 {
		t.Errorf("stats: scale_downs %d stops %d, want 2 and 0", s.ScaleDowns, s.Stops)
	}
	if h.creates() != 2 {
		t.Errorf("%d creates, want 2", h.creates())
	}
}

func TestAutoscaleRefusalsAreRecordedAndRetriedSlowly(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		mod  func(*PoolTemplate)
		want string
	}{
		{"max_instances", func(p *PoolTemplate) { p.MaxInstances = 1 }, "max_instances"},
		{"pool budget", func(p *PoolTemplate) { p.MaxSpendPerHour = 0.6 }, "max_spend_per_hour"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			const retry = 150 * time.Millisecond
			cfg := asConfig(h, 0, func(c *Config) {
				p := c.Pools["p"]
				tc.mod(&p)
				c.Pools["p"] = p
				c.ScaleRetryInterval = retry
			})
			m := h.manager(cfg)
			run(t, m)
			m.SetDesired("p", 3)
			ps := waitScale(t, 20*time.Second, m, "one serving and a refusal", func(ps PoolScale) bool {
				return ps.Serving == 1 && ps.LastRefusal != ""
			})
			if !strings.Contains(ps.LastRefusal, tc.want) || ps.LastRefusalAt.IsZero() {
				t.Errorf("LastRefusal %q at %v, want one naming %s", ps.LastRefusal, ps.LastRefusalAt, tc.want)
			}
			// Retried at ScaleRetryInterval, not in a tight loop: three more
			// reconciliations take at least two intervals.
			start, base := time.Now(), m.Stats().Reconciles
			waitFor(t, 20*time.Second, "three retries", func() bool { return m.Stats().Reconciles >= base+3 })
			if el := time.Since(start); el < 2*retry {
				t.Errorf("three retries within %s, interval %s: a tight loop", el, retry)
			}
			if h.creates() != 1 || len(h.alive()) != 1 {
				t.Errorf("%d creates, %d alive; want 1 and 1", h.creates(), len(h.alive()))
			}
		})
	}
}

func TestAutoscaleLeavesPoolAloneBeforeSetDesired(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	cfg := asConfig(h, 1, nil)
	a := h.manager(cfg)
	_, stopA := run(t, a)
	a.SetDesired("p", 2)
	waitScale(t, 20*time.Second, a, "two serving", func(ps PoolScale) bool { return ps.Serving == 2 })
	stopA()

	b := h.manager(cfg)
	run(t, b)
	for i := 0; i < 3; i++ {
		if _, err := b.Reconcile(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	ps, ok := b.PoolScale("p")
	if !ok || ps.DesiredSet || ps.Serving != 2 || ps.Leaving != 0 {
		t.Errorf("PoolScale after restart = %+v (ok %v), want 2 serving, desired unset", ps, ok)
	}
	if h.deletes() != 0 || h.creates() != 2 || len(h.fleet.drainedIDs()) != 0 {
		t.Errorf("%d deletes, %d creates, drained %v after restart", h.deletes(), h.creates(), h.fleet.drainedIDs())
	}
	if _, ok := b.PoolScale("nope"); ok {
		t.Error("PoolScale of an unknown pool is ok")
	}
}

func TestAutoscaleConfigValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		mod  func(*AutoscaleSpec, *PoolTemplate)
		want string
	}{
		{"min_instances", func(a *AutoscaleSpec, p *PoolTemplate) { p.MinInstances = 1 }, "min_instances"},
		{"drain", func(a *AutoscaleSpec, p *PoolTemplate) { a.DrainTimeout = -1 }, "autoscale.drain_timeout"},
		{"stopped", func(a *AutoscaleSpec, p *PoolTemplate) { a.Warm.Stopped = -1 }, "autoscale.warm.stopped"},
		{"start", func(a *AutoscaleSpec, p *PoolTemplate) { a.Warm.StartTimeout = -1 }, "autoscale.warm.start_timeout"},
		{"age", func(a *AutoscaleSpec, p *PoolTemplate) { a.Warm.MaxStoppedAge = -1 }, "autoscale.warm.max_stopped_age"},
		{"ok", func(a *AutoscaleSpec, p *PoolTemplate) {}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPool()
			p.Autoscale.Enabled = true
			tc.mod(&p.Autoscale, &p)
			err := Config{GatewayID: "gw", Pools: map[string]PoolTemplate{"p": p}}.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidConfig)):
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	// Defaults.
	p := testPool()
	p.Autoscale.Enabled = true
	d := Config{Pools: map[string]PoolTemplate{"p": p}}.withDefaults()
	a := d.Pools["p"].Autoscale
	if a.DrainTimeout != DefaultAutoscaleDrainTimeout || a.Warm.StartTimeout != DefaultWarmStartTimeout ||
		a.Warm.MaxStoppedAge != DefaultWarmMaxStoppedAge || d.ScaleRetryInterval != DefaultScaleRetryInterval {
		t.Errorf("defaults: %+v, retry %s", a, d.ScaleRetryInterval)
	}
}

// drainBlocked makes the fleet's drains wait until their deadline, as
// with a request still in flight.
func drainBlocked(ctx context.Context, id int64) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestAutoscaleDrainTimeoutGivesTheScaleDownUp(t *testing.T) {
	t.Parallel()
	for _, warm := range []int{0, 1} {
		name := map[int]string{0: "destroy", 1: "stop"}[warm]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			cfg := asConfig(h, warm, func(c *Config) {
				p := c.Pools["p"]
				p.Autoscale.DrainTimeout = 200 * time.Millisecond
				c.Pools["p"] = p
				c.ScaleRetryInterval = time.Hour // one decision only
			})
			m := h.manager(cfg)
			run(t, m)
			m.SetDesired("p", 1)
			waitScale(t, 20*time.Second, m, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
			id := h.alive()[0]
			h.fleet.mu.Lock()
			h.fleet.drainFn = drainBlocked
			h.fleet.mu.Unlock()
			m.SetDesired("p", 0)
			var failed Operation
			waitFor(t, 10*time.Second, "the scale-down given up", func() bool {
				for _, op := range m.Operations() {
					if op.InstanceID == id && op.State == StateFailed && strings.HasPrefix(op.Error, "drain_timeout") {
						failed = op
						return true
					}
				}
				return false
			})
			if !strings.Contains(failed.Error, "requests still in flight") {
				t.Errorf("error %q", failed.Error)
			}
			if r := recordOf(m, id); r == nil || r.State != InstanceActive {
				t.Errorf("record = %+v, want active", r)
			}
			h.fleet.mu.Lock()
			undrained := append([]int64(nil), h.fleet.undrained...)
			h.fleet.mu.Unlock()
			if len(undrained) == 0 || undrained[len(undrained)-1] != id {
				t.Errorf("undrained %v, want %d", undrained, id)
			}
			if _, excluded := h.fleet.exclusion(id); excluded {
				t.Error("the instance was excluded from routing")
			}
			if in := h.simInstance(id); in.Destroyed || in.ActualStatus != "running" {
				t.Errorf("instance %+v, want running", in)
			}
			if h.deletes() != 0 {
				t.Errorf("%d DELETEs", h.deletes())
			}
			ps, _ := m.PoolScale("p")
			if ps.Serving != 1 || ps.Leaving != 0 {
				t.Errorf("PoolScale = %+v", ps)
			}
		})
	}
}
