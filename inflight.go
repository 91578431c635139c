package vastai

// Per-instance request counters on the request path: requests in flight
// (what a drain waits for) and requests begun (the dashboard's requests/s).

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-vastai/caddy-vastai/routing"
)

// inflightCounter counts proxied requests in flight per instance, for
// drains, with routing.Loads: the one in-flight count that load-aware
// selection will read too. The request path touches one atomic counter per
// request.
type inflightCounter struct {
	loads  routing.Loads
	starts startedCounters // requests begun, for the dashboard (wire_dashboard.go)
}

// leaseVar is the request variable holding the reservation a vastai
// selection policy made; request variables are shared by every copy of
// the request's context, so the transport finds it.
const leaseVar = "vastai.lease"

// reservation is a request counted in at selection time.
type reservation struct {
	id    int64
	lease *routing.Lease
	taken bool // the transport has taken it over
}

// reserve counts the request in on the instance a selection policy chose,
// before anything is dispatched, so that a burst of concurrent selections
// sees each other's choices. The transport takes the count over (begin);
// if no attempt does (the request ends first), it is counted out when the
// request ends. A retry's new choice replaces the previous reservation.
func (c *inflightCounter) reserve(r *http.Request, id int64) {
	ctx := r.Context()
	if old, ok := caddyhttp.GetVar(ctx, leaseVar).(*reservation); ok && !old.taken {
		old.lease.Release()
	}
	res := &reservation{id: id, lease: c.loads.Acquire(id)}
	context.AfterFunc(ctx, res.lease.Release)
	caddyhttp.SetVar(ctx, leaseVar, res)
}

// begin counts a request in, or takes over the count its selection made,
// and returns the function that counts it out. When the last request to an
// instance that has left the fleet ends, its counter is dropped, so the map
// does not grow with every instance ever seen; gone reports whether the
// instance has left.
func (c *inflightCounter) begin(req *http.Request, id int64, gone func(int64) bool) func() {
	var lease *routing.Lease
	if res, ok := caddyhttp.GetVar(req.Context(), leaseVar).(*reservation); ok && res.id == id && !res.taken {
		res.taken, lease = true, res.lease
	} else {
		lease = c.loads.Acquire(id)
	}
	c.countStarted(id)
	return func() {
		lease.Release()
		if gone(id) {
			c.loads.Forget(id)
		}
	}
}

// count returns the requests in flight to an instance.
func (c *inflightCounter) count(id int64) int64 { return c.loads.InFlight(id) }

// forgotten reports whether the watcher no longer knows an instance.
func (s *state) forgotten(id int64) bool {
	_, ok := s.watcher.Snapshot().Member(id)
	return !ok
}

// startedCounters counts the proxied requests begun per instance, for the
// dashboard's requests/s; the request path pays one map load and one atomic
// add (inflightCounter.begin).
type startedCounters struct{ m sync.Map } // int64 → *atomic.Uint64

func (c *inflightCounter) countStarted(id int64) {
	if v, ok := c.starts.m.Load(id); ok {
		v.(*atomic.Uint64).Add(1)
		return
	}
	v, _ := c.starts.m.LoadOrStore(id, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// requestsStarted returns the requests begun to an instance since it was first
// counted.
func (c *inflightCounter) requestsStarted(id int64) uint64 {
	if v, ok := c.starts.m.Load(id); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// forgetStarted drops the counters of instances that are no longer known.
func (c *inflightCounter) forgetStarted(known func(int64) bool) {
	c.starts.m.Range(func(k, _ any) bool {
		if id := k.(int64); !known(id) {
			c.starts.m.Delete(id)
		}
		return true
	})
}
