package routing

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestReleaseCountsOutOnceUnderConcurrency: requests that finish, fail,
// are cancelled (released twice, from two goroutines) or panic all leave
// the count at zero, and it is never seen negative.
func TestReleaseCountsOutOnceUnderConcurrency(t *testing.T) {
	var l Loads
	ids := []int64{1, 2, 3}
	var wg sync.WaitGroup
	var negative sync.Once
	sawNegative := false
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				id := ids[rand.IntN(len(ids))]
				lease := l.Acquire(id)
				switch rand.IntN(4) {
				case 0: // finished
					lease.Release()
				case 1: // error path and deferred release both run
					lease.Release()
					lease.Release()
				case 2: // cancel callback races the body close
					var both sync.WaitGroup
					both.Add(2)
					go func() { defer both.Done(); lease.Release() }()
					go func() { defer both.Done(); lease.Release() }()
					both.Wait()
				case 3: // a panic in the handler, recovered, with a deferred release
					func() {
						defer func() { _ = recover() }()
						defer lease.Release()
						panic("handler")
					}()
				}
				if l.InFlight(id) < 0 {
					negative.Do(func() { sawNegative = true })
				}
			}
		}()
	}
	wg.Wait()
	if sawNegative {
		t.Error("an in-flight count went negative")
	}
	for _, id := range ids {
		if n := l.InFlight(id); n != 0 {
			t.Errorf("instance %d: %d in flight after every request ended", id, n)
		}
	}
}

func TestPowerOfTwoPicksTheLessLoaded(t *testing.T) {
	cases := []struct {
		name     string
		cands    []Candidate
		inFlight map[int64]int
		want     int
	}{
		{"empty", nil, nil, -1},
		{"single", []Candidate{{ID: 1}}, map[int64]int{1: 9}, 0},
		{"in flight", []Candidate{{ID: 1}, {ID: 2}}, map[int64]int{1: 3, 2: 1}, 1},
		{"engine queue counts", []Candidate{{ID: 1, Waiting: 5}, {ID: 2}}, map[int64]int{2: 2}, 1},
		{"stale queue reported as 0 is not negative", []Candidate{{ID: 1, Waiting: -4}, {ID: 2}}, map[int64]int{1: 1}, 1},
		{"capacity divides the load", []Candidate{{ID: 1, Capacity: 4}, {ID: 2, Capacity: 1}}, map[int64]int{1: 4, 2: 2}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var l Loads
			for id, n := range tc.inFlight {
				for i := 0; i < n; i++ {
					l.Acquire(id)
				}
			}
			// Random draws: the answer must hold for every draw.
			for i := 0; i < 200; i++ {
				if got := l.PowerOfTwo(tc.cands); got != tc.want {
					t.Fatalf("picked %d, want %d", got, tc.want)
				}
			}
		})
	}
}

// TestPowerOfTwoBreaksTiesAtRandom: with every instance equally loaded, no
// instance takes more than its share (the bug of deterministic
// tie-breaks: the first one takes everything).
func TestPowerOfTwoBreaksTiesAtRandom(t *testing.T) {
	var l Loads
	cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}
	const picks = 40000
	counts := make([]int, len(cands))
	for i := 0; i < picks; i++ {
		counts[l.PowerOfTwo(cands)]++
	}
	share := float64(picks) / float64(len(cands))
	// 5 standard deviations of a binomial(40000, 1/4): about 430 picks.
	bound := 5 * math.Sqrt(picks*0.25*0.75)
	for i, n := range counts {
		if math.Abs(float64(n)-share) > bound {
			t.Errorf("instance %d got %d of %d picks, want %.0f ± %.0f", cands[i].ID, n, picks, share, bound)
		}
	}
}

// TestPowerOfTwoSpreadsABurst: requests acquired as they are routed (the
// count goes up before dispatch) spread over equal instances instead of
// piling onto one.
func TestPowerOfTwoSpreadsABurst(t *testing.T) {
	var l Loads
	cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}
	for i := 0; i < 400; i++ {
		l.Acquire(cands[l.PowerOfTwo(cands)].ID)
	}
	lo, hi := int64(math.MaxInt64), int64(0)
	for _, c := range cands {
		n := l.InFlight(c.ID)
		lo, hi = min(lo, n), max(hi, n)
	}
	// Power of two choices keeps the gap to a few requests (log log n).
	if hi-lo > 10 {
		t.Errorf("burst of 400 spread %d..%d per instance", lo, hi)
	}
}

func TestForgetDropsOnlyIdleInstances(t *testing.T) {
	var l Loads
	lease := l.Acquire(1)
	l.Acquire(2).Release()
	l.Forget(1)
	l.Forget(2)
	if l.InFlight(1) != 1 {
		t.Errorf("an instance with a request in flight was forgotten")
	}
	if l.Tracks(2) {
		t.Errorf("an idle instance that left was kept")
	}
	lease.Release()
	if l.InFlight(1) != 0 {
		t.Errorf("in flight %d after release", l.InFlight(1))
	}
}
