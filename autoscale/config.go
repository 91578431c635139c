package autoscale

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrConfig marks an invalid Config or HoldConfig; the wrapped message
// names the field.
var ErrConfig = errors.New("invalid autoscale config")

// maxBuckets bounds the ring: StableWindow/Bucket may not exceed it, so a
// fine bucket with a long window cannot grow memory without bound.
const maxBuckets = 3600

// Defaults, after Knative's KPA (60s stable, 6s panic at 200%), Ray Serve
// (30s up) and dstack (10m down); see routing-and-scaling.md §2 and §5.2.
const (
	DefaultTargetPerInstance = 8
	DefaultStableWindow      = 60 * time.Second
	DefaultPanicWindow       = 6 * time.Second
	DefaultPanicThreshold    = 2.0
	DefaultScaleUpDelay      = 30 * time.Second
	DefaultScaleDownDelay    = 10 * time.Minute
	DefaultIdleToZero        = 15 * time.Minute
	DefaultBucket            = time.Second
)

// Config sets one pool's Decider. A zero duration, threshold or target
// selects its default (WithDefaults); Min 0 is meaningful (scale to zero)
// and Max has no default.
type Config struct {
	// Min is the fewest instances the pool keeps. 0 lets the pool go to
	// zero, but only through IdleToZero.
	Min int `json:"min,omitempty"`
	// Max is the most instances the Decider ever asks for (at least 1 and
	// at least Min). Budgets and max_instances are the caller's to apply
	// on top.
	Max int `json:"max,omitempty"`
	// TargetPerInstance is the load (in-flight plus engine-waiting
	// requests) one instance should carry. Default 8.
	TargetPerInstance float64 `json:"target_per_instance,omitempty"`
	// StableWindow is the window whose average sets the desired count, and
	// how long scale-down stays blocked after a panic. Default 60s.
	StableWindow time.Duration `json:"stable_window,omitempty"`
	// PanicWindow is the short window that detects bursts; at least two
	// buckets and at most StableWindow. Default 6s.
	PanicWindow time.Duration `json:"panic_window,omitempty"`
	// PanicThreshold is the multiple of capacity (ready x target) the
	// panic-window average must reach to scale up at once; at least 1.
	// Default 2.0.
	PanicThreshold float64 `json:"panic_threshold,omitempty"`
	// ScaleUpDelay is how long the load must keep asking for more
	// instances before the count rises (panic and from-zero skip it).
	// Default 30s.
	ScaleUpDelay time.Duration `json:"scale_up_delay,omitempty"`
	// ScaleDownDelay is how long the load must keep asking for fewer
	// instances before the count falls by one, and the least time between
	// two scale-downs. Default 10m.
	ScaleDownDelay time.Duration `json:"scale_down_delay,omitempty"`
	// IdleToZero is how long without any request sends a Min-0 pool to
	// zero. Default 15m.
	IdleToZero time.Duration `json:"idle_to_zero,omitempty"`
	// Bucket is the width of one window bucket: samples inside a bucket
	// are averaged together. Default 1s; StableWindow/Bucket is at most
	// 3600.
	Bucket time.Duration `json:"bucket,omitempty"`
}

// WithDefaults returns c with every zero knob replaced by its default.
func (c Config) WithDefaults() Config {
	setF := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	setD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setF(&c.TargetPerInstance, DefaultTargetPerInstance)
	setF(&c.PanicThreshold, DefaultPanicThreshold)
	setD(&c.StableWindow, DefaultStableWindow)
	setD(&c.PanicWindow, DefaultPanicWindow)
	setD(&c.ScaleUpDelay, DefaultScaleUpDelay)
	setD(&c.ScaleDownDelay, DefaultScaleDownDelay)
	setD(&c.IdleToZero, DefaultIdleToZero)
	setD(&c.Bucket, DefaultBucket)
	return c
}

// Validate reports the first invalid field of c (after defaults are
// applied, so call it on WithDefaults' result).
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case c.Min < 0:
		return bad("Min (%d) must not be negative", c.Min)
	case c.Max < 1:
		return bad("Max (%d) must be at least 1", c.Max)
	case c.Max < c.Min:
		return bad("Max (%d) must be at least Min (%d)", c.Max, c.Min)
	case !finite(c.TargetPerInstance) || c.TargetPerInstance <= 0:
		return bad("TargetPerInstance (%v) must be a positive number", c.TargetPerInstance)
	case !finite(c.PanicThreshold) || c.PanicThreshold < 1:
		return bad("PanicThreshold (%v) must be at least 1", c.PanicThreshold)
	case c.Bucket <= 0:
		return bad("Bucket (%v) must be positive", c.Bucket)
	case c.PanicWindow < 2*c.Bucket:
		return bad("PanicWindow (%v) must hold at least two buckets of %v", c.PanicWindow, c.Bucket)
	case c.StableWindow < c.PanicWindow:
		return bad("StableWindow (%v) must be at least PanicWindow (%v)", c.StableWindow, c.PanicWindow)
	case c.StableWindow/c.Bucket > maxBuckets:
		return bad("Bucket (%v) is too fine for StableWindow (%v): at most %d buckets", c.Bucket, c.StableWindow, maxBuckets)
	case c.ScaleUpDelay < 0:
		return bad("ScaleUpDelay (%v) must not be negative", c.ScaleUpDelay)
	case c.ScaleDownDelay < 0:
		return bad("ScaleDownDelay (%v) must not be negative", c.ScaleDownDelay)
	case c.IdleToZero < 0:
		return bad("IdleToZero (%v) must not be negative", c.IdleToZero)
	}
	return nil
}
