package autoscale

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// failingStore fails every call while fail is set.
type failingStore struct {
	*lifecycle.MemoryStore
	fail bool
}

func (f *failingStore) Lock(ctx context.Context, name string) error {
	if f.fail {
		return errors.New("storage down")
	}
	return f.MemoryStore.Lock(ctx, name)
}

// TestLeaseOneHolderAtATime: of two processes on one storage, one holds
// the lease; the other takes it only once it expired or was released,
// and a storage failure neither takes a lease nor drops one before it
// expires.
func TestLeaseOneHolderAtATime(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	store := &failingStore{MemoryStore: lifecycle.NewMemoryStore()}
	a := NewLease(store, "vastai/default/autoscale", "a", 15*time.Second, clock)
	b := NewLease(store, "vastai/default/autoscale", "b", 15*time.Second, clock)
	check := func(step string, l *Lease, wantHeld bool, wantHolder string) {
		t.Helper()
		held, holder, _, _ := l.Acquire(ctx)
		if held != wantHeld || holder != wantHolder {
			t.Fatalf("%s: held %v by %q, want %v by %q", step, held, holder, wantHeld, wantHolder)
		}
	}
	check("a first", a, true, "a")
	check("b while a holds", b, false, "a")
	now = now.Add(10 * time.Second) // a renews (a third of the TTL has gone)
	check("a renews", a, true, "a")
	now = now.Add(10 * time.Second)
	check("b after a renewed", b, false, "a")
	store.fail = true
	now = now.Add(4 * time.Second) // a's renewal fails, its lease still runs
	if held, _, _, err := a.Acquire(ctx); !held || err == nil {
		t.Fatalf("a during a storage failure: held %v err %v, want held with an error", held, err)
	}
	now = now.Add(20 * time.Second) // a's lease expired, storage still down
	if held, _, _, _ := a.Acquire(ctx); held {
		t.Fatal("a still holds an expired lease it could not renew")
	}
	if held, _, _, _ := b.Acquire(ctx); held {
		t.Fatal("b took the lease while storage was down")
	}
	store.fail = false
	check("b once storage is back and a's lease expired", b, true, "b")
	check("a after b took over", a, false, "b")
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	now = now.Add(6 * time.Second) // a re-checks a third into b's lease
	check("a after b released", a, true, "a")
}
