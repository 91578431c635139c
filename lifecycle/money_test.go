package lifecycle

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// stallStore wraps a Store whose writes and locks can be stalled, as a
// storage that hangs (NFS, a busy disk) does. Reads go through.
type stallStore struct {
	inner   Store
	stalled atomic.Bool
	mu      sync.Mutex
	release chan struct{}
}

func newStallStore(inner Store) *stallStore {
	return &stallStore{inner: inner, release: make(chan struct{})}
}

func (s *stallStore) stall() { s.stalled.Store(true) }

func (s *stallStore) unstall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled.Swap(false) {
		close(s.release)
		s.release = make(chan struct{})
	}
}

func (s *stallStore) wait(ctx context.Context) error {
	if !s.stalled.Load() {
		return nil
	}
	s.mu.Lock()
	ch := s.release
	s.mu.Unlock()
	if !s.stalled.Load() {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *stallStore) Store(ctx context.Context, key string, value []byte) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.inner.Store(ctx, key, value)
}

func (s *stallStore) Load(ctx context.Context, key string) ([]byte, error) {
	return s.inner.Load(ctx, key)
}

func (s *stallStore) Delete(ctx context.Context, key string) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.inner.Delete(ctx, key)
}

func (s *stallStore) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	return s.inner.List(ctx, prefix, recursive)
}

func (s *stallStore) Lock(ctx context.Context, name string) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.inner.Lock(ctx, name)
}

func (s *stallStore) Unlock(ctx context.Context, name string) error {
	return s.inner.Unlock(ctx, name)
}

// TestStalledWorkerNeverCreatesAfterTakeover (issue 7, defect 1): a worker
// whose storage stalls past lease_ttl while it is about to create loses the
// operation to another process; when it wakes up it must not create a
// second instance nor overwrite the other owner's record.
func TestStalledWorkerNeverCreatesAfterTakeover(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	shared := NewMemoryStore()
	stall := newStallStore(shared)
	cfg := h.config(func(c *Config) { c.LeaseTTL = 300 * time.Millisecond })
	a, err := New(cfg, h.api, stall, h.fleet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	h.store = shared
	b := h.manager(cfg)

	var fired atomic.Bool
	a.hook = func(op *Operation, step string) error {
		if step != "before-create" || fired.Swap(true) {
			return nil
		}
		stall.stall()
		// B takes the operation over and creates while A is stalled.
		waitFor(t, 20*time.Second, "the other process to take over and create", func() bool {
			cur, err := b.loadOp(context.Background(), op.ID)
			return err == nil && cur != nil && cur.Owner == b.Owner() && h.creates() >= 1
		})
		stall.unstall()
		return nil
	}
	ops, err := a.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, stopB := run(t, b)
	op := waitOp(t, 30*time.Second, b, ops[0].ID)
	waitFor(t, 20*time.Second, "the stalled worker to stop", func() bool { return !a.isActive(op.ID) })
	stopB()
	if op.State != StateSucceeded {
		t.Fatalf("operation %s: %s", op.State, op.Error)
	}
	if n := h.creates(); n != 1 {
		t.Errorf("%d create calls, want 1 (the stalled worker created after losing its lease)", n)
	}
	final, err := b.loadOp(ctxT(t), op.ID)
	if err != nil || final.Owner != b.Owner() || final.InstanceID != op.InstanceID {
		t.Errorf("stored operation after the stalled worker woke up: %+v %v", final, err)
	}
}

// TestDuplicateOfBoundOperationRetired (issue 7, defects 1 and 2): a live
// instance that carries the label of an operation already bound to another
// instance is a duplicate: reconciliation drains and destroys it (after two
// sightings), whether it has an active record (two owners both created) or
// none (a lost create answer and a late listing), and counts it.
func TestDuplicateOfBoundOperationRetired(t *testing.T) {
	t.Parallel()
	for _, withRecord := range []bool{true, false} {
		name := "without record"
		if withRecord {
			name = "with active record"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			m := h.manager(h.config(func(c *Config) {
				p := c.Pools["p"]
				p.MaxInstances = 1
				c.Pools["p"] = p
			}))
			ctx := ctxT(t)
			op := provisionOne(t, m)
			dup, err := h.sim.Launch(vastsim.LaunchSpec{Label: op.Label, Running: true})
			if err != nil {
				t.Fatal(err)
			}
			if withRecord {
				if err := m.saveInst(ctx, &InstanceRecord{ID: dup, Pool: "p", Label: op.Label, OpID: op.ID,
					State: InstanceActive, Created: time.Now().Add(-time.Minute), ReadyAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
			h.fleet.waitPoll(t)
			var destroyed []int64
			for i := 0; i < 3 && len(destroyed) == 0; i++ {
				rep, err := m.Reconcile(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if slices.Contains(rep.OrphansAdopted, dup) {
					t.Fatalf("the duplicate %d was adopted: %+v", dup, rep)
				}
				destroyed = rep.DuplicatesDestroyed
			}
			if !slices.Equal(destroyed, []int64{dup}) {
				t.Fatalf("duplicates destroyed = %v, want [%d]", destroyed, dup)
			}
			waitFor(t, 10*time.Second, "the duplicate gone", func() bool { return h.simInstance(dup).Gone })
			if !slices.Contains(h.fleet.drainedIDs(), dup) {
				t.Errorf("the duplicate was not drained first: %v", h.fleet.drainedIDs())
			}
			if h.simInstance(op.InstanceID).Destroyed {
				t.Error("the instance bound to the operation was destroyed")
			}
			if got := m.Stats().DuplicatesDestroyed; got != 1 {
				t.Errorf("Stats().DuplicatesDestroyed = %d, want 1", got)
			}
		})
	}
}

// TestLostCreateAndLateListingStayWithinMaxInstances (issue 7, defect 2):
// the create answer is lost and the new instance is missing from the label
// listings, so a second create is made; when the first one shows up later
// it must not be adopted above max_instances 1.
func TestLostCreateAndLateListingStayWithinMaxInstances(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) {
		p := c.Pools["p"]
		p.MaxInstances = 1
		c.Pools["p"] = p
	}))
	var first atomic.Int64
	m.hook = func(op *Operation, step string) error {
		if len(op.Attempts) != 1 {
			return nil
		}
		switch step {
		case "before-create":
			h.fleet.paused.Store(true)
			h.sim.SetFaults(vastsim.Faults{MalformedJSON: true, Count: 1, Routes: []string{"PUT /api/v0/asks/{id}/"}})
		case "after-create":
			for _, in := range h.ours(false) {
				if in.Label == op.Label {
					first.Store(in.ID)
				}
			}
			h.sim.SetFaults(vastsim.Faults{OmitFromList: []int64{first.Load()}})
			h.fleet.paused.Store(false)
		}
		return nil
	}
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 30*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded {
		t.Fatalf("operation %s: %s", op.State, op.Error)
	}
	if first.Load() == 0 {
		t.Fatal("the hook did not see the first instance")
	}
	if op.InstanceID == first.Load() {
		t.Skip("the first instance was found after all; nothing to check")
	}
	h.sim.SetFaults(vastsim.Faults{}) // the late listing
	h.fleet.waitPoll(t)
	ctx := ctxT(t)
	for i := 0; i < 3; i++ {
		rep, err := m.Reconcile(ctx)
		if err != nil {
			t.Fatal(err)
		}
		live := 0
		for _, r := range m.Instances() {
			if r.Pool == "p" && r.Live() && !r.destroying() {
				live++
			}
		}
		if live > 1 {
			t.Fatalf("reconcile %d: %d live instances under max_instances 1: %+v", i+1, live, rep)
		}
	}
	waitFor(t, 10*time.Second, "the late instance destroyed", func() bool { return h.simInstance(first.Load()).Gone })
	if h.simInstance(op.InstanceID).Destroyed {
		t.Error("the instance bound to the operation was destroyed")
	}
}

// skippingAPI hides one instance: the show endpoint says not found, and
// every full listing drops its row as undecodable (Skipped) while DELETE
// is swallowed, so the instance really stays.
type skippingAPI struct {
	API
	hide atomic.Int64
}

func (s *skippingAPI) ShowInstance(ctx context.Context, id int64) (*vastclient.Instance, error) {
	if id == s.hide.Load() {
		return nil, vastclient.ErrNotFound
	}
	return s.API.ShowInstance(ctx, id)
}

func (s *skippingAPI) DestroyInstance(ctx context.Context, id int64) error {
	if id == s.hide.Load() {
		return nil
	}
	return s.API.DestroyInstance(ctx, id)
}

func (s *skippingAPI) ListInstances(ctx context.Context, opts vastclient.ListOptions) (*vastclient.ListResult, error) {
	res, err := s.API.ListInstances(ctx, opts)
	if err != nil || s.hide.Load() == 0 {
		return res, err
	}
	out := *res
	out.Instances = nil
	for _, in := range res.Instances {
		if in.ID == s.hide.Load() {
			out.Skipped++
			continue
		}
		out.Instances = append(out.Instances, in)
	}
	return &out, nil
}

// TestDestroyNotVerifiedByListingWithSkippedRows (issue 7, defect 3).
func TestDestroyNotVerifiedByListingWithSkippedRows(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	api := &skippingAPI{API: h.api}
	m, err := New(h.config(nil), api, h.store, h.fleet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	id := provisionOne(t, m).InstanceID
	api.hide.Store(id)
	dop, err := m.Destroy(ctxT(t), id, "test")
	if err != nil {
		t.Fatal(err)
	}
	var op Operation
	waitFor(t, 15*time.Second, "two verifications", func() bool {
		op, err = m.Operation(context.Background(), dop.ID)
		return err == nil && (op.Final() || op.DestroyAttempts >= 2)
	})
	if op.State == StateSucceeded {
		t.Fatal("destruction confirmed on a listing with undecodable rows while the instance exists")
	}
}

// TestReadyInstanceNotDestroyedForFailingProbes (issue 7, defect 4): after
// a restart with a probe that no longer passes, instances that were ready
// before are kept (and the pool is reported), not destroyed as dead.
func TestReadyInstanceNotDestroyedForFailingProbes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	// The first process provisions with the package's usual ready_timeout
	// (a short one could fail the provisioning on a loaded machine); the
	// restarted one has a short ready_timeout, so that the looks below are
	// each past it.
	cfg := h.config(func(c *Config) {
		p := c.Pools["p"]
		p.MinInstances = 1
		c.Pools["p"] = p
	})
	a := h.manager(cfg)
	ctx := ctxT(t)
	rep, err := a.Reconcile(ctx)
	if err != nil || len(rep.ProvisionsStarted) != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	op := waitOp(t, 30*time.Second, a, rep.ProvisionsStarted[0])
	if op.State != StateSucceeded {
		t.Fatalf("provisioning %s: %s", op.State, op.Error)
	}
	id := op.InstanceID
	a.Close()

	// The restart: a new manager; the new probe fails on the instance.
	p := cfg.Pools["p"]
	p.ReadyTimeout = jsondur.Duration(150 * time.Millisecond)
	cfg.Pools = map[string]PoolTemplate{"p": p}
	b := h.manager(cfg)
	h.fleet.force(id, FleetFailed)
	h.fleet.waitPoll(t)
	for i := 0; i < 3; i++ {
		rep, err := b.Reconcile(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.DeadDestroyed) > 0 || len(rep.ProvisionsStarted) > 0 {
			t.Fatalf("reconcile %d destroyed or replaced a previously ready instance for failing probes: %+v", i+1, rep)
		}
		time.Sleep(200 * time.Millisecond) // past ready_timeout between looks
	}
	if h.simInstance(id).Destroyed {
		t.Fatal("the instance was destroyed")
	}
	if !b.ProbeFailing("p") {
		t.Error("ProbeFailing(p) = false with every instance failing its probe")
	}
	// API-level death still destroys it.
	h.fleet.force(id, "")
	h.sim.SetStatus(id, "exited")
	h.fleet.waitPoll(t)
	var dead []int64
	waitFor(t, 30*time.Second, "the exited instance destroyed", func() bool {
		rep, err := b.Reconcile(ctx)
		if err == nil {
			dead = append(dead, rep.DeadDestroyed...)
		}
		return slices.Contains(dead, id)
	})
	if b.ProbeFailing("p") {
		t.Error("ProbeFailing(p) still true")
	}
}

// TestBillingRecordsCountAgainstMaxInstances (issue 7, defect 6).
func TestBillingRecordsCountAgainstMaxInstances(t *testing.T) {
	t.Parallel()
	for _, state := range []string{InstanceDestroying, InstanceDestroyFailed} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			m := h.manager(h.config(func(c *Config) {
				p := c.Pools["p"]
				p.MaxInstances = 1
				c.Pools["p"] = p
			}))
			ctx := ctxT(t)
			if err := m.saveInst(ctx, &InstanceRecord{ID: 999999, Pool: "p", State: state, Created: time.Now()}); err != nil {
				t.Fatal(err)
			}
			_, err := m.Provision(ctx, "p", ProvisionRequest{})
			if !errors.Is(err, ErrMaxInstances) {
				t.Fatalf("Provision with a %s record and max_instances 1: %v, want ErrMaxInstances", state, err)
			}
		})
	}
}

// slowStore delays every write.
type slowStore struct {
	*MemoryStore
	delay atomic.Int64
}

func (s *slowStore) Store(ctx context.Context, key string, value []byte) error {
	if d := time.Duration(s.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	return s.MemoryStore.Store(ctx, key, value)
}

// TestConcurrentDestroysShareOneOperation (issue 7, defect 7).
func TestConcurrentDestroysShareOneOperation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	// A slow storage (a network file system): its writes take a while.
	slow := &slowStore{MemoryStore: NewMemoryStore()}
	h.store = slow
	m := h.manager(h.config(nil))
	id := provisionOne(t, m).InstanceID
	h.fleet.paused.Store(true)
	slow.delay.Store(int64(20 * time.Millisecond))
	var wg sync.WaitGroup
	ids := make([]string, 16)
	errs := make([]error, 16)
	start := make(chan struct{})
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			op, err := m.Destroy(context.Background(), id, "parallel")
			errs[i] = err
			if op != nil {
				ids[i] = op.ID
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Destroy %d: %v", i, err)
		}
	}
	n := 0
	for _, op := range m.Operations() {
		if op.Kind == KindDestroy && op.InstanceID == id {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d destroy operations for one instance, want 1", n)
	}
	for i := range ids {
		if ids[i] != ids[0] {
			t.Errorf("Destroy %d returned operation %s, want %s", i, ids[i], ids[0])
		}
	}
	waitOp(t, 15*time.Second, m, ids[0])
}

// TestMaxLifetimeReplacementsRespectMaxInstances (issue 7, defect 8): two
// instances expiring together at max_instances 2 are replaced one at a
// time: never more than one extra instance.
func TestMaxLifetimeReplacementsRespectMaxInstances(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) {
		c.ReconcileInterval = 100 * time.Millisecond
		p := c.Pools["p"]
		p.MinInstances = 2
		p.MaxInstances = 2
		p.MaxLifetime = jsondur.Duration(2 * time.Second)
		c.Pools["p"] = p
	}))
	for i := 0; i < 6; i++ {
		h.sim.AddOffer(vastsim.Offer{GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHBase: 0.3,
			Reliability2: 0.99, DirectPortCount: 10, Geolocation: "Texas, US"})
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
	_, stop := run(t, m)
	var firsts []int64
	waitFor(t, 15*time.Second, "two active instances", func() bool {
		firsts = firsts[:0]
		for _, r := range m.Instances() {
			if r.State == InstanceActive {
				firsts = append(firsts, r.ID)
			}
		}
		return len(firsts) == 2
	})
	waitFor(t, 40*time.Second, "both first instances replaced", func() bool {
		return h.simInstance(firsts[0]).Gone && h.simInstance(firsts[1]).Gone
	})
	stop()
	close(stopWatch)
	<-watchDone
	if maxAlive.Load() > 3 {
		t.Errorf("up to %d instances alive under max_instances 2, want at most 3 (one replacement at a time)", maxAlive.Load())
	}
}

// TestReconcileUsesFreshFleetListing (issue 7, item 18): with a fresh
// listing from the routing side, reconciliation makes no full listing of
// its own; with a stale one it lists itself.
func TestReconcileUsesFreshFleetListing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) { c.FleetListingMaxAge = 5 * time.Second }))
	ctx := ctxT(t)
	h.fleet.waitPoll(t)
	h.fleet.paused.Store(true)
	before := h.fullLists()
	rep, err := m.Reconcile(ctx)
	if err != nil || !rep.Listed {
		t.Fatalf("%+v %v", rep, err)
	}
	if n := h.fullLists() - before; n != 0 {
		t.Errorf("reconcile made %d full listings with a fresh one from the routing side", n)
	}
	m2 := h.manager(h.config(func(c *Config) { c.FleetListingMaxAge = time.Millisecond }))
	time.Sleep(5 * time.Millisecond) // the paused fleet's listing is now older than 1ms
	before = h.fullLists()
	if rep, err := m2.Reconcile(ctx); err != nil || !rep.Listed {
		t.Fatalf("%+v %v", rep, err)
	}
	if n := h.fullLists() - before; n != 1 {
		t.Errorf("reconcile made %d full listings with a stale routing listing, want 1", n)
	}
}

// TestDestroyExcludesFromRoutingFirst (issue 7, defect 12): the instance
// leaves routing when the destruction is requested, before any DELETE.
func TestDestroyExcludesFromRoutingFirst(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	id := provisionOne(t, m).InstanceID
	if _, err := m.Destroy(ctxT(t), id, "test"); err != nil {
		t.Fatal(err)
	}
	reason, ok := h.fleet.exclusion(id)
	if !ok || reason != "destroying" {
		t.Fatalf("exclusion = %q %v right after Destroy, want destroying", reason, ok)
	}
}
