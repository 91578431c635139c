package ledger

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Groupings and periods of a report.
const (
	ByPool     = "pool"
	ByInstance = "instance"
	Day        = "day"
	Month      = "month"
)

// ErrBadQuery matches every invalid report query.
var ErrBadQuery = errors.New("invalid cost query")

// QueryError names the parameter that is wrong.
type QueryError struct {
	Param string
	Value string
	Want  string
}

func (e *QueryError) Error() string {
	return fmt.Sprintf("%s: %q is not valid; want %s", e.Param, e.Value, e.Want)
}

// Is makes errors.Is(err, ErrBadQuery) true.
func (e *QueryError) Is(target error) bool { return target == ErrBadQuery }

// Query selects a report.
type Query struct {
	// By is ByPool (default) or ByInstance.
	By string
	// Period is Day (default) or Month.
	Period string
	// Since is the first UTC day included; zero includes everything.
	Since time.Time
}

// ParseQuery validates the by, period and since (YYYY-MM-DD) parameters;
// empty values take the defaults.
func ParseQuery(by, period, since string) (Query, error) {
	q := Query{By: by, Period: period}
	if q.By == "" {
		q.By = ByPool
	}
	if q.By != ByPool && q.By != ByInstance {
		return Query{}, &QueryError{Param: "by", Value: by, Want: "pool or instance"}
	}
	if q.Period == "" {
		q.Period = Day
	}
	if q.Period != Day && q.Period != Month {
		return Query{}, &QueryError{Param: "period", Value: period, Want: "day or month"}
	}
	if since != "" {
		t, err := time.Parse(time.DateOnly, since)
		if err != nil {
			return Query{}, &QueryError{Param: "since", Value: since, Want: "a date YYYY-MM-DD"}
		}
		q.Since = t
	}
	return q, nil
}

// Row is one period's spend of a pool or an instance.
type Row struct {
	// Period is "2006-01-02" for days, "2006-01" for months (UTC).
	Period     string  `json:"period"`
	Pool       string  `json:"pool"`
	InstanceID int64   `json:"instance_id"`
	Dollars    float64 `json:"dollars"`
	// Hours is the billed instance-time.
	Hours float64 `json:"hours"`
}

// Report is the answer to a Query.
type Report struct {
	Rows         []Row   `json:"rows"`
	TotalDollars float64 `json:"total_dollars"`
}

// Report sums the ledger per period and pool or instance, oldest period
// first. Figures run up to each instance's latest listing.
func (l *Ledger) Report(q Query) Report {
	since := ""
	if !q.Since.IsZero() {
		since = q.Since.UTC().Format(time.DateOnly)
	}
	type key struct {
		period, pool string
		id           int64
	}
	sums := map[key]*Row{}
	out := Report{Rows: []Row{}}
	l.mu.Lock()
	for _, e := range l.entries {
		for day, b := range e.Days {
			if day < since {
				continue
			}
			k := key{period: day, pool: e.Pool}
			if q.Period == Month {
				k.period = day[:7]
			}
			if q.By == ByInstance {
				k.id = e.ID
			}
			r := sums[k]
			if r == nil {
				r = &Row{Period: k.period, Pool: k.pool, InstanceID: k.id}
				sums[k] = r
			}
			r.Dollars += b.Dollars
			r.Hours += b.Seconds / 3600
			out.TotalDollars += b.Dollars
		}
	}
	l.mu.Unlock()
	for _, r := range sums {
		out.Rows = append(out.Rows, *r)
	}
	sort.Slice(out.Rows, func(i, j int) bool {
		a, b := out.Rows[i], out.Rows[j]
		if a.Period != b.Period {
			return a.Period < b.Period
		}
		if a.Pool != b.Pool {
			return a.Pool < b.Pool
		}
		return a.InstanceID < b.InstanceID
	})
	return out
}

// PoolTotals is every pool's spend since the ledger began (pruned
// instances included), for a monotonic counter.
func (l *Ledger) PoolTotals() map[string]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]float64, len(l.pruned))
	for p, v := range l.pruned {
		out[p] += v
	}
	for _, e := range l.entries {
		for _, b := range e.Days {
			out[e.Pool] += b.Dollars
		}
	}
	return out
}

// Instance is one instance's account, for a detail view.
type Instance struct {
	ID      int64        `json:"id"`
	Pool    string       `json:"pool"`
	Label   string       `json:"label,omitempty"`
	Status  string       `json:"status"`
	Rate    float64      `json:"rate_per_hour"`
	Through time.Time    `json:"through"`
	Closed  bool         `json:"closed"`
	Dollars float64      `json:"dollars"`
	Hours   float64      `json:"hours"`
	History []RateChange `json:"history"`
}

// Instance returns one instance's account.
func (l *Ledger) Instance(id int64) (Instance, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[id]
	if e == nil {
		return Instance{}, false
	}
	out := Instance{ID: e.ID, Pool: e.Pool, Label: e.Label, Status: e.Status, Rate: e.Rate, Through: e.Through,
		Closed: e.Closed, History: append([]RateChange(nil), e.History...)}
	for _, b := range e.Days {
		out.Dollars += b.Dollars
		out.Hours += b.Seconds / 3600
	}
	return out, true
}
