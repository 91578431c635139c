package vastai

// The request path's side of scale-from-zero: a request for an autoscaled
// pool with no routable instance waits in the pool's Hold (a bounded FIFO,
// package autoscale) on its own goroutine, while the first held request
// wakes the autoscale loop (wire_autoscale.go) once. When an instance
// becomes routable the held requests go on in arrival order: each keeps
// the next one back until its own request is on the wire to the instance
// (the baton is passed by the transport). A request that cannot be held
// (max_pending) or waits past max_wait gets a 503 capacity_unavailable
// with Retry-After: GetUpstreams returns one placeholder upstream
// (holdRejectDial) and the vastai transport answers for it without any
// network I/O. A pool with a routable instance never reaches this file.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-vastai/caddy-vastai/autoscale"
	"github.com/caddy-vastai/caddy-vastai/fleet"
)

// holdRejectDial is the placeholder upstream of a request the hold
// refused. The .invalid name cannot resolve: only the vastai transport,
// which answers it itself, can serve it.
const holdRejectDial = "capacity-unavailable.vastai.invalid:9"

// Request variables of a held request.
const (
	// holdPassVar holds the function that lets the next held request go.
	holdPassVar = "vastai.hold_pass"
	// holdRejectVar holds the *holdRejection of a refused request, so a
	// retry of reverse_proxy (lb_try_duration) is refused at once instead
	// of being held again.
	holdRejectVar = "vastai.hold_rejected"
)

// Reasons a request was refused, indexes of poolScaler.rejected.
const (
	holdFull    = 0
	holdTimeout = 1
)

var holdReasonNames = [2]string{"max_pending", "max_wait"}

// holdRejection is why a held request got a 503.
type holdRejection struct {
	pool    string
	reason  int
	pending int
	maxWait time.Duration
	refusal string // the lifecycle manager's last scale-up refusal
}

// awaitInstance holds a request for an autoscaled pool until the pool has
// a routable instance. It returns that pool view; nil with a nil
// rejection when the pool is not autoscaled or the client went away; a
// rejection when the request must get a 503.
func (s *state) awaitInstance(r *http.Request, pool string) (*fleet.PoolView, *holdRejection) {
	sc := s.scalerFor(pool)
	if sc == nil {
		return nil, nil
	}
	if rej, ok := caddyhttp.GetVar(r.Context(), holdRejectVar).(*holdRejection); ok {
		return nil, rej
	}
	// max_wait bounds the whole hold, across reloads that replace the Hold.
	ctx, cancel := context.WithTimeout(r.Context(), sc.cfg.maxWait)
	defer cancel()
	for {
		snap := s.watcher.Snapshot()
		if pv := snap.Pools[pool]; pv != nil && len(pv.Targets) > 0 {
			return pv, nil
		}
		sc.syncHold(s, snap)
		pass, held, err := sc.hold.WaitTurn(ctx)
		if err != nil {
			return nil, s.holdRefused(r, sc, err)
		}
		if held {
			sc.admitted.Add(1)
			caddyhttp.SetVar(r.Context(), holdPassVar, pass)
		}
		if sc = s.scalerFor(pool); sc == nil {
			snap = s.watcher.Snapshot()
			return snap.Pools[pool], nil
		}
	}
}

// holdRefused turns a Wait error into a rejection; a client that went
// away gets none (nobody reads the answer).
func (s *state) holdRefused(r *http.Request, sc *poolScaler, err error) *holdRejection {
	if r.Context().Err() != nil {
		return nil
	}
	rej := &holdRejection{pool: sc.pool, reason: holdTimeout, pending: sc.cfg.pending, maxWait: sc.cfg.maxWait}
	if errors.Is(err, autoscale.ErrHoldFull) {
		rej.reason = holdFull
	}
	if rt := s.lifecycle.Load(); rt != nil {
		if ps, ok := rt.mgr.PoolScale(sc.pool); ok {
			rej.refusal = ps.LastRefusal
		}
	}
	sc.rejected[rej.reason].Add(1)
	caddyhttp.SetVar(r.Context(), holdRejectVar, rej)
	return rej
}

// rejectUpstreams is the placeholder upstream list of a refused request.
func rejectUpstreams() []*reverseproxy.Upstream {
	return []*reverseproxy.Upstream{{Dial: holdRejectDial}}
}

// isHoldReject reports whether a policy was given the placeholder.
func isHoldReject(pool reverseproxy.UpstreamPool) bool {
	return len(pool) == 1 && pool[0].Dial == holdRejectDial
}

// holdResponse is the transport's answer for the placeholder upstream: a
// 503 with Retry-After and an OpenAI-shaped error the client can act on.
func holdResponse(req *http.Request) *http.Response {
	rej, _ := caddyhttp.GetVar(req.Context(), holdRejectVar).(*holdRejection)
	msg := "No instance is ready; retry later."
	if rej != nil {
		msg = rej.message()
	}
	code := "capacity_unavailable"
	body, _ := json.Marshal(apiError{Error: apiErrorBody{Message: msg, Type: "capacity_unavailable", Code: &code}})
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Retry-After", strconv.Itoa(int(DefaultHoldRetryAfter/time.Second)))
	return &http.Response{
		StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		Request: req,
	}
}

func (rej *holdRejection) message() string {
	var msg string
	if rej.reason == holdFull {
		msg = fmt.Sprintf("Pool %s has no ready instance and %d requests are already waiting for one (max_pending %d)",
			rej.pool, rej.pending, rej.pending)
	} else {
		msg = fmt.Sprintf("Pool %s had no ready instance within %s (max_wait)", rej.pool, rej.maxWait)
	}
	if rej.refusal != "" {
		msg += "; the scale-up was refused: " + rej.refusal
	} else {
		msg += "; an instance is starting"
	}
	return msg + fmt.Sprintf(". Retry in %ds.", int(DefaultHoldRetryAfter/time.Second))
}

// passOnWrite arranges for a held request's baton to pass once it is
// written to the instance (headers and body), so the next held request is
// sent after it. Requests on different connections can still reach the
// engine's handlers a few microseconds out of order (its server reads
// each connection on its own goroutine); the gateway's side is strict.
// done passes it in any case (an error before anything was written, say);
// both may run, the first wins.
func passOnWrite(req *http.Request) (out *http.Request, done func()) {
	pass, ok := caddyhttp.GetVar(req.Context(), holdPassVar).(func())
	if !ok {
		return req, func() {}
	}
	caddyhttp.SetVar(req.Context(), holdPassVar, nil) // a retry has nothing to pass
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
		if h := heldSentHook.Load(); h != nil {
			(*h)(req)
		}
		pass() // once: later calls (done) do nothing
	}}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace)), pass
}

// heldSentHook, when a test sets it, sees each held request at the moment
// it is written to the instance, just before the next one is let go.
var heldSentHook atomic.Pointer[func(req *http.Request)]
