package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"
)

// Poll reads the stored keys and the other gateways' spend, and publishes
// a new snapshot. The first successful poll also reads this gateway's own
// spend record, so a restart continues from what it had persisted.
func (r *Registry) Poll(ctx context.Context) error {
	started := r.now()
	stored, err := r.loadRecords(ctx)
	if err != nil {
		return err
	}
	spends, err := r.loadSpends(ctx)
	if err != nil {
		return err
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stored = mergeRecords(r.stored, stored, started)
	r.rebuildLocked()
	remote, reserved := r.sumOthers(spends, now)
	r.loaded = true
	for name, acc := range r.accounts {
		var u KeyUsage
		if s := remote[name]; s != nil {
			u = *s
		}
		acc.mu.Lock()
		acc.remote, acc.remoteReserved = u, reserved[name]
		acc.mu.Unlock()
	}
	return nil
}

// sumOthers adds up the other gateways' tallies and live reservations;
// the first poll also takes this gateway's own record into its accounts.
// The caller holds r.mu.
func (r *Registry) sumOthers(spends []spendRecord, now time.Time) (map[string]*KeyUsage, map[string]float64) {
	remote, reserved := map[string]*KeyUsage{}, map[string]float64{}
	for _, rec := range spends {
		own := rec.Gateway == r.gateway
		for name, u := range rec.Keys {
			acc := r.accounts[name]
			if acc == nil {
				continue // a key no longer defined
			}
			if own {
				if !r.loaded {
					acc.mu.Lock()
					acc.local.restore(u, now)
					acc.mu.Unlock()
				}
				continue
			}
			sum := remote[name]
			if sum == nil {
				sum = &KeyUsage{}
				remote[name] = sum
			}
			sum.sumCurrent(u, now)
		}
		if !own && now.Sub(rec.Updated) < ReservationTTL {
			for name, v := range rec.Reserved {
				reserved[name] += v
			}
		}
	}
	return remote, reserved
}

// mergeRecords keeps what this gateway did while the poll was reading:
// a key it created after the poll began, and a revocation the poll may
// have read too early (a revoked key never comes back to life).
func mergeRecords(have, read map[string]Key, started time.Time) map[string]Key {
	for name, k := range have {
		nk, ok := read[name]
		switch {
		case !ok && k.Created.After(started.Add(-time.Second)):
			read[name] = k
		case ok && nk.Hash == k.Hash && nk.Revoked.IsZero() && !k.Revoked.IsZero():
			read[name] = k
		}
	}
	return read
}

func (r *Registry) loadRecords(ctx context.Context) (map[string]Key, error) {
	names, err := r.list(ctx, recordsDir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Key, len(names))
	for _, n := range names {
		b, err := r.storage().Load(ctx, n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("loading key record %s: %w", gatewayOf(n), err)
		}
		var k Key
		if err := json.Unmarshal(b, &k); err != nil || k.Validate() != nil {
			continue // a damaged record: that key is unknown, not the others
		}
		k.Source = SourceAPI
		out[k.Name] = k
	}
	return out, nil
}

func (r *Registry) loadSpends(ctx context.Context) ([]spendRecord, error) {
	names, err := r.list(ctx, spendDir)
	if err != nil {
		return nil, err
	}
	var out []spendRecord
	for _, n := range names {
		b, err := r.storage().Load(ctx, n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("loading spend record %s: %w", gatewayOf(n), err)
		}
		var rec spendRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			continue
		}
		rec.Gateway = gatewayOf(n)
		out = append(out, rec)
	}
	return out, nil
}

// Flush writes this gateway's spend record if anything changed since the
// last write. Before the first poll has read the record it writes nothing,
// so a restart never overwrites persisted spend with zeros.
func (r *Registry) Flush(ctx context.Context) error {
	r.mu.Lock()
	if !r.loaded {
		r.mu.Unlock()
		return nil
	}
	now := r.now()
	rec := spendRecord{Gateway: r.gateway, Updated: now.UTC(), Keys: map[string]KeyUsage{}, Reserved: map[string]float64{}}
	// Written while any reservation is held too: the record's time is
	// what keeps the others counting them (ReservationTTL).
	dirty := false
	var flushed []*account
	for name, acc := range r.accounts {
		acc.mu.Lock()
		acc.local.roll(now)
		rec.Keys[name] = acc.local
		if acc.reserved > 0 {
			rec.Reserved[name] = acc.reserved
		}
		if acc.dirty || acc.reserved > 0 || acc.flushedReserved != acc.reserved {
			dirty, acc.dirty = true, false
			acc.flushedReserved = acc.reserved
			flushed = append(flushed, acc)
		}
		acc.mu.Unlock()
	}
	r.mu.Unlock()
	if !dirty {
		return nil
	}
	b, err := json.Marshal(rec)
	if err == nil {
		err = r.storage().Store(ctx, r.spendKey(r.gateway), b)
	}
	if err != nil {
		for _, acc := range flushed { // try again next time
			acc.mu.Lock()
			acc.dirty = true
			acc.mu.Unlock()
		}
		return fmt.Errorf("saving the key spend of gateway %s: %w", r.gateway, err)
	}
	return nil
}

// Run polls storage every poll and flushes spend every flush until ctx
// ends, then flushes a last time. Errors go to logf.
func (r *Registry) Run(ctx context.Context, poll, flush time.Duration, logf func(op string, err error)) {
	if err := r.Poll(ctx); err != nil && ctx.Err() == nil {
		logf("poll", err)
	}
	pt, ft := time.NewTicker(poll), time.NewTicker(flush)
	defer pt.Stop()
	defer ft.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := r.Flush(fctx); err != nil {
				logf("final flush", err)
			}
			cancel()
			return
		case <-pt.C:
			if err := r.Poll(ctx); err != nil && ctx.Err() == nil {
				logf("poll", err)
			}
		case <-ft.C:
			if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
				logf("flush", err)
			}
		}
	}
}

// Spec is what the admin API creates a key from.
type Spec struct {
	Name string `json:"name"`
	Limits
}

// Create makes a key, stores its record (with the secret's hash only) and
// returns the secret, which is never available again.
func (r *Registry) Create(ctx context.Context, s Spec) (string, Key, error) {
	secret, err := Generate()
	if err != nil {
		return "", Key{}, err
	}
	k := Key{Name: s.Name, Hash: Hash(secret), Limits: s.Limits, Created: r.now().UTC().Truncate(time.Second), Source: SourceAPI}
	if !k.Expires.IsZero() {
		k.Expires = k.Expires.UTC()
	}
	if err := k.Validate(); err != nil {
		return "", Key{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.snap.Load().byName[k.Name]; ok {
		return "", Key{}, fmt.Errorf("%w: %s", ErrExists, k.Name)
	}
	if err := r.storeRecord(ctx, k); err != nil {
		return "", Key{}, err
	}
	r.stored[k.Name] = k
	r.rebuildLocked()
	return secret, k, nil
}

// Revoke marks a stored key revoked. Every gateway on the storage sees it
// at its next poll; this one at once.
func (r *Registry) Revoke(ctx context.Context, name string) (Key, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.snap.Load().byName[name]
	switch {
	case !ok:
		return Key{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	case e.Key.Source == SourceConfig:
		return Key{}, fmt.Errorf("%w: key %s is %w; remove it there", ErrInvalid, name, ErrConfigKey)
	}
	k := e.Key
	if k.Revoked.IsZero() {
		k.Revoked = r.now().UTC().Truncate(time.Second)
		if err := r.storeRecord(ctx, k); err != nil {
			return Key{}, err
		}
	}
	r.stored[name] = k
	r.rebuildLocked()
	return k, nil
}

func (r *Registry) storeRecord(ctx context.Context, k Key) error {
	b, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("encoding key %s: %w", k.Name, err)
	}
	if err := r.store.Store(ctx, r.recordKey(k.Name), b); err != nil { // r.mu is held
		return fmt.Errorf("storing key %s: %w", k.Name, err)
	}
	return nil
}

// HistoryRow is one key's use in one day or month, over every gateway
// sharing the storage.
type HistoryRow struct {
	Key string `json:"key"`
	Tally
}

// History returns every key's use per day or month (PeriodDay or
// PeriodMonth), summed over the gateways' spend records in storage, with
// this gateway's own figures from memory (newer than its record). Rows
// are sorted by period, then key. It reads storage: an admin call, never
// the request path.
func (r *Registry) History(ctx context.Context, p Period) ([]HistoryRow, error) {
	spends, err := r.loadSpends(ctx)
	if err != nil {
		return nil, err
	}
	sums := map[[2]string]*HistoryRow{}
	add := func(key string, u *KeyUsage) {
		for _, t := range u.History(p) {
			row := sums[[2]string{t.Period, key}]
			if row == nil {
				row = &HistoryRow{Key: key, Tally: Tally{Period: t.Period}}
				sums[[2]string{t.Period, key}] = row
			}
			row.add(t)
		}
	}
	now := r.now()
	r.mu.Lock()
	for name, acc := range r.accounts {
		acc.mu.Lock()
		acc.local.roll(now)
		u := acc.local
		u.Days, u.Months = slices.Clone(u.Days), slices.Clone(u.Months)
		acc.mu.Unlock()
		add(name, &u)
	}
	r.mu.Unlock()
	for _, rec := range spends {
		if rec.Gateway == r.gateway {
			continue
		}
		for name, u := range rec.Keys {
			add(name, &u)
		}
	}
	out := make([]HistoryRow, 0, len(sums))
	for _, row := range sums {
		out = append(out, *row)
	}
	slices.SortFunc(out, func(a, b HistoryRow) int {
		if c := strings.Compare(a.Period, b.Period); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out, nil
}
