package keys

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Store is the storage the registry keeps key records and spend in;
// Caddy's storage (certmagic.Storage) satisfies it. Load and List return
// an error matching fs.ErrNotExist for missing keys.
type Store interface {
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	List(ctx context.Context, prefix string, recursive bool) ([]string, error)
}

// Storage layout, below the registry's prefix: one record per key created
// through the admin API (so that two gateways creating keys never rewrite
// each other's), and one spend record per gateway, which only that
// gateway writes and every gateway reads.
const (
	recordsDir = "records"
	spendDir   = "spend"
)

// Entry is one key in a snapshot. Its Key must not be modified.
type Entry struct {
	Key Key
	acc *account
}

// Snapshot is every key by secret hash and by name, immutable once
// published.
type Snapshot struct {
	byHash map[digest]*Entry
	byName map[string]*Entry
}

// Registry holds the keys of one gateway. The request path calls Check,
// which reads the current snapshot and the key's own account; everything
// that touches storage (Poll, Flush, Create, Revoke) runs elsewhere.
type Registry struct {
	prefix  string
	gateway string

	snap atomic.Pointer[Snapshot]

	mu       sync.Mutex // guards the fields below; never taken by Check
	store    Store
	config   []Key
	stored   map[string]Key
	accounts map[string]*account
	loaded   bool // this gateway's own spend record has been read
	now      func() time.Time
}

// New returns a registry over store, keeping its files under prefix
// ("vastai/keys/"); gateway names this gateway's spend record.
func New(store Store, prefix, gateway string) *Registry {
	r := &Registry{store: store, prefix: prefix, gateway: gateway, stored: map[string]Key{}, accounts: map[string]*account{}, now: time.Now}
	r.snap.Store(&Snapshot{byHash: map[digest]*Entry{}, byName: map[string]*Entry{}})
	return r
}

// SetStore replaces the storage (a reload brings a new storage value for
// the same folder); the keys and spend held are kept.
func (r *Registry) SetStore(st Store) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.store = st
}

func (r *Registry) storage() Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.store
}

// SetConfigKeys replaces the keys defined in the config; the snapshot is
// rebuilt at once.
func (r *Registry) SetConfigKeys(keys []Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.config = slices.Clone(keys)
	r.rebuildLocked()
}

// rebuildLocked publishes a snapshot of the config and stored keys. A
// config key wins over a stored one of the same name.
func (r *Registry) rebuildLocked() {
	s := &Snapshot{byHash: map[digest]*Entry{}, byName: map[string]*Entry{}}
	add := func(k Key) {
		d, ok := digestOf(k.Hash)
		if _, dup := s.byName[k.Name]; dup || !ok {
			return
		}
		acc := r.accounts[k.Name]
		if acc == nil {
			acc = &account{}
			r.accounts[k.Name] = acc
		}
		e := &Entry{Key: k, acc: acc}
		s.byName[k.Name] = e
		s.byHash[d] = e
	}
	for _, k := range r.config {
		add(k)
	}
	for _, name := range slices.Sorted(maps.Keys(r.stored)) {
		add(r.stored[name])
	}
	r.snap.Store(s)
}

// Snapshot returns the current snapshot.
func (r *Registry) Snapshot() *Snapshot { return r.snap.Load() }

// Lookup finds a key by its secret, checking revocation and expiry.
func (s *Snapshot) Lookup(secret string, now time.Time) (*Entry, error) {
	if secret == "" {
		return nil, ErrMissingKey
	}
	e, ok := s.byHash[digestOfSecret(secret)]
	switch {
	case !ok:
		return nil, ErrUnknownKey
	case !e.Key.Revoked.IsZero():
		return nil, ErrRevoked
	case !e.Key.Expires.IsZero() && !now.Before(e.Key.Expires):
		return nil, ErrExpired
	}
	return e, nil
}

// digestOfSecret hashes a secret without allocating for the usual sizes.
func digestOfSecret(secret string) digest {
	var buf [256]byte
	if len(secret) <= len(buf) {
		return sha256.Sum256(append(buf[:0], secret...))
	}
	return sha256.Sum256([]byte(secret))
}

// Entry returns the key named name.
func (s *Snapshot) Entry(name string) (*Entry, bool) {
	e, ok := s.byName[name]
	return e, ok
}

// Names lists the keys by name.
func (s *Snapshot) Names() []string { return slices.Sorted(maps.Keys(s.byName)) }

// Allows checks the pool (when known) and the model (when given).
func (e *Entry) Allows(pool, model string) error {
	if err := e.AllowsPool(pool); err != nil {
		return err
	}
	return e.AllowsModel(model)
}

// AllowsPool checks a pool; "" (not known) passes.
func (e *Entry) AllowsPool(pool string) error {
	if pool != "" && len(e.Key.Pools) > 0 && !slices.Contains(e.Key.Pools, pool) {
		return fmt.Errorf("%w: %s", ErrPoolNotAllowed, pool)
	}
	return nil
}

// AllowsModel checks a request's model: a key limited to models needs
// one of them named.
func (e *Entry) AllowsModel(model string) error {
	if len(e.Key.Models) > 0 && (model == "" || !slices.Contains(e.Key.Models, model)) {
		return fmt.Errorf("%w: %q", ErrModelNotAllowed, model)
	}
	return nil
}

// Admit checks the key's limits and budget and reserves d.
func (e *Entry) Admit(d Demand, now time.Time) (*Ticket, error) {
	return e.acc.admit(&e.Key, d, now)
}

// Usage returns the key's tallies over every gateway (this one's live,
// the others' as of the last poll).
func (e *Entry) Usage(now time.Time) (u KeyUsage, reserved float64, inFlight int) {
	e.acc.mu.Lock()
	defer e.acc.mu.Unlock()
	e.acc.local.roll(now)
	u.Day.Period, u.Month.Period = periodID(PeriodDay, now), periodID(PeriodMonth, now)
	u.sumCurrent(e.acc.local, now)
	u.sumCurrent(e.acc.remote, now)
	return u, e.acc.reserved, e.acc.parallel
}

// spendRecord is one gateway's spend file.
type spendRecord struct {
	Gateway string              `json:"gateway"`
	Updated time.Time           `json:"updated"`
	Keys    map[string]KeyUsage `json:"keys"`
	// Reserved is the dollars this gateway's requests in flight hold, by
	// key, so that the others count them against the budget too.
	Reserved map[string]float64 `json:"reserved,omitempty"`
}

// ReservationTTL bounds how long another gateway's reservations count
// after its record was written: a gateway that died leaves them behind.
const ReservationTTL = 30 * time.Second

func (r *Registry) recordKey(name string) string {
	return path.Join(r.prefix, recordsDir, name+".json")
}

func (r *Registry) spendKey(gateway string) string {
	return path.Join(r.prefix, spendDir, gateway+".json")
}

// list returns the storage keys under dir, none when it does not exist.
func (r *Registry) list(ctx context.Context, dir string) ([]string, error) {
	names, err := r.storage().List(ctx, path.Join(r.prefix, dir), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	return names, nil
}

// gatewayOf names the gateway of a spend file.
func gatewayOf(key string) string {
	return strings.TrimSuffix(path.Base(key), ".json")
}

// isLoaded reports whether a poll has read this gateway's spend record.
func (r *Registry) isLoaded() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loaded
}
