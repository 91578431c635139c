package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tableRows parses renderTable's output (cells are separated by two or
// more spaces; a cell holds at most single spaces) into header and rows.
func tableRows(t *testing.T, out string) (header []string, rows [][]string) {
	t.Helper()
	sep := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, " ")
		switch {
		case strings.HasPrefix(line, "POLICY"):
			header = sep.Split(line, -1)
		case header != nil && line != "":
			rows = append(rows, sep.Split(line, -1))
		}
	}
	if header == nil {
		t.Fatalf("no table header in output:\n%s", out)
	}
	return header, rows
}

// checkBuiltRow checks that a measured row's figures parse and agree:
// total requests served, every cell in range, p50 <= p99.
func checkBuiltRow(t *testing.T, row []string, total int, everyInstance bool) {
	t.Helper()
	if rps, err := strconv.ParseFloat(row[1], 64); err != nil || rps <= 0 {
		t.Errorf("%s: REQ/S %q is not a positive number", row[0], row[1])
	}
	var d [3]time.Duration
	for i := range d {
		v, err := time.ParseDuration(row[2+i])
		if err != nil || v <= 0 {
			t.Errorf("%s: column %d %q is not a positive duration", row[0], 2+i, row[2+i])
		}
		d[i] = v
	}
	if d[0] > d[1] || d[0] > d[2] {
		t.Errorf("%s: TTFT p50 %v exceeds TTFT p99 %v or e2e p99 %v", row[0], d[0], d[1], d[2])
	}
	if hit, err := strconv.Atoi(strings.TrimSuffix(row[5], "%")); err != nil || hit < 0 || hit > 100 {
		t.Errorf("%s: CACHE HIT %q is not a percentage", row[0], row[5])
	}
	counts := strings.Split(row[6], "/")
	if len(counts) != len(profiles()) {
		t.Fatalf("%s: REQUESTS %q does not list %d instances", row[0], row[6], len(profiles()))
	}
	sum := 0
	for _, c := range counts {
		n, err := strconv.Atoi(c)
		if err != nil || (everyInstance && n == 0) {
			t.Errorf("%s: REQUESTS %q: instance count %q is not positive", row[0], row[6], c)
		}
		sum += n
	}
	if sum != total || row[10] != "0" {
		t.Errorf("%s: %d requests served with %s errors, want %d with 0", row[0], sum, row[10], total)
	}
	if loads := strings.Split(row[8], "/"); len(loads) != len(profiles()) {
		t.Errorf("%s: LOAD/SLOT %q does not list %d instances", row[0], row[8], len(profiles()))
	}
}

// TestRoutingTable runs a tiny workload through two real policies and a
// missing one, and checks the printed table row by row.
func TestRoutingTable(t *testing.T) {
	var out, progress bytes.Buffer
	args := []string{"routing", "-sessions", "4", "-turns", "2", "-concurrency", "4", "-burst", "4",
		"-policies", "round_robin,least_conn,vastai_no_such_policy", "-timeout", "40s"}
	if err := run(context.Background(), args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	header, rows := tableRows(t, out.String())
	if len(header) != len(tableHeader) || len(rows) != 3 {
		t.Fatalf("got %d columns and %d rows, want %d and 3:\n%s", len(header), len(rows), len(tableHeader), out.String())
	}
	for i, want := range []string{"round_robin", "least_conn", "vastai_no_such_policy"} {
		if rows[i][0] != want {
			t.Errorf("row %d is %q, want %q", i, rows[i][0], want)
		}
	}
	// Round robin reaches every instance with 12 requests over 4.
	checkBuiltRow(t, rows[0], 12, true)
	checkBuiltRow(t, rows[1], 12, false)
	if len(rows[2]) != len(tableHeader) || rows[2][1] != notBuilt {
		t.Errorf("missing policy's row is %q, want %q in REQ/S", rows[2], notBuilt)
	}
}

// TestRoutingJSON runs sequential requests sharing one system prompt:
// round robin sends the second half to instances that have it cached, so
// the hit rate is positive but below 1.
func TestRoutingJSON(t *testing.T) {
	var out, progress bytes.Buffer
	args := []string{"routing", "-json", "-sessions", "8", "-turns", "1", "-concurrency", "1", "-burst", "0",
		"-prompts", "1", "-policies", "round_robin", "-timeout", "40s"}
	if err := run(context.Background(), args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Results) != 1 || rep.Sessions != 8 {
		t.Fatalf("report = %+v, want 8 sessions and one result", rep)
	}
	r := rep.Results[0]
	sum := 0
	for _, c := range r.PerInstance {
		if c.Requests == 0 {
			t.Errorf("instance %s served nothing: %+v", c.Label, r.PerInstance)
		}
		sum += c.Requests
	}
	if !r.Built || r.Requests != 8 || sum != 8 || r.Errors != 0 {
		t.Errorf("result = %+v, want 8 requests over the instances and no errors", r)
	}
	if r.CacheHit <= 0.2 || r.CacheHit >= 1 {
		t.Errorf("cache hit = %v, want the cached system prompt to show (0.2, 1)", r.CacheHit)
	}
	if r.TTFTP50ms <= 0 || r.TTFTP50ms > r.E2EP99ms || r.Throughput <= 0 {
		t.Errorf("figures out of order: %+v", r)
	}
}

// TestRoutingVastaiPolicies runs the plugin's own policies, configured
// with a session header, through the benchmark: Caddy must accept their
// config and they must serve the whole workload.
func TestRoutingVastaiPolicies(t *testing.T) {
	var out, progress bytes.Buffer
	args := []string{"routing", "-json", "-sessions", "4", "-turns", "2", "-concurrency", "4", "-burst", "4",
		"-session-header", "X-Session-ID", "-policies", "vastai_least_load,vastai_cache_aware", "-timeout", "40s"}
	if err := run(context.Background(), args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Results) != 2 || rep.SessionHeader != "X-Session-ID" {
		t.Fatalf("report = %+v, want two results with the session header", rep)
	}
	for _, r := range rep.Results {
		if !r.Built || r.Requests != 12 || r.Errors != 0 {
			t.Errorf("%s: built %v, %d requests, %d errors (%s); want 12 and none", r.Policy, r.Built, r.Requests, r.Errors, r.FirstError)
		}
	}
}

// TestRoutingHelp checks that -h prints the flags and is not an error.
func TestRoutingHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"routing", "-h"}, &out, &errOut); err != nil {
		t.Fatalf("-h: %v", err)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), "-concurrency") {
		t.Errorf("-h printed %q to out and %q to errOut, want the flags on errOut", out.String(), errOut.String())
	}
}

func TestRoutingRejectsBadArguments(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", nil, "usage"},
		{"unknown subcommand", []string{"scaling"}, "usage"},
		{"no sessions", []string{"routing", "-sessions", "0"}, "-sessions"},
		{"negative burst", []string{"routing", "-burst", "-1"}, "-burst"},
		{"no policies", []string{"routing", "-policies", " , "}, "-policies"},
		{"stray argument", []string{"routing", "extra"}, `"extra"`},
		{"unknown flag", []string{"routing", "-nope"}, "-nope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), c.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, c.want)
			}
			if c.want == "usage" && !errors.Is(err, errUsage) {
				t.Errorf("err = %v, want errUsage", err)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q on a bad argument", out.String())
			}
		})
	}
}
