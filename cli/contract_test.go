package cli_test

// Tests against stub admin endpoints (httptest on loopback): the /vastai/costs
// CONTRACT TEST (the ledger endpoint is built on another branch; this
// checks the client against the JSON of CONTRACTS.md, and an end-to-end test
// against the real endpoint is due after the merge), confirmations on a
// terminal, and colour.

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// stubAdmin serves fixed answers by path and records the requests.
type stubAdmin struct {
	mu       sync.Mutex
	requests []string
	answers  map[string]string // "METHOD /path" -> JSON
}

func newStubAdmin(t *testing.T, answers map[string]string) (*stubAdmin, string) {
	s := &stubAdmin{answers: answers}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+r.URL.RequestURI())
		s.mu.Unlock()
		body, ok := answers[r.Method+" "+r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no such endpoint"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return s, strings.TrimPrefix(srv.URL, "http://")
}

func (s *stubAdmin) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// The JSON of CONTRACTS.md for GET /vastai/costs.
const costsByPool = `{"by":"pool","period":"day","since":"2026-12-01","spend_per_hour":1.23,"total_dollars":12.34,
 "rows":[{"period":"2026-12-01","pool":"gen","instance_id":0,"dollars":11.11,"hours":30.5},
         {"period":"2026-12-02","pool":"gen","instance_id":0,"dollars":1.23,"hours":3.2}]}`

const costsByInstance = `{"by":"instance","period":"month","since":"2026-11-01","spend_per_hour":0.4,"total_dollars":2.5,
 "rows":[{"period":"2026-12","pool":"gen","instance_id":4242,"dollars":2.5,"hours":6.25}]}`

func TestCostsContract(t *testing.T) {
	stub, addr := newStubAdmin(t, map[string]string{"GET /vastai/costs": costsByPool})
	r := mustRun(t, "costs", "--since", "2026-12-01", "--address", addr)
	tb := parseTable(t, r.stdout)
	if strings.Join(tb.header, ",") != "PERIOD,POOL,HOURS,COST" || len(tb.rows) != 2 {
		t.Fatalf("costs table:\n%s", r.stdout)
	}
	if row := tb.rows[1]; row["PERIOD"] != "2026-12-02" || row["POOL"] != "gen" || row["HOURS"] != "3.20" || row["COST"] != "$1.23" {
		t.Errorf("row %v", row)
	}
	if !strings.Contains(r.stdout, "Total since 2026-12-01: $12.34. Spending now: $1.23/h.") {
		t.Errorf("costs summary:\n%s", r.stdout)
	}
	if got := stub.got(); len(got) != 1 || got[0] != "GET /vastai/costs?by=pool&period=day&since=2026-12-01" {
		t.Errorf("requests: %v", got)
	}
	var js struct {
		Total float64 `json:"total_dollars"`
		Rows  []any   `json:"rows"`
	}
	runJSON(t, &js, "costs", "--address", addr)
	if js.Total != 12.34 || len(js.Rows) != 2 {
		t.Errorf("costs --json: %+v", js)
	}

	stub, addr = newStubAdmin(t, map[string]string{"GET /vastai/costs": costsByInstance})
	r = mustRun(t, "costs", "--by", "instance", "--period", "month", "--address", addr)
	tb = parseTable(t, r.stdout)
	if len(tb.rows) != 1 || tb.rows[0]["INSTANCE"] != "4242" || tb.rows[0]["COST"] != "$2.50" {
		t.Errorf("costs --by instance:\n%s", r.stdout)
	}
	if got := stub.got(); len(got) != 1 || got[0] != "GET /vastai/costs?by=instance&period=month" {
		t.Errorf("requests: %v", got)
	}
}

func TestConfirmationOnATerminal(t *testing.T) {
	op := `{"id":"0123abcdef","kind":"destroy","state":"destroying","instance_id":12}`
	stub, addr := newStubAdmin(t, map[string]string{"DELETE /vastai/instances/12": op, "POST /vastai/instances/12/drain": op})
	r := runIO(t, termIO(), "n\n", "destroy", "12", "--address", addr)
	if r.code != 1 || !strings.Contains(r.stderr, "Destroy instance 12? [y/N]") || !strings.Contains(r.stderr, "cancelled") {
		t.Fatalf("declined: %s", r)
	}
	if got := stub.got(); len(got) != 0 {
		t.Fatalf("a declined destroy sent %v", got)
	}
	r = runIO(t, termIO(), "y\n", "destroy", "12", "--address", addr)
	if r.code != 0 || !strings.Contains(r.stdout, "operation 0123abcdef is destroying") {
		t.Fatalf("confirmed: %s", r)
	}
	r = runIO(t, termIO(), "yes\n", "drain", "12", "--address", addr)
	if r.code != 0 {
		t.Fatalf("drain confirmed: %s", r)
	}
	if got := stub.got(); len(got) != 2 || got[0] != "DELETE /vastai/instances/12" || got[1] != "POST /vastai/instances/12/drain" {
		t.Fatalf("requests: %v", got)
	}
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

func TestStatesAreColouredOnlyOnATerminal(t *testing.T) {
	list := `[{"id":1,"pool":"llm","state":"ready","dph_total":0.4},{"id":22,"pool":"llm","state":"failed","dph_total":1.5}]`
	_, addr := newStubAdmin(t, map[string]string{"GET /vastai/instances": list})
	plain := mustRun(t, "ls", "--address", addr).stdout
	if ansi.MatchString(plain) {
		t.Fatalf("colour without a terminal:\n%q", plain)
	}
	r := runIO(t, colorIO(), "", "ls", "--address", addr)
	if r.code != 0 || !strings.Contains(r.stdout, "\x1b[32mready\x1b[0m") || !strings.Contains(r.stdout, "\x1b[31mfailed\x1b[0m") {
		t.Fatalf("no colour on a terminal: %q", r.stdout)
	}
	// Colour codes do not move the columns.
	if stripped := ansi.ReplaceAllString(r.stdout, ""); stripped != plain {
		t.Fatalf("coloured table differs from the plain one:\n%s\n%s", stripped, plain)
	}
	tb := parseTable(t, plain)
	if tb.rows[1]["PRICE"] != "$1.50/h" || tb.rows[1]["UPSTREAM"] != "-" {
		t.Errorf("row %v", tb.rows[1])
	}
}
