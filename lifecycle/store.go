package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
)

// Store is durable key-value storage with named locks. certmagic.Storage
// (Caddy's ctx.Storage()) satisfies it. Semantics follow certmagic: Load and
// List return an error matching fs.ErrNotExist for missing keys; Delete of a
// missing key is not an error; Lock blocks until the lock is free (or
// stale, when its holder died) or ctx ends; Unlock is called only after a
// successful Lock.
type Store interface {
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string, recursive bool) ([]string, error)
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// MemoryStore is an in-memory Store for tests and single-process use. Its
// locks are process-local.
type MemoryStore struct {
	mu    sync.Mutex
	data  map[string][]byte
	locks map[string]chan struct{}
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{data: map[string][]byte{}, locks: map[string]chan struct{}{}}
}

// Store saves a copy of value under key.
func (s *MemoryStore) Store(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = append([]byte(nil), value...)
	return nil
}

// Load returns a copy of the value, or an error matching fs.ErrNotExist.
func (s *MemoryStore) Load(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	if !ok {
		return nil, fmt.Errorf("memory store: %s: %w", key, fs.ErrNotExist)
	}
	return append([]byte(nil), v...), nil
}

// Delete removes key and, like a directory, every key under "key/".
func (s *MemoryStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.data, key)
	for k := range s.data {
		if strings.HasPrefix(k, key+"/") {
			delete(s.data, k)
		}
	}
	return nil
}

// List returns the keys under prefix, like certmagic's FileStorage: with
// recursive false, the direct children (files and directories); with true,
// every key below. A prefix with nothing under it gives fs.ErrNotExist.
func (s *MemoryStore) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prefix = strings.TrimSuffix(prefix, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for k := range s.data {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		if !ok || rest == "" {
			continue
		}
		if recursive {
			seen[k] = true
			continue
		}
		child, _, _ := strings.Cut(rest, "/")
		seen[prefix+"/"+child] = true
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("memory store: %s: %w", prefix, fs.ErrNotExist)
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// Lock blocks until the named lock is free or ctx ends.
func (s *MemoryStore) Lock(ctx context.Context, name string) error {
	for {
		s.mu.Lock()
		ch, held := s.locks[name]
		if !held {
			s.locks[name] = make(chan struct{})
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("memory store: lock %s: %w", name, ctx.Err())
		}
	}
}

// Unlock releases the named lock.
func (s *MemoryStore) Unlock(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, held := s.locks[name]
	if !held {
		return fmt.Errorf("memory store: unlock %s: not locked", name)
	}
	delete(s.locks, name)
	close(ch)
	return nil
}

// Keys, all under "vastai/<gateway>/".
func (m *Manager) keyBase() string { return "vastai/" + m.cfg.GatewayID }

func (m *Manager) opsPrefix() string   { return m.keyBase() + "/operations" }
func (m *Manager) instPrefix() string  { return m.keyBase() + "/instances" }
func (m *Manager) blockPrefix() string { return m.keyBase() + "/blocklist" }
func (m *Manager) opKey(id string) string {
	return m.opsPrefix() + "/" + id + ".json"
}
func (m *Manager) instKey(id int64) string {
	return fmt.Sprintf("%s/%d.json", m.instPrefix(), id)
}
func (m *Manager) blockKey(machine int64) string {
	return fmt.Sprintf("%s/%d.json", m.blockPrefix(), machine)
}
func (m *Manager) stateKey() string { return m.keyBase() + "/reconcile_state.json" }
func (m *Manager) lockName() string { return m.keyBase() + "/reconcile" }

// listJSON returns the keys ending in ".json" directly under prefix; a
// missing prefix is an empty list, any other error is returned (callers
// must not mistake a storage failure for "no records").
func listJSON(ctx context.Context, st Store, prefix string) ([]string, error) {
	keys, err := st.List(ctx, prefix, false)
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	out := keys[:0]
	for _, k := range keys {
		if strings.HasSuffix(k, ".json") {
			out = append(out, k)
		}
	}
	return out, nil
}

func isNotExist(err error) bool { return err != nil && errors.Is(err, fs.ErrNotExist) }
