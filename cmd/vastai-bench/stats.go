package main

import (
	"math"
	"slices"
	"time"
)

// percentile is the nearest-rank percentile p (0-100] of ds: the smallest
// value with at least p% of the values at or below it. 0 for no values.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// instanceCount is how many requests one instance served, and its mean
// engine load (requests waiting plus running per batch slot, sampled
// every 20ms).
type instanceCount struct {
	Label    string  `json:"label"`
	Requests int     `json:"requests"`
	MeanLoad float64 `json:"mean_load"`
}

// result is one policy's figures; Built is false when the policy's module
// is not compiled in (and nothing else is set).
type result struct {
	Policy      string          `json:"policy"`
	Built       bool            `json:"built"`
	Requests    int             `json:"requests"`
	Errors      int             `json:"errors"`
	FirstError  string          `json:"first_error,omitempty"`
	Seconds     float64         `json:"seconds"`
	Throughput  float64         `json:"throughput_rps"`
	TTFTP50ms   float64         `json:"ttft_p50_ms"`
	TTFTP99ms   float64         `json:"ttft_p99_ms"`
	E2EP99ms    float64         `json:"e2e_p99_ms"`
	CacheHit    float64         `json:"cache_hit"` // fraction of prompt blocks found cached
	PerInstance []instanceCount `json:"per_instance"`
}

// summarize turns one policy's samples into its result; labels lists the
// instances in fleet order and maps X-Vastai-Instance values to them.
func summarize(policy string, samples []sample, elapsed time.Duration, order []string, labels map[string]string, hit, queried int64) result {
	r := result{Policy: policy, Built: true, Seconds: elapsed.Seconds()}
	counts := map[string]int{}
	var ttft, e2e []time.Duration
	for _, s := range samples {
		if s.err != nil {
			if r.Errors == 0 {
				r.FirstError = s.err.Error()
			}
			r.Errors++
			continue
		}
		r.Requests++
		counts[labels[s.instance]]++
		ttft = append(ttft, s.ttft)
		e2e = append(e2e, s.e2e)
	}
	if elapsed > 0 {
		r.Throughput = float64(r.Requests) / elapsed.Seconds()
	}
	r.TTFTP50ms = ms(percentile(ttft, 50))
	r.TTFTP99ms = ms(percentile(ttft, 99))
	r.E2EP99ms = ms(percentile(e2e, 99))
	if queried > 0 {
		r.CacheHit = float64(hit) / float64(queried)
	}
	for _, l := range order {
		r.PerInstance = append(r.PerInstance, instanceCount{Label: l, Requests: counts[l]})
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// spread is the busiest instance's request count over the idlest one's;
// +Inf when an instance served nothing, NaN when none served anything.
func spread(counts []instanceCount) float64 {
	if len(counts) == 0 {
		return math.NaN()
	}
	lo, hi := math.MaxInt, 0
	for _, c := range counts {
		lo, hi = min(lo, c.Requests), max(hi, c.Requests)
	}
	switch {
	case hi == 0:
		return math.NaN()
	case lo == 0:
		return math.Inf(1)
	}
	return float64(hi) / float64(lo)
}

// loadSpread is the most loaded instance's mean load over the least
// loaded one's; +Inf when an instance was never loaded, NaN when none was.
func loadSpread(counts []instanceCount) float64 {
	if len(counts) == 0 {
		return math.NaN()
	}
	lo, hi := math.Inf(1), 0.0
	for _, c := range counts {
		lo, hi = min(lo, c.MeanLoad), max(hi, c.MeanLoad)
	}
	switch {
	case hi == 0:
		return math.NaN()
	case lo == 0:
		return math.Inf(1)
	}
	return hi / lo
}
