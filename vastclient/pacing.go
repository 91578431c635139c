package vastclient

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Endpoint names a vast.ai endpoint for pacing. vast.ai enforces its rate
// limits as a minimum interval between calls per endpoint and identity.
type Endpoint string

// The endpoints the client calls.
const (
	// EndpointList is GET /api/v1/instances/.
	EndpointList Endpoint = "list"
	// EndpointShow is GET /api/v0/instances/{id}/.
	EndpointShow Endpoint = "show"
	// EndpointManage is PUT /api/v0/instances/{id}/ (label, start, stop).
	EndpointManage Endpoint = "manage"
	// EndpointDestroy is DELETE /api/v0/instances/{id}/.
	EndpointDestroy Endpoint = "destroy"
	// EndpointCreate is PUT /api/v0/asks/{offer_id}/.
	EndpointCreate Endpoint = "create"
	// EndpointSearch is POST /api/v0/bundles/.
	EndpointSearch Endpoint = "search"
	// EndpointUser is GET /api/v0/users/current/.
	EndpointUser Endpoint = "user"
)

// allEndpoints lists every Endpoint, for defaulting and validation.
var allEndpoints = []Endpoint{
	EndpointList, EndpointShow, EndpointManage, EndpointDestroy,
	EndpointCreate, EndpointSearch, EndpointUser,
}

// DefaultPacing returns the minimum interval between request starts for each
// endpoint, derived from the thresholds vast.ai publishes (offer search:
// 10 requests per minute). It returns a new map on every call.
func DefaultPacing() map[Endpoint]time.Duration {
	return map[Endpoint]time.Duration{
		EndpointList:    1 * time.Second,
		EndpointShow:    1 * time.Second,
		EndpointManage:  1 * time.Second,
		EndpointDestroy: 3 * time.Second,
		EndpointCreate:  4500 * time.Millisecond,
		EndpointSearch:  6 * time.Second,
		EndpointUser:    1 * time.Second,
	}
}

// pacer spaces request starts on one endpoint. Callers reserve a slot under
// the lock and then sleep outside it, so waiting goroutines queue in
// reservation order without polling.
//
// Slots alone are not enough: a goroutine woken late (a busy machine) would
// start close to the next slot's holder. So each caller also checks, when it
// wakes, the time the previous request really started, and sleeps again for
// the remainder if needed.
type pacer struct {
	interval time.Duration

	mu   sync.Mutex
	next time.Time // earliest start for the next reservation
	last time.Time // when the latest request really started
}

// wait blocks until the caller may start a request. If ctx ends first, or
// its deadline falls before the slot, the slot is given back when no later
// reservation depends on it, and an error wrapping the context error is
// returned.
func (p *pacer) wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if p == nil || p.interval <= 0 {
		return nil
	}
	p.mu.Lock()
	start := p.next
	if now := time.Now(); start.Before(now) {
		start = now
	}
	p.next = start.Add(p.interval)
	p.mu.Unlock()

	for {
		if err := p.sleepUntil(ctx, start); err != nil {
			return err
		}
		p.mu.Lock()
		now := time.Now()
		if earliest := p.last.Add(p.interval); now.Before(earliest) {
			start = earliest
			if p.next.Before(start.Add(p.interval)) {
				p.next = start.Add(p.interval)
			}
			p.mu.Unlock()
			continue
		}
		p.last = now
		p.mu.Unlock()
		return nil
	}
}

// sleepUntil waits for the slot at start, giving it back if ctx ends first.
func (p *pacer) sleepUntil(ctx context.Context, start time.Time) error {
	d := time.Until(start)
	if d <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(start) {
		// Sleeping until the deadline would only delay the same failure.
		p.release(start)
		return fmt.Errorf("pacing: next slot in %s is past the context deadline: %w",
			d.Round(time.Millisecond), context.DeadlineExceeded)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		p.release(start)
		return ctx.Err()
	}
}

// release gives back an unused slot if it is still the latest one; an
// earlier slot cannot be reclaimed because later callers were spaced after it.
func (p *pacer) release(start time.Time) {
	p.mu.Lock()
	if p.next.Equal(start.Add(p.interval)) {
		p.next = start
	}
	p.mu.Unlock()
}

// backoffDelay returns the jittered exponential delay before retry number
// attempt (1 for the first retry): half the capped exponential value plus a
// random part up to the other half, so that concurrent callers that failed
// together do not retry together.
func backoffDelay(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}
