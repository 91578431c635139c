package cli_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// Every subcommand against a real in-process Caddy with the plugin and
// vastsim, over a TCP and over a unix-socket admin endpoint. Tables are
// parsed (aligned columns, $x.xx/h) and compared with --json.
func TestCommandsAgainstCaddy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		admin func(t *testing.T) string
	}{
		{"tcp", func(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }},
		{"unix", func(t *testing.T) string { return "unix/" + filepath.Join(shortDir(t), "admin.sock") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := newSim(t, vastsim.Options{LoadingDelay: 800 * time.Millisecond, DestroyDelay: 300 * time.Millisecond})
			admin := tc.admin(t)
			cfg := caddyfileFor(t, admin, sim.URL())
			startCaddy(t, cfg)
			a := []string{"--address", admin}
			// From --config too, the way `caddy trust` finds it.
			cfgFile := writeFile(t, t.TempDir(), "Caddyfile", cfg)
			if r := runCLI(t, "status", "-c", cfgFile, "-a", "caddyfile"); r.code != 0 || !strings.Contains(r.stdout, "Instances:") {
				t.Fatalf("status --config: %s", r)
			}
			checkRefusals(t, sim, a)
			ids := checkProvision(t, a)
			checkReadCommands(t, a, ids)
			checkDestroyAndDrain(t, sim, a, ids)
			checkReconcile(t, a)
		})
	}
}

// checkRefusals: usage errors exit 2, destructive commands without --yes
// and without a terminal refuse and touch nothing, API refusals exit 1
// with the API's message.
func checkRefusals(t *testing.T, sim *vastsim.Sim, a []string) {
	for _, args := range [][]string{
		{"ls", "--bogus"}, {"instance"}, {"instance", "abc"}, {"provision", "llm", "--count", "0"},
		{"provision"}, {"offers", "--pool", "llm", "--max-price", "-1"}, {"costs", "--by", "week"},
		{"costs", "--since", "yesterday"}, {"ls", "--state", "redy"}, {"destroy", "1", "2"}, {"nosuch"}, {"ops", "a", "b"},
	} {
		if r := runCLI(t, append(args, a...)...); r.code != 2 || !strings.Contains(r.stderr, "Error:") {
			t.Errorf("%v: want exit 2 with an error, got %s", args, r)
		}
	}
	for _, args := range [][]string{{"provision", "llm"}, {"destroy", "12345"}, {"drain", "12345"}} {
		r := runCLI(t, append(args, a...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "--yes") {
			t.Errorf("%v without --yes: want exit 2 naming --yes, got %s", args, r)
		}
	}
	for _, c := range sim.APICalls() {
		if c.Method == "PUT" || c.Method == "DELETE" {
			t.Fatalf("a refused command reached vast.ai: %s %s", c.Method, c.Path)
		}
	}
	var ops []map[string]any
	runJSON(t, &ops, append([]string{"ops"}, a...)...)
	if len(ops) != 0 {
		t.Fatalf("refused commands created operations: %v", ops)
	}
	// The API says no: exit 1 and its message.
	r := runCLI(t, append([]string{"instance", "999999"}, a...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "instance 999999 is not known") {
		t.Errorf("unknown instance: want exit 1 with the API's message, got %s", r)
	}
	r = runCLI(t, append([]string{"provision", "nopool", "--yes"}, a...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "nopool") {
		t.Errorf("unknown pool: want exit 1 with the API's message, got %s", r)
	}
}

type opJSON struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"`
	Pool       string `json:"pool"`
	State      string `json:"state"`
	InstanceID int64  `json:"instance_id"`
	Attempts   []struct {
		OfferID int64 `json:"offer_id"`
	} `json:"attempts"`
}

// checkProvision provisions two instances (table output) and waits for
// both operations through `ops <id> --json`.
func checkProvision(t *testing.T, a []string) []int64 {
	r := mustRun(t, append([]string{"provision", "llm", "--count", "2", "--yes"}, a...)...)
	tb := parseTable(t, r.stdout)
	if len(tb.rows) != 2 || tb.rows[0]["KIND"] != "provision" || tb.rows[0]["POOL"] != "llm" {
		t.Fatalf("provision table: %+v\n%s", tb.rows, r.stdout)
	}
	var ids []int64
	for _, row := range tb.rows {
		var op opJSON
		waitFor(t, 60*time.Second, "operation "+row["OPERATION"]+" to succeed", func() bool {
			runJSON(t, &op, append([]string{"ops", row["OPERATION"]}, a...)...)
			if op.State == "failed" {
				t.Fatalf("provisioning failed: %+v", op)
			}
			return op.State == "succeeded"
		})
		ids = append(ids, op.InstanceID)
	}
	return ids
}

type instJSON struct {
	ID           int64   `json:"id"`
	Pool         *string `json:"pool"`
	State        string  `json:"state"`
	ActualStatus *string `json:"actual_status"`
	DPHTotal     float64 `json:"dph_total"`
	Upstream     *string `json:"upstream"`
}

func checkReadCommands(t *testing.T, a []string, ids []int64) {
	var insts []instJSON
	waitFor(t, 30*time.Second, "both instances ready", func() bool {
		runJSON(t, &insts, append([]string{"ls", "--state", "ready"}, a...)...)
		return len(insts) == 2
	})
	byID := map[string]instJSON{}
	for _, in := range insts {
		byID[strconv.FormatInt(in.ID, 10)] = in
	}
	tb := parseTable(t, mustRun(t, append([]string{"ls", "--pool", "llm"}, a...)...).stdout)
	if len(tb.rows) != 2 {
		t.Fatalf("ls --pool llm: %d rows, want 2: %+v", len(tb.rows), tb.rows)
	}
	for _, row := range tb.rows {
		in, ok := byID[row["ID"]]
		if !ok || row["STATE"] != in.State || row["POOL"] != "llm" || row["UPSTREAM"] != *in.Upstream {
			t.Errorf("ls row %v does not match --json %+v", row, in)
		}
		if !rateRe.MatchString(row["PRICE"]) || row["PRICE"] != display.Rate(in.DPHTotal) {
			t.Errorf("ls PRICE %q, want %s in $x.xx/h", row["PRICE"], display.Rate(in.DPHTotal))
		}
	}
	if r := mustRun(t, append([]string{"instances", "--pool", "other"}, a...)...); !strings.Contains(r.stdout, "No instances.") {
		t.Errorf("ls --pool other: %s", r)
	}
	var none []instJSON
	runJSON(t, &none, append([]string{"ls", "--state", "gone"}, a...)...)
	if none == nil || len(none) != 0 {
		t.Errorf("ls --state gone --json: want [], got %v", none)
	}

	// instance <id>
	id := strconv.FormatInt(ids[0], 10)
	f := fieldsOf(mustRun(t, append([]string{"instance", id}, a...)...).stdout)
	var one instJSON
	runJSON(t, &one, append([]string{"instance", id}, a...)...)
	if f["ID"] != id || f["State"] != one.State || f["Price"] != display.Rate(one.DPHTotal) || f["Pool"] != "llm" {
		t.Errorf("instance %s fields %v do not match --json %+v", id, f, one)
	}

	// status
	var st struct {
		Instances int `json:"instances"`
	}
	runJSON(t, &st, append([]string{"status"}, a...)...)
	f = fieldsOf(mustRun(t, append([]string{"status"}, a...)...).stdout)
	if st.Instances != 2 || f["Instances"] != "2" || f["Last listing"] == "never" {
		t.Errorf("status: fields %v, json %+v", f, st)
	}

	// pools
	var pools []struct {
		Name    string  `json:"name"`
		Members []int64 `json:"members"`
		Rate    float64 `json:"spend_rate_dollars_per_hour"`
	}
	runJSON(t, &pools, append([]string{"pools"}, a...)...)
	tb = parseTable(t, mustRun(t, append([]string{"pools"}, a...)...).stdout)
	if len(pools) != 1 || len(tb.rows) != 1 || tb.rows[0]["POOL"] != "llm" || tb.rows[0]["MEMBERS"] != strconv.Itoa(len(pools[0].Members)) ||
		tb.rows[0]["SPEND"] != display.Rate(pools[0].Rate) || !rateRe.MatchString(tb.rows[0]["SPEND"]) {
		t.Errorf("pools table %+v vs json %+v", tb.rows, pools)
	}

	checkOffers(t, a)

	// ops
	var ops []opJSON
	runJSON(t, &ops, append([]string{"ops"}, a...)...)
	tb = parseTable(t, mustRun(t, append([]string{"operations"}, a...)...).stdout)
	if len(ops) != 2 || len(tb.rows) != 2 {
		t.Fatalf("ops: %d in json, %d rows", len(ops), len(tb.rows))
	}
	for i, op := range ops {
		if tb.rows[i]["OPERATION"] != op.ID || tb.rows[i]["STATE"] != op.State || tb.rows[i]["ATTEMPTS"] != strconv.Itoa(len(op.Attempts)) {
			t.Errorf("ops row %v vs json %+v", tb.rows[i], op)
		}
	}
	r := mustRun(t, append([]string{"ops", ops[0].ID}, a...)...)
	if f := fieldsOf(r.stdout); f["Operation"] != ops[0].ID || f["State"] != "succeeded" || !strings.Contains(r.stdout, "ATTEMPT") {
		t.Errorf("ops %s: %s", ops[0].ID, r.stdout)
	}
}

func checkOffers(t *testing.T, a []string) {
	var offers []struct {
		ID       int64   `json:"id"`
		GPUName  string  `json:"gpu_name"`
		DPHTotal float64 `json:"dph_total"`
	}
	runJSON(t, &offers, append([]string{"offers", "--pool", "llm"}, a...)...)
	// Without --pool, the only provisioning pool is used.
	tb := parseTable(t, mustRun(t, append([]string{"offers"}, a...)...).stdout)
	if len(offers) == 0 || len(tb.rows) != len(offers) {
		t.Fatalf("offers: %d in json, %d rows", len(offers), len(tb.rows))
	}
	for i, o := range offers {
		row := tb.rows[i]
		if row["OFFER"] != strconv.FormatInt(o.ID, 10) || row["PRICE"] != display.Rate(o.DPHTotal) || !strings.Contains(row["GPUS"], "RTX 4090") {
			t.Errorf("offers row %v vs json %+v", row, o)
		}
	}
	// Filter flags reach the API: a price cap below every offer leaves none.
	var cheap []any
	runJSON(t, &cheap, append([]string{"offers", "--pool", "llm", "--max-price", "0.01"}, a...)...)
	if len(cheap) != 0 {
		t.Errorf("offers --max-price 0.01: %d offers", len(cheap))
	}
	if r := mustRun(t, append([]string{"offers", "--pool", "llm", "--gpu-name", "RTX 5090", "--limit", "1"}, a...)...); strings.Contains(r.stdout, "RTX 4090") {
		t.Errorf("offers --gpu-name 'RTX 5090' listed a 4090:\n%s", r.stdout)
	}
}

func checkDestroyAndDrain(t *testing.T, sim *vastsim.Sim, a []string, ids []int64) {
	destroyed := func(id int64) bool {
		for _, in := range sim.Instances() {
			if in.ID == id {
				return in.Destroyed
			}
		}
		return false
	}
	r := mustRun(t, append([]string{"destroy", strconv.FormatInt(ids[0], 10), "--yes"}, a...)...)
	if !strings.Contains(r.stdout, "operation") {
		t.Errorf("destroy output: %s", r.stdout)
	}
	var op opJSON
	runJSON(t, &op, append([]string{"drain", strconv.FormatInt(ids[1], 10), "--yes"}, a...)...)
	if op.Kind != "destroy" || op.InstanceID != ids[1] {
		t.Fatalf("drain --json: %+v", op)
	}
	waitFor(t, 60*time.Second, "both instances destroyed", func() bool { return destroyed(ids[0]) && destroyed(ids[1]) })
	waitFor(t, 60*time.Second, "the drain's destruction verified", func() bool {
		runJSON(t, &op, append([]string{"ops", op.ID}, a...)...)
		return op.State == "succeeded"
	})
}

func checkReconcile(t *testing.T, a []string) {
	f := fieldsOf(mustRun(t, append([]string{"reconcile"}, a...)...).stdout)
	if f["Listed"] != "true" {
		t.Errorf("reconcile: %v", f)
	}
	var rep struct {
		Listed bool `json:"listed"`
	}
	runJSON(t, &rep, append([]string{"reconcile"}, a...)...)
	if !rep.Listed {
		t.Errorf("reconcile --json: listed false")
	}
}

func TestUnreachableAdminSaysWhatToDo(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := runCLI(t, "status", "--address", addr)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach Caddy's admin API at "+addr) || !strings.Contains(r.stderr, "is Caddy running?") || !strings.Contains(r.stderr, "--address") {
		t.Fatalf("%s", r)
	}
}
