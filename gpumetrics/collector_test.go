package gpumetrics

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
	"github.com/caddy-vastai/caddy-vastai/sshpool"
)

const oneGPU = "0, GPU-x, Tesla T4, 10, 5, 100, 15360, 40, 27.5, 70\n"

func TestCollectorKeepsLastGoodSample(t *testing.T) {
	fr := newFakeRunner()
	fr.set(1, oneGPU, nil)
	c := NewCollector(nil, 20*time.Millisecond, testLogger(t))
	c.run = fr.run
	c.SetEndpoints([]sshpool.Endpoint{{ID: 1, Direct: "x:22"}})
	if _, ok := c.Sample(1); ok {
		t.Fatal("sample before any poll")
	}
	runCollector(t, c)

	var good Sample
	waitFor(t, 5*time.Second, "first sample", func() bool {
		var ok bool
		good, ok = c.Sample(1)
		return ok
	})
	if good.Err != "" || len(good.GPUs) != 1 || good.GPUs[0].Name != "Tesla T4" || good.CollectedAt.IsZero() {
		t.Fatalf("sample = %+v", good)
	}

	// Command failure: Err recorded, previous GPUs and time kept.
	fr.set(1, "", errors.New("exit status 1"))
	var bad Sample
	waitFor(t, 5*time.Second, "failed sample", func() bool {
		bad, _ = c.Sample(1)
		return bad.Err != ""
	})
	if len(bad.GPUs) != 1 || !bad.CollectedAt.Equal(good.CollectedAt) {
		t.Errorf("failed poll lost the last good data: %+v", bad)
	}

	// Garbage output: the same.
	fr.set(1, "garbage\n", nil)
	waitFor(t, 5*time.Second, "parse failure sample", func() bool {
		s, _ := c.Sample(1)
		return bytes.Contains([]byte(s.Err), []byte("malformed"))
	})
	if s, _ := c.Sample(1); len(s.GPUs) != 1 || !s.CollectedAt.Equal(good.CollectedAt) {
		t.Errorf("parse failure lost the last good data: %+v", s)
	}

	// Recovery clears Err and advances CollectedAt.
	fr.set(1, oneGPU, nil)
	waitFor(t, 5*time.Second, "recovered sample", func() bool {
		s, _ := c.Sample(1)
		return s.Err == "" && s.CollectedAt.After(good.CollectedAt)
	})

	// Removed endpoints lose their sample.
	c.SetEndpoints(nil)
	if _, ok := c.Sample(1); ok {
		t.Error("sample of a removed endpoint")
	}
}

func TestCollectorSlowInstanceDoesNotDelayOthers(t *testing.T) {
	fr := newFakeRunner()
	fr.block[1] = true
	fr.set(2, oneGPU, nil)
	fr.set(3, oneGPU, nil)
	c := NewCollector(nil, 50*time.Millisecond, testLogger(t))
	c.Timeout = time.Hour // the slow poll never finishes during the test
	c.run = fr.run
	c.SetEndpoints([]sshpool.Endpoint{{ID: 1}, {ID: 2}, {ID: 3}})
	runCollector(t, c)
	waitFor(t, 5*time.Second, "several polls of the fast instances", func() bool {
		return fr.callCount(2) >= 3 && fr.callCount(3) >= 3
	})
	if n := fr.callCount(1); n != 1 {
		t.Errorf("slow instance polled %d times, want 1 (no pile-up)", n)
	}
	if _, ok := c.Sample(1); ok {
		t.Error("sample for an instance whose poll never finished")
	}
}

func TestCollectorNewEndpointPolledAtOnce(t *testing.T) {
	fr := newFakeRunner()
	fr.set(1, oneGPU, nil)
	fr.set(2, oneGPU, nil)
	c := NewCollector(nil, time.Hour, testLogger(t))
	c.run = fr.run
	c.SetEndpoints([]sshpool.Endpoint{{ID: 1}})
	runCollector(t, c)
	waitFor(t, 5*time.Second, "first instance sampled", func() bool { _, ok := c.Sample(1); return ok })
	c.SetEndpoints([]sshpool.Endpoint{{ID: 1}, {ID: 2}})
	waitFor(t, 5*time.Second, "added instance sampled before the next tick", func() bool { _, ok := c.Sample(2); return ok })
	if n := fr.callCount(1); n != 1 {
		t.Errorf("existing instance re-polled %d times on SetEndpoints", n)
	}
}

func TestCollectorConcurrentReads(t *testing.T) {
	fr := newFakeRunner()
	eps := make([]sshpool.Endpoint, 20)
	for i := range eps {
		eps[i] = sshpool.Endpoint{ID: int64(i)}
		fr.set(int64(i), oneGPU, nil)
	}
	c := NewCollector(nil, time.Millisecond, testLogger(t))
	c.MaxConcurrent = 4
	c.run = fr.run
	c.SetEndpoints(eps)
	runCollector(t, c)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for i := range eps {
					if s, ok := c.Sample(int64(i)); ok && len(s.GPUs) != 1 {
						t.Errorf("torn sample %+v", s)
						return
					}
				}
			}
		}()
	}
	for i := 0; i < 50; i++ {
		c.SetEndpoints(eps[:10+i%10])
	}
	waitFor(t, 5*time.Second, "all sampled", func() bool {
		for i := range 10 {
			if _, ok := c.Sample(int64(i)); !ok {
				return false
			}
		}
		return true
	})
	stop.Store(true)
	wg.Wait()
}

// TestCollectorBlackHole runs real polls: two instances behind sshd and one
// black hole that accepts TCP and never speaks. The good instances get
// samples while the black hole's dial is still hanging.
func TestCollectorBlackHole(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	bh := sshdtest.NewBlackHole(t)
	cfg := testPoolConfig(t, e)
	cfg.ConnectTimeout = time.Minute // the black hole dial outlasts the test
	p := newTestPool(t, cfg)
	c := NewCollector(p, 200*time.Millisecond, testLogger(t))
	// Generous: a session costs whatever the test host's root shell rc
	// files cost. The black hole's poll needs this long to time out.
	c.Timeout = 3 * time.Second
	c.SetEndpoints([]sshpool.Endpoint{
		{ID: 1, Direct: bh.Addr},
		{ID: 2, Direct: s.Addr},
		{ID: 3, Proxy: s.Addr},
	})
	runCollector(t, c)
	waitFor(t, 10*time.Second, "samples from the good instances", func() bool {
		s2, ok2 := c.Sample(2)
		s3, ok3 := c.Sample(3)
		return ok2 && ok3 && len(s2.GPUs) == 3 && len(s3.GPUs) == 3
	})
	if bh.Open.Load() != 1 {
		t.Errorf("black hole connections open = %d, want 1 dial still hanging", bh.Open.Load())
	}
	waitFor(t, 10*time.Second, "the black hole's poll to time out", func() bool {
		s1, ok := c.Sample(1)
		return ok && s1.Err != "" && len(s1.GPUs) == 0
	})
	if st := p.Status(1); st.Path != sshpool.PathDown {
		t.Errorf("black hole Status = %+v", st)
	}
	if st := p.Status(3); st.Path != sshpool.PathProxy {
		t.Errorf("proxy-only Status = %+v", st)
	}
}

// TestMetricsFailureKeepsTunnel: while nvidia-smi fails, prints garbage or
// hangs past the poll timeout, an open tunnel on the same connection keeps
// streaming and the connection is never rebuilt (vastproxy bug B4).
func TestMetricsFailureKeepsTunnel(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host"))
	fw := sshdtest.NewForwarder(t, s.Addr)
	p := newTestPool(t, testPoolConfig(t, e))
	srv := sshdtest.NewSSEServer(t)
	ep := sshpool.Endpoint{ID: 77, Direct: fw.Addr}

	c := NewCollector(p, 100*time.Millisecond, testLogger(t))
	c.Timeout = 2 * time.Second // the hang below lasts longer
	c.SetEndpoints([]sshpool.Endpoint{ep})
	runCollector(t, c)
	var good Sample
	waitFor(t, 10*time.Second, "first good sample", func() bool {
		var ok bool
		good, ok = c.Sample(ep.ID)
		return ok && good.Err == "" && len(good.GPUs) == 3
	})
	since := p.Status(ep.ID).ConnectedSince

	stream := openSSE(t, p, ep, srv)
	if got := stream.Event(t); !bytes.Equal(got, srv.Events[0]) {
		t.Fatalf("first event %q", got)
	}

	failures := []struct {
		name  string
		apply func()
	}{
		{"exit 1", func() { e.SetNvidiaSMI([]byte("NVIDIA-SMI has failed\n"), 1) }},
		{"garbage", func() { e.SetNvidiaSMI([]byte("45, [N/A]\n\x00\xff garbage\n"), 0) }},
		{"hang past the timeout", func() { e.SetNvidiaSMISleep(5) }},
	}
	for i, f := range failures {
		f.apply()
		waitFor(t, 10*time.Second, f.name+" recorded", func() bool {
			s, _ := c.Sample(ep.ID)
			return s.Err != ""
		})
		sample, _ := c.Sample(ep.ID)
		if len(sample.GPUs) != 3 || !sample.CollectedAt.Equal(good.CollectedAt) {
			t.Errorf("%s: last good data lost: %+v", f.name, sample)
		}
		// The tunnel still streams.
		srv.Next <- struct{}{}
		if got := stream.Event(t); !bytes.Equal(got, srv.Events[i+1]) {
			t.Fatalf("%s: event %d = %q", f.name, i+1, got)
		}
		st := p.Status(ep.ID)
		if st.Path != sshpool.PathDirect || st.Reconnects != 0 || !st.ConnectedSince.Equal(since) {
			t.Errorf("%s: connection disturbed: %+v", f.name, st)
		}
		e.SetNvidiaSMISleep(0)
		e.SetNvidiaSMI(readFixture(t, "query_full_3gpu.txt"), 0)
		waitFor(t, 10*time.Second, "recovery after "+f.name, func() bool {
			s, _ := c.Sample(ep.ID)
			return s.Err == ""
		})
		good, _ = c.Sample(ep.ID)
	}
	if n := fw.Accepted.Load(); n != 1 {
		t.Errorf("SSH connections = %d, want 1", n)
	}
}

// TestQueryThroughSSHD runs Query on a real sshd through a real Pool: the
// host gets Query's arguments unchanged and its output parses. (Moved from
// the pool's TestPoolRunThroughSSHD when the pool became package sshpool.)
func TestQueryThroughSSHD(t *testing.T) {
	e := newEnv(t)
	s := e.StartServer(e.NewHostKey("host1"))
	p := newTestPool(t, testPoolConfig(t, e))
	out, err := p.Run(ctxT(t, 20*time.Second), sshpool.Endpoint{ID: 101, Direct: s.Addr}, Query)
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 3 || gpus[0].Name != "NVIDIA H100 80GB HBM3" || *gpus[0].PowerDrawW != 512.31 ||
		gpus[1].UtilizationGPU != nil || *gpus[1].MemoryTotalMiB != 81920 || gpus[2].TemperatureC != nil {
		t.Errorf("parsed %s", mustJSON(gpus))
	}
	if want := strings.TrimPrefix(Query, "nvidia-smi "); e.NvidiaSMIArgs() != want {
		t.Errorf("nvidia-smi got args %q, want %q", e.NvidiaSMIArgs(), want)
	}
}
