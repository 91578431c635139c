package vastai

// What the fleet costs: GET /vastai/costs and the spend metrics, read from
// the snapshot and the ledger (wire_ledger.go) in memory.

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/keys"
	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

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

// handleCosts answers GET /vastai/costs?by=pool|instance|key&period=day|month
// &since=YYYY-MM-DD from the ledger in memory (by key: from the client
// keys' spend records, summed over the gateways sharing the storage).
func (a *adminAPI) handleCosts(w http.ResponseWriter, r *http.Request, _ string) error {
	q := r.URL.Query()
	for name := range q {
		if name != "by" && name != "period" && name != "since" {
			return invalidf("%s: unknown parameter (use by, period, since)", name)
		}
	}
	if q.Get("by") == "key" {
		return a.handleKeyCosts(w, r)
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

// keyCostsView is the answer of GET /vastai/costs?by=key: a row per key
// and day (or month) with its requests, tokens and spend.
type keyCostsView struct {
	By           string            `json:"by"`
	Period       string            `json:"period"`
	Since        string            `json:"since,omitempty"`
	SpendPerHour float64           `json:"spend_per_hour"`
	TotalDollars float64           `json:"total_dollars"`
	Rows         []keys.HistoryRow `json:"rows"`
}

// handleKeyCosts answers GET /vastai/costs?by=key.
func (a *adminAPI) handleKeyCosts(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	query, err := ledger.ParseQuery("", q.Get("period"), q.Get("since"))
	if err != nil {
		return classify(lifecycle.ErrInvalidRequest, err)
	}
	reg, err := a.registry()
	if err != nil {
		return err
	}
	period := keys.PeriodDay
	if query.Period == ledger.Month {
		period = keys.PeriodMonth
	}
	rows, err := reg.History(r.Context(), period)
	if err != nil {
		return classify(errInternal, fmt.Errorf("reading the client keys' spend records: %w", err))
	}
	v := keyCostsView{By: "key", Period: query.Period, Rows: make([]keys.HistoryRow, 0, len(rows))}
	for _, row := range rows {
		if !query.Since.IsZero() && row.Period < query.Since.Format(periodLayout(query.Period)) {
			continue
		}
		v.Rows = append(v.Rows, row)
		v.TotalDollars += row.Spend
	}
	if !query.Since.IsZero() {
		v.Since = query.Since.Format(time.DateOnly)
	}
	v.SpendPerHour, _ = fleetSpend(a.app.state.watcher.Snapshot())
	return writeJSON(w, http.StatusOK, v)
}

// periodLayout is how a period of kind p is named.
func periodLayout(p string) string {
	if p == ledger.Month {
		return "2006-01"
	}
	return time.DateOnly
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
