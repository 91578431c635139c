package lifecycle

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestDestroyVerified(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// destroyDelay keeps the instance visible after DELETE.
		destroyDelay time.Duration
		// faults503 makes that many API calls in a row answer 503.
		faults503 int
	}{
		{name: "plain"},
		{name: "slow disappearance", destroyDelay: 400 * time.Millisecond},
		{name: "api failing in a row", faults503: 8},
		{name: "both", destroyDelay: 300 * time.Millisecond, faults503: 6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(func(o *vastsim.Options) {
				if tc.destroyDelay > 0 {
					o.DestroyDelay = tc.destroyDelay
				}
			}))
			m := h.manager(h.config(nil))
			prov := provisionOne(t, m)
			id := prov.InstanceID

			// The routing side stays quiet so that the faults hit the
			// manager's own calls.
			h.fleet.paused.Store(true)
			if tc.faults503 > 0 {
				h.sim.SetFaults(vastsim.Faults{Status: 503, Count: tc.faults503})
			}
			dop, err := m.Destroy(ctxT(t), id, "test")
			if err != nil {
				t.Fatal(err)
			}
			if dop.Kind != KindDestroy || dop.InstanceID != id || dop.Final() {
				t.Fatalf("Destroy returned %+v", dop)
			}
			op := waitOp(t, 15*time.Second, m, dop.ID)
			if op.State != StateSucceeded {
				t.Fatalf("destroy operation %s: %s", op.State, op.Error)
			}
			in := h.simInstance(id)
			if !in.Destroyed || !in.Gone {
				t.Fatalf("instance %d: %+v, want destroyed and gone", id, in)
			}
			if tc.destroyDelay > 0 && op.DestroyAttempts == 0 {
				t.Error("the destruction was confirmed while the instance was still visible")
			}
			var rec *InstanceRecord
			for _, r := range m.Instances() {
				if r.ID == id {
					rec = &r
				}
			}
			if rec == nil || rec.State != InstanceDestroyed || rec.DestroyOp != op.ID {
				t.Errorf("record = %+v", rec)
			}
		})
	}
}

// TestDestroyFailedKeepsRetrying: verification failing longer than
// DestroyVerifyAttempts marks the destruction destroy_failed, counts it,
// and keeps retrying until it is confirmed.
func TestDestroyFailedKeepsRetrying(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.DestroyDelay = 1200 * time.Millisecond }))
	m := h.manager(h.config(func(c *Config) {
		c.DestroyVerifyAttempts = 3
		c.DestroyBackoff = 10 * time.Millisecond
		c.DestroyBackoffMax = 40 * time.Millisecond
	}))
	id := provisionOne(t, m).InstanceID
	dop, err := m.Destroy(ctxT(t), id, "test")
	if err != nil {
		t.Fatal(err)
	}
	failed := waitOp(t, 10*time.Second, m, dop.ID, StateDestroyFailed)
	if failed.DestroyAttempts < 3 {
		t.Errorf("destroy_failed after %d verifications", failed.DestroyAttempts)
	}
	// The counters follow the operation's record: wait for them.
	waitStats(t, m, "one destroy failure", func(s Stats) bool { return s.DestroyFailed == 1 && s.DestroyFailedNow == 1 })
	waitFor(t, 5*time.Second, "record destroy_failed", func() bool {
		for _, r := range m.Instances() {
			if r.ID == id {
				return r.State == InstanceDestroyFailed
			}
		}
		return false
	})
	op := waitOp(t, 10*time.Second, m, dop.ID)
	if op.State != StateSucceeded {
		t.Fatalf("destroy ended %s", op.State)
	}
	if !h.simInstance(id).Gone {
		t.Error("instance not gone")
	}
	waitStats(t, m, "the failure resolved by one confirmation", func(s Stats) bool {
		return s.DestroyFailed == 1 && s.DestroyFailedNow == 0 && s.DestroysConfirmed == 1
	})
}

// waitStats waits until m's counters satisfy cond, and reports them if
// they never do.
func waitStats(t *testing.T, m *Manager, what string, cond func(Stats) bool) {
	t.Helper()
	var last Stats
	defer func() {
		if t.Failed() {
			t.Logf("last stats: %+v", last)
		}
	}()
	waitFor(t, 30*time.Second, "stats: "+what, func() bool { last = m.Stats(); return cond(last) })
}

func TestDestroyOwnership(t *testing.T) {
	t.Parallel()
	h := newHarness(t, vastsim.Options{APIKey: testKey, LoadingDelay: 50 * time.Millisecond, DestroyDelay: 20 * time.Millisecond})
	m := h.manager(h.config(nil))
	ctx := ctxT(t)
	other, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:other:p:0123456789", Running: true})
	bare, _ := h.sim.Launch(vastsim.LaunchSpec{Running: true})
	mine, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:p:0123456789", Running: true})

	if _, err := m.Destroy(ctx, other, "x"); !errors.Is(err, ErrNotOwned) {
		t.Errorf("destroying another gateway's instance: %v, want ErrNotOwned", err)
	}
	if _, err := m.Drain(ctx, bare, "x"); !errors.Is(err, ErrNotOwned) {
		t.Errorf("draining an unlabelled instance: %v, want ErrNotOwned", err)
	}
	if _, err := m.Destroy(ctx, 99999999, "x"); !errors.Is(err, ErrInstanceNotFound) {
		t.Errorf("destroying an unknown id: %v, want ErrInstanceNotFound", err)
	}
	if h.deletes() != 0 {
		t.Fatalf("%d DELETE calls after refusals", h.deletes())
	}

	// Our label: allowed, with drain first.
	dop, err := m.Drain(ctx, mine, "retire")
	if err != nil {
		t.Fatal(err)
	}
	if dop.State != StateDraining {
		t.Errorf("drain operation state %q", dop.State)
	}
	if op := waitOp(t, 10*time.Second, m, dop.ID); op.State != StateSucceeded {
		t.Fatalf("drain+destroy: %s %s", op.State, op.Error)
	}
	if d := h.fleet.drainedIDs(); len(d) != 1 || d[0] != mine {
		t.Errorf("drained %v, want [%d]", d, mine)
	}

	// Forced: the operator may name any instance.
	fop, err := m.ForceDestroy(ctx, other, "operator")
	if err != nil {
		t.Fatal(err)
	}
	if op := waitOp(t, 10*time.Second, m, fop.ID); op.State != StateSucceeded || !op.Force {
		t.Fatalf("forced destroy: %+v", op)
	}
	if !h.simInstance(other).Gone || h.simInstance(bare).Destroyed {
		t.Error("wrong instances destroyed")
	}
}

// TestDrainTimeoutStillDestroys: a drain that never finishes is bounded.
func TestDrainTimeoutStillDestroys(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	h.fleet.drainFn = func(ctx context.Context, id int64) error {
		<-ctx.Done()
		return ctx.Err()
	}
	m := h.manager(h.config(func(c *Config) { c.DrainTimeout = 100 * time.Millisecond }))
	id := provisionOne(t, m).InstanceID
	dop, err := m.Drain(ctxT(t), id, "bye")
	if err != nil {
		t.Fatal(err)
	}
	if op := waitOp(t, 10*time.Second, m, dop.ID); op.State != StateSucceeded {
		t.Fatalf("%s %s", op.State, op.Error)
	}
}

// TestDestroyDuringProvisioningStopsIt: an operator destroying an instance
// that is still being provisioned ends the provisioning without a retry.
func TestDestroyDuringProvisioningStopsIt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.EngineReadyDelay = time.Minute }))
	m := h.manager(h.config(nil))
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	waitFor(t, 5*time.Second, "an instance id", func() bool {
		op, _ := m.Operation(context.Background(), ops[0].ID)
		if cur := op.current(); cur != nil {
			id = cur.InstanceID
		}
		return id > 0
	})
	if _, err := m.Destroy(ctxT(t), id, "operator"); err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateFailed || len(op.Attempts) != 1 || !strings.Contains(op.Error, "operator") {
		t.Fatalf("provisioning = %s %q with %d attempts", op.State, op.Error, len(op.Attempts))
	}
	waitFor(t, 5*time.Second, "destruction", func() bool { return h.simInstance(id).Gone })
	if n := len(h.ours(false)); n != 1 {
		t.Errorf("%d instances created, want 1", n)
	}
}

// TestOperatorDestroyRacingTheReadyCheckFailsTheProvisioning: an
// operator's destroy written right after waitReady checked the record
// (its effect, the instance disappearing, is what the next look sees)
// fails the provisioning; no second instance is rented.
func TestOperatorDestroyRacingTheReadyCheckFailsTheProvisioning(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.EngineReadyDelay = time.Minute }))
	m := h.manager(h.config(nil))
	var fired atomic.Bool
	m.hook = func(op *Operation, step string) error {
		cur := op.current()
		if step != "ready-look" || cur == nil || cur.InstanceID == 0 || fired.Swap(true) {
			return nil
		}
		if _, err := m.Destroy(context.Background(), cur.InstanceID, "operator"); err != nil {
			t.Error(err)
			return nil
		}
		waitFor(t, 30*time.Second, "the routing side to see the instance gone", func() bool {
			st, _, _ := h.fleet.State(cur.InstanceID)
			return st == FleetGone
		})
		return nil
	}
	assertOperatorDestroyFailsIt(t, h, m)
}

// TestOperatorDestroyDuringAttemptCleanUpFailsTheProvisioning: an operator
// destroying the instance of an attempt that has just failed (its clean-up
// not begun) also ends the provisioning: the operator's word wins over the
// retry.
func TestOperatorDestroyDuringAttemptCleanUpFailsTheProvisioning(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.EngineReadyDelay = time.Minute }))
	m := h.manager(h.config(nil))
	var fired atomic.Bool
	m.hook = func(op *Operation, step string) error {
		cur := op.current()
		switch {
		case cur == nil || cur.InstanceID == 0:
		case step == "ready-look":
			h.fleet.force(cur.InstanceID, FleetFailed) // the attempt fails on its own
		case step == "cleanup" && !fired.Swap(true):
			if _, err := m.Destroy(context.Background(), cur.InstanceID, "operator"); err != nil {
				t.Error(err)
			}
		}
		return nil
	}
	assertOperatorDestroyFailsIt(t, h, m)
}

// assertOperatorDestroyFailsIt provisions one instance (m's hook destroys
// it as an operator) and checks that the operation failed after one
// attempt, naming the operator, and that the one instance is destroyed.
func assertOperatorDestroyFailsIt(t *testing.T, h *harness, m *Manager) {
	t.Helper()
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 30*time.Second, m, ops[0].ID)
	if op.State != StateFailed || len(op.Attempts) != 1 || !strings.Contains(op.Error, "operator") {
		t.Fatalf("provisioning = %s %q with %d attempts", op.State, op.Error, len(op.Attempts))
	}
	id := op.Attempts[0].InstanceID
	waitFor(t, 30*time.Second, "destruction", func() bool { return h.simInstance(id).Gone })
	if n := len(h.ours(false)); n != 1 {
		t.Errorf("%d instances created, want 1", n)
	}
}
