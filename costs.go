package vastai

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
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

// fleetSpend is what the gateway's instances bill per hour now, in total
// and per pool (every configured pool has an entry).
func fleetSpend(snap *fleet.Snapshot) (total float64, pools map[string]float64) {
	pools = make(map[string]float64, len(snap.Pools))
	for name := range snap.Pools {
		pools[name] = 0
	}
	for i := range snap.Members {
		m := &snap.Members[i]
		if m.Pool == "" {
			continue
		}
		r := ledger.Rate(&m.Instance)
		pools[m.Pool] += r
		total += r
	}
	return total, pools
}

// costsView is the answer of GET /vastai/costs.
type costsView struct {
	By           string       `json:"by"`
	Period       string       `json:"period"`
	Since        string       `json:"since,omitempty"`
	SpendPerHour float64      `json:"spend_per_hour"`
	TotalDollars float64      `json:"total_dollars"`
	Rows         []ledger.Row `json:"rows"`
}

// handleCosts answers GET /vastai/costs?by=pool|instance&period=day|month
// &since=YYYY-MM-DD from the ledger in memory: no storage access.
func (a *adminAPI) handleCosts(w http.ResponseWriter, r *http.Request, _ string) error {
	q := r.URL.Query()
	for name := range q {
		if name != "by" && name != "period" && name != "since" {
			return invalidf("%s: unknown parameter (use by, period, since)", name)
		}
	}
	query, err := ledger.ParseQuery(q.Get("by"), q.Get("period"), q.Get("since"))
	if err != nil {
		return classify(lifecycle.ErrInvalidRequest, err)
	}
	rt := a.app.state.ledger.Load()
	if rt == nil || !rt.led.Loaded() {
		return errLedgerNotLoaded
	}
	rep := rt.led.Report(query)
	v := costsView{By: query.By, Period: query.Period, TotalDollars: rep.TotalDollars, Rows: rep.Rows}
	if !query.Since.IsZero() {
		v.Since = query.Since.Format(time.DateOnly)
	}
	v.SpendPerHour, _ = fleetSpend(a.app.state.watcher.Snapshot())
	return writeJSON(w, http.StatusOK, v)
}

var errLedgerNotLoaded = errors.New("the cost ledger has not been read from storage yet (see the log); try again shortly")

// costCollector exports the spend rate and the ledger's totals.
type costCollector struct {
	s       *state
	rate    *prometheus.Desc
	dollars *prometheus.Desc
}

func (s *state) registerCostMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	c := &costCollector{
		s: s,
		rate: prometheus.NewDesc("caddy_vastai_spend_dollars_per_hour",
			"What the pool's instances bill per hour now (dph_total while running, storage while loading or stopped).", []string{"pool"}, nil),
		dollars: prometheus.NewDesc("caddy_vastai_spend_dollars_total",
			"Spend accrued by the pool's instances per the persisted cost ledger; survives restarts.", []string{"pool"}, nil),
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return err
	}
	return nil
}

// Describe implements prometheus.Collector.
func (c *costCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rate
	ch <- c.dollars
}

// Collect implements prometheus.Collector.
func (c *costCollector) Collect(ch chan<- prometheus.Metric) {
	_, pools := fleetSpend(c.s.watcher.Snapshot())
	for pool, r := range pools {
		ch <- prometheus.MustNewConstMetric(c.rate, prometheus.GaugeValue, r, pool)
	}
	if rt := c.s.ledger.Load(); rt != nil && rt.led.Loaded() {
		for pool, d := range rt.led.PoolTotals() {
			ch <- prometheus.MustNewConstMetric(c.dollars, prometheus.CounterValue, d, pool)
		}
	}
}

// spendPerHour is the fleet-wide spend rate of /vastai/status.
func spendPerHour(snap *fleet.Snapshot) float64 {
	total, _ := fleetSpend(snap)
	return total
}
