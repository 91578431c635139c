package autoscale

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// BenchmarkDeciderObserve is one sample into a full ring.
func BenchmarkDeciderObserve(b *testing.B) {
	d, _ := NewDecider(Config{Max: 10})
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(100 * time.Millisecond)
		d.Observe(now, float64(i%40), 3)
	}
}

// BenchmarkDeciderDecide is one decision over a full 60-bucket stable
// window, explanation included.
func BenchmarkDeciderDecide(b *testing.B) {
	d, _ := NewDecider(Config{Max: 10})
	now := t0
	for i := range 120 {
		now = now.Add(time.Second)
		d.Observe(now, float64(10+i%5), 2)
	}
	b.ReportAllocs()
	for b.Loop() {
		d.Decide(now)
	}
}

// BenchmarkHoldFastPath is Wait on an open Hold with no one held: what
// every request pays when the pool has a ready instance.
func BenchmarkHoldFastPath(b *testing.B) {
	h, _ := NewHold(HoldConfig{})
	h.Release()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHoldFastPathParallel is the same from all cores at once: the
// word is only read, so its cache line is shared, not contended.
func BenchmarkHoldFastPathParallel(b *testing.B) {
	h, _ := NewHold(HoldConfig{})
	h.Release()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := h.Wait(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHoldRoundTrip is one held request: enqueue on a blocked Hold,
// Release, wake-up, Block again.
func BenchmarkHoldRoundTrip(b *testing.B) {
	h, _ := NewHold(HoldConfig{})
	ctx := context.Background()
	done := make(chan error)
	b.ReportAllocs()
	for b.Loop() {
		go func() { done <- h.Wait(ctx) }()
		for h.Len() == 0 {
			runtime.Gosched()
		}
		h.Release()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		h.Block()
	}
}
