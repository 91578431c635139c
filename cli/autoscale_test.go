package cli

import (
	"testing"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// TestAutoscaleCell: the pools table's AUTOSCALE column.
func TestAutoscaleCell(t *testing.T) {
	for _, c := range []struct {
		in   *adminapi.Autoscale
		want string
	}{
		{nil, "-"},
		{&adminapi.Autoscale{Desired: 1, Max: 3, Reason: "from_zero", Held: 2}, "1/3 from_zero, 2 held"},
		{&adminapi.Autoscale{Desired: 0, Max: 3, Reason: "idle_to_zero", Scale: &lifecycle.PoolScale{Stopped: 1}}, "0/3 idle_to_zero, 1 stopped"},
		{&adminapi.Autoscale{Max: 2}, "0/2 waiting"},
	} {
		if got := autoscaleCell(c.in); got != c.want {
			t.Errorf("autoscaleCell(%+v) = %q, want %q", c.in, got, c.want)
		}
	}
}
