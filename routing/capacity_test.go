package routing

import (
	"math"
	"testing"
	"time"
)

// feed gives an instance a steady decode speed: running requests each
// generating perStream tokens/s, scraped every second.
func feed(s *Speeds, id int64, scrapes int, perStream, running, waiting float64) {
	t0 := time.Unix(1000, 0)
	tokens := 0.0
	for i := range scrapes {
		s.Observe(id, t0.Add(time.Duration(i)*time.Second), tokens, running, waiting)
		tokens += perStream * running
	}
}

func TestSpeedsLearnPerRequestSpeedAndBatch(t *testing.T) {
	var s Speeds
	feed(&s, 1, 10, 400, 8, 3) // saturated: 8 running, 3 waiting
	feed(&s, 2, 10, 100, 1, 0) // lightly used: batch unknown
	per, slots := s.Estimate(1)
	if math.Abs(per-400) > 1 || slots != 8 {
		t.Errorf("instance 1: %.1f tok/s per request, batch %v; want 400 and 8", per, slots)
	}
	per, slots = s.Estimate(2)
	if math.Abs(per-100) > 1 || slots != 0 {
		t.Errorf("instance 2: %.1f tok/s per request, batch %v; want 100 and unknown", per, slots)
	}
	s.Observe(3, time.Unix(0, 0), math.NaN(), 4, 0) // no counter: nothing learned
	if per, _ := s.Estimate(3); per != 0 {
		t.Errorf("an engine without a token counter got a speed: %v", per)
	}
}

func TestSpeedsSurviveAnEngineRestart(t *testing.T) {
	var s Speeds
	feed(&s, 1, 5, 200, 2, 0)
	s.Observe(1, time.Unix(2000, 0), 10, 2, 0) // the counter went back to 10
	s.Observe(1, time.Unix(2001, 0), 410, 2, 0)
	if per, _ := s.Estimate(1); math.Abs(per-200) > 1 {
		t.Errorf("after a restart: %.1f tok/s per request, want 200", per)
	}
}

// TestWeighSendsABurstToTheFastest: relative capacities follow speed ×
// batch; an instance with no known speed counts at the median speed and
// with an unknown batch at the largest known one, so it is not starved.
func TestWeighSendsABurstToTheFastest(t *testing.T) {
	var s Speeds
	feed(&s, 1, 10, 400, 8, 2)
	feed(&s, 2, 10, 100, 2, 1)
	cands := []Candidate{{ID: 1, Capacity: 1}, {ID: 2, Capacity: 1}, {ID: 3, Capacity: 1}}
	if !s.Weigh(cands) {
		t.Fatal("did not weigh with two speeds known")
	}
	// Capacities 3200, 200 and the unknown at median speed (400, the
	// upper middle of two) × the largest batch (8) = 3200; mean 2200.
	want := []float64{3200.0 / 2200, 200.0 / 2200, 3200.0 / 2200}
	for i, c := range cands {
		if math.Abs(c.Capacity-want[i]) > 0.01 {
			t.Errorf("instance %d capacity %.3f, want %.3f", c.ID, c.Capacity, want[i])
		}
	}
	var l Loads
	p := leastLoadPolicy(&l)
	counts := map[int64]int{}
	for range 66 {
		i, _ := p.Choose(Pick{Cands: cands})
		l.Acquire(cands[i].ID)
		counts[cands[i].ID]++
	}
	if counts[1] < 25 || counts[2] > 6 || counts[3] < 25 {
		t.Errorf("a burst of 66 went %v; want about 32/2/32", counts)
	}
	var none Speeds
	fresh := []Candidate{{ID: 1, Capacity: 2}}
	if none.Weigh(fresh) || fresh[0].Capacity != 2 {
		t.Errorf("with nothing known the capacity changed: %+v", fresh[0])
	}
}
