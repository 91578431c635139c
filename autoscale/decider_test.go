package autoscale

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

// sim drives a Decider with a fake clock: a sample every second, a
// decision every ten, and ready instances that follow the desired count
// after boot (0: at once).
type sim struct {
	t     *testing.T
	d     *Decider
	now   time.Time
	ready int
	boot  time.Duration
	// want is the desired count and since when, for the boot delay.
	want      int
	wantSince time.Time
	log       []Decision
	times     []time.Time
}

func newSim(t *testing.T, cfg Config, ready int) *sim {
	t.Helper()
	d, err := NewDecider(cfg)
	if err != nil {
		t.Fatalf("NewDecider: %v", err)
	}
	return &sim{t: t, d: d, now: t0, ready: ready, want: ready}
}

// run advances the clock by dur, one sample a second with load(elapsed
// since the run began), deciding every 10s.
func (s *sim) run(dur time.Duration, load func(time.Duration) float64) {
	start := s.now
	for s.now.Sub(start) < dur {
		s.now = s.now.Add(time.Second)
		if s.ready != s.want && s.now.Sub(s.wantSince) >= s.boot {
			s.ready = s.want
		}
		s.d.Observe(s.now, load(s.now.Sub(start)), s.ready)
		if s.now.Unix()%10 == 0 {
			dec := s.d.Decide(s.now)
			s.log = append(s.log, dec)
			s.times = append(s.times, s.now)
			if dec.Desired != s.want {
				s.want, s.wantSince = dec.Desired, s.now
			}
		}
	}
}

func constLoad(v float64) func(time.Duration) float64 {
	return func(time.Duration) float64 { return v }
}

// changes lists the decisions that changed the count (the first decision
// of a Decider excluded).
func (s *sim) changes() (out []int) {
	for i, dec := range s.log {
		if i > 0 && dec.Changed {
			out = append(out, i)
		}
	}
	return out
}

func (s *sim) last() Decision { return s.log[len(s.log)-1] }

// TestDeciderRamp runs 1 -> 30 concurrent -> 1 at target 8 with the
// default delays and checks the count follows with the delays, goes down
// one at a time, reverses direction at most once, and stays within Max.
func TestDeciderRamp(t *testing.T) {
	cases := []struct {
		name string
		max  int
		peak int
	}{
		{"room for the peak", 10, 4},
		{"max below the peak", 3, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: 0, Max: tc.max, TargetPerInstance: 8}, 1)
			s.boot = 20 * time.Second
			s.run(5*time.Minute, constLoad(1))
			rampAt := s.now
			s.run(20*time.Minute, func(e time.Duration) float64 { // 2 min ramp, then flat
				return math.Min(30, 1+29*e.Seconds()/120)
			})
			dropAt := s.now
			s.run(60*time.Minute, constLoad(1))
			checkRamp(t, s, rampAt, dropAt, tc.max, tc.peak)
		})
	}
}

func checkRamp(t *testing.T, s *sim, rampAt, dropAt time.Time, maxN, peak int) {
	t.Helper()
	cfg := s.d.Config()
	top, reversals, dir := 0, 0, 0
	var lastChange time.Time
	for _, i := range s.changes() {
		dec, at := s.log[i], s.times[i]
		if dec.Desired > maxN || dec.Desired < 1 {
			t.Fatalf("at %v desired %d outside [1, %d]: %+v", at.Sub(t0), dec.Desired, maxN, dec)
		}
		top = max(top, dec.Desired)
		step := 1
		if dec.Desired < dec.Previous {
			step = -1
			if dec.Previous-dec.Desired != 1 || dec.Reason != ReasonScaleDown {
				t.Errorf("at %v scale-down %d -> %d (%s): not one at a time", at.Sub(t0), dec.Previous, dec.Desired, dec.Reason)
			}
			if at.Before(dropAt.Add(cfg.ScaleDownDelay)) {
				t.Errorf("scale-down at %v, before the load drop + ScaleDownDelay", at.Sub(t0))
			}
			if !lastChange.IsZero() && at.Sub(lastChange) < cfg.ScaleDownDelay {
				t.Errorf("scale-down at %v only %v after the previous change", at.Sub(t0), at.Sub(lastChange))
			}
		} else if at.Before(rampAt.Add(cfg.ScaleUpDelay)) {
			t.Errorf("scale-up at %v, before the ramp + ScaleUpDelay", at.Sub(t0))
		}
		if dir != 0 && step != dir {
			reversals++
		}
		dir, lastChange = step, at
	}
	if top != peak {
		t.Errorf("peak desired %d, want %d", top, peak)
	}
	atMax := false
	for i, dec := range s.log {
		atMax = atMax || dec.Reason == ReasonAtMax
		if s.times[i].Equal(dropAt) && dec.Desired != peak {
			t.Errorf("desired %d after 20 minutes at 30 concurrent, want %d", dec.Desired, peak)
		}
	}
	if want := maxN < 4; atMax != want {
		t.Errorf("a decision said at_max: %v, want %v (Max %d, load asks for 4)", atMax, want, maxN)
	}
	if reversals > 1 {
		t.Errorf("%d direction reversals on a single ramp (flapping)", reversals)
	}
	if got := s.last(); got.Desired != 1 {
		t.Errorf("after an hour back at load 1: desired %d (%s: %s), want 1", got.Desired, got.Reason, got.Explanation)
	}
}

// TestDeciderJitter checks one wild sample, however large, neither
// panics nor scales, while two in a row do panic.
func TestDeciderJitter(t *testing.T) {
	cases := []struct {
		name    string
		spikes  int
		desired int
	}{
		{"one sample of 1000", 1, 1},
		{"two samples of 1000", 2, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Max: 10, TargetPerInstance: 8}, 1)
			s.run(2*time.Minute, constLoad(2))
			s.run(5*time.Minute, func(e time.Duration) float64 {
				// The spike ends on a decision, so it is all in its panic window.
				if e > time.Duration(10-tc.spikes)*time.Second && e <= 10*time.Second {
					return 1000
				}
				return 2
			})
			top := 0
			for _, dec := range s.log {
				top = max(top, dec.Desired)
			}
			if top != tc.desired {
				t.Errorf("peak desired %d, want %d", top, tc.desired)
			}
		})
	}
}

// TestDeciderPanic: a sustained burst scales up at the first decision,
// and nothing scales down until a stable window after the panic ended.
func TestDeciderPanic(t *testing.T) {
	cfg := Config{Max: 10, TargetPerInstance: 8, ScaleDownDelay: 10 * time.Second}
	s := newSim(t, cfg, 1)
	s.run(time.Minute, constLoad(4))
	burstAt := s.now
	s.run(30*time.Second, constLoad(50))
	s.run(10*time.Minute, constLoad(4))
	var firstUp, lastPanic, firstDown time.Time
	for i, dec := range s.log {
		at := s.times[i]
		switch {
		case dec.Reason == ReasonPanic && dec.Changed && firstUp.IsZero():
			firstUp = at
			if dec.Desired != 7 {
				t.Errorf("panic to %d, want ceil(50/8) = 7", dec.Desired)
			}
		case dec.Reason == ReasonScaleDown && firstDown.IsZero():
			firstDown = at
		}
		if dec.Reason == ReasonPanic && dec.PanicLoad >= 2*8 {
			lastPanic = at
		}
	}
	if firstUp.IsZero() || firstUp.Sub(burstAt) > 10*time.Second {
		t.Fatalf("no panic scale-up at the first decision after the burst (first %v)", firstUp.Sub(burstAt))
	}
	if firstDown.IsZero() {
		t.Fatalf("never scaled down after the burst; last %+v", s.last())
	}
	if firstDown.Before(lastPanic.Add(cfg.WithDefaults().StableWindow)) {
		t.Errorf("scale-down at %v, within a stable window of the panic at %v", firstDown.Sub(t0), lastPanic.Sub(t0))
	}
	if got := s.last().Desired; got != 1 {
		t.Errorf("desired %d after 10 quiet minutes, want 1", got)
	}
}

// TestDeciderIdleToZero: a Min-0 pool goes to zero after IdleToZero of
// no request and not earlier; one request restarts the clock; Min 1 never
// goes to zero.
func TestDeciderIdleToZero(t *testing.T) {
	cases := []struct {
		name      string
		min       int
		requestAt time.Duration // 0: none
		zeroAt    time.Duration // 0: never
	}{
		// The idle clock starts at the first sample (1s); decisions come
		// every 10s.
		{"idle", 0, 0, 15*time.Minute + 10*time.Second},
		{"one request resets", 0, 10 * time.Minute, 25 * time.Minute},
		{"min 1 stays", 1, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: tc.min, Max: 4}, 1)
			s.run(40*time.Minute, func(e time.Duration) float64 {
				if tc.requestAt > 0 && e == tc.requestAt {
					return 1
				}
				return 0
			})
			var zero time.Duration
			for i, dec := range s.log {
				if dec.Desired == 0 {
					zero = s.times[i].Sub(t0)
					if dec.Reason != ReasonIdleToZero {
						t.Errorf("went to zero with reason %s", dec.Reason)
					}
					break
				}
			}
			if zero != tc.zeroAt {
				t.Errorf("went to zero at %v, want %v", zero, tc.zeroAt)
			}
		})
	}
}

// TestDeciderFromZero: 40 requests held at zero wake one instance, not
// five, and the backlog draining into it neither panics nor scales;
// a load of 40 that stays still reaches five.
func TestDeciderFromZero(t *testing.T) {
	cases := []struct {
		name   string
		after  func(time.Duration) float64 // load once the instance is up
		peak   int
		panics bool
	}{
		{"burst drains", func(e time.Duration) float64 { return math.Max(1, 40-2*e.Seconds()) }, 1, false},
		// After ScaleUpDelay the load is real: 5x capacity may panic then.
		{"load stays", constLoad(40), 5, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Max: 8, TargetPerInstance: 8}, 0)
			s.boot = 30 * time.Second
			s.run(time.Minute, constLoad(0))
			s.run(30*time.Second, constLoad(40))
			woke := s.log[len(s.log)-1]
			if woke.Desired != 1 || woke.Reason != ReasonFromZero {
				t.Fatalf("with 40 held: %+v, want desired 1 from_zero", woke)
			}
			s.run(20*time.Second, constLoad(40))
			if s.ready != 1 {
				t.Fatalf("sim: ready %d after the boot", s.ready)
			}
			from, upAt := len(s.log), s.now
			s.run(10*time.Minute, tc.after)
			top, panicked := 0, false
			for i, dec := range s.log[from:] {
				top = max(top, dec.Desired)
				panicked = panicked || dec.Reason == ReasonPanic
				if at := s.times[from+i]; dec.Desired > 1 && at.Before(upAt.Add(s.d.Config().ScaleUpDelay)) {
					t.Errorf("desired %d at %v, %v after the first instance came up: the backlog counted", dec.Desired, at.Sub(t0), at.Sub(upAt))
				}
			}
			if top != tc.peak || panicked != tc.panics {
				t.Errorf("peak %d panicked %v, want %d %v; last %+v", top, panicked, tc.peak, tc.panics, s.last())
			}
		})
	}
}

// TestDeciderRestore: a restored Decider continues the windows and the
// streaks (decides exactly like the original), through JSON, and a
// fresh one does not.
func TestDeciderRestore(t *testing.T) {
	cfg := Config{Max: 10, TargetPerInstance: 8}
	a := newSim(t, cfg, 1)
	a.run(time.Minute, constLoad(2))
	// Below panic (16 for one instance), and long enough that the stable
	// average asks for 2: an up streak is in progress at the snapshot.
	a.run(time.Minute, constLoad(12))
	raw, err := json.Marshal(a.d.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	b := newSim(t, cfg, a.ready)
	b.d.Restore(st)
	b.now, b.want = a.now, a.want
	fresh := newSim(t, cfg, a.ready)
	fresh.now = a.now
	if got, want := b.d.Decide(b.now).StableLoad, a.d.Decide(a.now).StableLoad; got != want || want == 0 {
		t.Fatalf("restored stable load %v, original %v", got, want)
	}
	for _, s := range []*sim{a, b, fresh} {
		s.log = nil
		s.run(3*time.Minute, constLoad(12))
	}
	differs := false
	for i := range a.log {
		if a.log[i].Desired != b.log[i].Desired || a.log[i].Reason != b.log[i].Reason {
			t.Fatalf("decision %d: original %+v, restored %+v", i, a.log[i], b.log[i])
		}
		differs = differs || fresh.log[i].Desired != a.log[i].Desired
	}
	if !differs || a.last().Desired != 2 {
		t.Errorf("a fresh Decider decided like the original (or nothing scaled): the test proves nothing")
	}
}

// TestDeciderRestoreNewWindow: buckets are refiled into a Decider whose
// Bucket and StableWindow changed; what still fits keeps its average.
func TestDeciderRestoreNewWindow(t *testing.T) {
	a := newSim(t, Config{Max: 4}, 1)
	a.run(30*time.Second, constLoad(2))
	a.run(30*time.Second, constLoad(10))
	b, err := NewDecider(Config{Max: 4, Bucket: 2 * time.Second, StableWindow: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.Restore(a.d.Snapshot())
	if got := b.Decide(a.now).StableLoad; got != 10 {
		t.Errorf("stable load over the last 20s after the refile: %v, want 10", got)
	}
	if got := len(b.Snapshot().Buckets); got != 10 {
		t.Errorf("%d buckets kept, want 10 of 2s", got)
	}
}

// TestDeciderLimits: Max and Min clamp, including a desired count left
// outside the range by a config change.
func TestDeciderLimits(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		restore int // desired from a previous config (0: none)
		load    float64
		desired int
		reason  Reason
	}{
		{"load above max", Config{Max: 3}, 0, 100, 3, ReasonAtMax},
		{"load below min", Config{Min: 2, Max: 5}, 0, 0, 2, ReasonAtMin},
		{"restored above new max", Config{Max: 3}, 8, 100, 3, ReasonAtMax},
		{"restored below new min", Config{Min: 3, Max: 6}, 1, 10, 3, ReasonAtMin},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.cfg, 2)
			if tc.restore > 0 {
				s.d.Restore(State{Started: true, Desired: tc.restore})
			}
			s.run(20*time.Minute, constLoad(tc.load))
			if got := s.last(); got.Desired != tc.desired || got.Reason != tc.reason {
				t.Errorf("got %d %s (%s), want %d %s", got.Desired, got.Reason, got.Explanation, tc.desired, tc.reason)
			}
			if tc.restore > 0 && (!s.log[0].Changed || s.log[0].Reason != tc.reason) {
				t.Errorf("first decision after the restore: %+v", s.log[0])
			}
		})
	}
}

// TestDeciderChanged: Changed is set on the first decision and on
// changes only.
func TestDeciderChanged(t *testing.T) {
	s := newSim(t, Config{Max: 4}, 1)
	s.run(2*time.Minute, constLoad(3))
	for i, dec := range s.log {
		if want := i == 0; dec.Changed != want {
			t.Errorf("decision %d Changed %v at a steady load", i, dec.Changed)
		}
	}
}

// TestConfigValidate: each invalid field is named in the error.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		field string
		cfg   Config
	}{
		{"Min", Config{Min: -1, Max: 2}},
		{"Max", Config{Max: 0}},
		{"Max", Config{Min: 3, Max: 2}},
		{"TargetPerInstance", Config{Max: 2, TargetPerInstance: -1}},
		{"TargetPerInstance", Config{Max: 2, TargetPerInstance: math.NaN()}},
		{"PanicThreshold", Config{Max: 2, PanicThreshold: 0.5}},
		{"Bucket", Config{Max: 2, Bucket: -time.Second}},
		{"PanicWindow", Config{Max: 2, PanicWindow: time.Second}},
		{"StableWindow", Config{Max: 2, StableWindow: 3 * time.Second}},
		{"Bucket", Config{Max: 2, StableWindow: time.Hour, Bucket: 100 * time.Millisecond, PanicWindow: time.Second}},
		{"ScaleUpDelay", Config{Max: 2, ScaleUpDelay: -1}},
		{"ScaleDownDelay", Config{Max: 2, ScaleDownDelay: -1}},
		{"IdleToZero", Config{Max: 2, IdleToZero: -1}},
	}
	for _, tc := range cases {
		_, err := NewDecider(tc.cfg)
		if !errors.Is(err, ErrConfig) || !strings.HasPrefix(strings.TrimPrefix(err.Error(), ErrConfig.Error()+": "), tc.field+" ") {
			t.Errorf("%+v: error %v, want one naming %s", tc.cfg, err, tc.field)
		}
	}
	if _, err := NewDecider(Config{Max: 1}); err != nil {
		t.Errorf("defaults with Max 1: %v", err)
	}
}
