// Command vastai-bench measures the caddy-vastai plugin on a simulated
// fleet, in-process, with no vast.ai account.
//
//	go run ./cmd/vastai-bench routing [-sessions 48] [-turns 6] [-concurrency 24]
//	    [-burst 64] [-policies round_robin,least_conn,vastai_least_load,vastai_cache_aware] [-json]
//
// routing runs one fixed, seeded chat workload through a real Caddy once
// per selection policy, each time over a fresh simulated fleet of four
// engines of different speeds (cold prefix caches), and prints throughput,
// time to first token, end-to-end latency, the prefix cache hit rate and
// how evenly the instances were used. A policy whose module is not
// compiled in is reported as "not built" instead of failing the run.
//
//	go run ./cmd/vastai-bench autoscale [-runs 3] [-create-time 20s] [-start-time 4s] [-night-hours 10] [-json]
//
// autoscale measures the time to first token of a request that arrives at
// a pool scaled to zero, woken by a cold create and by a warm start of a
// stopped instance, on the simulator's timings, and prices an idle night
// at min 1, min 0 and min 0 with one stopped instance.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-vastai/caddy-vastai"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "vastai-bench:", err)
		os.Exit(1)
	}
}

// errUsage is returned for a missing or unknown subcommand.
var errUsage = errors.New("usage: vastai-bench routing|autoscale [flags] (see -h)")

// defaultPolicies are Caddy's two load-aware-enough baselines and the
// plugin's engine-aware policies.
const defaultPolicies = "round_robin,least_conn,vastai_least_load,vastai_cache_aware"

// options is one routing benchmark's workload and output settings.
type options struct {
	Sessions    int           // chat sessions
	Turns       int           // requests per session, each with the history so far
	Concurrency int           // sessions running at once
	Burst       int           // single-turn requests sent at once half-way through
	Prompts     int           // shared system prompts the sessions draw from
	MaxTokens   int           // tokens generated per answer
	Seed        uint64        // makes the workload reproducible
	Policies    []string      // selection policies, in order
	Timeout     time.Duration // bound on one policy's run, start-up included
	// SessionHeader, if set, carries each session's id, and the vastai
	// policies are configured to keep a session on one instance by it.
	SessionHeader string
	JSON          bool // print JSON instead of a table
}

// run is main without the process globals.
func run(ctx context.Context, args []string, out, progress io.Writer) error {
	if len(args) > 0 && args[0] == "autoscale" {
		return runAutoscale(ctx, args[1:], out, progress)
	}
	if len(args) == 0 || args[0] != "routing" {
		return errUsage
	}
	o, err := parseRouting(args[1:], progress)
	if errors.Is(err, flag.ErrHelp) {
		return nil // the flag set printed the usage
	}
	if err != nil {
		return err
	}
	results, err := benchRouting(ctx, o, progress)
	if err != nil {
		return err
	}
	if o.JSON {
		return writeJSON(out, o, results)
	}
	fmt.Fprintf(out, "fleet: %s\nworkload: %s\n\n", fleetSummary(), o.summary())
	fmt.Fprint(out, renderTable(results))
	return nil
}

func parseRouting(args []string, errOut io.Writer) (options, error) {
	fs := flag.NewFlagSet("vastai-bench routing", flag.ContinueOnError)
	fs.SetOutput(errOut)
	var o options
	fs.IntVar(&o.Sessions, "sessions", 48, "chat sessions")
	fs.IntVar(&o.Turns, "turns", 6, "turns per session (each resends the growing history)")
	fs.IntVar(&o.Concurrency, "concurrency", 24, "sessions running at once")
	fs.IntVar(&o.Burst, "burst", 64, "single-turn requests sent at once half-way through (0: none)")
	fs.IntVar(&o.Prompts, "prompts", 4, "shared system prompts (~3 KB each)")
	fs.IntVar(&o.MaxTokens, "max-tokens", 32, "tokens generated per answer")
	fs.Uint64Var(&o.Seed, "seed", 1, "workload seed")
	policies := fs.String("policies", defaultPolicies, "comma-separated selection policies")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "bound on each policy's run")
	fs.StringVar(&o.SessionHeader, "session-header", "",
		"send each session's id in this header and set the vastai policies' session_header to it")
	fs.BoolVar(&o.JSON, "json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	for _, p := range strings.Split(*policies, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Policies = append(o.Policies, p)
		}
	}
	return o, o.validate()
}

// summary describes the workload in one line.
func (o options) summary() string {
	s := fmt.Sprintf("%d sessions x %d turns over %d system prompts, %d clients, burst of %d, %d tokens per answer, seed %d",
		o.Sessions, o.Turns, o.Prompts, o.Concurrency, o.Burst, o.MaxTokens, o.Seed)
	if o.SessionHeader != "" {
		s += "; vastai policies keep sessions by " + o.SessionHeader
	}
	return s
}

func (o options) validate() error {
	switch {
	case o.Sessions < 1 || o.Turns < 1 || o.Concurrency < 1:
		return fmt.Errorf("-sessions, -turns and -concurrency must be at least 1")
	case o.Burst < 0:
		return fmt.Errorf("-burst must not be negative")
	case o.Prompts < 1 || o.MaxTokens < 1:
		return fmt.Errorf("-prompts and -max-tokens must be at least 1")
	case len(o.Policies) == 0:
		return fmt.Errorf("-policies names no policy")
	case o.Timeout <= 0:
		return fmt.Errorf("-timeout must be positive")
	}
	return nil
}
