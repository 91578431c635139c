package routing

import "testing"

// BenchmarkPickAndRelease is the request path's cost: pick among 100
// instances, count the request in and out.
func BenchmarkPickAndRelease(b *testing.B) {
	var l Loads
	cands := make([]Candidate, 100)
	for i := range cands {
		cands[i] = Candidate{ID: int64(i + 1), Capacity: 1}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Acquire(cands[l.PowerOfTwo(cands)].ID).Release()
		}
	})
}
