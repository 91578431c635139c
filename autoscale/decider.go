package autoscale

import (
	"fmt"
	"math"
	"time"
)

// Reason is the machine word of a Decision: what the Decider did, or why
// it kept the count.
type Reason string

// The reasons. The first group changes the count; the second keeps it.
const (
	ReasonScaleUp    Reason = "scale_up"
	ReasonScaleDown  Reason = "scale_down"
	ReasonPanic      Reason = "panic"
	ReasonIdleToZero Reason = "idle_to_zero"
	ReasonFromZero   Reason = "from_zero"
	ReasonHold       Reason = "hold"
	ReasonAtMax      Reason = "at_max"
	ReasonAtMin      Reason = "at_min"
)

// Decision is the outcome of one Decide.
type Decision struct {
	// Desired is the instance count the pool should converge to.
	Desired int `json:"desired"`
	// Current is the ready count of the latest sample.
	Current int `json:"current"`
	// Previous is the Desired of the decision before (Desired for the
	// first decision after NewDecider, where Changed is true anyway).
	Previous int `json:"previous"`
	// Changed is true when Desired differs from the previous decision, and
	// for the first decision of a new Decider: the caller logs at info
	// level only then.
	Changed bool `json:"changed"`
	// Reason is the machine word (a Reason constant).
	Reason Reason `json:"reason"`
	// Explanation says the same for a human, with the figures.
	Explanation string `json:"explanation"`
	// StableLoad and PanicLoad are the two window averages (0 without
	// samples).
	StableLoad float64 `json:"stable_load"`
	PanicLoad  float64 `json:"panic_load"`
	// Panicking is true while scale-down is blocked by a recent panic.
	Panicking bool `json:"panicking"`
}

// Decider turns a pool's load samples into a desired instance count; see
// the package comment for the rules. It is not safe for concurrent use:
// one loop owns it and publishes its Decisions.
type Decider struct {
	cfg         Config
	ring        ring
	panicSpan   int
	started     bool
	desired     int
	ready       int
	load        float64
	seen        bool
	lastRequest time.Time
	panicUntil  time.Time
	upSince     time.Time
	upAgreed    int
	downSince   time.Time
	fromZero    bool
	settleUntil time.Time
}

// NewDecider applies cfg's defaults, validates it and returns a Decider
// with empty windows.
func NewDecider(cfg Config) (*Decider, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Decider{
		cfg:       cfg,
		ring:      newRing(cfg.StableWindow, cfg.Bucket),
		panicSpan: int((cfg.PanicWindow + cfg.Bucket - 1) / cfg.Bucket),
	}, nil
}

// Config returns the Decider's configuration, defaults applied.
func (d *Decider) Config() Config { return d.cfg }

// Observe records one sample: the pool's load (in-flight plus engine
// waiting, summed, plus the requests a Hold holds: they are the backlog)
// and its ready instance count at now (serving instances only: one
// still booting is no capacity). To make "a single
// request resets the idle clock" hold for requests shorter than the
// sample period, load should be the peak since the last sample, or at
// least 1 if any request arrived.
func (d *Decider) Observe(now time.Time, load float64, ready int) {
	if math.IsNaN(load) || load < 0 {
		load = 0
	}
	if ready < 0 {
		ready = 0
	}
	d.load, d.ready = load, ready
	if !d.seen || (load > 0 && now.After(d.lastRequest)) {
		d.seen, d.lastRequest = true, now
	}
	if ready == 0 {
		// A queue with no instance behind it is not load per instance.
		if load > 0 {
			d.fromZero, d.settleUntil = true, time.Time{}
		}
		return
	}
	if d.fromZero {
		d.fromZero, d.settleUntil = false, now.Add(d.cfg.ScaleUpDelay)
	}
	if !d.settleUntil.IsZero() {
		if load > d.capacity() && now.Before(d.settleUntil) {
			return // the held backlog is still draining
		}
		d.settleUntil = time.Time{}
	}
	d.ring.add(now, load, 1)
}

func (d *Decider) capacity() float64 { return float64(d.ready) * d.cfg.TargetPerInstance }

// need is the instance count a load asks for.
func (d *Decider) need(load float64) int {
	return int(math.Ceil(load/d.cfg.TargetPerInstance - 1e-9))
}

func (d *Decider) clamp(n, lo int) int {
	return max(lo, min(n, d.cfg.Max))
}

// Decide applies the rules at now and returns the decision.
func (d *Decider) Decide(now time.Time) Decision {
	first := !d.started
	if first {
		// Resume from what is there, not from zero.
		d.started, d.desired = true, d.clamp(d.ready, d.cfg.Min)
	}
	prev := d.desired
	dec := d.decide(now)
	dec.Desired, dec.Current, dec.Previous = d.desired, d.ready, prev
	dec.Changed = first || d.desired != prev
	dec.Panicking = now.Before(d.panicUntil)
	return dec
}

// decide runs the rules in order; the first that applies wins.
func (d *Decider) decide(now time.Time) Decision {
	sAvg, sN, _ := d.ring.stats(now, len(d.ring.slots), math.Inf(1))
	high := d.cfg.PanicThreshold * d.capacity()
	pAvg, pN, pHigh := d.ring.stats(now, d.panicSpan, high)
	dec := Decision{StableLoad: sAvg, PanicLoad: pAvg}
	if r, ok := d.limits(); ok {
		return d.explain(dec, r, "desired count clamped to [%d, %d] after a config change", d.cfg.Min, d.cfg.Max)
	}
	if !d.seen {
		return d.explain(dec, ReasonHold, "no sample yet")
	}
	if (d.ready == 0 || d.desired == 0) && d.load > 0 {
		return d.wake(dec)
	}
	if !d.settleUntil.IsZero() {
		return d.explain(dec, ReasonFromZero, "the first instance is draining the held backlog (load %.1f); samples count from %s or when load <= capacity",
			d.load, d.settleUntil.Format(time.RFC3339))
	}
	if d.desired == 0 {
		return d.explain(dec, ReasonHold, "scaled to zero; the next request wakes the pool")
	}
	if idle := now.Sub(d.lastRequest); d.cfg.Min == 0 && idle >= d.cfg.IdleToZero {
		d.desired = 0
		d.resetStreaks()
		return d.explain(dec, ReasonIdleToZero, "no request for %v (idle_to_zero %v)", idle.Round(time.Second), d.cfg.IdleToZero)
	}
	if d.ready > 0 && pN >= 2 && pHigh >= 2 && pAvg >= high {
		return d.panic(now, dec, high)
	}
	if sN == 0 {
		return d.explain(dec, ReasonHold, "no load sample in the stable window")
	}
	return d.follow(now, dec)
}

// limits clamps a desired count left outside [Min, Max] by a config
// change (Restore with a new Config).
func (d *Decider) limits() (Reason, bool) {
	switch {
	case d.desired > d.cfg.Max:
		d.desired = d.cfg.Max
		return ReasonAtMax, true
	case d.desired < d.cfg.Min:
		d.desired = d.cfg.Min
		return ReasonAtMin, true
	}
	return "", false
}

// wake handles load with nothing ready (or a pool decided to zero): one
// instance (or Min) at once, whatever the backlog.
func (d *Decider) wake(dec Decision) Decision {
	d.resetStreaks()
	if want := d.clamp(1, d.cfg.Min); d.desired < want {
		d.desired = want
	}
	return d.explain(dec, ReasonFromZero, "%.0f requests held with %d ready: waking %d instance(s); the backlog is not counted as steady load",
		d.load, d.ready, d.desired)
}

// panic raises the count at once to what the panic window asks for and
// blocks scale-down for a stable window.
func (d *Decider) panic(now time.Time, dec Decision, high float64) Decision {
	d.panicUntil = now.Add(d.cfg.StableWindow)
	d.resetStreaks()
	need := d.need(dec.PanicLoad)
	want := d.clamp(need, max(1, d.cfg.Min))
	if want > d.desired {
		d.desired = want
		return d.explain(dec, ReasonPanic, "panic: load %.1f over %v >= %.1f (%.1fx capacity of %d ready): scaled up at once",
			dec.PanicLoad, d.cfg.PanicWindow, high, d.cfg.PanicThreshold, d.ready)
	}
	if need > d.cfg.Max {
		return d.explain(dec, ReasonAtMax, "panic: load %.1f asks for %d, held at max %d", dec.PanicLoad, need, d.cfg.Max)
	}
	return d.explain(dec, ReasonPanic, "panic: load %.1f over %v, %d instance(s) already desired; no scale-down until %s",
		dec.PanicLoad, d.cfg.PanicWindow, d.desired, d.panicUntil.Format(time.RFC3339))
}

func (d *Decider) resetStreaks() {
	d.upSince, d.upAgreed, d.downSince = time.Time{}, 0, time.Time{}
}

// explain fills the reason and the human text.
func (d *Decider) explain(dec Decision, r Reason, format string, args ...any) Decision {
	dec.Reason = r
	dec.Explanation = fmt.Sprintf(format, args...)
	return dec
}
