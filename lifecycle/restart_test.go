package lifecycle

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestRestartResumesOperations stops (cleanly, or as if the process died)
// a first Manager at each step of a provisioning; a second Manager over
// the same storage finishes it without leaking or duplicating an instance.
func TestRestartResumesOperations(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"before-create", "after-create", "waiting"} {
		for _, crash := range []bool{false, true} {
			name := step + "/cancel"
			if crash {
				name = step + "/crash"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				h := newHarness(t, fastSim(nil))
				h.store = &certmagic.FileStorage{Path: t.TempDir()}
				cfg := h.config(func(c *Config) { c.LeaseTTL = 600 * time.Millisecond })

				a := h.manager(cfg)
				cancelA, stopA := run(t, a)
				var fired atomic.Bool
				a.hook = func(op *Operation, s string) error {
					if s != step || len(op.Attempts) != 1 || fired.Load() {
						return nil
					}
					fired.Store(true)
					cancelA()
					if crash {
						return errCrash // the worker vanishes without another write
					}
					<-a.base.Done() // the stop has reached the worker
					return nil
				}
				ops, err := a.Provision(ctxT(t), "p", ProvisionRequest{})
				if err != nil {
					t.Fatal(err)
				}
				waitFor(t, 10*time.Second, "the hook", fired.Load)
				stopA()

				b := h.manager(cfg)
				_, stopB := run(t, b)
				op := waitOp(t, 15*time.Second, b, ops[0].ID)
				stopB()
				if op.State != StateSucceeded {
					t.Fatalf("resumed operation %s: %s (%+v)", op.State, op.Error, op.Attempts)
				}
				var withLabel []int64
				for _, in := range h.sim.Instances() {
					if strings.HasPrefix(in.Label, op.Label) {
						withLabel = append(withLabel, in.ID)
						if in.Destroyed {
							t.Errorf("instance %d destroyed", in.ID)
						}
					}
				}
				if len(withLabel) != 1 || withLabel[0] != op.InstanceID {
					t.Errorf("instances with the label: %v, want exactly [%d]", withLabel, op.InstanceID)
				}
				if n := len(h.ours(false)); n != 1 {
					t.Errorf("%d instances created in all", n)
				}
				if h.deletes() != 0 {
					t.Errorf("%d DELETE calls", h.deletes())
				}
				if op.Owner != b.Owner() {
					t.Errorf("operation owner %q, want the second manager", op.Owner)
				}
				if r := recordOf(b, op.InstanceID); r == nil || r.State != InstanceActive {
					t.Errorf("record = %+v", r)
				}
			})
		}
	}
}

// TestRestartResumesDestroy: a destruction interrupted by a stop is
// finished by the next Manager.
func TestRestartResumesDestroy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	cfg := h.config(func(c *Config) { c.LeaseTTL = 600 * time.Millisecond })
	a := h.manager(cfg)
	id := provisionOne(t, a).InstanceID
	h.fleet.paused.Store(true)
	h.sim.SetFaults(faults503()) // DELETE cannot get through
	dop, err := a.Destroy(ctxT(t), id, "test")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	a.Close()
	h.sim.SetFaults(noFaults())
	h.fleet.paused.Store(false)
	if h.simInstance(id).Destroyed {
		t.Fatal("destroyed during the outage?")
	}

	b := h.manager(cfg)
	rep, err := b.Reconcile(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Resumed) != 1 || rep.Resumed[0] != dop.ID || len(rep.DestroyRetries) != 1 {
		t.Fatalf("report = %+v", rep)
	}
	if op := waitOp(t, 10*time.Second, b, dop.ID); op.State != StateSucceeded {
		t.Fatalf("%s %s", op.State, op.Error)
	}
	if !h.simInstance(id).Gone {
		t.Error("not destroyed")
	}
}
