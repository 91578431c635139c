package routing

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Speeds learns each instance's generation capacity from its engine's
// successive metrics: the decode speed of one running request (tokens
// generated per second divided by the requests running), and its batch
// size (the requests running while others wait). Their product is what
// the instance generates per second when full; dividing load by it sends
// a burst to the instances that will finish it soonest.
//
// Neither figure depends on the share of traffic an instance gets (a
// per-request speed, and a batch size seen only when saturated, assumed
// as large as the fleet's largest until then), so a slow estimate cannot
// starve an instance into staying slow. Observe is called by the
// scraper; Capacities by the request path, lock-free.
type Speeds struct {
	m sync.Map // int64 → *speed
}

// speed is one instance's estimate. The fields under mu are written by the
// scrape of that instance only; perStream and slots are published as
// float64 bits for lock-free readers.
type speed struct {
	mu          sync.Mutex
	lastAt      time.Time
	lastTokens  float64
	lastRunning float64

	perStream atomic.Uint64 // float64 bits; 0 while unknown
	slots     atomic.Uint64 // float64 bits; 0 while unknown
}

// speedWeight is the weight of a new sample in the per-request speed's
// moving average.
const speedWeight = 0.3

// Observe records one scrape of instance id: its generated-tokens counter
// (NaN when the engine reports none), running and waiting requests.
func (s *Speeds) Observe(id int64, at time.Time, tokens, running, waiting float64) {
	if math.IsNaN(tokens) {
		return
	}
	v, ok := s.m.Load(id)
	if !ok {
		v, _ = s.m.LoadOrStore(id, new(speed))
	}
	e := v.(*speed)
	e.mu.Lock()
	defer e.mu.Unlock()
	if waiting > 0 && running > math.Float64frombits(e.slots.Load()) {
		e.slots.Store(math.Float64bits(running))
	}
	dt := at.Sub(e.lastAt).Seconds()
	busy := (running + e.lastRunning) / 2
	if !e.lastAt.IsZero() && dt > 0 && tokens >= e.lastTokens && busy >= 0.5 {
		sample := (tokens - e.lastTokens) / dt / busy
		old := math.Float64frombits(e.perStream.Load())
		if old > 0 {
			sample = old + speedWeight*(sample-old)
		}
		if sample > 0 {
			e.perStream.Store(math.Float64bits(sample))
		}
	}
	// A counter that went down is an engine restart: start again from it.
	e.lastAt, e.lastTokens, e.lastRunning = at, tokens, running
}

// Retain forgets the instances for which keep is false.
func (s *Speeds) Retain(keep func(id int64) bool) {
	s.m.Range(func(k, _ any) bool {
		if !keep(k.(int64)) {
			s.m.Delete(k)
		}
		return true
	})
}

// Estimate returns instance id's per-request speed (tokens/s) and batch
// size; zero while unknown.
func (s *Speeds) Estimate(id int64) (perStream, slots float64) {
	v, ok := s.m.Load(id)
	if !ok {
		return 0, 0
	}
	e := v.(*speed)
	return math.Float64frombits(e.perStream.Load()), math.Float64frombits(e.slots.Load())
}

// Weigh sets each candidate's Capacity to its generation capacity
// relative to the candidates' mean (so loads stay in units of requests);
// a measured capacity already reflects the instance's GPUs. An instance whose
// speed is unknown counts at the median known speed, one whose batch size
// is unknown at the largest known. With no speed known at all, the
// capacities are left as they are. It reports whether it weighed.
func (s *Speeds) Weigh(cands []Candidate) bool {
	var speeds []float64
	maxSlots := 0.0
	per := make([]float64, len(cands))
	slots := make([]float64, len(cands))
	for i, c := range cands {
		per[i], slots[i] = s.Estimate(c.ID)
		if per[i] > 0 {
			speeds = append(speeds, per[i])
		}
		maxSlots = max(maxSlots, slots[i])
	}
	if len(speeds) == 0 {
		return false
	}
	slices.Sort(speeds)
	median := speeds[len(speeds)/2]
	if maxSlots == 0 {
		maxSlots = 1
	}
	total := 0.0
	for i := range cands {
		if per[i] == 0 {
			per[i] = median
		}
		if slots[i] == 0 {
			slots[i] = maxSlots
		}
		per[i] *= slots[i]
		total += per[i]
	}
	mean := total / float64(len(cands))
	for i := range cands {
		cands[i].Capacity = per[i] / mean
	}
	return true
}
