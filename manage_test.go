package vastai

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The lifecycle manager reads the routing side's states through
// fleetAdapter; the two packages must spell them the same way.
func TestFleetAndLifecycleAgreeOnStates(t *testing.T) {
	pairs := [][2]string{
		{fleet.StateProvisioning, lifecycle.FleetProvisioning},
		{fleet.StateLoading, lifecycle.FleetLoading},
		{fleet.StateStarting, lifecycle.FleetStarting},
		{fleet.StateReady, lifecycle.FleetReady},
		{fleet.StateUnhealthy, lifecycle.FleetUnhealthy},
		{fleet.StateFailed, lifecycle.FleetFailed},
		{fleet.StateStopped, lifecycle.FleetStopped},
		{fleet.StateGone, lifecycle.FleetGone},
	}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("fleet state %q vs lifecycle %q", p[0], p[1])
		}
	}
	if fleet.ManagedTokenVar != lifecycle.EnvToken {
		t.Errorf("managed token variable: fleet %q, lifecycle %q", fleet.ManagedTokenVar, lifecycle.EnvToken)
	}
	for _, pool := range []string{"llm", "a.b-c_d"} {
		app := &App{GatewayID: "gw-1", Pools: map[string]*Pool{pool: {Provision: &ProvisionConfig{PoolTemplate: lifecycle.PoolTemplate{Image: "x"}}}}}
		if got, want := lifecycle.PoolLabelPrefix(app.gatewayID(), pool), "cv:gw-1:"+pool+":"; got != want {
			t.Errorf("label prefix %q, want %q", got, want)
		}
	}
}

// TestReservationIsCountedOnce: a selection's count is taken over by the
// transport's attempt (not counted twice), a retry's new choice releases
// the old one, and a reservation no attempt took ends with the request.
func TestReservationIsCountedOnce(t *testing.T) {
	var c inflightCounter
	never := func(int64) bool { return false }
	newReq := func() (*http.Request, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{}))
		return httptest.NewRequest(http.MethodPost, "/", nil).WithContext(ctx), cancel
	}

	r, end := newReq()
	c.reserve(r, 1)
	done := c.begin(r.WithContext(context.WithValue(r.Context(), struct{}{}, 1)), 1, never)
	if n := c.count(1); n != 1 {
		t.Fatalf("reserved and begun: %d in flight, want 1", n)
	}
	done()
	end()
	if n := c.count(1); n != 0 {
		t.Fatalf("after the request: %d in flight, want 0", n)
	}

	r, end = newReq()
	c.reserve(r, 1)
	c.reserve(r, 2) // a retry chose another instance
	if c.count(1) != 0 || c.count(2) != 1 {
		t.Fatalf("after a retry's new choice: %d and %d in flight, want 0 and 1", c.count(1), c.count(2))
	}
	done = c.begin(r, 1, never) // an attempt to another instance than reserved counts itself
	if c.count(1) != 1 || c.count(2) != 1 {
		t.Fatalf("attempt elsewhere: %d and %d, want 1 and 1", c.count(1), c.count(2))
	}
	done()
	end()
	waitFor(t, 5*time.Second, "the untaken reservation to end with the request", func() bool { return c.count(2) == 0 })
	if c.count(1) != 0 {
		t.Errorf("%d in flight to instance 1 after everything ended", c.count(1))
	}
}

func TestInflightCounterDropsForgottenInstances(t *testing.T) {
	var c inflightCounter
	gone := map[int64]bool{}
	isGone := func(id int64) bool { return gone[id] }
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	a1 := c.begin(r, 1, isGone)
	a2 := c.begin(r, 1, isGone)
	b := c.begin(r, 2, isGone)
	if c.count(1) != 2 || c.count(2) != 1 {
		t.Fatalf("counts %d %d", c.count(1), c.count(2))
	}
	gone[1] = true
	a1()
	if !c.loads.Tracks(1) || c.count(1) != 1 {
		t.Fatal("counter dropped while a request was still in flight")
	}
	a2()
	if c.loads.Tracks(1) {
		t.Error("the counter of a forgotten instance was kept")
	}
	b()
	if !c.loads.Tracks(2) {
		t.Error("the counter of a known instance was dropped")
	}
}
