package routing

import (
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
