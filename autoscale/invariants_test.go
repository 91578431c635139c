package autoscale

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestDeciderInvariants drives Deciders with seeded random loads (walks,
// bursts, silences, slow boots) and checks what must hold whatever the
// load: the count stays in [Min, Max] (0 only by idle_to_zero), falls by
// one at a time at most once per ScaleDownDelay and never while
// panicking, and Changed/Previous tell the truth.
func TestDeciderInvariants(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"defaults min 0", Config{Max: 6}},
		{"min 2", Config{Min: 2, Max: 5}},
		{"compressed", Config{Max: 8, TargetPerInstance: 4, StableWindow: 10 * time.Second, PanicWindow: 2 * time.Second,
			ScaleUpDelay: 5 * time.Second, ScaleDownDelay: 20 * time.Second, IdleToZero: 40 * time.Second}},
	}
	for _, tc := range cases {
		for seed := range uint64(5) {
			rng := rand.New(rand.NewPCG(seed, 11))
			s := newSim(t, tc.cfg, rng.IntN(3))
			s.boot = time.Duration(rng.IntN(60)) * time.Second
			for range 40 {
				s.run(time.Duration(1+rng.IntN(8))*time.Minute, randomLoad(rng))
			}
			checkInvariants(t, tc.name, seed, s)
		}
	}
}

// randomLoad is one phase: silence, a steady level, a noisy level or a
// burst.
func randomLoad(rng *rand.Rand) func(time.Duration) float64 {
	level := float64(rng.IntN(60))
	switch rng.IntN(4) {
	case 0:
		return constLoad(0)
	case 1:
		return constLoad(level)
	case 2:
		return func(time.Duration) float64 { return level * 2 * rng.Float64() }
	}
	return func(e time.Duration) float64 {
		if e < 20*time.Second {
			return 5 * level
		}
		return level / 4
	}
}

func checkInvariants(t *testing.T, name string, seed uint64, s *sim) {
	t.Helper()
	cfg := s.d.Config()
	var lastDown time.Time
	for i, dec := range s.log {
		at, fail := s.times[i], func(what string) {
			t.Fatalf("%s seed %d at %v: %s: %+v", name, seed, s.times[i].Sub(t0), what, dec)
		}
		switch {
		case dec.Desired > cfg.Max || dec.Desired < cfg.Min:
			fail("outside [Min, Max]")
		case i > 0 && dec.Previous != s.log[i-1].Desired:
			fail("Previous is not the last Desired")
		case i > 0 && dec.Changed != (dec.Desired != dec.Previous):
			fail("Changed disagrees")
		case dec.Desired == dec.Previous-1 && dec.Desired > 0 && dec.Reason != ReasonScaleDown:
			fail("fell by one, not as scale_down")
		case dec.Desired < dec.Previous-1 && !(dec.Desired == 0 && dec.Reason == ReasonIdleToZero):
			fail("fell by more than one")
		}
		if dec.Reason == ReasonScaleDown {
			if dec.Panicking {
				fail("scaled down while panicking")
			}
			if !lastDown.IsZero() && at.Sub(lastDown) < cfg.ScaleDownDelay {
				fail("two scale-downs within ScaleDownDelay")
			}
			lastDown = at
		}
	}
}
