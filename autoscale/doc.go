// Package autoscale holds the two algorithms behind per-pool autoscaling
// (issue #11), without Caddy: the Decider, which turns load samples into a
// desired instance count, and the Hold, which parks requests while a pool
// scales from zero.
//
// # Decider
//
// The Decider is pure logic with an injected clock. Its owner (one loop
// per pool) calls Observe(now, load, ready) every sample and Decide(now)
// every decision interval; it starts no goroutine and never reads the
// wall clock, so tests drive it with a fake clock and a restart or a
// config reload carries it over with Snapshot and Restore.
//
// Load is the pool's summed in-flight plus engine-waiting requests.
// Samples go into one ring of fixed-width buckets (Config.Bucket, 1s by
// default) that covers the stable window, so memory is bounded by
// StableWindow/Bucket whatever the sample rate; the panic window is the
// ring's newest buckets. An average is the mean of the bucket means over
// the buckets that hold samples (time-weighted, not sample-weighted).
//
// The rules, in the order Decide applies them:
//
//   - Limits: a desired count outside [Min, Max] (after a config change)
//     is clamped at once (at_min, at_max).
//   - From zero: with no ready instance (or a desired count of 0) and load
//     above zero, the requests are held and the desired count becomes
//     max(1, Min) at once (from_zero), and stays there while the first
//     instance drains the backlog. See "From zero" below.
//   - Idle to zero: with Min 0, no request for IdleToZero sends the pool
//     to 0 (idle_to_zero). Only this rule takes the last instance: the
//     load rules never go below 1, so a quiet pool keeps one instance
//     until IdleToZero even when ScaleDownDelay is shorter. A sample with
//     load resets the clock.
//   - Panic: when the panic-window average is at least PanicThreshold x
//     capacity (ready x TargetPerInstance) and at least two of its buckets
//     are, the desired count rises at once to ceil(panic average/target)
//     (panic). One bucket alone never panics: a single jittery sample is
//     not a burst. Panic lasts while the condition holds and a
//     StableWindow after; meanwhile nothing scales down.
//   - Load: desired = clamp(ceil(avg/target), max(1, Min), Max). To go up,
//     both the stable and the panic averages must ask for more (the
//     smaller of the two is used), and they must keep asking for
//     ScaleUpDelay; the count then rises to the smallest count asked for
//     during that time (scale_up). To go down, both must ask for less (the
//     larger is used) for ScaleDownDelay, and the count falls by one; the
//     next step needs another full ScaleDownDelay (scale_down). A spike
//     that has already passed (high stable, low panic average) thus never
//     scales up, and a dip never scales down: on a steady ramp both
//     averages agree and this is exactly the stable-window formula.
//
// # From zero
//
// Knative #4344: a pool waking from zero sees the held backlog as
// concurrency far above target, panics, starts extra instances, and then
// the load collapses to one instance's worth. Here a sample taken with no
// ready instance is never written to the windows (it measures a queue,
// not load per instance); it only marks the backlog and resets the idle
// clock. When the first instance becomes ready after such a backlog, the
// pool settles: samples stay out of the windows and panic is off until
// either a sample shows load at or below capacity (the backlog has
// drained) or ScaleUpDelay has passed (the load is real and stays; from
// then on it counts like any other). A burst of 40 held requests with
// target 8 therefore gives 1 instance, not 5, and a load of 40 that
// persists still reaches 5, ScaleUpDelay later than a warm pool would.
//
// # Hold
//
// The Hold is a bounded FIFO for requests that arrive while a pool has no
// ready instance. Wait blocks on the caller's own goroutine; the first
// waiter of an empty, blocked queue calls Wake once (a single flight per
// episode). Release opens the gate and wakes the waiters in arrival order;
// Block closes it again. An open gate with no one queued costs Wait one
// atomic load.
package autoscale
