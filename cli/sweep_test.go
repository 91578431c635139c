package cli_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

type sweepJSON struct {
	Instances []struct {
		ID        int64   `json:"id"`
		Gateway   string  `json:"gateway"`
		Pool      string  `json:"pool"`
		Operation string  `json:"operation"`
		Rate      float64 `json:"dollars_per_hour"`
	} `json:"instances"`
	Foreign  int  `json:"foreign"`
	Executed bool `json:"executed"`
	Results  []struct {
		ID        int64  `json:"id"`
		Confirmed bool   `json:"confirmed"`
		Error     string `json:"error"`
	} `json:"results"`
}

// fleetForSweep launches our labelled instances (two of gateway gw-a, one
// of gw-b) and foreign ones, including labels that merely look like ours.
func fleetForSweep(t *testing.T, sim *vastsim.Sim) (gwA, gwB, foreign []int64) {
	t.Helper()
	launch := func(label string) int64 {
		id, err := sim.Launch(vastsim.LaunchSpec{Label: label, DPH: 0.4, Running: true})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	gwA = []int64{launch("cv:gw-a:llm:0123abcd"), launch("cv:gw-a:emb:4567abcd")}
	gwB = []int64{launch("cv:gw-b:llm:89abcdef")}
	for _, l := range []string{"", "llm-1", "cv:gw-a:llm", "cv:gw-a:llm:NOTHEX", "cv:GW:llm:0123abcd", "xcv:gw-a:llm:0123abcd"} {
		foreign = append(foreign, launch(l))
	}
	return gwA, gwB, foreign
}

func deletes(sim *vastsim.Sim) map[int64]int {
	out := map[int64]int{}
	for _, c := range sim.APICalls() {
		if c.Method == http.MethodDelete {
			parts := strings.Split(strings.Trim(c.Path, "/"), "/")
			id, _ := strconv.ParseInt(parts[len(parts)-1], 10, 64)
			out[id]++
		}
	}
	return out
}

func destroyedSet(sim *vastsim.Sim) map[int64]bool {
	out := map[int64]bool{}
	for _, in := range sim.Instances() {
		if in.Destroyed {
			out[in.ID] = true
		}
	}
	return out
}

func TestSweepDryRunTouchesNothingAndExecuteDestroysOnlyOurs(t *testing.T) {
	sim := newSim(t, vastsim.Options{DestroyDelay: 300 * time.Millisecond})
	gwA, gwB, foreign := fleetForSweep(t, sim)
	api := []string{"--api-url", sim.URL()}
	t.Setenv("VAST_API_KEY", testKey)

	// Dry run: a table of ours only, nothing destroyed.
	r := mustRun(t, append([]string{"sweep"}, api...)...)
	tb := parseTable(t, r.stdout)
	want := map[string]string{}
	for _, id := range append(append([]int64{}, gwA...), gwB...) {
		want[strconv.FormatInt(id, 10)] = ""
	}
	if len(tb.rows) != 3 {
		t.Fatalf("dry run lists %d rows, want 3:\n%s", len(tb.rows), r.stdout)
	}
	for _, row := range tb.rows {
		if _, ok := want[row["ID"]]; !ok || row["PRICE"] != "$0.40/h" || row["STATE"] != "running" || row["AGE"] == "-" {
			t.Errorf("dry-run row %v", row)
		}
	}
	if tb.rows[0]["GATEWAY"] != "gw-a" || tb.rows[0]["POOL"] != "llm" || tb.rows[0]["OPERATION"] != "0123abcd" {
		t.Errorf("first row %v: want gateway gw-a, pool llm, operation 0123abcd", tb.rows[0])
	}
	if !strings.Contains(r.stdout, "Dry run: nothing was destroyed") || !strings.Contains(r.stdout, "6 other instance(s) left alone") {
		t.Errorf("dry-run summary:\n%s", r.stdout)
	}
	var js sweepJSON
	runJSON(t, &js, append([]string{"sweep", "--gateway", "gw-a"}, api...)...)
	if len(js.Instances) != 2 || js.Foreign != 7 || js.Executed {
		t.Errorf("sweep --gateway gw-a --json: %+v", js)
	}
	// --execute without --yes and without a terminal refuses.
	if r := runCLI(t, append([]string{"sweep", "--execute"}, api...)...); r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("sweep --execute without --yes: %s", r)
	}
	// Declining on a terminal changes nothing either.
	if r := runIO(t, termIO(), "n\n", append([]string{"sweep", "--execute"}, api...)...); r.code != 1 || !strings.Contains(r.stderr, "cancelled") {
		t.Errorf("sweep --execute, answered n: %s", r)
	}
	if d := deletes(sim); len(d) != 0 {
		t.Fatalf("dry runs and refusals sent DELETE: %v", d)
	}

	// --execute for one gateway: its instances destroyed and verified.
	runJSON(t, &js, append([]string{"sweep", "--gateway", "gw-a", "--execute", "--yes"}, api...)...)
	if !js.Executed || len(js.Results) != 2 {
		t.Fatalf("sweep --execute: %+v", js)
	}
	for _, res := range js.Results {
		if !res.Confirmed {
			t.Errorf("instance %d not confirmed: %s", res.ID, res.Error)
		}
	}
	gone := destroyedSet(sim)
	for _, id := range gwA {
		if !gone[id] {
			t.Errorf("gw-a instance %d was not destroyed", id)
		}
	}
	for _, id := range append(append([]int64{}, gwB...), foreign...) {
		if gone[id] || deletes(sim)[id] != 0 {
			t.Errorf("instance %d (not gw-a) was touched", id)
		}
	}
	// Confirmed means gone from the listing too: a second dry run agrees.
	runJSON(t, &js, append([]string{"sweep", "--gateway", "gw-a"}, api...)...)
	if len(js.Instances) != 0 {
		t.Errorf("after the sweep, gw-a still lists %+v", js.Instances)
	}

	// Table output of an execution, with the key from --api-key.
	t.Setenv("VAST_API_KEY", "")
	r = mustRun(t, append([]string{"sweep", "--execute", "--yes", "--api-key", testKey}, api...)...)
	if !strings.Contains(r.stdout, "confirmed") || strings.Contains(r.stdout, "not confirmed") {
		t.Errorf("sweep --execute output:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, testKey) {
		t.Errorf("the API key was printed")
	}
	gone = destroyedSet(sim)
	for _, id := range gwB {
		if !gone[id] {
			t.Errorf("gw-b instance %d was not destroyed", id)
		}
	}
	for _, id := range foreign {
		if gone[id] || deletes(sim)[id] != 0 {
			t.Errorf("foreign instance %d was touched", id)
		}
	}
}

func TestSweepRefusesAFailingListing(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	fleetForSweep(t, sim)
	sim.SetFaults(vastsim.Faults{Status: http.StatusInternalServerError, Routes: []string{"GET /api/v1/instances/"}})
	r := runCLI(t, "sweep", "--execute", "--yes", "--api-url", sim.URL(), "--api-key", testKey)
	if r.code != 1 || !strings.Contains(r.stderr, "listing the account's instances failed") || strings.Contains(r.stdout, "No instance") {
		t.Fatalf("failing listing: %s", r)
	}
	if d := deletes(sim); len(d) != 0 {
		t.Fatalf("DELETE after a failed listing: %v", d)
	}
	t.Setenv("VAST_API_KEY", "")
	if r := runCLI(t, "sweep", "--api-url", sim.URL()); r.code != 2 || !strings.Contains(r.stderr, "VAST_API_KEY") {
		t.Errorf("no API key: %s", r)
	}
	if r := runCLI(t, "sweep", "--api-key", testKey, "--api-url", sim.URL(), "--gateway", "Not Valid"); r.code != 2 {
		t.Errorf("bad --gateway: %s", r)
	}
}

// A listing with rows vast.ai sent without a usable id is incomplete: one
// of them could be ours. vastsim always sends ids, so a stub answers here.
func TestSweepRefusesAListingWithSkippedRows(t *testing.T) {
	var deletesSeen atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deletesSeen.Add(1)
		}
		if r.URL.Path != "/api/v1/instances/" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"instances": []map[string]any{
			{"id": 7, "label": "cv:gw-a:llm:0123abcd", "actual_status": "running"},
			{"id": nil, "label": "cv:gw-a:llm:4567abcd"},
		}})
	}))
	defer srv.Close()
	r := runCLI(t, "sweep", "--execute", "--yes", "--api-url", srv.URL, "--api-key", testKey)
	if r.code != 1 || !strings.Contains(r.stderr, "1 instance row(s) without a usable id") {
		t.Fatalf("skipped rows: %s", r)
	}
	if deletesSeen.Load() != 0 {
		t.Fatal("DELETE after an incomplete listing")
	}
}

// A destruction vast.ai never applies is reported as not confirmed, with
// exit 1: never as done.
func TestSweepReportsAnUnconfirmedDestruction(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	id, err := sim.Launch(vastsim.LaunchSpec{Label: "cv:gw-a:llm:0123abcd", Running: true})
	if err != nil {
		t.Fatal(err)
	}
	sim.SetFaults(vastsim.Faults{Status: http.StatusInternalServerError, Routes: []string{"DELETE /api/v0/instances/{id}/"}})
	r := runCLI(t, "sweep", "--execute", "--yes", "--wait", "6s", "--api-url", sim.URL(), "--api-key", testKey)
	tb := parseTable(t, r.stdout[strings.Index(r.stdout, "\nID  ")+1:])
	if r.code != 1 || len(tb.rows) != 1 || tb.rows[0]["ID"] != strconv.FormatInt(id, 10) || tb.rows[0]["RESULT"] != "not confirmed" ||
		!strings.Contains(r.stderr, "1 of 1 destruction(s) not confirmed") {
		t.Fatalf("unconfirmed destruction: %s", r)
	}
	if deletes(sim)[id] == 0 {
		t.Fatal("no DELETE was sent")
	}
}
