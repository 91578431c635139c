package fleet

import (
	"context"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// TestScaleProbing measures the control plane with 500 instances probed
// every 5s: CPU time and heap. It is a measurement, not an assertion of
// speed, so it only runs when VASTAI_SCALE_SECONDS is set, e.g.
//
//	VASTAI_SCALE_SECONDS=30 go test -run TestScaleProbing -v ./fleet/
//
// The CPU figure includes the 500 loopback engines answering the probes,
// which live in the same process.
func TestScaleProbing(t *testing.T) {
	secs, _ := strconv.Atoi(os.Getenv("VASTAI_SCALE_SECONDS"))
	if secs <= 0 {
		t.Skip("set VASTAI_SCALE_SECONDS to run the scale measurement")
	}
	const n = 500
	var probes atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { probes.Add(1) })}
	defer srv.Close()
	res := &vastclient.ListResult{}
	for i := 1; i <= n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		in := running(int64(i), "llm-"+strconv.Itoa(i), ln.Addr().(*net.TCPAddr).Port)
		res.Instances = append(res.Instances, in)
	}
	l := &scriptedLister{}
	l.push(res, nil)
	w := NewWatcher(nil)
	w.Configure(l, Config{
		Pools:               []PoolSpec{{Name: "llm", LabelPrefix: "llm-", Health: HealthSpec{Interval: jsondur.Duration(5 * time.Second), Timeout: jsondur.Duration(5 * time.Second)}}},
		PollInterval:        10 * time.Second,
		MaxConcurrentProbes: 64,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	waitFor(t, 5*time.Second, "all instances ready", func() bool { return len(targets(w.Snapshot(), "llm")) == n })

	runtime.GC()
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	start := time.Now()
	probes0 := probes.Load()
	var peakHeap uint64
	for time.Since(start) < time.Duration(secs)*time.Second {
		time.Sleep(500 * time.Millisecond)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peakHeap {
			peakHeap = ms.HeapInuse
		}
	}
	elapsed := time.Since(start)
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cancel()
	<-done
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	ready := len(targets(w.Snapshot(), "llm"))
	t.Logf("%d instances, probe interval 5s, %s: %d probes (%.0f/s), CPU %s (%.1f%% of one core), heap in use %.1f MiB (peak %.1f MiB), goroutines %d, ready %d/%d",
		n, elapsed.Round(time.Second), probes.Load()-probes0, float64(probes.Load()-probes0)/elapsed.Seconds(), cpu.Round(time.Millisecond), 100*cpu.Seconds()/elapsed.Seconds(),
		float64(ms0.HeapInuse)/(1<<20), float64(peakHeap)/(1<<20), runtime.NumGoroutine(), ready, n)
	if ready != n {
		t.Errorf("only %d of %d instances stayed ready", ready, n)
	}
}
