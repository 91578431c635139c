package routing

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func leastLoadPolicy(l *Loads) *Policy {
	return &Policy{Loads: l, SessionFactor: DefaultSessionFactor}
}

func cacheAwarePolicy(l *Loads, idx *PrefixIndex) *Policy {
	return &Policy{Loads: l, Index: idx, CacheThreshold: DefaultCacheThreshold,
		BalanceAbs: DefaultBalanceAbs, BalanceRel: DefaultBalanceRel, SessionFactor: DefaultSessionFactor}
}

func fill(l *Loads, inFlight map[int64]int) {
	for id, n := range inFlight {
		for range n {
			l.Acquire(id)
		}
	}
}

func TestLeastLoadPicksTheLeastLoaded(t *testing.T) {
	cases := []struct {
		name     string
		pick     Pick
		inFlight map[int64]int
		want     int
		reason   string
	}{
		{"empty", Pick{}, nil, -1, ""},
		{"single", Pick{Cands: []Candidate{{ID: 1}}}, map[int64]int{1: 9}, 0, ReasonLeastLoad},
		{"in flight", Pick{Cands: []Candidate{{ID: 1}, {ID: 2}, {ID: 3}}}, map[int64]int{1: 3, 2: 1, 3: 2}, 1, ReasonLeastLoad},
		{"engine queue counts", Pick{Cands: []Candidate{{ID: 1, Waiting: 5}, {ID: 2}}}, map[int64]int{2: 2}, 1, ReasonLeastLoad},
		{"a negative queue is not negative load", Pick{Cands: []Candidate{{ID: 1, Waiting: -4}, {ID: 2}}}, map[int64]int{1: 1}, 1, ReasonLeastLoad},
		{"capacity divides the load", Pick{Cands: []Candidate{{ID: 1, Capacity: 4}, {ID: 2, Capacity: 1}}}, map[int64]int{1: 4, 2: 2}, 0, ReasonLeastLoad},
		{"saturated skipped while others have room", Pick{Cands: []Candidate{{ID: 1, Saturated: true}, {ID: 2}}}, map[int64]int{2: 5}, 1, ReasonLeastLoad},
		{"all saturated: least loaded", Pick{Cands: []Candidate{{ID: 1, Saturated: true}, {ID: 2, Saturated: true}}}, map[int64]int{1: 5, 2: 1}, 1, ReasonSaturated},
		{"pinned wins over load", Pick{Cands: []Candidate{{ID: 1}, {ID: 2}}, Pinned: 1}, map[int64]int{1: 7}, 0, ReasonPinned},
		{"pinned to a saturated instance", Pick{Cands: []Candidate{{ID: 1, Saturated: true}, {ID: 2}}, Pinned: 1}, nil, 0, ReasonPinned},
		{"pinned to a full instance: policy", Pick{Cands: []Candidate{{ID: 1, Saturated: true, Full: true}, {ID: 2}}, Pinned: 1}, nil, 1, ReasonLeastLoad},
		{"pinned to an unknown instance: policy", Pick{Cands: []Candidate{{ID: 1}, {ID: 2}}, Pinned: 9}, map[int64]int{2: 1}, 0, ReasonLeastLoad},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var l Loads
			fill(&l, tc.inFlight)
			p := leastLoadPolicy(&l)
			// Random tie-breaks: the answer must hold for every draw.
			for range 200 {
				got, reason := p.Choose(tc.pick)
				if got != tc.want || reason != tc.reason {
					t.Fatalf("chose %d (%s), want %d (%s)", got, reason, tc.want, tc.reason)
				}
			}
		})
	}
}

// TestTiesAreBrokenAtRandom: with every instance equally loaded, no
// instance takes more than its share (the bug of deterministic
// tie-breaks: the first one takes everything), for both policies.
func TestTiesAreBrokenAtRandom(t *testing.T) {
	for _, name := range []string{"least_load", "cache_aware"} {
		t.Run(name, func(t *testing.T) {
			var l Loads
			p := leastLoadPolicy(&l)
			if name == "cache_aware" {
				p = cacheAwarePolicy(&l, NewPrefixIndex(0, 0, 0))
			}
			cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}
			const picks = 40000
			counts := make([]int, len(cands))
			for range picks {
				i, _ := p.Choose(Pick{Cands: cands})
				counts[i]++
			}
			share := float64(picks) / float64(len(cands))
			bound := 5 * math.Sqrt(picks*0.25*0.75) // 5σ of a binomial(40000, 1/4)
			for i, n := range counts {
				if math.Abs(float64(n)-share) > bound {
					t.Errorf("instance %d got %d of %d picks, want %.0f ± %.0f", cands[i].ID, n, picks, share, bound)
				}
			}
		})
	}
}

// TestABurstSpreadsEvenly: requests counted in as they are routed (before
// dispatch) spread over equal instances instead of piling onto one, even
// when they all carry the same shared system prompt.
func TestABurstSpreadsEvenly(t *testing.T) {
	var l Loads
	idx := NewPrefixIndex(0, 0, 0)
	p := cacheAwarePolicy(&l, idx)
	cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}
	blocks := idx.Blocks(strings.Repeat("shared system prompt ", 200))
	for range 400 {
		i, _ := p.Choose(Pick{Cands: cands, Blocks: blocks})
		l.Acquire(cands[i].ID)
	}
	lo, hi := int64(math.MaxInt64), int64(0)
	for _, c := range cands {
		n := l.InFlight(c.ID)
		lo, hi = min(lo, n), max(hi, n)
	}
	// Cache affinity yields once the gap passes balance_abs.
	if hi-lo > DefaultBalanceAbs+1 {
		t.Errorf("burst of 400 with one shared prompt spread %d..%d per instance", lo, hi)
	}
}

func TestCacheAwareDecisions(t *testing.T) {
	idx := NewPrefixIndex(8, 0, 0)
	shared := strings.Repeat("abcdefgh", 20) // 20 blocks
	other := strings.Repeat("zyxwvuts", 20)
	cases := []struct {
		name     string
		recorded map[int64]string
		inFlight map[int64]int
		prompt   string
		want     int64
		reason   string
	}{
		{"hit goes to the holder", map[int64]string{2: shared}, map[int64]int{2: 3}, shared + "tail....", 2, ReasonCacheHit},
		{"below the threshold: least loaded", map[int64]string{2: shared[:40]}, map[int64]int{2: 3}, shared, 1, ReasonCacheMiss},
		{"miss: least loaded, not smallest cache", map[int64]string{1: other}, map[int64]int{1: 2, 2: 1}, shared, 2, ReasonCacheMiss},
		{"imbalanced: load first", map[int64]string{2: shared}, map[int64]int{2: 20, 1: 2}, shared, 1, ReasonImbalanced},
		{"imbalanced keeps locality among the light", map[int64]string{3: shared}, map[int64]int{1: 0, 2: 30, 3: 5}, shared, 3, ReasonImbalanced},
		{"no text: least load", nil, map[int64]int{1: 1}, "", 2, ReasonLeastLoad},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var l Loads
			fill(&l, tc.inFlight)
			x := NewPrefixIndex(8, 0, 0)
			x.seed = idx.seed
			for id, text := range tc.recorded {
				x.Record(id, x.Blocks(text))
			}
			p := cacheAwarePolicy(&l, x)
			cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}}
			if len(tc.inFlight) < 3 && tc.want != 3 {
				cands = cands[:2]
			}
			i, reason := p.Choose(Pick{Cands: cands, Blocks: x.Blocks(tc.prompt)})
			if cands[i].ID != tc.want || reason != tc.reason {
				t.Errorf("chose %d (%s), want %d (%s)", cands[i].ID, reason, tc.want, tc.reason)
			}
		})
	}
}

// TestSessionsStickUntilOverloaded: a session keeps its instance while
// that instance stays within the load factor of the average, then
// overflows to the least loaded, and comes back when the load drops.
func TestSessionsStickUntilOverloaded(t *testing.T) {
	var l Loads
	p := leastLoadPolicy(&l)
	cands := []Candidate{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}
	home, reason := p.Choose(Pick{Cands: cands, Session: "user-42"})
	if reason != ReasonSession {
		t.Fatalf("first pick reason %s, want session", reason)
	}
	for range 50 {
		if i, _ := p.Choose(Pick{Cands: cands, Session: "user-42"}); i != home {
			t.Fatalf("an idle fleet moved the session from %d to %d", home, i)
		}
	}
	// Load the home instance well above 1.25 × the average.
	var leases []*Lease
	for range 8 {
		leases = append(leases, l.Acquire(cands[home].ID))
	}
	i, reason := p.Choose(Pick{Cands: cands, Session: "user-42"})
	if i == home || reason != ReasonSessionOverflow {
		t.Errorf("overloaded home still chosen: %d (%s)", i, reason)
	}
	for _, lease := range leases {
		lease.Release()
	}
	if i, _ := p.Choose(Pick{Cands: cands, Session: "user-42"}); i != home {
		t.Errorf("the session did not return home after the load dropped: %d, want %d", i, home)
	}
	// Sessions spread: many keys use every instance.
	seen := map[int]bool{}
	for k := range 200 {
		i, _ := p.Choose(Pick{Cands: cands, Session: fmt.Sprint("s", k)})
		seen[i] = true
	}
	if len(seen) != len(cands) {
		t.Errorf("200 sessions used %d of %d instances", len(seen), len(cands))
	}
}

// TestPrefixIndexStaysUnderItsCap: for any input, each instance holds at
// most its cap, and an instance that leaves drops its entries.
func TestPrefixIndexStaysUnderItsCap(t *testing.T) {
	const perInstance = 100
	idx := NewPrefixIndex(4, 50, perInstance)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		id := int64(rng.IntN(5) + 1)
		text := make([]byte, rng.IntN(400))
		for i := range text {
			text[i] = byte('a' + rng.IntN(3))
		}
		blocks := idx.Blocks(string(text))
		if len(blocks) > 50 {
			t.Fatalf("%d blocks, above the maximum of 50", len(blocks))
		}
		idx.Record(id, blocks)
		idx.insts.Range(func(k, v any) bool {
			p := v.(*instPrefixes)
			if n := len(p.cur) + len(p.prev); n > perInstance {
				t.Fatalf("instance %v holds %d entries, above its cap of %d", k, n, perInstance)
			}
			return true
		})
	}
	idx.Retain(func(id int64) bool { return id != 3 })
	if idx.Match(3, idx.Blocks(strings.Repeat("a", 40))) != 0 {
		t.Error("a departed instance still matches")
	}
	if _, n := idx.Entries(); n != 4 {
		t.Errorf("%d instances with entries after one left, want 4", n)
	}
}

func TestPrefixMatchIsTheLongestHeldPrefix(t *testing.T) {
	idx := NewPrefixIndex(4, 0, 0)
	idx.Record(1, idx.Blocks("aaaabbbbcccc"))
	cases := []struct {
		prompt string
		want   int
	}{
		{"aaaabbbbcccc", 3},
		{"aaaabbbbccccdddd", 3},
		{"aaaabbbbxxxx", 2},
		{"xaaabbbbcccc", 0}, // chained: a different first block matches nothing
		{"aaa", 0},
	}
	for _, c := range cases {
		if got := idx.Match(1, idx.Blocks(c.prompt)); got != c.want {
			t.Errorf("Match(%q) = %d, want %d", c.prompt, got, c.want)
		}
	}
}
