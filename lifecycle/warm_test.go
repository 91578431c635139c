package lifecycle

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// listedRow returns the fleet's latest row of id, or nil.
func (f *simFleet) listedRow(id int64) *vastclient.Instance {
	rows, _, _ := f.Instances()
	for i := range rows {
		if rows[i].ID == id {
			return &rows[i]
		}
	}
	return nil
}

func (f *simFleet) undrainedIDs() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.undrained...)
}

// opsOf returns the operations of kind on instance id, newest first.
func opsOf(m *Manager, kind string, id int64) []Operation {
	var out []Operation
	for _, op := range m.Operations() {
		if op.Kind == kind && op.InstanceID == id {
			out = append(out, op)
		}
	}
	return out
}

func waitRecord(t *testing.T, timeout time.Duration, m *Manager, id int64, state string) InstanceRecord {
	t.Helper()
	var r *InstanceRecord
	waitFor(t, timeout, "instance "+state, func() bool {
		r = recordOf(m, id)
		return r != nil && r.State == state
	})
	return *r
}

func TestWarmStopThenStartTheSameInstance(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 1, nil))
	run(t, m)
	m.SetDesired("p", 1)
	waitScale(t, 20*time.Second, m, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	id := h.alive()[0]

	m.SetDesired("p", 0)
	rec := waitRecord(t, 20*time.Second, m, id, InstanceStopped)
	if rec.StoppedAt.IsZero() || rec.StoppedRate <= 0 {
		t.Errorf("stopped record %+v: want StoppedAt and a storage rate", rec)
	}
	if in := h.simInstance(id); in.Destroyed || in.ActualStatus != "stopped" {
		t.Errorf("simulator: %+v, want stopped", in)
	}
	waitFor(t, 5*time.Second, "the listing showing it stopped", func() bool {
		r := h.fleet.listedRow(id)
		return r != nil && r.ActualStatus == "stopped"
	})
	row := h.fleet.listedRow(id)
	if rate := ledger.Rate(row); rate != row.StorageTotalCost || rate >= row.DPHTotal {
		t.Errorf("stopped instance bills $%.4f/h (storage %.4f, dph_total %.4f): want storage only", rate, row.StorageTotalCost, row.DPHTotal)
	}
	ps := waitScale(t, 5*time.Second, m, "one stopped", func(ps PoolScale) bool { return ps.Stopped == 1 && ps.Leaving == 0 })
	if ps.Serving != 0 || ps.StoppedRate <= 0 {
		t.Errorf("PoolScale = %+v", ps)
	}
	if stop := opsOf(m, KindStop, id); len(stop) != 1 || waitOp(t, 10*time.Second, m, stop[0].ID).State != StateSucceeded {
		t.Errorf("stop operations %+v", stop)
	}

	m.SetDesired("p", 1)
	rec = waitRecord(t, 20*time.Second, m, id, InstanceActive)
	if rec.ReadyAt.IsZero() || rec.StartFailures != 0 || !rec.StoppedAt.IsZero() {
		t.Errorf("started record %+v", rec)
	}
	if start := opsOf(m, KindStart, id); len(start) != 1 || waitOp(t, 10*time.Second, m, start[0].ID).State != StateSucceeded {
		t.Errorf("start operations %+v", start)
	}
	if u := h.fleet.undrainedIDs(); len(u) == 0 || u[len(u)-1] != id {
		t.Errorf("undrained %v, want %d", u, id)
	}
	if h.creates() != 1 || h.deletes() != 0 {
		t.Errorf("%d creates, %d deletes; want 1 and 0", h.creates(), h.deletes())
	}
	s := m.Stats()
	if s.Stops != 1 || s.ScaleDowns != 1 || s.WarmStarts != 1 || s.WarmStartFailures != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestWarmStartOnARentedMachine: both warm instances are on a machine whose
// GPU someone else rented. Each start waits in "scheduling", is stopped
// again after start_timeout, the next one is tried, then a create (on
// another machine) happens. Once eligible again each fails a second time
// and is destroyed with verification.
func TestWarmStartOnARentedMachine(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 2, func(c *Config) {
		p := c.Pools["p"]
		p.Autoscale.Warm.StartTimeout = 700 * time.Millisecond
		c.Pools["p"] = p
	}))
	run(t, m)
	m.SetDesired("p", 2)
	waitScale(t, 20*time.Second, m, "two serving", func(ps PoolScale) bool { return ps.Serving == 2 })
	warm := h.alive()
	for _, id := range warm {
		if mid := h.simInstance(id).MachineID; mid != 41001 {
			t.Fatalf("instance %d on machine %d; the test expects both on 41001", id, mid)
		}
	}
	m.SetDesired("p", 0)
	waitScale(t, 20*time.Second, m, "two stopped", func(ps PoolScale) bool { return ps.Stopped == 2 && ps.Leaving == 0 })
	h.sim.RentMachine(41001)

	m.SetDesired("p", 1)
	ps := waitScale(t, 30*time.Second, m, "a created instance serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	for _, id := range warm {
		r := recordOf(m, id)
		if r == nil || r.State != InstanceStopped || r.StartFailures != 1 {
			t.Errorf("warm record %+v: want stopped after one failed start", r)
		}
		starts := opsOf(m, KindStart, id)
		if len(starts) != 1 || starts[0].State != StateFailed ||
			!strings.Contains(starts[0].Error, "start_timeout: still scheduling") ||
			!strings.Contains(starts[0].Error, "rented by someone else") {
			t.Errorf("start operations of %d: %+v", id, starts)
		}
	}
	if h.creates() != 3 {
		t.Errorf("%d creates, want 3 (two, then one when no warm instance could start)", h.creates())
	}
	if ps.Stopped != 2 {
		t.Errorf("PoolScale = %+v", ps)
	}

	// Eligible again after 4×start_timeout: each fails a second time and is
	// destroyed; no offer is left for a create.
	m.SetDesired("p", 2)
	for _, id := range warm {
		waitRecord(t, 30*time.Second, m, id, InstanceDestroyed)
		if in := h.simInstance(id); !in.Destroyed {
			t.Errorf("instance %d not destroyed on the simulator", id)
		}
	}
	ps = waitScale(t, 10*time.Second, m, "a refusal", func(ps PoolScale) bool { return ps.LastRefusal != "" })
	if ps.Serving != 1 || ps.Stopped != 0 || !strings.Contains(ps.LastRefusal, ErrNoOffers.Error()) {
		t.Errorf("PoolScale = %+v", ps)
	}
	if s := m.Stats(); s.WarmStartFailures != 4 || s.WarmStarts != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestWarmMaxStoppedAgeDestroys(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 1, func(c *Config) {
		p := c.Pools["p"]
		p.Autoscale.Warm.MaxStoppedAge = 300 * time.Millisecond
		c.Pools["p"] = p
	}))
	run(t, m)
	m.SetDesired("p", 1)
	waitScale(t, 20*time.Second, m, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	id := h.alive()[0]
	m.SetDesired("p", 0)
	rec := waitRecord(t, 20*time.Second, m, id, InstanceStopped)
	waitFor(t, 20*time.Second, "the stopped instance destroyed", func() bool {
		_, _ = m.Reconcile(ctxT(t))
		r := recordOf(m, id)
		return r != nil && r.State == InstanceDestroyed
	})
	r := recordOf(m, id)
	if r.DestroyReason != "autoscale: max_stopped_age" {
		t.Errorf("destroy reason %q", r.DestroyReason)
	}
	if time.Since(rec.StoppedAt) < 300*time.Millisecond {
		t.Error("destroyed before max_stopped_age")
	}
	if !h.simInstance(id).Destroyed {
		t.Error("not destroyed on the simulator")
	}
}

func TestWarmStopRefusedDestroysInstead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 1, nil))
	run(t, m)
	m.SetDesired("p", 1)
	waitScale(t, 20*time.Second, m, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	id := h.alive()[0]
	h.sim.SetFaults(vastsim.Faults{Status: 400, Routes: []string{"PUT /api/v0/instances/{id}/"},
		Body: `{"success": false, "error": "missing_billing", "msg": "Missing billing information."}`})
	m.SetDesired("p", 0)
	waitRecord(t, 20*time.Second, m, id, InstanceDestroyed)
	stop := opsOf(m, KindStop, id)
	if len(stop) == 1 {
		stop[0] = waitOp(t, 10*time.Second, m, stop[0].ID)
	}
	if len(stop) != 1 || stop[0].State != StateFailed || !strings.Contains(stop[0].Error, "stop refused") ||
		!strings.Contains(stop[0].Error, "missing_billing") {
		t.Errorf("stop operations %+v", stop)
	}
	if d := opsOf(m, KindDestroy, id); len(d) != 1 || waitOp(t, 10*time.Second, m, d[0].ID).State != StateSucceeded || d[0].Parent != stop[0].ID {
		t.Errorf("destroy operations %+v", d)
	}
	if !h.simInstance(id).Destroyed {
		t.Error("not destroyed on the simulator")
	}
}

// TestWarmCrashResumes kills the worker of a stop or a start at each step;
// a second Manager over the same Store finishes it: no instance leaked or
// duplicated, the pool converges.
func TestWarmCrashResumes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		step        string
		from, to    int
		wantState   string
		wantStopped bool
	}{
		{"stop-draining", 1, 0, InstanceStopped, true},
		{"before-stop", 1, 0, InstanceStopped, true},
		{"after-stop", 1, 0, InstanceStopped, true},
		{"before-start", 0, 1, InstanceActive, false},
		{"after-start", 0, 1, InstanceActive, false},
	}
	for _, tc := range cases {
		t.Run(tc.step, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			cfg := asConfig(h, 1, func(c *Config) { c.LeaseTTL = 600 * time.Millisecond })
			a := h.manager(cfg)
			cancelA, stopA := run(t, a)
			a.SetDesired("p", 1)
			waitScale(t, 20*time.Second, a, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
			id := h.alive()[0]
			if tc.from == 0 {
				a.SetDesired("p", 0)
				waitRecord(t, 20*time.Second, a, id, InstanceStopped)
			}
			var fired atomic.Bool
			a.hook = func(op *Operation, s string) error {
				if s != tc.step || fired.Swap(true) {
					return nil
				}
				cancelA()
				return errCrash
			}
			a.SetDesired("p", tc.to)
			waitFor(t, 20*time.Second, "the crash", fired.Load)
			stopA()

			b := h.manager(cfg)
			run(t, b)
			b.SetDesired("p", tc.to)
			waitRecord(t, 30*time.Second, b, id, tc.wantState)
			waitScale(t, 10*time.Second, b, "converged", func(ps PoolScale) bool {
				return ps.Serving == tc.to && ps.Leaving == 0 && ps.Starting == 0
			})
			if in := h.simInstance(id); in.Destroyed || (in.ActualStatus == "stopped") != tc.wantStopped {
				t.Errorf("simulator: %+v", in)
			}
			if h.creates() != 1 || h.deletes() != 0 || len(h.alive()) != 1 {
				t.Errorf("%d creates, %d deletes, alive %v; want 1, 0, [%d]", h.creates(), h.deletes(), h.alive(), id)
			}
			kind := KindStop
			if tc.to == 1 {
				kind = KindStart
			}
			ops := opsOf(b, kind, id)
			if len(ops) == 1 {
				ops[0] = waitOp(t, 10*time.Second, b, ops[0].ID)
			}
			if len(ops) != 1 || ops[0].State != StateSucceeded || ops[0].Owner != b.Owner() {
				t.Errorf("%s operations %+v", kind, ops)
			}
		})
	}
}

// TestWarmStoppedOrphanAdoptedStopped: the records are lost while an
// instance is stopped; reconciliation adopts it as a warm instance (not
// refused by max_instances, not destroyed as dead) and a scale-up starts
// it instead of creating.
func TestWarmStoppedOrphanAdoptedStopped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	cfg := asConfig(h, 1, func(c *Config) {
		p := c.Pools["p"]
		p.MaxInstances = 1
		c.Pools["p"] = p
	})
	a := h.manager(cfg)
	_, stopA := run(t, a)
	a.SetDesired("p", 1)
	waitScale(t, 20*time.Second, a, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	id := h.alive()[0]
	a.SetDesired("p", 0)
	waitRecord(t, 20*time.Second, a, id, InstanceStopped)
	stopA()

	h.store = NewMemoryStore() // the records are lost
	b := h.manager(cfg)
	rep, err := b.Reconcile(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.OrphansAdopted) != 1 || rep.OrphansAdopted[0] != id {
		t.Fatalf("report %+v: want %d adopted", rep, id)
	}
	if r := recordOf(b, id); r == nil || r.State != InstanceStopped || r.StoppedAt.IsZero() || r.Price <= 0 {
		t.Fatalf("adopted record %+v, want stopped with its price", r)
	}
	run(t, b)
	b.SetDesired("p", 1)
	waitRecord(t, 20*time.Second, b, id, InstanceActive)
	if h.creates() != 1 || h.deletes() != 0 {
		t.Errorf("%d creates, %d deletes; want 1 and 0", h.creates(), h.deletes())
	}
}

// TestWarmStartCountsAtFullPrice: a start waiting in "scheduling" bills
// storage only, but the budget counts it at its full price, so a create
// beside it is refused while the two would not fit.
func TestWarmStartCountsAtFullPrice(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(asConfig(h, 1, func(c *Config) {
		p := c.Pools["p"]
		p.MaxSpendPerHour = 0.6 // one instance fits, two do not
		c.Pools["p"] = p
	}))
	run(t, m)
	m.SetDesired("p", 1)
	waitScale(t, 20*time.Second, m, "one serving", func(ps PoolScale) bool { return ps.Serving == 1 })
	id := h.alive()[0]
	m.SetDesired("p", 0)
	waitRecord(t, 20*time.Second, m, id, InstanceStopped)
	h.sim.RentMachine(h.simInstance(id).MachineID)

	m.SetDesired("p", 2)
	waitFor(t, 10*time.Second, "the start scheduling", func() bool {
		r := h.fleet.listedRow(id)
		return r != nil && r.ActualStatus == "scheduling"
	})
	ps := waitScale(t, 10*time.Second, m, "a budget refusal", func(ps PoolScale) bool { return ps.LastRefusal != "" })
	if ps.Starting != 1 || !strings.Contains(ps.LastRefusal, "max_spend_per_hour") {
		t.Errorf("PoolScale = %+v", ps)
	}
	if row := h.fleet.listedRow(id); ledger.Rate(row) >= row.DPHTotal {
		t.Errorf("a scheduling instance bills $%.4f/h; the test expects storage only", ledger.Rate(row))
	}
	if h.creates() != 1 {
		t.Errorf("%d creates while the start is in progress, want 1", h.creates())
	}
	h.sim.ReleaseMachine(h.simInstance(id).MachineID)
	waitRecord(t, 20*time.Second, m, id, InstanceActive)
}
