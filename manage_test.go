package vastai

import (
	"testing"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
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

func TestInflightCounterDropsForgottenInstances(t *testing.T) {
	var c inflightCounter
	gone := map[int64]bool{}
	isGone := func(id int64) bool { return gone[id] }
	a1 := c.begin(1, isGone)
	a2 := c.begin(1, isGone)
	b := c.begin(2, isGone)
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
