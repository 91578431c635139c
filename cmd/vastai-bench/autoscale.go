package main

// The autoscale benchmark: time to first token when a pool at zero gets a
// request (a cold create, and a warm start of a stopped instance), on the
// simulator's timings, and what an idle night costs at min 0 (with and
// without a warm pool) against min 1.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// scaleOptions are the autoscale benchmark's settings.
type scaleOptions struct {
	Runs       int           // wake-ups measured per scenario
	CreateTime time.Duration // the simulator's create-to-running time
	StartTime  time.Duration // its start-to-running time for a stopped instance
	NightHours float64       // the idle night priced
	Timeout    time.Duration // bound on one wake-up
	JSON       bool
}

func parseAutoscale(args []string, errOut io.Writer) (scaleOptions, error) {
	fs := flag.NewFlagSet("vastai-bench autoscale", flag.ContinueOnError)
	fs.SetOutput(errOut)
	var o scaleOptions
	fs.IntVar(&o.Runs, "runs", 3, "wake-ups from zero measured per scenario")
	fs.DurationVar(&o.CreateTime, "create-time", 20*time.Second, "simulated time from create to running (image pull and model download, compressed)")
	fs.DurationVar(&o.StartTime, "start-time", 4*time.Second, "simulated time from start to running for a stopped instance (its disk has the model)")
	fs.Float64Var(&o.NightHours, "night-hours", 10, "hours of an idle night to price")
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Minute, "bound on one wake-up")
	fs.BoolVar(&o.JSON, "json", false, "print JSON instead of tables")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	if o.Runs < 1 || o.CreateTime <= 0 || o.StartTime <= 0 || o.NightHours <= 0 {
		return o, errors.New("-runs, -create-time, -start-time and -night-hours must be positive")
	}
	return o, nil
}

// wakeResult is one scenario's measured wake-ups.
type wakeResult struct {
	Scenario string          `json:"scenario"`
	TTFT     []time.Duration `json:"ttft_ns"`
	// IdleRate is what the pool bills per hour while idle between wake-ups
	// (0 at zero without a warm pool; storage with one).
	IdleRate float64 `json:"idle_dollars_per_hour"`
	// ServingRate is what one serving instance bills per hour.
	ServingRate float64 `json:"serving_dollars_per_hour"`
}

// benchAutoscale measures both scenarios on one simulator each.
func benchAutoscale(ctx context.Context, o scaleOptions, progress io.Writer) ([]wakeResult, error) {
	if err := os.Setenv(keyEnv, benchKey); err != nil {
		return nil, err
	}
	var out []wakeResult
	for _, warm := range []bool{false, true} {
		name := "cold create"
		if warm {
			name = "warm start"
		}
		fmt.Fprintf(progress, "%s: ", name)
		r, err := benchWake(ctx, o, warm, progress)
		fmt.Fprintln(progress)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		r.Scenario = name
		out = append(out, r)
	}
	return out, nil
}

// benchWake runs o.Runs wake-ups from zero through a real Caddy: each
// sends one streamed completion to the idle pool and times its first
// token, then waits for the pool to go back to zero (destroyed, or
// stopped with a warm pool). With warm, a first wake-up (a create) fills
// the warm pool and is not measured.
func benchWake(ctx context.Context, o scaleOptions, warm bool, progress io.Writer) (wakeResult, error) {
	var r wakeResult
	sim := vastsim.New(vastsim.Options{APIKey: benchKey, LoadingDelay: o.CreateTime, StartDelay: o.StartTime,
		TokenInterval: 10 * time.Millisecond, SSHDisabled: true})
	url, err := sim.Start("")
	if err != nil {
		return r, err
	}
	defer sim.Close()
	storage, err := os.MkdirTemp("", "vastai-bench-autoscale-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(storage)
	g, err := startScaleGateway(url, storage, warm)
	if err != nil {
		return r, err
	}
	defer caddy.Stop() //nolint:errcheck // the process ends anyway
	runs := o.Runs
	if warm {
		runs++
	}
	for i := 0; i < runs; i++ {
		if err := g.waitIdle(ctx, sim, warm && i > 0, o.Timeout); err != nil {
			return r, err
		}
		if rate := poolRate(sim); i > 0 || !warm {
			r.IdleRate = rate
		}
		ttft, err := firstToken(ctx, g.proxyURL, o.Timeout)
		if err != nil {
			return r, err
		}
		r.ServingRate = poolRate(sim)
		if warm && i == 0 {
			fmt.Fprint(progress, "primed ")
			continue
		}
		r.TTFT = append(r.TTFT, ttft)
		fmt.Fprintf(progress, "%.1fs ", ttft.Seconds())
	}
	return r, nil
}

// startScaleGateway loads a Caddy with an autoscaled pool at min 0.
func startScaleGateway(simURL, storage string, warm bool) (*gateway, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	auto := map[string]any{
		"min": 0, "max": 1, "decision_interval": "200ms", "stable_window": "2s", "panic_window": "600ms",
		"scale_down_delay": "1s", "idle_to_zero": "2s", "drain_timeout": "10s", "max_wait": "5m",
	}
	if warm {
		auto["warm"] = map[string]any{"stopped": 1, "start_timeout": "5m"}
	}
	vastai := map[string]any{
		"api_key": "{env." + keyEnv + "}", "api_url": simURL, "poll_interval": "500ms",
		"provision_poll_interval": "200ms", "lease_ttl": "5s",
		"pools": map[string]any{"llm": map[string]any{
			"health": map[string]any{"interval": "200ms", "timeout": "1s"},
			"provision": map[string]any{"image": "vllm/vllm-openai:latest", "disk": 40,
				"offer": map[string]any{"gpu_name": "RTX 4090", "num_gpus": 1}, "max_instances": 2, "ready_timeout": "10m"},
			"autoscale": auto,
		}},
	}
	proxy := map[string]any{
		"handler": "reverse_proxy", "request_buffers": 4 << 20,
		"dynamic_upstreams": map[string]any{"source": "vastai", "pool": "llm"},
		"transport":         map[string]any{"protocol": "vastai"},
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"listen": admin, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"storage": map[string]any{"module": "file_system", "root": storage},
		"apps": map[string]any{"vastai": vastai, "http": map[string]any{"grace_period": "2s", "servers": map[string]any{
			"bench": map[string]any{"listen": []string{listen}, "automatic_https": map[string]any{"disable": true},
				"routes": []any{map[string]any{"handle": []any{proxy}}}},
		}}},
	})
	if err != nil {
		return nil, err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return nil, fmt.Errorf("starting Caddy: %w", err)
	}
	return &gateway{proxyURL: "http://" + listen, adminURL: "http://" + admin}, nil
}

// waitIdle waits until the pool is at zero: desired 0, nothing running
// (a warm pool's instance stopped when stopped is set).
func (g *gateway) waitIdle(ctx context.Context, sim *vastsim.Sim, stopped bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		v, err := g.autoscale(ctx)
		if err == nil && v.Desired == 0 && v.DecidedAt != nil && v.Waiting == "" && v.Scale != nil &&
			v.Scale.Serving+v.Scale.Provisioning+v.Scale.Starting+v.Scale.Leaving == 0 && (!stopped || v.Scale.Stopped == 1) &&
			running(sim) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the pool did not go back to zero within %s (last view %+v, error %v)", timeout, v, err)
		case <-tick.C:
		}
	}
}

func (g *gateway) autoscale(ctx context.Context) (adminapi.Autoscale, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.adminURL+"/vastai/pools/llm", nil)
	if err != nil {
		return adminapi.Autoscale{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return adminapi.Autoscale{}, err
	}
	defer resp.Body.Close()
	var p adminapi.Pool
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || p.Autoscale == nil {
		return adminapi.Autoscale{}, fmt.Errorf("decoding /vastai/pools/llm: %v", err)
	}
	return *p.Autoscale, nil
}

// firstToken sends one streamed completion and returns the time to its
// first content event.
func firstToken(ctx context.Context, proxyURL string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body := `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":8,"stream":true}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, proxyURL+"/v1/completions", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	first := time.Duration(0)
	for sc.Scan() {
		if first == 0 && strings.HasPrefix(sc.Text(), "data: {") {
			first = time.Since(start)
		}
	}
	if first == 0 {
		return 0, errors.New("no token in the stream")
	}
	return first, nil
}

// running counts the simulator's running instances.
func running(sim *vastsim.Sim) int {
	n := 0
	for _, in := range sim.Instances() {
		if !in.Destroyed && in.ActualStatus == "running" {
			n++
		}
	}
	return n
}

// poolRate is what the simulator bills now for every instance not
// destroyed, in $/hour.
func poolRate(sim *vastsim.Sim) float64 {
	total := 0.0
	for _, in := range sim.Instances() {
		if b, ok := sim.Billing(in.ID); ok && !in.Destroyed {
			total += b.RatePerHour
		}
	}
	return total
}

// renderAutoscale prints the wake-up table and the idle-night table.
func renderAutoscale(w io.Writer, o scaleOptions, rs []wakeResult) {
	fmt.Fprintf(w, "simulator: create %s to running, start of a stopped instance %s; health probes every 200ms\n\n", o.CreateTime, o.StartTime)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM ZERO\tRUNS\tTTFT MIN\tTTFT P50\tTTFT MAX\tOVER THE SIMULATED BOOT")
	for _, r := range rs {
		d := append([]time.Duration(nil), r.TTFT...)
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		boot := o.CreateTime
		if r.Scenario == "warm start" {
			boot = o.StartTime
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t+%s\n", r.Scenario, len(d), secs(d[0]), secs(d[len(d)/2]), secs(d[len(d)-1]), secs(d[len(d)/2]-boot))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "IDLE NIGHT (%.0f h)\tRATE\tCOST\n", o.NightHours)
	serving := rs[0].ServingRate
	rows := []struct {
		name string
		rate float64
	}{{"min 1", serving}, {"min 0", rs[0].IdleRate}, {"min 0, warm 1", rs[1].IdleRate}}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t$%.2f/h\t$%.2f\n", row.name, row.rate, row.rate*o.NightHours)
	}
	tw.Flush()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// runAutoscale is the autoscale subcommand.
func runAutoscale(ctx context.Context, args []string, out, progress io.Writer) error {
	o, err := parseAutoscale(args, progress)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	rs, err := benchAutoscale(ctx, o, progress)
	if err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"options": o, "results": rs})
	}
	renderAutoscale(out, o, rs)
	return nil
}
