package main

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	cases := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(5, 1, 3), 50, 3 * time.Millisecond},
		{"median of even is the lower", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 100 is the 99th", ms(seq(100)...), 99, 99 * time.Millisecond},
		{"p99 of 10 is the max", ms(seq(10)...), 99, 10 * time.Millisecond},
		{"p100 is the max", ms(3, 9, 1), 100, 9 * time.Millisecond},
		{"tiny p is the min", ms(3, 9, 1), 0.1, 1 * time.Millisecond},
		{"p0 clamps to the min", ms(3, 9, 1), 0, 1 * time.Millisecond},
		{"duplicates", ms(2, 2, 2, 8), 75, 2 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := append([]time.Duration(nil), c.in...)
			if got := percentile(c.in, c.p); got != c.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", c.in, c.p, got, c.want)
			}
			for i := range before {
				if before[i] != c.in[i] {
					t.Fatalf("percentile reordered its input: %v", c.in)
				}
			}
		})
	}
}

// seq is 1..n.
func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func TestLoadSpread(t *testing.T) {
	loads := func(vs ...float64) []instanceCount {
		out := make([]instanceCount, len(vs))
		for i, v := range vs {
			out[i] = instanceCount{Label: "x", MeanLoad: v}
		}
		return out
	}
	cases := []struct {
		name string
		in   []instanceCount
		want float64
	}{
		{"even", loads(2, 2), 1},
		{"uneven", loads(1.5, 6, 3), 4},
		{"an idle instance", loads(2, 0), math.Inf(1)},
		{"never loaded", loads(0, 0), math.NaN()},
	}
	for _, c := range cases {
		if got := loadSpread(c.in); got != c.want && !(math.IsNaN(got) && math.IsNaN(c.want)) {
			t.Errorf("%s: loadSpread = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestSpread(t *testing.T) {
	counts := func(ns ...int) []instanceCount {
		out := make([]instanceCount, len(ns))
		for i, n := range ns {
			out[i] = instanceCount{Label: "x", Requests: n}
		}
		return out
	}
	cases := []struct {
		name string
		in   []instanceCount
		want float64
		cell string
	}{
		{"even", counts(5, 5, 5), 1, "1.00"},
		{"uneven", counts(9, 3, 6), 3, "3.00"},
		{"an idle instance", counts(4, 0), math.Inf(1), "inf"},
		{"nothing served", counts(0, 0), math.NaN(), "-"},
		{"no instances", nil, math.NaN(), "-"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := spread(c.in)
			if got != c.want && !(math.IsNaN(got) && math.IsNaN(c.want)) {
				t.Errorf("spread = %v, want %v", got, c.want)
			}
			if cell := fmtSpread(got); cell != c.cell {
				t.Errorf("cell = %q, want %q", cell, c.cell)
			}
		})
	}
}

// TestSummarize checks that failures are counted apart, instances are
// reported in fleet order by label, and the rates are computed.
func TestSummarize(t *testing.T) {
	samples := []sample{
		{instance: "11", ttft: 10 * time.Millisecond, e2e: 100 * time.Millisecond},
		{instance: "12", ttft: 30 * time.Millisecond, e2e: 300 * time.Millisecond},
		{instance: "11", ttft: 20 * time.Millisecond, e2e: 200 * time.Millisecond},
		{err: errors.New("status 502: boom")},
	}
	labels := map[string]string{"11": "llm-1", "12": "llm-2", "13": "llm-3"}
	r := summarize("p", samples, 2*time.Second, []string{"llm-1", "llm-2", "llm-3"}, labels, 30, 120)
	want := []instanceCount{{Label: "llm-1", Requests: 2}, {Label: "llm-2", Requests: 1}, {Label: "llm-3"}}
	if len(r.PerInstance) != len(want) {
		t.Fatalf("per instance = %+v, want %+v", r.PerInstance, want)
	}
	for i := range want {
		if r.PerInstance[i] != want[i] {
			t.Errorf("per instance = %+v, want %+v", r.PerInstance, want)
		}
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"requests", float64(r.Requests), 3},
		{"errors", float64(r.Errors), 1},
		{"throughput", r.Throughput, 1.5},
		{"ttft p50", r.TTFTP50ms, 20},
		{"ttft p99", r.TTFTP99ms, 30},
		{"e2e p99", r.E2EP99ms, 300},
		{"cache hit", r.CacheHit, 0.25},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if r.FirstError != "status 502: boom" || !r.Built {
		t.Errorf("first error %q, built %v", r.FirstError, r.Built)
	}
}

func TestReadStream(t *testing.T) {
	role := `data: {"choices":[{"delta":{"role":"assistant","content":""}}]}` + "\n\n"
	tok := func(s string) string { return `data: {"choices":[{"delta":{"content":"` + s + `"}}]}` + "\n\n" }
	cases := []struct {
		name, body, answer string
		err                error
	}{
		{"role chunk then tokens", role + tok(" a") + tok(" b") + "data: [DONE]\n\n", " a b", nil},
		{"ends without DONE", role + tok(" a"), " a", nil},
		{"comments and blank lines skipped", ": ping\n\n" + tok("x") + "data: [DONE]\n\n", "x", nil},
		{"only the role chunk", role + "data: [DONE]\n\n", "", errNoContent},
		{"empty", "", "", errNoContent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			answer, ttft, err := readStream(strings.NewReader(c.body), time.Now())
			if !errors.Is(err, c.err) || answer != c.answer {
				t.Fatalf("readStream = %q, %v; want %q, %v", answer, err, c.answer, c.err)
			}
			if err == nil && ttft <= 0 {
				t.Errorf("ttft = %v, want positive", ttft)
			}
		})
	}
	if _, _, err := readStream(strings.NewReader("data: {not json\n\n"), time.Now()); err == nil {
		t.Error("a malformed chunk was accepted")
	}
}

// TestWorkloadIsDeterministic checks that every policy gets the same
// requests, and the shape the benchmark relies on.
func TestWorkloadIsDeterministic(t *testing.T) {
	o := options{Sessions: 6, Turns: 3, Burst: 5, Prompts: 4, Seed: 7}
	a, b := newWorkload(o), newWorkload(o)
	o.Seed = 8
	other := newWorkload(o)
	if a.sessions[0].users[0] != b.sessions[0].users[0] || a.systems[3] != b.systems[3] {
		t.Error("the same seed drew different workloads")
	}
	if a.sessions[0].users[0] == other.sessions[0].users[0] {
		t.Error("different seeds drew the same first message")
	}
	if got := a.requests(); got != 6*3+5 {
		t.Errorf("requests = %d, want %d", got, 6*3+5)
	}
	for i, s := range a.systems {
		if len(s) < 2048 || len(s) > 4200 {
			t.Errorf("system prompt %d is %d bytes, want 2-4 KB", i, len(s))
		}
		if s[:64] == a.systems[(i+1)%len(a.systems)][:64] {
			t.Errorf("system prompts %d and %d share their first block", i, i+1)
		}
	}
	msgs := a.sessions[0].turn(2, []string{"ans1", "ans2"})
	if len(msgs) != 6 || msgs[0].Role != "system" || msgs[2].Content != "ans1" || msgs[5].Content != a.sessions[0].users[2] {
		t.Errorf("turn 2 = %+v, want system, then user/assistant pairs, then the third user message", msgs)
	}
}
