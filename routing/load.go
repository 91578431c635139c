// Package routing chooses an inference engine for a request from in-memory
// state only: no network I/O and no lock shared by all requests. It is
// Caddy-free; the root package's lb_policy modules call it.
//
// This file holds the in-flight accounting that load-aware selection rests
// on. The peers' bugs it avoids (see the routing issue): counts that were
// incremented after dispatch (a burst all lands on one engine), released
// twice or never on errors and cancels (counts drifting negative or up
// forever), and ties broken by order (the first engine takes everything).
package routing

import (
	"sync"
	"sync/atomic"
)

// Loads counts the requests in flight per instance. The zero value is
// ready to use; it is safe for concurrent use, and one Loads is meant to
// outlive config reloads so that counts are not reset mid-request.
type Loads struct {
	m sync.Map // int64 → *atomic.Int64
}

func (l *Loads) counter(id int64) *atomic.Int64 {
	if v, ok := l.m.Load(id); ok {
		return v.(*atomic.Int64)
	}
	v, _ := l.m.LoadOrStore(id, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// Lease is one request counted in; Release counts it out.
type Lease struct {
	n        *atomic.Int64
	released atomic.Bool
}

// Release counts the request out. Calling it more than once (a deferred
// release and an error path, or a context callback racing the body close)
// counts it out only once, so a count never goes negative.
func (r *Lease) Release() {
	if r.released.CompareAndSwap(false, true) {
		r.n.Add(-1)
	}
}

// Acquire counts a request in before it is dispatched; the request path
// pays one allocation (the Lease) and one atomic add.
func (l *Loads) Acquire(id int64) *Lease {
	n := l.counter(id)
	n.Add(1)
	return &Lease{n: n}
}

// Forget drops an instance that has left the pool with nothing in flight,
// so the map does not grow with every instance ever seen. A request that
// still holds a release keeps its own counter and releases it harmlessly.
func (l *Loads) Forget(id int64) {
	if v, ok := l.m.Load(id); ok && v.(*atomic.Int64).Load() == 0 {
		l.m.Delete(id)
	}
}

// Tracks reports whether a counter is kept for an instance, which is what
// Forget bounds.
func (l *Loads) Tracks(id int64) bool {
	_, ok := l.m.Load(id)
	return ok
}

// InFlight returns the requests in flight to an instance.
func (l *Loads) InFlight(id int64) int64 {
	if v, ok := l.m.Load(id); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// Load is a candidate's load: in flight plus the engine's waiting count,
// divided by its capacity.
func (l *Loads) Load(c Candidate) float64 {
	capacity := c.Capacity
	if capacity <= 0 {
		capacity = 1
	}
	return float64(l.InFlight(c.ID)+max(c.Waiting, 0)) / capacity
}
