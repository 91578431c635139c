package keys

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Tally is what a key used in one period.
type Tally struct {
	// Period names the period ("2026-12-03", "2026-12", "" for total).
	Period string `json:"period"`
	// Requests counts the requests admitted and finished.
	Requests int64 `json:"requests"`
	// Errors counts the requests that ended in an error (status >= 400,
	// or no response).
	Errors int64 `json:"errors"`
	// TokensIn and TokensOut are prompt and completion tokens.
	TokensIn  int64 `json:"tokens_in"`
	TokensOut int64 `json:"tokens_out"`
	// Estimated counts the requests whose tokens were estimated (no usage
	// came back).
	Estimated int64 `json:"estimated"`
	// Spend is the dollars charged.
	Spend float64 `json:"spend"`
	// Seconds is the time the requests took, summed.
	Seconds float64 `json:"seconds"`
}

func (t *Tally) add(o Tally) {
	t.Requests += o.Requests
	t.Errors += o.Errors
	t.TokensIn += o.TokensIn
	t.TokensOut += o.TokensOut
	t.Estimated += o.Estimated
	t.Spend += o.Spend
	t.Seconds += o.Seconds
}

// KeyUsage is a key's tallies for the current day, month and overall, and
// the past days and months it was used in (the cost ledger per key).
type KeyUsage struct {
	Day   Tally `json:"day"`
	Month Tally `json:"month"`
	Total Tally `json:"total"`
	// Days and Months are the closed periods with use, oldest first, at
	// most KeepDays and KeepMonths of them.
	Days   []Tally `json:"days,omitempty"`
	Months []Tally `json:"months,omitempty"`
}

// How much history a key's usage keeps: about two months of days, two
// years of months.
const (
	KeepDays   = 62
	KeepMonths = 24
)

// roll starts new day and month tallies when now is in another period,
// keeping the closed ones that saw use.
func (u *KeyUsage) roll(now time.Time) {
	if d := periodID(PeriodDay, now); u.Day.Period != d {
		u.Days = closePeriod(u.Days, u.Day, KeepDays)
		u.Day = Tally{Period: d}
	}
	if m := periodID(PeriodMonth, now); u.Month.Period != m {
		u.Months = closePeriod(u.Months, u.Month, KeepMonths)
		u.Month = Tally{Period: m}
	}
}

// closePeriod appends a finished period's tally if it saw use, keeping
// the last keep.
func closePeriod(past []Tally, t Tally, keep int) []Tally {
	if t.Period == "" || (t.Requests == 0 && t.Spend == 0) {
		return past
	}
	past = append(past, t)
	if n := len(past); n > keep {
		past = append([]Tally(nil), past[n-keep:]...)
	}
	return past
}

// History returns the tallies of every period with use, the current one
// last: days or months.
func (u *KeyUsage) History(p Period) []Tally {
	past, cur := u.Days, u.Day
	if p == PeriodMonth {
		past, cur = u.Months, u.Month
	}
	out := append([]Tally(nil), past...)
	if cur.Requests > 0 || cur.Spend > 0 {
		out = append(out, cur)
	}
	return out
}

// Of returns the tally of period p.
func (u *KeyUsage) Of(p Period) Tally {
	switch p {
	case PeriodDay:
		return u.Day
	case PeriodMonth:
		return u.Month
	}
	return u.Total
}

func (u *KeyUsage) add(o Tally) {
	u.Day.add(o)
	u.Month.add(o)
	u.Total.add(o)
}

// restore takes a persisted record of this gateway's own use as the base
// (its current tallies and its history), then adds what u gathered before
// the record was read.
func (u *KeyUsage) restore(o KeyUsage, now time.Time) {
	gathered := *u
	*u = o
	u.Days, u.Months = slices.Clone(o.Days), slices.Clone(o.Months)
	u.roll(now)
	u.sumCurrent(gathered, now)
}

// sumCurrent adds o's tallies of the periods containing now.
func (u *KeyUsage) sumCurrent(o KeyUsage, now time.Time) {
	u.roll(now)
	if o.Day.Period == periodID(PeriodDay, now) {
		u.Day.add(o.Day)
	}
	if o.Month.Period == periodID(PeriodMonth, now) {
		u.Month.add(o.Month)
	}
	u.Total.add(o.Total)
}

// window is a sliding one-minute counter: the current minute's count plus
// the previous minute's, weighted by the part of it still in the window.
type window struct {
	start     time.Time
	cur, prev float64
}

func (w *window) roll(now time.Time) {
	m := now.Truncate(time.Minute)
	if m.Equal(w.start) {
		return
	}
	if m.Sub(w.start) == time.Minute {
		w.prev = w.cur
	} else {
		w.prev = 0
	}
	w.cur, w.start = 0, m
}

func (w *window) value(now time.Time) float64 {
	w.roll(now)
	frac := float64(now.Sub(w.start)) / float64(time.Minute)
	return w.prev*(1-frac) + w.cur
}

// account is one key's running state. It outlives snapshot rebuilds (a
// key's limits hold across storage polls and config reloads), and its
// mutex is the key's own: requests of different keys never share a lock.
type account struct {
	mu       sync.Mutex
	local    KeyUsage // this gateway's, persisted in its spend record
	remote   KeyUsage // the other gateways', as of the last poll
	reserved float64  // dollars reserved by requests in flight
	// remoteReserved is what the other gateways' requests in flight hold,
	// as of the last poll (records older than ReservationTTL ignored).
	remoteReserved float64
	// flushedReserved is reserved as last written, to write on a change.
	flushedReserved float64
	parallel        int
	rpm, tpm        window
	dirty           bool
}

// Demand is what a request may cost at most, reserved before dispatch.
type Demand struct {
	// Tokens is the prompt estimate plus max_tokens.
	Tokens int
	// Dollars is the worst-case cost of those tokens.
	Dollars float64
}

// LimitError is a refusal by a limit, with when to retry.
type LimitError struct {
	Err        error // ErrRateLimited or ErrBudgetExceeded
	Limit      string
	RetryAfter time.Duration
}

func (e *LimitError) Error() string { return e.Err.Error() + ": " + e.Limit }
func (e *LimitError) Unwrap() error { return e.Err }

// admit checks the limits and reserves d, or refuses.
func (a *account) admit(k *Key, d Demand, now time.Time) (*Ticket, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	nextMinute := now.Truncate(time.Minute).Add(time.Minute).Sub(now)
	if k.MaxParallel > 0 && a.parallel >= k.MaxParallel {
		return nil, &LimitError{ErrRateLimited, "max_parallel", time.Second}
	}
	if k.RPM > 0 && a.rpm.value(now)+1 > float64(k.RPM) {
		return nil, &LimitError{ErrRateLimited, "rpm", nextMinute}
	}
	if k.TPM > 0 {
		if v := a.tpm.value(now); v > 0 && v+float64(d.Tokens) > float64(k.TPM) {
			return nil, &LimitError{ErrRateLimited, "tpm", nextMinute}
		}
	}
	if k.Budget > 0 {
		a.local.roll(now)
		spent := a.local.Of(k.BudgetPeriod()).Spend + a.remoteSpend(k.BudgetPeriod(), now)
		if spent+a.reserved+a.remoteReserved+d.Dollars > k.Budget {
			return nil, &LimitError{ErrBudgetExceeded, string(k.BudgetPeriod()), untilPeriodEnd(k.BudgetPeriod(), now)}
		}
	}
	a.parallel++
	a.reserved += d.Dollars
	a.rpm.cur++
	a.tpm.cur += float64(d.Tokens)
	return &Ticket{acc: a, demand: d, start: now}, nil
}

func (a *account) remoteSpend(p Period, now time.Time) float64 {
	t := a.remote.Of(p)
	if t.Period != periodID(p, now) {
		return 0
	}
	return t.Spend
}

// untilPeriodEnd is how long until a budget period starts afresh; a total
// budget never does (an hour is then only a polite Retry-After).
func untilPeriodEnd(p Period, now time.Time) time.Duration {
	now = now.UTC()
	switch p {
	case PeriodDay:
		return now.Truncate(24 * time.Hour).Add(24 * time.Hour).Sub(now)
	case PeriodMonth:
		y, m, _ := now.Date()
		return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC).Sub(now)
	}
	return time.Hour
}

// Ticket is one admitted request's reservation. Exactly one of Settle and
// Release takes effect; later calls do nothing, so a deferred Release
// after a Settle is safe.
type Ticket struct {
	acc    *account
	demand Demand
	start  time.Time
	done   atomic.Bool
}

// Outcome is what a finished request used.
type Outcome struct {
	TokensIn, TokensOut int
	Estimated           bool
	Failed              bool
	Dollars             float64
	Duration            time.Duration
}

// Settle replaces the reservation with what the request used.
func (t *Ticket) Settle(o Outcome, now time.Time) bool {
	if t == nil || !t.done.CompareAndSwap(false, true) {
		return false
	}
	a := t.acc
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unreserve(t.demand)
	a.tpm.roll(now)
	a.tpm.cur = math.Max(0, a.tpm.cur+float64(o.TokensIn+o.TokensOut))
	a.local.roll(now)
	tl := Tally{Requests: 1, TokensIn: int64(o.TokensIn), TokensOut: int64(o.TokensOut), Spend: o.Dollars, Seconds: o.Duration.Seconds()}
	if o.Failed {
		tl.Errors = 1
	}
	if o.Estimated {
		tl.Estimated = 1
	}
	a.local.add(tl)
	a.dirty = true
	return true
}

// Release drops the reservation of a request that used nothing.
func (t *Ticket) Release() {
	if t == nil || !t.done.CompareAndSwap(false, true) {
		return
	}
	t.acc.mu.Lock()
	defer t.acc.mu.Unlock()
	t.acc.unreserve(t.demand)
}

// unreserve takes back the demand; the caller holds a.mu. Its tokens
// leave the tpm window (a settle adds the real ones back); when the
// minute turned since the admission they leave the new minute instead,
// clamped at zero: the sliding window is an estimate either way.
func (a *account) unreserve(d Demand) {
	a.parallel--
	a.reserved = math.Max(0, a.reserved-d.Dollars)
	a.tpm.cur = math.Max(0, a.tpm.cur-float64(d.Tokens))
}

// Start is when the request was admitted.
func (t *Ticket) Start() time.Time { return t.start }

// TokenRate is a price in dollars per token.
type TokenRate struct {
	In, Out float64
}

// Cost is the price of in prompt and out completion tokens.
func (r TokenRate) Cost(in, out int) float64 {
	return float64(in)*r.In + float64(out)*r.Out
}
