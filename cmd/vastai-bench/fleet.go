package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// benchKey is the simulated account's API key.
const benchKey = "vastai-bench-key"

// profile is one simulated engine of the fleet.
type profile struct {
	label string
	spec  vastsim.EngineSpec
}

// prefillPerBlock is the time to first token per 64-character block not in
// the prefix cache: a cold ~3 KB system prompt costs ~150ms, a cached one
// almost nothing, so cache-aware routing shows in TTFT.
const prefillPerBlock = 3 * time.Millisecond

// profiles is the fleet: a heterogeneous set, so that a policy blind to
// speed overloads the slow engines. Caches are small enough that a policy
// which scatters sessions evicts their history.
func profiles() []profile {
	spec := func(slots int, tps float64) vastsim.EngineSpec {
		return vastsim.EngineSpec{
			Slots: slots, TokensPerSecond: tps, PrefillPerBlock: prefillPerBlock,
			PrefixCacheBlocks: 1024, KVBlocks: 128 * slots, Metrics: vastsim.MetricsVLLM,
		}
	}
	return []profile{
		{"llm-1", spec(8, 400)},
		{"llm-2", spec(4, 250)},
		{"llm-3", spec(4, 150)},
		{"llm-4", spec(2, 100)},
	}
}

// fleetSummary describes the fleet in one line.
func fleetSummary() string {
	parts := make([]string, 0, 4)
	for _, p := range profiles() {
		parts = append(parts, fmt.Sprintf("%s %d slots @ %.0f tok/s", p.label, p.spec.Slots, p.spec.TokensPerSecond))
	}
	return fmt.Sprintf("%s; prefill %s per uncached %d-char block",
		strings.Join(parts, ", "), prefillPerBlock, vastsim.DefaultPrefixBlockChars)
}

// fleet is one policy's simulated account: fresh, so caches start cold.
type fleet struct {
	sim    *vastsim.Sim
	url    string
	ids    []int64           // in profile order
	slots  []int             // batch slots, in profile order
	labels map[string]string // X-Vastai-Instance value to label
}

func startFleet() (*fleet, error) {
	sim := vastsim.New(vastsim.Options{
		APIKey: benchKey, LoadingDelay: 100 * time.Millisecond, SSHDisabled: true,
	})
	url, err := sim.Start("127.0.0.1:0")
	if err != nil {
		sim.Close()
		return nil, fmt.Errorf("starting the simulated vast.ai API: %w", err)
	}
	f := &fleet{sim: sim, url: url, labels: map[string]string{}}
	for _, p := range profiles() {
		id, err := sim.Launch(vastsim.LaunchSpec{
			Label: p.label, GPUName: "RTX 4090", NumGPUs: 1, DPH: 0.4, Running: true, Engine: p.spec,
		})
		if err != nil {
			sim.Close()
			return nil, fmt.Errorf("launching simulated instance %s: %w", p.label, err)
		}
		f.ids = append(f.ids, id)
		f.slots = append(f.slots, max(p.spec.Slots, 1))
		f.labels[fmt.Sprint(id)] = p.label
	}
	return f, nil
}

func (f *fleet) close() { f.sim.Close() }

// prefixCounts sums the engines' prefix cache lookups and hits, in blocks.
func (f *fleet) prefixCounts() (hit, queried int64) {
	for _, id := range f.ids {
		if l, ok := f.sim.EngineLoad(id); ok {
			hit += l.PrefixHit
			queried += l.PrefixQueried
		}
	}
	return hit, queried
}

// loadSampler records each instance's engine load every interval: its
// requests (waiting plus running) per batch slot, so 1.0 is a batch
// exactly full and 2.0 as many waiting as running. That is the load a
// balancer should even out on a fleet of unequal engines, where request
// counts must differ.
type loadSampler struct {
	sums    []float64
	samples int
	stop    chan struct{}
	done    chan struct{}
}

// sampleLoad starts sampling f's engines until the returned sampler's
// finish is called.
func (f *fleet) sampleLoad(interval time.Duration) *loadSampler {
	s := &loadSampler{sums: make([]float64, len(f.ids)), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			for i, id := range f.ids {
				if l, ok := f.sim.EngineLoad(id); ok {
					s.sums[i] += float64(l.Waiting+l.Running) / float64(f.slots[i])
				}
			}
			s.samples++
		}
	}()
	return s
}

// finish stops sampling and returns the mean load per instance, in fleet
// order.
func (s *loadSampler) finish() []float64 {
	close(s.stop)
	<-s.done
	out := make([]float64, len(s.sums))
	for i, v := range s.sums {
		if s.samples > 0 {
			out[i] = v / float64(s.samples)
		}
	}
	return out
}
