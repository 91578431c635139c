package history

import (
	"encoding/json"
	"math"
	"runtime"
	"testing"
	"time"
)

var t0 = time.Unix(1_800_000_000, 0) // a multiple of 10s

func mustNew(t testing.TB, res time.Duration, n int) *Store {
	t.Helper()
	s, err := New(res, n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func gpu(v float64) Sample { s := Unknown(); s.GPUUtilization = v; return s }

// values renders a column with -1 for unknown, for readable comparisons.
func values(c Column) []float64 {
	out := make([]float64, len(c))
	for i, v := range c {
		if math.IsNaN(float64(v)) {
			out[i] = -1
		} else {
			out[i] = float64(v)
		}
	}
	return out
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRecordKeepsTheLastLengthSlotsOldestFirst(t *testing.T) {
	type rec struct {
		at time.Duration
		v  float64
	}
	tests := []struct {
		name string
		recs []rec
		want []float64
	}{
		{"one point", []rec{{0, 5}}, []float64{-1, -1, -1, 5}},
		{"consecutive", []rec{{0, 1}, {10 * time.Second, 2}, {20 * time.Second, 3}}, []float64{-1, 1, 2, 3}},
		{"wraps around", []rec{{0, 1}, {10 * time.Second, 2}, {20 * time.Second, 3}, {30 * time.Second, 4}, {40 * time.Second, 5}, {50 * time.Second, 6}}, []float64{3, 4, 5, 6}},
		{"a skipped slot is unknown", []rec{{0, 1}, {10 * time.Second, 2}, {30 * time.Second, 4}}, []float64{1, 2, -1, 4}},
		{"a gap longer than the ring clears it", []rec{{0, 1}, {10 * time.Second, 2}, {5 * time.Minute, 9}}, []float64{-1, -1, -1, 9}},
		{"same slot overwrites", []rec{{0, 1}, {3 * time.Second, 7}}, []float64{-1, -1, -1, 7}},
		{"an older slot is ignored", []rec{{0, 1}, {10 * time.Second, 2}, {0, 8}}, []float64{-1, -1, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, 10*time.Second, 4)
			for _, r := range tt.recs {
				s.Record(t0.Add(r.at), map[int64]Sample{7: gpu(r.v)}, nil)
			}
			got, ok := s.Instance(7)
			if !ok {
				t.Fatal("series of instance 7 missing")
			}
			if !equal(values(got.GPUUtilization), tt.want) {
				t.Errorf("gpu column = %v, want %v", values(got.GPUUtilization), tt.want)
			}
		})
	}
}

func TestASeriesIsDroppedWhenItsInstanceLeaves(t *testing.T) {
	s := mustNew(t, 10*time.Second, 4)
	s.Record(t0, map[int64]Sample{1: gpu(1), 2: gpu(2)}, map[string]Sample{"a": gpu(1), "b": gpu(2)})
	s.Record(t0.Add(10*time.Second), map[int64]Sample{2: gpu(3)}, map[string]Sample{"b": gpu(3)})
	if _, ok := s.Instance(1); ok {
		t.Error("instance 1 left but its series is still there")
	}
	if _, ok := s.Pool("a"); ok {
		t.Error("pool a left but its series is still there")
	}
	if ids := s.InstanceIDs(); len(ids) != 1 || ids[0] != 2 {
		t.Errorf("instance ids = %v, want [2]", ids)
	}
	if names := s.PoolNames(); len(names) != 1 || names[0] != "b" {
		t.Errorf("pool names = %v, want [b]", names)
	}
	// A series that comes back starts empty rather than with old points.
	s.Record(t0.Add(20*time.Second), map[int64]Sample{1: gpu(4), 2: gpu(5)}, nil)
	got, _ := s.Instance(1)
	if want := []float64{-1, -1, -1, 4}; !equal(values(got.GPUUtilization), want) {
		t.Errorf("returning instance 1 = %v, want %v", values(got.GPUUtilization), want)
	}
}

func TestAllFiguresAreKeptAndEndIsTheNewestSlot(t *testing.T) {
	s := mustNew(t, 10*time.Second, 2)
	if !s.End().IsZero() {
		t.Errorf("End before any recording = %v, want zero", s.End())
	}
	s.Record(t0.Add(4*time.Second), map[int64]Sample{1: {50, 2.5, 12.25, 0.4}}, nil)
	if !s.End().Equal(t0) {
		t.Errorf("End = %v, want %v (start of the slot)", s.End(), t0)
	}
	got, _ := s.Instance(1)
	for name, c := range map[string]Column{"gpu": got.GPUUtilization, "rps": got.RequestsPerSecond, "latency": got.LatencyMS, "spend": got.SpendPerHour} {
		if math.IsNaN(float64(c[1])) {
			t.Errorf("%s: newest point unknown", name)
		}
	}
	if got.SpendPerHour[1] != float32(0.4) || got.LatencyMS[1] != 12.25 {
		t.Errorf("spend %v latency %v, want 0.4 and 12.25", got.SpendPerHour[1], got.LatencyMS[1])
	}
}

func TestColumnJSONWritesNullForUnknownAndShortNumbers(t *testing.T) {
	b, err := json.Marshal(Column{float32(math.NaN()), 0.4, 100, 1.5})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "[null,0.4,100,1.5]" {
		t.Errorf("got %s", b)
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	for _, c := range []struct {
		res time.Duration
		n   int
	}{{0, 10}, {time.Second, 0}, {-time.Second, 5}} {
		if _, err := New(c.res, c.n); err != ErrBadConfig {
			t.Errorf("New(%v, %d) = %v, want ErrBadConfig", c.res, c.n, err)
		}
	}
}

func TestConcurrentReadsAndWrites(t *testing.T) {
	s := mustNew(t, time.Millisecond, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			s.Record(t0.Add(time.Duration(i)*time.Millisecond), map[int64]Sample{int64(i % 5): gpu(1)}, map[string]Sample{"p": gpu(1)})
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
			for _, id := range s.InstanceIDs() {
				s.Instance(id)
			}
			s.Pool("p")
		}
	}
}

// fill records a full hour for n instances and 10 pools.
func fill(s *Store, n int) {
	inst := make(map[int64]Sample, n)
	for i := 0; i < n; i++ {
		inst[int64(i+1)] = Sample{50, 1, 20, 0.4}
	}
	pools := map[string]Sample{}
	for i := 0; i < 10; i++ {
		pools[string(rune('a'+i))] = Sample{50, 1, 20, 0.4}
	}
	for i := 0; i < s.Length(); i++ {
		s.Record(t0.Add(time.Duration(i)*s.Resolution()), inst, pools)
	}
}

// TestMemoryFor1000Instances measures the heap held by a full hour of
// history for 1000 instances (the figure the README quotes). It reports;
// the only assertion is a generous sanity bound on fixed-size rings.
func TestMemoryFor1000Instances(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := mustNew(t, DefaultResolution, DefaultLength)
	fill(s, 1000)
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	perSeries := 16 * DefaultLength // 4 float32 per point
	t.Logf("history for 1000 instances + 10 pools, %d points at %s: %.2f MiB held (rings alone: %.2f MiB)",
		DefaultLength, DefaultResolution, float64(held)/(1<<20), float64(1010*perSeries)/(1<<20))
	if held > 4*int64(1010*perSeries) {
		t.Errorf("%d bytes held, more than 4x the ring payload: rings are not fixed-size", held)
	}
	// Recording another hour allocates nothing new: the rings are reused.
	inst := map[int64]Sample{}
	for i := 0; i < 1000; i++ {
		inst[int64(i+1)] = Sample{1, 1, 1, 1}
	}
	next := t0.Add(time.Hour)
	allocs := testing.AllocsPerRun(10, func() {
		next = next.Add(DefaultResolution)
		s.Record(next, inst, nil)
	})
	if allocs > 0 {
		t.Errorf("Record of a known set allocates %.0f times per call, want 0", allocs)
	}
	runtime.KeepAlive(s)
}

func BenchmarkRecord1000Instances(b *testing.B) {
	s := mustNew(b, DefaultResolution, DefaultLength)
	inst := map[int64]Sample{}
	for i := 0; i < 1000; i++ {
		inst[int64(i+1)] = Sample{1, 1, 1, 1}
	}
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(DefaultResolution)
		s.Record(now, inst, nil)
	}
}

func BenchmarkReadOneSeries(b *testing.B) {
	s := mustNew(b, DefaultResolution, DefaultLength)
	fill(s, 10)
	b.ReportAllocs()
	for b.Loop() {
		s.Instance(5)
	}
}
