package autoscale

import (
	"math"
	"time"
)

// follow is the load rule: scale up after ScaleUpDelay of agreeing
// decisions, down by one after ScaleDownDelay of them, never while a
// panic blocks it.
func (d *Decider) follow(now time.Time, dec Decision) Decision {
	floor := max(1, d.cfg.Min)
	up := d.need(math.Min(dec.StableLoad, dec.PanicLoad))
	down := d.need(math.Max(dec.StableLoad, dec.PanicLoad))
	switch wantUp, wantDown := d.clamp(up, floor), d.clamp(down, floor); {
	case wantUp > d.desired:
		d.downSince = time.Time{}
		return d.scaleUp(now, dec, wantUp)
	case wantDown < d.desired:
		d.upSince, d.upAgreed = time.Time{}, 0
		return d.scaleDown(now, dec, wantDown)
	}
	d.resetStreaks()
	switch {
	case up > d.cfg.Max && d.desired == d.cfg.Max:
		return d.explain(dec, ReasonAtMax, "load %.1f asks for %d instances, held at max %d", dec.StableLoad, up, d.cfg.Max)
	case down < d.cfg.Min && d.desired == d.cfg.Min:
		return d.explain(dec, ReasonAtMin, "load %.1f asks for %d instances, held at min %d", dec.StableLoad, down, d.cfg.Min)
	}
	return d.explain(dec, ReasonHold, "load %.1f (stable) / %.1f (panic) fits %d instance(s) at %v each",
		dec.StableLoad, dec.PanicLoad, d.desired, d.cfg.TargetPerInstance)
}

// scaleUp raises the count to the smallest count asked for over the
// streak, once the streak has lasted ScaleUpDelay.
func (d *Decider) scaleUp(now time.Time, dec Decision, want int) Decision {
	if d.upSince.IsZero() {
		d.upSince, d.upAgreed = now, want
	}
	d.upAgreed = min(d.upAgreed, want)
	if waited := now.Sub(d.upSince); waited < d.cfg.ScaleUpDelay {
		return d.explain(dec, ReasonHold, "load %.1f asks for %d instances for %v of scale_up_delay %v",
			dec.StableLoad, want, waited, d.cfg.ScaleUpDelay)
	}
	d.desired = d.upAgreed
	d.upSince, d.upAgreed = time.Time{}, 0
	return d.explain(dec, ReasonScaleUp, "load %.1f asked for at least %d instances for %v",
		dec.StableLoad, d.desired, d.cfg.ScaleUpDelay)
}

// scaleDown lowers the count by one once the streak has lasted
// ScaleDownDelay, and starts the next streak now.
func (d *Decider) scaleDown(now time.Time, dec Decision, want int) Decision {
	if now.Before(d.panicUntil) {
		d.downSince = time.Time{}
		return d.explain(dec, ReasonPanic, "load %.1f asks for %d instances, but no scale-down until %s (panic)",
			dec.StableLoad, want, d.panicUntil.Format(time.RFC3339))
	}
	if d.downSince.IsZero() {
		d.downSince = now
	}
	if waited := now.Sub(d.downSince); waited < d.cfg.ScaleDownDelay {
		return d.explain(dec, ReasonHold, "load %.1f asks for %d instances for %v of scale_down_delay %v",
			dec.StableLoad, want, waited, d.cfg.ScaleDownDelay)
	}
	d.desired--
	d.downSince = now
	return d.explain(dec, ReasonScaleDown, "load %.1f asked for %d instances for %v: one fewer",
		dec.StableLoad, want, d.cfg.ScaleDownDelay)
}
