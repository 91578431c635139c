package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// benchRouting runs the workload once per policy, each on a fresh fleet
// and a fresh Caddy, and returns the results in policy order.
func benchRouting(ctx context.Context, o options, progress io.Writer) ([]result, error) {
	dir, err := os.MkdirTemp("", "vastai-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Setenv(keyEnv, benchKey); err != nil {
		return nil, err
	}
	w := newWorkload(o)
	results := make([]result, 0, len(o.Policies))
	for i, policy := range o.Policies {
		if !policyBuilt(policy) {
			fmt.Fprintf(progress, "%s: not built (no module %s)\n", policy, policyModule(policy))
			results = append(results, result{Policy: policy})
			continue
		}
		storage := filepath.Join(dir, fmt.Sprintf("storage-%d", i))
		r, err := benchPolicy(ctx, o, w, policy, storage)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", policy, err)
		}
		fmt.Fprintf(progress, "%s: %d requests in %.1fs (%d errors)\n", policy, r.Requests, r.Seconds, r.Errors)
		results = append(results, r)
	}
	return results, nil
}

// benchPolicy runs the workload through a Caddy with policy over a fresh
// fleet, and stops both.
func benchPolicy(ctx context.Context, o options, w *workload, policy, storage string) (r result, err error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	f, err := startFleet()
	if err != nil {
		return r, err
	}
	defer f.close()
	g, err := startGateway(ctx, f, selectionPolicy(policy, o.SessionHeader), storage)
	if err != nil {
		return r, err
	}
	defer func() {
		if serr := caddy.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stopping Caddy: %w", serr)
		}
	}()
	c := newClient(g.proxyURL, o.Concurrency+o.Burst, o)
	defer c.close()
	// Counters are read before and after, so that only the workload's
	// lookups count (nothing else generates, but the baseline is cheap).
	hit0, q0 := f.prefixCounts()
	loads := f.sampleLoad(20 * time.Millisecond)
	samples, elapsed := runWorkload(ctx, c, w, o)
	meanLoad := loads.finish()
	hit1, q1 := f.prefixCounts()
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("workload did not finish within -timeout %s: %w", o.Timeout, err)
	}
	order := make([]string, 0, len(f.ids))
	for _, p := range profiles() {
		order = append(order, p.label)
	}
	r = summarize(policy, samples, elapsed, order, f.labels, hit1-hit0, q1-q0)
	for i := range r.PerInstance {
		r.PerInstance[i].MeanLoad = meanLoad[i]
	}
	return r, nil
}
