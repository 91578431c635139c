package vastai

// Wiring of the cost ledger: the reload-surviving loop that feeds the
// watcher's snapshots to ledger.Ledger and persists it.

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/ledger"
)

// ledgerTick is how often the ledger loop looks for a new snapshot. The
// ledger sees only the latest one, so it must look more often than the
// watcher lists (poll_interval >= 500ms): a listing it skipped could hide
// when a rate changed. Looking is a pointer load when nothing changed.
const ledgerTick = 100 * time.Millisecond

// ledgerRuntime is the running cost ledger and what identifies its
// configuration (gateway id and storage), so a reload that changes neither
// keeps the same loop.
type ledgerRuntime struct {
	identity string
	led      *ledger.Ledger
	cancel   context.CancelFunc
	done     chan struct{}
}

// applyLedgerLocked starts the state's one ledger loop, or restarts it when
// the gateway id or the storage changed (the old loop flushes first).
// Called with s.mu held.
func (s *state) applyLedgerLocked(log *zap.Logger, gateway string, store ledger.Store) {
	id := fmt.Sprintf("%s|%T|%v", gateway, store, store)
	if cur := s.ledger.Load(); cur != nil && cur.identity == id {
		return
	}
	s.stopLedgerLocked()
	led := ledger.New(ledger.Options{Gateway: gateway, Store: store, Logger: log.Named("ledger")})
	ctx, cancel := context.WithCancel(context.Background())
	rt := &ledgerRuntime{identity: id, led: led, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rt.done)
		led.Run(ctx, s.ledgerSource(), ledgerTick)
	}()
	s.ledger.Store(rt)
}

// stopLedgerLocked stops the ledger loop; it saves on its way out.
func (s *state) stopLedgerLocked() {
	rt := s.ledger.Swap(nil)
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
}

// ledgerSource turns the watcher's snapshots into the ledger's
// observations: the pools' instances, each as of the listing that last
// showed it. Only the ledger loop calls it.
func (s *state) ledgerSource() ledger.Source {
	var last *fleet.Snapshot
	return func() ([]ledger.Observation, bool, uint64) {
		snap := s.watcher.Snapshot()
		if snap == last {
			return nil, false, snap.Generation // the ledger skips a version it has seen
		}
		last = snap
		return observations(snap)
	}
}

func observations(snap *fleet.Snapshot) ([]ledger.Observation, bool, uint64) {
	obs := make([]ledger.Observation, 0, len(snap.Members))
	for i := range snap.Members {
		m := &snap.Members[i]
		if m.Pool == "" {
			continue // not the gateway's: another tool's or a foreign pool's
		}
		o := ledger.Observation{ID: m.Instance.ID, Pool: m.Pool, Label: m.Instance.Label,
			Status: ledger.Status(&m.Instance), Rate: ledger.Rate(&m.Instance), At: m.LastSeen}
		if m.Instance.StartDate > 0 {
			o.Started = time.Unix(0, int64(m.Instance.StartDate*1e9))
		}
		obs = append(obs, o)
	}
	complete := !snap.Poll.LastSuccess.IsZero() && snap.Poll.ConsecutiveFailures == 0
	return obs, complete, snap.Generation
}
