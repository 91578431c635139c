package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestOrphanPolicies(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{OrphansAdopt, OrphansDestroy, OrphansIgnore} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			m := h.manager(h.config(func(c *Config) { c.Orphans = policy }))
			foreign := launchForeign(t, h)
			orphan, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:p:00aa11bb22", Running: true})
			ctx := ctxT(t)

			rep1, err := m.Reconcile(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rep2, err := m.Reconcile(ctx)
			if err != nil {
				t.Fatal(err)
			}
			switch policy {
			case OrphansAdopt:
				if !slices.Equal(rep1.OrphansAdopted, []int64{orphan}) || len(rep2.OrphansAdopted) != 0 {
					t.Errorf("adopted %v then %v", rep1.OrphansAdopted, rep2.OrphansAdopted)
				}
				rec := recordOf(m, orphan)
				if rec == nil || rec.State != InstanceActive || !rec.Adopted || rec.Pool != "p" || rec.OpID != "00aa11bb22" {
					t.Errorf("record = %+v", rec)
				}
			case OrphansDestroy:
				// Seen once: only pending. Seen twice in a row: destroyed.
				if !slices.Equal(rep1.OrphansPending, []int64{orphan}) || len(rep1.OrphansDestroyed) != 0 {
					t.Errorf("first reconcile: %+v", rep1)
				}
				if !slices.Equal(rep2.OrphansDestroyed, []int64{orphan}) {
					t.Errorf("second reconcile: %+v", rep2)
				}
				waitFor(t, 10*time.Second, "the orphan destroyed", func() bool { return h.simInstance(orphan).Gone })
			case OrphansIgnore:
				if !slices.Equal(rep1.OrphansIgnored, []int64{orphan}) {
					t.Errorf("ignored %v", rep1.OrphansIgnored)
				}
				if recordOf(m, orphan) != nil || h.simInstance(orphan).Destroyed {
					t.Error("an ignored orphan was touched")
				}
			}
			for _, id := range foreign {
				if h.simInstance(id).Destroyed || recordOf(m, id) != nil {
					t.Errorf("foreign instance %d was touched", id)
				}
			}
			if policy != OrphansDestroy && h.deletes() != 0 {
				t.Errorf("%d DELETE calls", h.deletes())
			}
		})
	}
}

// TestOrphanDestroyNeedsConsecutiveSightings: an orphan missing from one
// listing starts counting again.
func TestOrphanDestroyNeedsConsecutiveSightings(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) { c.Orphans = OrphansDestroy }))
	orphan, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:p:00aa11bb22", Running: true})
	ctx := ctxT(t)
	if _, err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h.fleet.paused.Store(true)
	h.sim.SetFaults(vastsim.Faults{OmitFromList: []int64{orphan}})
	if _, err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h.sim.SetFaults(vastsim.Faults{})
	rep, err := m.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.OrphansDestroyed) != 0 || !slices.Equal(rep.OrphansPending, []int64{orphan}) {
		t.Errorf("report = %+v, want the orphan pending again", rep)
	}
}

// TestReconcileDuringOutage: with the list call failing, nothing is
// destroyed, adopted, provisioned or forgotten.
func TestReconcileDuringOutage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) {
		c.Orphans = OrphansDestroy
		c.GhostConfirmations = 1
		p := c.Pools["p"]
		p.MinInstances = 2
		c.Pools["p"] = p
	}))
	ctx := ctxT(t)
	rep, err := m.Reconcile(ctx) // provisions two instances
	if err != nil || len(rep.ProvisionsStarted) != 2 {
		t.Fatalf("first reconcile: %+v, %v", rep, err)
	}
	for _, id := range rep.ProvisionsStarted {
		waitOp(t, 10*time.Second, m, id)
	}
	orphan, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:p:00aa11bb22", Running: true})
	if rep, err := m.Reconcile(ctx); err != nil || len(rep.OrphansPending) != 1 {
		t.Fatalf("second reconcile: %+v, %v", rep, err)
	}
	before := m.Instances()
	deletes := h.deletes()

	h.fleet.paused.Store(true)
	for _, status := range []int{503, 502, 429} {
		h.sim.SetFaults(vastsim.Faults{Status: status})
		for i := 0; i < 3; i++ {
			rep, err := m.Reconcile(ctx)
			if err == nil || rep.Listed || rep.ListError == "" {
				t.Fatalf("reconcile during an outage (%d): %+v, %v", status, rep, err)
			}
			if len(rep.OrphansDestroyed)+len(rep.Ghosts)+len(rep.ProvisionsStarted)+len(rep.OrphansAdopted) > 0 {
				t.Fatalf("acted during an outage: %+v", rep)
			}
		}
	}
	h.sim.SetFaults(vastsim.Faults{})
	if h.deletes() != deletes {
		t.Error("DELETE issued during the outage")
	}
	after := m.Instances()
	if len(after) != len(before) {
		t.Fatalf("records changed: %d -> %d", len(before), len(after))
	}
	for i := range before {
		if before[i].ID != after[i].ID || before[i].State != after[i].State {
			t.Errorf("record %d changed: %s -> %s", before[i].ID, before[i].State, after[i].State)
		}
	}
	if n := len(h.ours(true)); n != 3 {
		t.Errorf("%d live instances, want 3", n)
	}
	// Back to normal: failed reconciliations do not count, so the orphan
	// has now been seen by two consecutive successful ones.
	rep, err = m.Reconcile(ctx)
	if err != nil || !slices.Equal(rep.OrphansDestroyed, []int64{orphan}) || len(rep.Ghosts) != 0 || len(rep.ProvisionsStarted) != 0 {
		t.Fatalf("after the outage: %+v, %v", rep, err)
	}
}

func TestGhostsNeedSeveralListingsAndShow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil)) // GhostConfirmations 3
	ctx := ctxT(t)
	kept := provisionOne(t, m).InstanceID
	vanished := provisionOne(t, m).InstanceID
	h.fleet.paused.Store(true)

	// A listing glitch: the instance is omitted from lists but exists.
	h.sim.SetFaults(vastsim.Faults{OmitFromList: []int64{kept}})
	for i := 0; i < 5; i++ {
		rep, err := m.Reconcile(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Ghosts) != 0 {
			t.Fatalf("reconcile %d marked %v gone while show still has it", i+1, rep.Ghosts)
		}
	}
	h.sim.SetFaults(vastsim.Faults{})
	if r := recordOf(m, kept); r == nil || r.State != InstanceActive {
		t.Fatalf("record of the omitted instance = %+v", r)
	}

	// Really gone (destroyed from the console).
	h.sim.Remove(vanished)
	waitFor(t, 5*time.Second, "the instance to disappear", func() bool { return h.simInstance(vanished).Gone })
	for i := 1; i <= 3; i++ {
		rep, err := m.Reconcile(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case i < 3 && (len(rep.Ghosts) != 0 || !slices.Contains(rep.GhostSuspects, vanished)):
			t.Fatalf("reconcile %d: %+v, want only a suspect", i, rep)
		case i == 3 && !slices.Equal(rep.Ghosts, []int64{vanished}):
			t.Fatalf("reconcile %d: ghosts %v, want [%d]", i, rep.Ghosts, vanished)
		}
	}
	if r := recordOf(m, vanished); r == nil || r.State != InstanceGone {
		t.Errorf("record = %+v, want gone", r)
	}
	if m.Stats().Ghosts != 1 {
		t.Errorf("stats = %+v", m.Stats())
	}
}

// TestMinInstancesAndMaxLifetime: reconciliation keeps min_instances, and
// replaces an old instance by a ready one before draining and destroying
// it, never running more than one extra.
func TestMinInstancesAndMaxLifetime(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) {
		c.ReconcileInterval = 100 * time.Millisecond
		p := c.Pools["p"]
		p.MinInstances = 1
		p.MaxInstances = 1
		p.MaxLifetime = jsondur.Duration(1500 * time.Millisecond)
		c.Pools["p"] = p
	}))
	var maxAlive atomic.Int64
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			n := int64(len(h.ours(true)))
			if n > maxAlive.Load() {
				maxAlive.Store(n)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	_, stop := run(t, m)

	var first int64
	waitFor(t, 10*time.Second, "a first active instance", func() bool {
		for _, r := range m.Instances() {
			if r.State == InstanceActive {
				first = r.ID
				return true
			}
		}
		return false
	})
	waitFor(t, 15*time.Second, "the first instance replaced", func() bool {
		return h.simInstance(first).Gone
	})
	waitFor(t, 5*time.Second, "a replacement active", func() bool {
		for _, r := range m.Instances() {
			if r.State == InstanceActive && r.ID != first {
				return true
			}
		}
		return false
	})
	stop()
	close(stopWatch)
	<-watchDone
	if !slices.Contains(h.fleet.drainedIDs(), first) {
		t.Errorf("the old instance was not drained: %v", h.fleet.drainedIDs())
	}
	if maxAlive.Load() > 2 {
		t.Errorf("up to %d instances alive, want at most 2 (old + replacement)", maxAlive.Load())
	}
	var replaced bool
	for _, op := range m.Operations() {
		if op.Kind == KindProvision && op.Replaces == first && op.State == StateSucceeded && op.Reason == TriggerMaxLifetime {
			replaced = true
		}
	}
	if !replaced {
		t.Error("no succeeded max_lifetime replacement operation")
	}
}

// TestDeadInstanceReplaced: an active instance that exits is destroyed
// after the pool's ready_timeout (never before) and min_instances brings a
// new one.
func TestDeadInstanceReplaced(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	// The pool's ready_timeout also bounds every provisioning state, so it
	// stays the package's usual 3s: a loaded machine must not fail the
	// first provisioning.
	cfg := h.config(func(c *Config) {
		p := c.Pools["p"]
		p.MinInstances = 1
		c.Pools["p"] = p
	})
	readyTimeout := cfg.Pools["p"].ReadyTimeout.D()
	m := h.manager(cfg)
	ctx := ctxT(t)
	rep, err := m.Reconcile(ctx)
	if err != nil || len(rep.ProvisionsStarted) != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	op := waitOp(t, 30*time.Second, m, rep.ProvisionsStarted[0])
	if op.State != StateSucceeded {
		t.Fatalf("first provisioning %s: %s", op.State, op.Error)
	}
	id := op.InstanceID
	h.sim.SetStatus(id, "exited")
	h.fleet.waitPoll(t)
	firstLook := time.Now() // the dead clock starts at or after this
	rep, err = m.Reconcile(ctx)
	if err != nil || len(rep.DeadDestroyed) != 0 || len(rep.ProvisionsStarted) != 1 {
		t.Fatalf("first look at the dead instance: %+v %v", rep, err)
	}
	waitFor(t, 30*time.Second, "a reconcile destroying the dead instance", func() bool {
		rep, err = m.Reconcile(ctx)
		if err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		if len(rep.DeadDestroyed) == 0 {
			return false
		}
		if waited := time.Since(firstLook); waited < readyTimeout {
			t.Fatalf("destroyed %s after the first look, before ready_timeout %s", waited, readyTimeout)
		}
		if !slices.Equal(rep.DeadDestroyed, []int64{id}) {
			t.Fatalf("dead destroyed %v, want [%d]", rep.DeadDestroyed, id)
		}
		return true
	})
	waitFor(t, 30*time.Second, "the dead instance gone", func() bool { return h.simInstance(id).Gone })
}

// TestTwoManagersShareFileStorage: two processes over one certmagic
// FileStorage folder with min_instances 2 end with exactly two instances,
// never more.
func TestTwoManagersShareFileStorage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	h.store = &certmagic.FileStorage{Path: t.TempDir()}
	cfg := h.config(func(c *Config) {
		c.ReconcileInterval = 150 * time.Millisecond
		p := c.Pools["p"]
		p.MinInstances = 2
		c.Pools["p"] = p
	})
	a, b := h.manager(cfg), h.manager(cfg)
	if a.Owner() == b.Owner() {
		t.Fatal("managers share an owner id")
	}
	var maxAlive atomic.Int64
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			n := int64(len(h.ours(true)))
			if n > maxAlive.Load() {
				maxAlive.Store(n)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	_, stopA := run(t, a)
	_, stopB := run(t, b)
	ready := func(m *Manager) int {
		n := 0
		for _, r := range m.Instances() {
			if r.State == InstanceActive {
				n++
			}
		}
		return n
	}
	waitFor(t, 25*time.Second, "two active instances", func() bool { return ready(a) == 2 || ready(b) == 2 })
	// Several more reconciliations by both must not add any.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	stopA()
	stopB()
	close(stopWatch)
	<-watchDone
	if n := len(h.ours(false)); n != 2 {
		t.Errorf("%d instances created, want exactly 2", n)
	}
	if maxAlive.Load() > 2 {
		t.Errorf("up to %d instances alive at once", maxAlive.Load())
	}
	// Stopping both destroyed nothing.
	if n := len(h.ours(true)); n != 2 || h.deletes() != 0 {
		t.Errorf("after stopping: %d alive, %d DELETEs", n, h.deletes())
	}
}

func TestCost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	running, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:p:00aa11bb22", Running: true, DPH: 0.35})
	stopped, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:gw:q:00aa11bb33", Running: true, DPH: 0.5})
	foreign, _ := h.sim.Launch(vastsim.LaunchSpec{Label: "cv:other:p:00aa11bb22", Running: true})
	h.sim.SetStatus(stopped, "stopped")
	if rep := m.Cost(time.Now()); rep.Known && len(rep.Instances) > 0 {
		// The fleet may already have polled; either way nothing is wrong.
		_ = rep
	}
	h.fleet.waitPoll(t)
	rows, _, _ := h.fleet.Instances()
	byID := map[int64]vastclient.Instance{}
	for _, r := range rows {
		byID[r.ID] = r
	}
	now := time.Now()
	rep := m.Cost(now)
	if !rep.Known || len(rep.Instances) != 2 {
		t.Fatalf("cost report = %+v", rep)
	}
	storage := 0.15 * 8 / 720 // $/GB/month × 8 GB over a 720-hour month
	want := map[int64]float64{running: 0.35 + storage, stopped: storage}
	total := 0.0
	for _, c := range rep.Instances {
		if c.ID == foreign {
			t.Fatal("another gateway's instance counted")
		}
		w := want[c.ID]
		if math.Abs(c.RatePerHour-w) > 1e-9 {
			t.Errorf("instance %d rate %v, want %v", c.ID, c.RatePerHour, w)
		}
		elapsed := now.Sub(time.Unix(0, int64(byID[c.ID].StartDate*1e9))).Seconds()
		if math.Abs(c.Seconds-elapsed) > 0.001 {
			t.Errorf("instance %d seconds %v, want %v", c.ID, c.Seconds, elapsed)
		}
		// Within one second of billing.
		if math.Abs(c.Accrued-w*elapsed/3600) > w/3600 {
			t.Errorf("instance %d accrued %v, want %v", c.ID, c.Accrued, w*elapsed/3600)
		}
		total += c.Accrued
	}
	if math.Abs(rep.RatePerHour-(want[running]+want[stopped])) > 1e-9 || math.Abs(rep.Accrued-total) > 1e-12 {
		t.Errorf("totals = %v $/h, $%v", rep.RatePerHour, rep.Accrued)
	}
	if len(rep.Pools) != 2 || rep.Pools[0].Pool != "p" || rep.Pools[1].Pool != "q" {
		t.Errorf("pools = %+v", rep.Pools)
	}
	// Later, more has accrued at the same rate.
	later := m.Cost(now.Add(time.Hour))
	if d := later.Accrued - rep.Accrued; math.Abs(d-rep.RatePerHour) > 1e-9 {
		t.Errorf("an hour later accrued %v more, want %v", d, rep.RatePerHour)
	}
}

// TestStoppingDestroysNothing: cancelling Run, even mid-provisioning,
// leaves every instance and record in place.
func TestStoppingDestroysNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.LoadingDelay = 2 * time.Second }))
	m := h.manager(h.config(nil))
	_, stop := run(t, m)
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "two instances loading", func() bool { return len(h.ours(true)) == 2 })
	stop()
	if h.deletes() != 0 {
		t.Fatalf("%d DELETE calls after stopping", h.deletes())
	}
	if n := len(h.ours(true)); n != 2 {
		t.Fatalf("%d instances alive", n)
	}
	for _, o := range ops {
		op, err := m.Operation(context.Background(), o.ID)
		if err != nil || op.Final() || !op.LeaseUntil.IsZero() {
			t.Errorf("operation after stop: %+v, %v (want unfinished with its lease released)", op, err)
		}
	}
	if _, err := m.Provision(ctxT(t), "p", ProvisionRequest{}); !errors.Is(err, ErrStopped) {
		t.Errorf("Provision after stop: %v", err)
	}
}

// TestStaleLockOfDeadProcess: a lock left by a process that died does not
// block reconciliation for long (FileStorage treats it as stale).
func TestStaleLockOfDeadProcess(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	dir := t.TempDir()
	h.store = &certmagic.FileStorage{Path: dir}
	m := h.manager(h.config(func(c *Config) { c.LockTimeout = 5 * time.Second }))
	old := time.Now().Add(-time.Minute)
	meta, _ := json.Marshal(map[string]time.Time{"created": old, "updated": old})
	lock := filepath.Join(dir, "locks", certmagic.StorageKeys.Safe(m.lockName())+".lock")
	if err := os.MkdirAll(filepath.Dir(lock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, meta, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reconcile(ctxT(t)); err != nil {
		t.Fatalf("reconcile with a stale lock: %v", err)
	}
}

func TestReconcileLockTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) { c.LockTimeout = 100 * time.Millisecond }))
	// Another process holds the lock.
	if err := h.store.Lock(context.Background(), m.lockName()); err != nil {
		t.Fatal(err)
	}
	rep, err := m.Reconcile(ctxT(t))
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reconcile with the lock held: %v", err)
	}
	if len(rep.ProvisionsStarted) != 0 {
		t.Error("acted without the lock")
	}
	_ = h.store.Unlock(context.Background(), m.lockName())
	if _, err := m.Reconcile(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	_ = fmt.Sprint()
}
