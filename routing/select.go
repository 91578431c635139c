package routing

import (
	"hash/maphash"
	"math/rand/v2"
	"slices"
)

// Reasons of a decision, for the route-decision metric.
const (
	ReasonPinned          = "pinned"           // the client named the instance
	ReasonSession         = "session"          // the session's own instance
	ReasonSessionOverflow = "session_overflow" // the session's instance was loaded above the bound
	ReasonCacheHit        = "cache_hit"        // the longest prefix match, above the threshold
	ReasonCacheMiss       = "cache_miss"       // no match above the threshold: least loaded
	ReasonImbalanced      = "imbalanced"       // the fleet is imbalanced: load first
	ReasonLeastLoad       = "least_load"       // least loaded
	ReasonSaturated       = "saturated"        // every candidate is saturated: least loaded of all
)

// Defaults of a Policy (SGLang's cache_threshold and balance_rel; a
// balance_abs of 8 for small fleets, as the reference suggests).
const (
	DefaultCacheThreshold = 0.3
	DefaultBalanceAbs     = 8
	DefaultBalanceRel     = 1.5
	DefaultSessionFactor  = 1.25
)

// Candidate is one routable instance as a policy sees it.
type Candidate struct {
	ID int64
	// Waiting is the engine's own queue length when its scraped figures
	// are fresh, 0 otherwise.
	Waiting int64
	// Capacity weighs the load (GPU count); 0 or less counts as 1.
	Capacity float64
	// Saturated: the engine queues and its KV cache is full, or the
	// instance has reached its request limit. Saturated candidates are
	// chosen only when every candidate is.
	Saturated bool
	// Full: the instance reached its request limit; not even a pinned
	// request goes there.
	Full bool
}

// Pick is one request's routing input.
type Pick struct {
	Cands []Candidate
	// Pinned is the instance the client asked for (0: none).
	Pinned int64
	// Session is the session key (empty: none).
	Session string
	// Blocks are the request's prompt blocks (PrefixIndex.Blocks), for
	// a cache-aware policy.
	Blocks []uint64
}

// Policy chooses an instance for a request. Index nil makes it a
// least-load policy; with an index it is cache-aware.
type Policy struct {
	Loads *Loads
	Index *PrefixIndex
	// CacheThreshold is the matched fraction of a prompt's blocks above
	// which the best match is taken.
	CacheThreshold float64
	// The fleet is imbalanced when max−min load > BalanceAbs and max >
	// BalanceRel·min; cache affinity then yields to load.
	BalanceAbs, BalanceRel float64
	// SessionFactor bounds a session's instance at this multiple of the
	// average load (bounded-load consistent hashing).
	SessionFactor float64
}

var sessionSeed = maphash.MakeSeed()

// Choose returns the index in in.Cands of the chosen instance and the
// reason, or -1 when there is no candidate. A cache-aware policy records
// the request's blocks against its choice.
func (p *Policy) Choose(in Pick) (int, string) {
	if len(in.Cands) == 0 {
		return -1, ""
	}
	if in.Pinned != 0 {
		for i, c := range in.Cands {
			if c.ID == in.Pinned && !c.Full {
				p.record(c.ID, in.Blocks)
				return i, ReasonPinned
			}
		}
	}
	open := make([]int, 0, len(in.Cands))
	for i, c := range in.Cands {
		if !c.Saturated {
			open = append(open, i)
		}
	}
	saturated := len(open) == 0
	if saturated {
		for i := range in.Cands {
			open = append(open, i)
		}
	}
	loads := make([]float64, len(in.Cands))
	for _, i := range open {
		loads[i] = p.Loads.Load(in.Cands[i])
	}
	i, reason := p.choose(in, open, loads)
	if saturated {
		reason = ReasonSaturated
	}
	p.record(in.Cands[i].ID, in.Blocks)
	return i, reason
}

func (p *Policy) choose(in Pick, open []int, loads []float64) (int, string) {
	if in.Session != "" {
		i, first := p.session(in, open, loads)
		if first {
			return i, ReasonSession
		}
		return i, ReasonSessionOverflow
	}
	if p.Index == nil || len(in.Blocks) == 0 {
		return leastLoaded(open, loads), ReasonLeastLoad
	}
	lo, hi := loads[open[0]], loads[open[0]]
	for _, i := range open {
		lo, hi = min(lo, loads[i]), max(hi, loads[i])
	}
	if hi-lo > p.BalanceAbs && hi > p.BalanceRel*lo {
		// Keep what locality is left among the lightly loaded
		// (sglang#32195), but never send to a loaded instance.
		light := open[:0:0]
		for _, i := range open {
			if loads[i] <= lo+p.BalanceAbs {
				light = append(light, i)
			}
		}
		if best, n := p.bestMatch(in, light, loads); n > 0 {
			return best, ReasonImbalanced
		}
		return leastLoaded(light, loads), ReasonImbalanced
	}
	best, n := p.bestMatch(in, open, loads)
	if n > 0 && float64(n) >= p.CacheThreshold*float64(len(in.Blocks)) {
		return best, ReasonCacheHit
	}
	// A miss goes to the least loaded, never to the "smallest cache"
	// (the death spiral of sglang#14305).
	return leastLoaded(open, loads), ReasonCacheMiss
}

// bestMatch returns the candidate with the longest prefix match and its
// length; equal matches go to the less loaded, then at random.
func (p *Policy) bestMatch(in Pick, idx []int, loads []float64) (int, int) {
	var best []int
	bestN := 0
	for _, i := range idx {
		n := p.Index.Match(in.Cands[i].ID, in.Blocks)
		switch {
		case n > bestN:
			best, bestN = append(best[:0], i), n
		case n == bestN && n > 0:
			best = append(best, i)
		}
	}
	if bestN == 0 {
		return -1, 0
	}
	return leastLoaded(best, loads), bestN
}

// session is bounded-load consistent hashing: candidates in rendezvous
// order for the session key, the first whose load stays within
// SessionFactor × the average (counting this request). An instance
// joining or leaving moves only the sessions it wins or held; an
// overloaded instance spills its sessions to their next choice, the same
// one for every request of a session. It reports whether the session's
// first choice was taken.
func (p *Policy) session(in Pick, open []int, loads []float64) (int, bool) {
	total := 1.0 // this request
	for _, i := range open {
		total += loads[i]
	}
	bound := p.SessionFactor * total / float64(len(open))
	order := slices.Clone(open)
	score := func(i int) uint64 {
		var h maphash.Hash
		h.SetSeed(sessionSeed)
		_, _ = h.WriteString(in.Session)
		var b [8]byte
		id := uint64(in.Cands[i].ID)
		for k := range b {
			b[k] = byte(id >> (8 * k))
		}
		_, _ = h.Write(b[:])
		return h.Sum64()
	}
	slices.SortFunc(order, func(a, b int) int {
		sa, sb := score(a), score(b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	for k, i := range order {
		capacity := in.Cands[i].Capacity
		if capacity <= 0 {
			capacity = 1
		}
		if loads[i]+1/capacity <= max(bound, 1) {
			return i, k == 0
		}
	}
	return leastLoaded(open, loads), false
}

func (p *Policy) record(id int64, blocks []uint64) {
	if p.Index != nil {
		p.Index.Record(id, blocks)
	}
}

// leastLoaded returns the least loaded of idx; exact ties go to one of
// them at random (reservoir sampling), never to the first by order.
func leastLoaded(idx []int, loads []float64) int {
	best, ties := -1, 0
	for _, i := range idx {
		switch {
		case best < 0 || loads[i] < loads[best]:
			best, ties = i, 1
		case loads[i] == loads[best]:
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}
