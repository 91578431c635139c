package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
)

// tableHeader names the columns of renderTable.
var tableHeader = []string{"POLICY", "REQ/S", "TTFT P50", "TTFT P99", "E2E P99", "CACHE HIT", "REQUESTS", "REQ MAX/MIN", "LOAD/SLOT", "LOAD MAX/MIN", "ERRORS"}

// notBuilt is the throughput cell of a policy whose module is missing.
const notBuilt = "not built"

// renderTable formats the results, one row per policy; REQUESTS lists the
// requests each instance served and LOAD/SLOT its mean engine load (waiting
// plus running per batch slot), in fleet order (fastest first).
func renderTable(results []result) string {
	rows := make([][]string, 0, len(results))
	for _, r := range results {
		if !r.Built {
			rows = append(rows, []string{r.Policy, notBuilt, "-", "-", "-", "-", "-", "-", "-", "-", "-"})
			continue
		}
		per := make([]string, 0, len(r.PerInstance))
		load := make([]string, 0, len(r.PerInstance))
		for _, c := range r.PerInstance {
			per = append(per, strconv.Itoa(c.Requests))
			load = append(load, fmt.Sprintf("%.1f", c.MeanLoad))
		}
		rows = append(rows, []string{
			r.Policy,
			fmt.Sprintf("%.1f", r.Throughput),
			fmtMS(r.TTFTP50ms), fmtMS(r.TTFTP99ms), fmtMS(r.E2EP99ms),
			display.Percent(100 * r.CacheHit),
			strings.Join(per, "/"),
			fmtSpread(spread(r.PerInstance)),
			strings.Join(load, "/"),
			fmtSpread(loadSpread(r.PerInstance)),
			strconv.Itoa(r.Errors),
		})
	}
	return display.Table(tableHeader, rows)
}

func fmtMS(v float64) string { return fmt.Sprintf("%.0fms", v) }

func fmtSpread(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.IsInf(v, 1):
		return "inf"
	}
	return fmt.Sprintf("%.2f", v)
}

// report is the -json output.
type report struct {
	Fleet    string `json:"fleet"`
	Sessions int    `json:"sessions"`
	Turns    int    `json:"turns"`
	Clients  int    `json:"concurrency"`
	Burst    int    `json:"burst"`
	Seed     uint64 `json:"seed"`
	// SessionHeader is -session-header: "" when sessions were not pinned.
	SessionHeader string   `json:"session_header,omitempty"`
	Results       []result `json:"results"`
}

func writeJSON(out io.Writer, o options, results []result) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(report{
		Fleet: fleetSummary(), Sessions: o.Sessions, Turns: o.Turns,
		Clients: o.Concurrency, Burst: o.Burst, Seed: o.Seed,
		SessionHeader: o.SessionHeader, Results: results,
	})
}
