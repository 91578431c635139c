package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Store is durable key-value storage with named locks; certmagic.Storage
// (Caddy's storage) satisfies it. Load returns an error matching
// fs.ErrNotExist for a missing key.
type Store interface {
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// ErrNotLoaded is returned by Save before the stored ledger was read: saving
// then would overwrite what earlier runs accrued.
var ErrNotLoaded = errors.New("ledger: the stored ledger has not been loaded yet")

// Observation is one instance as a listing showed it.
type Observation struct {
	ID     int64
	Pool   string
	Label  string
	Status string  // billing status (see Status)
	Rate   float64 // $/hour (see Rate)
	// At is when the listing that showed the instance was taken.
	At time.Time
	// Started is vast.ai's start_date, zero if unknown: the accrual of an
	// instance seen for the first time begins there.
	Started time.Time
}

// RateChange is one entry of an instance's rate history.
type RateChange struct {
	At     time.Time `json:"at"`
	Rate   float64   `json:"rate_per_hour"`
	Status string    `json:"status"`
}

// Bucket is what an instance cost in one UTC day.
type Bucket struct {
	Dollars float64 `json:"dollars"`
	// Seconds counts the billed time (at a non-zero rate).
	Seconds float64 `json:"seconds"`
}

// maxHistory bounds an instance's rate history: an instance flapping
// between states must not grow the stored ledger without limit.
const maxHistory = 200

// retention is how long a closed instance is kept after its last accrual;
// its dollars then move to the pool's pruned total.
const retention = 400 * 24 * time.Hour

// entry is one instance's account.
type entry struct {
	ID      int64              `json:"id"`
	Pool    string             `json:"pool"`
	Label   string             `json:"label,omitempty"`
	Status  string             `json:"status"`
	Rate    float64            `json:"rate_per_hour"`
	Through time.Time          `json:"through"` // accrued up to here
	Closed  bool               `json:"closed,omitempty"`
	History []RateChange       `json:"history"`
	Days    map[string]*Bucket `json:"days"` // "2006-01-02" (UTC)
}

// document is what is stored per gateway.
type document struct {
	Version int                `json:"version"`
	Gateway string             `json:"gateway"`
	SavedAt time.Time          `json:"saved_at"`
	Entries []*entry           `json:"instances"`
	Pruned  map[string]float64 `json:"pruned_dollars,omitempty"`
}

// Options configures a Ledger.
type Options struct {
	// Gateway keys the stored ledger: gateways sharing a storage keep
	// separate ledgers.
	Gateway string
	Store   Store
	// FlushInterval bounds how long accrued spend stays only in memory.
	// Default (and maximum) one minute.
	FlushInterval time.Duration
	Logger        *zap.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Ledger accrues and stores spend. Its methods are safe for concurrent use;
// none of the readers waits on storage.
type Ledger struct {
	opts Options
	log  *zap.Logger

	saveMu sync.Mutex // serialises Save: one writer at a time, in order

	mu        sync.Mutex // guards the fields below; never held during I/O
	entries   map[int64]*entry
	pruned    map[string]float64
	loaded    bool
	dirty     bool // accrued since the last save
	changed   bool // a state changed since the last save
	lastSave  time.Time
	saveCount int
}

// New returns an empty ledger; Load reads the stored one.
func New(opts Options) *Ledger {
	if opts.FlushInterval <= 0 || opts.FlushInterval > time.Minute {
		opts.FlushInterval = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Ledger{opts: opts, log: opts.Logger, entries: map[int64]*entry{}, pruned: map[string]float64{}}
}

// The ledger lives in the gateway's own storage folder, next to the
// lifecycle's records ("vastai/<gateway>/operations/...").
func (l *Ledger) key() string  { return "vastai/" + l.opts.Gateway + "/ledger.json" }
func (l *Ledger) lock() string { return "vastai/" + l.opts.Gateway + "/ledger" }

// Load reads the stored ledger. A missing one is an empty ledger; any other
// error leaves the ledger unloaded (and unsavable), so a storage hiccup
// never wipes what was accrued. Entries accrued in memory before Load are
// kept when the stored document does not know them.
func (l *Ledger) Load(ctx context.Context) error {
	raw, err := l.opts.Store.Load(ctx, l.key())
	doc := document{}
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("ledger: loading %s: %w", l.key(), err)
	default:
		if err := json.Unmarshal(raw, &doc); err != nil {
			return fmt.Errorf("ledger: decoding %s: %w", l.key(), err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range doc.Entries {
		if e == nil || e.ID <= 0 {
			continue
		}
		if e.Days == nil {
			e.Days = map[string]*Bucket{}
		}
		if _, ok := l.entries[e.ID]; !ok {
			l.entries[e.ID] = e
		}
	}
	for p, v := range doc.Pruned {
		l.pruned[p] += v
	}
	l.loaded = true
	return nil
}

// Loaded reports whether Load succeeded.
func (l *Ledger) Loaded() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loaded
}

// Observe accrues a listing. obs are the gateway's instances in it; when
// complete (a successful listing), instances it does not show are closed:
// they accrue nothing more until they reappear. Between two observations
// an instance accrues at the rate of the earlier one, except when the later
// one shows a new rate: the change then counts from halfway between the two
// listings, so the error is at most half a listing interval.
func (l *Ledger) Observe(obs []Observation, complete bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make(map[int64]bool, len(obs))
	for _, o := range obs {
		if o.ID <= 0 || o.At.IsZero() {
			continue
		}
		seen[o.ID] = true
		l.observeLocked(o)
	}
	if !complete {
		return
	}
	for id, e := range l.entries {
		if !seen[id] && !e.Closed {
			e.Closed = true
			l.changed = true
		}
	}
}

func (l *Ledger) observeLocked(o Observation) {
	e := l.entries[o.ID]
	if e == nil {
		if o.Rate == 0 && o.Status == "gone" {
			return // never seen alive: nothing known to account for
		}
		from := o.At
		if !o.Started.IsZero() && o.Started.Before(o.At) {
			from = o.Started
		}
		e = &entry{ID: o.ID, Pool: o.Pool, Label: o.Label, Status: o.Status, Rate: o.Rate, Through: from,
			History: []RateChange{{At: from, Rate: o.Rate, Status: o.Status}}, Days: map[string]*Bucket{}}
		l.entries[o.ID] = e
		l.changed = true
	}
	changed := o.Rate != e.Rate || o.Status != e.Status
	switchAt := o.At
	if o.At.After(e.Through) {
		if changed {
			// The change happened somewhere since the previous listing:
			// halfway is the guess with the smallest worst-case error.
			switchAt = e.Through.Add(o.At.Sub(e.Through) / 2)
		}
		e.accrue(e.Through, switchAt, e.Rate)
		e.accrue(switchAt, o.At, o.Rate)
		e.Through = o.At
		l.dirty = true
	}
	if e.Closed {
		e.Closed = false
		l.changed = true
	}
	e.Pool, e.Label = o.Pool, o.Label
	if changed {
		e.Rate, e.Status = o.Rate, o.Status
		e.History = append(e.History, RateChange{At: switchAt, Rate: o.Rate, Status: o.Status})
		if len(e.History) > maxHistory {
			// Keep the first (how it started) and the latest changes.
			e.History = append(e.History[:1], e.History[len(e.History)-maxHistory+1:]...)
		}
		l.changed = true
	}
}

// accrue books [from, to) at rate, split at UTC midnights.
func (e *entry) accrue(from, to time.Time, rate float64) {
	for t := from.UTC(); t.Before(to); {
		y, m, d := t.Date()
		end := time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
		if to.Before(end) {
			end = to.UTC()
		}
		secs := end.Sub(t).Seconds()
		day := t.Format(time.DateOnly)
		b := e.Days[day]
		if b == nil {
			b = &Bucket{}
			e.Days[day] = b
		}
		b.Dollars += rate * secs / 3600
		if rate > 0 {
			b.Seconds += secs
		}
		t = end
	}
}

// SaveDue reports whether a save is due: a state changed, or accrued spend
// has been only in memory for FlushInterval.
func (l *Ledger) SaveDue() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loaded && (l.changed || (l.dirty && l.opts.Now().Sub(l.lastSave) >= l.opts.FlushInterval))
}

// Save writes the ledger under the gateway's storage lock.
func (l *Ledger) Save(ctx context.Context) error {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	l.mu.Lock()
	if !l.loaded {
		l.mu.Unlock()
		return ErrNotLoaded
	}
	now := l.opts.Now()
	l.pruneLocked(now)
	doc := document{Version: 1, Gateway: l.opts.Gateway, SavedAt: now, Pruned: l.pruned, Entries: make([]*entry, 0, len(l.entries))}
	for _, e := range l.entries {
		doc.Entries = append(doc.Entries, e)
	}
	sort.Slice(doc.Entries, func(i, j int) bool { return doc.Entries[i].ID < doc.Entries[j].ID })
	raw, err := json.Marshal(doc)
	wasDirty, wasChanged := l.dirty, l.changed
	l.dirty, l.changed = false, false
	l.mu.Unlock()
	if err == nil {
		err = l.write(ctx, raw)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		// Try again at the next step.
		l.dirty, l.changed = l.dirty || wasDirty, l.changed || wasChanged
		return err
	}
	l.lastSave = now
	l.saveCount++
	return nil
}

func (l *Ledger) write(ctx context.Context, raw []byte) error {
	if err := l.opts.Store.Lock(ctx, l.lock()); err != nil {
		return fmt.Errorf("ledger: locking %s: %w", l.lock(), err)
	}
	defer func() {
		if err := l.opts.Store.Unlock(context.WithoutCancel(ctx), l.lock()); err != nil {
			l.log.Warn("unlocking the ledger", zap.Error(err))
		}
	}()
	if err := l.opts.Store.Store(ctx, l.key(), raw); err != nil {
		return fmt.Errorf("ledger: storing %s: %w", l.key(), err)
	}
	return nil
}

func (l *Ledger) pruneLocked(now time.Time) {
	for id, e := range l.entries {
		if e.Closed && now.Sub(e.Through) > retention {
			for _, b := range e.Days {
				l.pruned[e.Pool] += b.Dollars
			}
			delete(l.entries, id)
		}
	}
}

// Saves counts successful saves (for tests and diagnostics).
func (l *Ledger) Saves() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.saveCount
}

// Source returns the latest listing: the gateway's instances in it, whether
// it is a complete successful listing, and a version that changes with
// every new listing.
type Source func() (obs []Observation, complete bool, version uint64)

// Run feeds the ledger from src every tick until ctx ends, loading the
// stored ledger first (retrying until storage answers) and saving when
// due. On the way out it takes a last observation and saves.
func (l *Ledger) Run(ctx context.Context, src Source, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	var last uint64
	for {
		l.Step(ctx, src, &last)
		select {
		case <-ctx.Done():
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			l.Step(flush, src, &last)
			if l.Loaded() {
				if err := l.Save(flush); err != nil {
					l.log.Error("saving the cost ledger on stop", zap.Error(err))
				}
			}
			return
		case <-t.C:
		}
	}
}

// Step is one round of Run: load if not loaded yet, observe a new listing,
// save if due. last holds the listing version already observed.
func (l *Ledger) Step(ctx context.Context, src Source, last *uint64) {
	if !l.Loaded() {
		if err := l.Load(ctx); err != nil {
			l.log.Warn("loading the cost ledger; retrying", zap.Error(err))
			return
		}
	}
	if obs, complete, v := src(); v != *last {
		*last = v
		l.Observe(obs, complete)
	}
	if l.SaveDue() {
		if err := l.Save(ctx); err != nil {
			l.log.Warn("saving the cost ledger; retrying", zap.Error(err))
		}
	}
}
