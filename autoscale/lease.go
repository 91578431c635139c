package autoscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"
)

// LeaseStore is the storage a Lease lives in; certmagic.Storage (Caddy's
// storage) satisfies it. Load returns an error matching fs.ErrNotExist
// for a missing key.
type LeaseStore interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// Lease makes one process, of all those sharing a storage, the one whose
// autoscaler acts: two deciders that see different traffic would
// otherwise undo each other's scaling. The holder renews it while it
// runs; a holder that dies loses it after TTL; Release hands it over at
// once on a clean stop.
type Lease struct {
	store LeaseStore
	key   string
	owner string
	ttl   time.Duration
	now   func() time.Time

	mu     sync.Mutex
	until  time.Time // of our own lease, zero when not held
	holder leaseRecord
}

type leaseRecord struct {
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
}

// NewLease returns a lease on key for owner. now may be nil (time.Now).
func NewLease(store LeaseStore, key, owner string, ttl time.Duration, now func() time.Time) *Lease {
	if now == nil {
		now = time.Now
	}
	return &Lease{store: store, key: key, owner: owner, ttl: ttl, now: now}
}

// Acquire takes the lease if it is free or expired, or renews it when a
// third of the TTL has gone; in between it answers from memory. It
// returns whether this owner holds the lease and, when not, who does and
// until when. A storage error keeps a lease held until it expires, and
// never takes one.
func (l *Lease) Acquire(ctx context.Context) (held bool, holder string, until time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.until.IsZero() && now.Before(l.until.Add(-l.ttl*2/3)) {
		return true, l.owner, l.until, nil
	}
	if l.until.IsZero() && l.holder.Owner != "" && now.Before(l.holder.Until.Add(-l.ttl*2/3)) {
		return false, l.holder.Owner, l.holder.Until, nil // checked recently
	}
	rec, err := l.exchange(ctx, now)
	if err != nil {
		if now.Before(l.until) {
			return true, l.owner, l.until, err
		}
		l.until = time.Time{}
		return false, l.holder.Owner, l.holder.Until, err
	}
	l.holder = rec
	if rec.Owner == l.owner {
		l.until = rec.Until
		return true, l.owner, l.until, nil
	}
	l.until = time.Time{}
	return false, rec.Owner, rec.Until, nil
}

// exchange reads the stored lease under the storage lock and writes ours
// when it is ours, free or expired. It returns the lease in force.
func (l *Lease) exchange(ctx context.Context, now time.Time) (leaseRecord, error) {
	if err := l.store.Lock(ctx, l.key); err != nil {
		return leaseRecord{}, fmt.Errorf("locking %s: %w", l.key, err)
	}
	defer l.store.Unlock(context.WithoutCancel(ctx), l.key) //nolint:errcheck // an unlock failure leaves a stale lock, which storage expires
	var cur leaseRecord
	b, err := l.store.Load(ctx, l.key+".json")
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return leaseRecord{}, fmt.Errorf("reading %s: %w", l.key, err)
	default:
		if json.Unmarshal(b, &cur) != nil {
			cur = leaseRecord{} // unreadable: treat as free
		}
	}
	if cur.Owner != "" && cur.Owner != l.owner && now.Before(cur.Until) {
		return cur, nil
	}
	next := leaseRecord{Owner: l.owner, Until: now.Add(l.ttl)}
	b, _ = json.Marshal(next)
	if err := l.store.Store(ctx, l.key+".json", b); err != nil {
		return leaseRecord{}, fmt.Errorf("writing %s: %w", l.key, err)
	}
	return next, nil
}

// Release gives the lease up at once (a clean stop), if held.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.until.IsZero() {
		return nil
	}
	l.until = time.Time{}
	if err := l.store.Lock(ctx, l.key); err != nil {
		return fmt.Errorf("locking %s: %w", l.key, err)
	}
	defer l.store.Unlock(context.WithoutCancel(ctx), l.key) //nolint:errcheck // see exchange
	b, err := l.store.Load(ctx, l.key+".json")
	var cur leaseRecord
	if err != nil || json.Unmarshal(b, &cur) != nil || cur.Owner != l.owner {
		return nil // not ours any more
	}
	b, _ = json.Marshal(leaseRecord{Owner: l.owner, Until: l.now()})
	return l.store.Store(ctx, l.key+".json", b)
}
