// Package history keeps the last hour of fleet figures for the dashboard's
// charts: one fixed-size ring of samples per instance and per pool. Memory
// is bounded by the number of series times the ring length; a series is
// dropped as soon as its instance (or pool) is absent from a recording, so
// the store never grows with every instance ever seen.
package history

import (
	"errors"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Defaults: one point every 10 seconds for an hour.
const (
	DefaultResolution = 10 * time.Second
	DefaultLength     = 360
)

// ErrBadConfig is returned by New for a non-positive resolution or length.
var ErrBadConfig = errors.New("history: resolution and length must be positive")

// Sample is one point of one series. NaN means unknown (no GPU metrics, no
// probe yet, the first sample of a request counter).
type Sample struct {
	// GPUUtilization is the mean utilisation of the instance's GPUs, 0-100.
	GPUUtilization float64
	// RequestsPerSecond is the rate of proxied requests started.
	RequestsPerSecond float64
	// LatencyMS is the latency of the last health probe, in milliseconds.
	LatencyMS float64
	// SpendPerHour is the spend rate in dollars per hour.
	SpendPerHour float64
}

// Unknown returns a sample with every figure unknown.
func Unknown() Sample {
	nan := math.NaN()
	return Sample{nan, nan, nan, nan}
}

const numMetrics = 4

// point is a Sample stored compactly: float32 is plenty for a chart and
// halves the memory.
type point [numMetrics]float32

var nanPoint = point{float32(math.NaN()), float32(math.NaN()), float32(math.NaN()), float32(math.NaN())}

func toPoint(s Sample) point {
	return point{float32(s.GPUUtilization), float32(s.RequestsPerSecond), float32(s.LatencyMS), float32(s.SpendPerHour)}
}

// ring is one series; vals[slot%len(vals)] holds the point of that slot.
type ring struct{ vals []point }

func newRing(length int) *ring {
	r := &ring{vals: make([]point, length)}
	for i := range r.vals {
		r.vals[i] = nanPoint
	}
	return r
}

// Store holds the series. It is safe for concurrent use: one writer (the
// sampler) and any number of readers (admin requests).
type Store struct {
	res    time.Duration
	length int

	mu        sync.RWMutex
	last      int64 // slot number (unix time / resolution) of the newest point
	recorded  bool
	instances map[int64]*ring
	pools     map[string]*ring
}

// New returns an empty store of rings of length points, one per resolution.
func New(resolution time.Duration, length int) (*Store, error) {
	if resolution <= 0 || length <= 0 {
		return nil, ErrBadConfig
	}
	return &Store{res: resolution, length: length, instances: map[int64]*ring{}, pools: map[string]*ring{}}, nil
}

// Resolution is the time between two points.
func (s *Store) Resolution() time.Duration { return s.res }

// Length is the number of points of every series.
func (s *Store) Length() int { return s.length }

// Record stores one point per instance and per pool for the slot of now.
// Series absent from the maps are dropped. Slots skipped since the last
// recording (the sampler was late) read as unknown; a recording for a slot
// older than the newest is ignored, one for the same slot overwrites it.
func (s *Store) Record(now time.Time, instances map[int64]Sample, pools map[string]Sample) {
	slot := now.UnixNano() / int64(s.res)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recorded && slot < s.last {
		return
	}
	gap := int64(0)
	if s.recorded {
		gap = min(slot-s.last, int64(s.length))
	}
	s.last, s.recorded = slot, true
	record(s.instances, instances, slot, gap, s.length)
	record(s.pools, pools, slot, gap, s.length)
}

func record[K comparable](rings map[K]*ring, samples map[K]Sample, slot, gap int64, length int) {
	for k := range rings {
		if _, ok := samples[k]; !ok {
			delete(rings, k)
		}
	}
	n := int64(length)
	for k, smp := range samples {
		r := rings[k]
		if r == nil {
			r = newRing(length)
			rings[k] = r
		} else {
			for i := int64(1); i < gap; i++ {
				r.vals[(slot-i)%n] = nanPoint
			}
		}
		r.vals[slot%n] = toPoint(smp)
	}
}

// Series is a copy of one series, oldest point first, aligned on the store's
// newest slot: every series of one read has the same times.
type Series struct {
	GPUUtilization    Column `json:"gpu_utilization"`
	RequestsPerSecond Column `json:"requests_per_second"`
	LatencyMS         Column `json:"latency_ms"`
	SpendPerHour      Column `json:"spend_per_hour"`
}

// Column is one figure over time; NaN (unknown) is written as null in JSON.
type Column []float32

// MarshalJSON writes the shortest decimal form of each value, null for NaN.
func (c Column) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+len(c)*5)
	b = append(b, '[')
	for i, v := range c {
		if i > 0 {
			b = append(b, ',')
		}
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b = append(b, "null"...)
			continue
		}
		b = strconv.AppendFloat(b, float64(v), 'f', -1, 32)
	}
	return append(b, ']'), nil
}

// End returns the time of the newest point (the start of its slot), zero
// before the first recording.
func (s *Store) End() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.recorded {
		return time.Time{}
	}
	return time.Unix(0, s.last*int64(s.res))
}

// Instance returns a copy of an instance's series.
func (s *Store) Instance(id int64) (Series, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.copyLocked(s.instances[id])
}

// Pool returns a copy of a pool's series.
func (s *Store) Pool(name string) (Series, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.copyLocked(s.pools[name])
}

// InstanceIDs lists the instances that have a series, in id order.
func (s *Store) InstanceIDs() []int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]int64, 0, len(s.instances))
	for id := range s.instances {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// PoolNames lists the pools that have a series, sorted.
func (s *Store) PoolNames() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.pools))
	for n := range s.pools {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (s *Store) copyLocked(r *ring) (Series, bool) {
	if r == nil {
		return Series{}, false
	}
	n := s.length
	out := Series{make(Column, n), make(Column, n), make(Column, n), make(Column, n)}
	cols := [numMetrics]Column{out.GPUUtilization, out.RequestsPerSecond, out.LatencyMS, out.SpendPerHour}
	// Oldest first: the slot after the newest, modulo the length.
	start := (s.last + 1) % int64(n)
	for i := 0; i < n; i++ {
		p := r.vals[(start+int64(i))%int64(n)]
		for m := range cols {
			cols[m][i] = p[m]
		}
	}
	return out, true
}
