package routing

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

func benchCands(n int) []Candidate {
	cands := make([]Candidate, n)
	for i := range cands {
		cands[i] = Candidate{ID: int64(i + 1), Capacity: 1}
	}
	return cands
}

// BenchmarkPickAndRelease is the least-load request path: choose among
// 100 instances, count the request in and out.
func BenchmarkPickAndRelease(b *testing.B) {
	var l Loads
	p := &Policy{Loads: &l, SessionFactor: DefaultSessionFactor}
	cands := benchCands(100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i, _ := p.Choose(Pick{Cands: cands})
			l.Acquire(cands[i].ID).Release()
		}
	})
}

// BenchmarkCacheAwareChoose is the cache-aware request path over 100
// instances with a warm index: hash a 4 KiB chat prompt, match it
// against every instance, record it.
func BenchmarkCacheAwareChoose(b *testing.B) {
	var l Loads
	idx := NewPrefixIndex(0, 0, 0)
	p := &Policy{Loads: &l, Index: idx, CacheThreshold: DefaultCacheThreshold, BalanceAbs: DefaultBalanceAbs, BalanceRel: DefaultBalanceRel}
	cands := benchCands(100)
	prompts := make([]string, 32)
	for i := range prompts {
		prompts[i] = fmt.Sprintf("system %d\x00", i%4) + strings.Repeat("You are a helpful assistant. ", 140) + fmt.Sprint(i)
		p.Choose(Pick{Cands: cands, Blocks: idx.Blocks(prompts[i])})
	}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		blocks := idx.Blocks(prompts[n%len(prompts)])
		p.Choose(Pick{Cands: cands, Blocks: blocks})
		n++
	}
}

// BenchmarkPrefixIndexMemory fills 100 instances' indexes to their cap
// and reports the heap they hold (the README's memory figure).
func BenchmarkPrefixIndexMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		idx := NewPrefixIndex(0, 0, 0)
		blocks := make([]uint64, DefaultMaxBlocks)
		for id := int64(1); id <= 100; id++ {
			for r := 0; r < 2*DefaultEntriesPerInstance/DefaultMaxBlocks; r++ {
				for i := range blocks {
					blocks[i] = uint64(id)<<40 | uint64(r)<<20 | uint64(i)
				}
				idx.Record(id, blocks)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		entries, _ := idx.Entries()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB/100-instances")
		b.ReportMetric(float64(entries), "entries")
		runtime.KeepAlive(idx)
	}
}
