package vastai

// Wiring of the dashboard's sampler: one loop per reload-surviving state records the
// fleet's figures into the history rings every resolution step, for the
// charts served at /vastai/history (admin_ui.go). It is started and stopped
// with the watcher loop (state.apply, state.Destruct), so a reload never
// runs a second one.

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/history"
)

// maxEventStreams bounds the concurrent /vastai/events streams: each one
// renders the whole fleet every second.
const maxEventStreams = 16

// dashboard is the state's part for the web dashboard.
type dashboard struct {
	hist    atomic.Pointer[history.Store]
	running atomic.Int32 // sampler loops running (1 when healthy)
	streams atomic.Int32 // open /vastai/events streams

	// cancel and done are guarded by state.mu.
	cancel context.CancelFunc
	done   chan struct{}
}

// startDashboardLocked starts the sampler unless it runs already. The
// caller holds s.mu.
func (s *state) startDashboardLocked() {
	if s.dash.cancel != nil {
		return
	}
	h := s.dash.hist.Load()
	if h == nil {
		h, _ = history.New(history.DefaultResolution, history.DefaultLength)
		s.dash.hist.Store(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.dash.cancel, s.dash.done = cancel, done
	s.dash.running.Add(1)
	go func() {
		defer close(done)
		defer s.dash.running.Add(-1)
		s.runSampler(ctx, h)
	}()
}

// stopDashboardLocked stops the sampler and waits for it. The caller holds
// s.mu; the sampler never takes it.
func (s *state) stopDashboardLocked() {
	if s.dash.cancel == nil {
		return
	}
	s.dash.cancel()
	<-s.dash.done
	s.dash.cancel, s.dash.done = nil, nil
}

// runSampler records one point per resolution step until ctx ends.
func (s *state) runSampler(ctx context.Context, h *history.Store) {
	sp := sampler{s: s, prev: map[int64]reqMark{}}
	sp.record(h, time.Now())
	t := time.NewTicker(h.Resolution())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sp.record(h, now)
		}
	}
}

// sampler turns snapshots into history samples. It belongs to one loop.
type sampler struct {
	s    *state
	prev map[int64]reqMark
}

// reqMark is a request counter reading, for the requests/s between two
// samples.
type reqMark struct {
	total uint64
	at    time.Time
}

// record samples every known instance and configured pool once.
func (sp *sampler) record(h *history.Store, now time.Time) {
	snap := sp.s.watcher.Snapshot()
	instances, pools := sp.samples(snap, now, 2*h.Resolution())
	h.Record(now, instances, pools)
	for id := range sp.prev {
		if _, ok := instances[id]; !ok {
			delete(sp.prev, id)
		}
	}
	sp.s.inflight.forgetStarted(func(id int64) bool { _, ok := instances[id]; return ok })
}

// samples builds this step's points. Figures older than maxAge (a GPU
// sample or probe from before a lost connection) read as unknown.
func (sp *sampler) samples(snap *fleet.Snapshot, now time.Time, maxAge time.Duration) (map[int64]history.Sample, map[string]history.Sample) {
	instances := make(map[int64]history.Sample, len(snap.Members))
	type agg struct{ gpu, gpuN, rps, lat, latN, spend float64 }
	byPool := make(map[string]*agg, len(snap.Pools))
	for name := range snap.Pools {
		byPool[name] = new(agg)
	}
	rt := sp.s.ssh.Load()
	for i := range snap.Members {
		m := &snap.Members[i]
		id := m.Instance.ID
		smp := history.Unknown()
		smp.SpendPerHour, _ = instanceCost(&m.Instance, now)
		if rt != nil {
			smp.GPUUtilization = meanGPU(rt, id, now, maxAge)
		}
		if p := m.LastProbe(); p != nil && p.OK && now.Sub(p.Time) <= maxAge {
			smp.LatencyMS = float64(p.Latency.Microseconds()) / 1000
		}
		total := sp.s.inflight.requestsStarted(id)
		if prev, ok := sp.prev[id]; ok && total >= prev.total && now.After(prev.at) {
			smp.RequestsPerSecond = float64(total-prev.total) / now.Sub(prev.at).Seconds()
		}
		sp.prev[id] = reqMark{total, now}
		instances[id] = smp
		if a := byPool[m.Pool]; a != nil {
			a.spend += smp.SpendPerHour
			if !math.IsNaN(smp.GPUUtilization) {
				a.gpu, a.gpuN = a.gpu+smp.GPUUtilization, a.gpuN+1
			}
			if !math.IsNaN(smp.RequestsPerSecond) {
				a.rps += smp.RequestsPerSecond
			}
			if !math.IsNaN(smp.LatencyMS) {
				a.lat, a.latN = a.lat+smp.LatencyMS, a.latN+1
			}
		}
	}
	pools := make(map[string]history.Sample, len(byPool))
	for name, a := range byPool {
		p := history.Sample{GPUUtilization: math.NaN(), RequestsPerSecond: a.rps, LatencyMS: math.NaN(), SpendPerHour: a.spend}
		if a.gpuN > 0 {
			p.GPUUtilization = a.gpu / a.gpuN
		}
		if a.latN > 0 {
			p.LatencyMS = a.lat / a.latN
		}
		pools[name] = p
	}
	return instances, pools
}

// meanGPU is the mean utilisation of an instance's GPUs, NaN if unknown.
func meanGPU(rt *sshRuntime, id int64, now time.Time, maxAge time.Duration) float64 {
	sample, ok := rt.collector.Sample(id)
	if !ok || now.Sub(sample.CollectedAt) > maxAge {
		return math.NaN()
	}
	sum, n := 0.0, 0
	for _, g := range sample.GPUs {
		if g.UtilizationGPU != nil {
			sum, n = sum+*g.UtilizationGPU, n+1
		}
	}
	if n == 0 {
		return math.NaN()
	}
	return sum / float64(n)
}
