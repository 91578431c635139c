package vastai

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

type costsAnswer struct {
	By           string       `json:"by"`
	Period       string       `json:"period"`
	Since        string       `json:"since"`
	SpendPerHour float64      `json:"spend_per_hour"`
	TotalDollars float64      `json:"total_dollars"`
	Rows         []ledger.Row `json:"rows"`
}

func getCosts(t *testing.T, query string) (int, costsAnswer, string) {
	t.Helper()
	var out costsAnswer
	code, body := adminDo(t, http.MethodGet, "/vastai/costs"+query, "")
	if code == http.StatusOK {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("costs answer %s: %v", body, err)
		}
	}
	return code, out, string(body)
}

func instanceDollars(a costsAnswer, id int64) (float64, int) {
	var sum float64
	n := 0
	for _, r := range a.Rows {
		if r.InstanceID == id {
			sum += r.Dollars
			n++
		}
	}
	return sum, n
}

// The ledger's figure for a destroyed instance, read after a restart,
// agrees with what the simulated account billed within a second of billing.
func TestCostOfADestroyedInstanceSurvivesARestartAndMatchesBilling(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: time.Millisecond})
	cfg := lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`)
	tc := startCaddy(t, cfg)

	op := waitOperation(t, 30*time.Second, provisionOne(t, "llm").ID, "succeeded")
	id := op.InstanceID
	var inst adminInstance
	waitFor(t, 30*time.Second, "the instance running in the admin API", func() bool {
		code, _ := adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &inst)
		return code == http.StatusOK && inst.ActualStatus != nil && *inst.ActualStatus == "running"
	})
	dph := inst.DPHTotal
	var status struct {
		SpendPerHour float64 `json:"spend_per_hour"`
	}
	var pool struct {
		SpendPerHour float64 `json:"spend_per_hour"`
	}
	adminGET(t, "/vastai/status", &status)
	adminGET(t, "/vastai/pools/llm", &pool)
	if dph <= 0 || !near(status.SpendPerHour, dph) || !near(pool.SpendPerHour, dph) {
		t.Fatalf("spend_per_hour: status %v, pool %v; want the instance's dph_total %v", status.SpendPerHour, pool.SpendPerHour, dph)
	}
	waitFor(t, 30*time.Second, "two billed seconds", func() bool {
		b, _ := sim.Billing(id)
		return b.BilledSeconds >= 2
	})
	code, _, body := getCosts(t, "?by=instance")
	if code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`"instance_id":%d`, id)) {
		t.Fatalf("costs while running: %d %s", code, body)
	}

	if code, body := adminDo(t, http.MethodDelete, fmt.Sprintf("/vastai/instances/%d", id), ""); code != http.StatusAccepted {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	waitFor(t, 60*time.Second, "the watcher to forget the destroyed instance", func() bool {
		code, _ := adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), nil)
		return code == http.StatusNotFound
	})
	billed, _ := sim.Billing(id)
	if billed.Ended.IsZero() || billed.Dollars <= 0 {
		t.Fatalf("simulator billing %+v: not destroyed", billed)
	}

	// Restart: the app goes away (its state, ledger loop included), a new
	// config starts on the same storage.
	tc.InitServer(idleConfig, "caddyfile")
	tc.InitServer(cfg, "caddyfile")
	today := time.Now().UTC().AddDate(0, 0, -1).Format(time.DateOnly)
	var byInst costsAnswer
	waitFor(t, 30*time.Second, "the ledger to be read back", func() bool {
		code, byInst, _ = getCosts(t, "?by=instance&period=day&since="+today)
		return code == http.StatusOK
	})
	got, rows := instanceDollars(byInst, id)
	tolerance := dph / 3600 // one second at its rate
	if rows == 0 || math.Abs(got-billed.Dollars) > tolerance {
		t.Fatalf("ledger after restart: $%.6f in %d rows; the simulator billed $%.6f (%.2fs); tolerance $%.6f",
			got, rows, billed.Dollars, billed.BilledSeconds, tolerance)
	}
	t.Logf("ledger $%.6f, billed $%.6f over %.2fs, difference %.3fs of billing", got, billed.Dollars, billed.BilledSeconds, math.Abs(got-billed.Dollars)/dph*3600)
	_, byPool, _ := getCosts(t, "?by=pool&period=month")
	if len(byPool.Rows) == 0 || byPool.Rows[0].Pool != "llm" || byPool.Rows[0].InstanceID != 0 || !near(byPool.TotalDollars, byInst.TotalDollars) {
		t.Fatalf("by pool and month: %+v; by instance total $%v", byPool, byInst.TotalDollars)
	}
	if byPool.SpendPerHour != 0 || byPool.By != "pool" || byPool.Period != "month" {
		t.Fatalf("costs header %+v: nothing runs, so spend_per_hour must be 0", byPool)
	}
	metrics := scrapeMetrics(t)
	if !strings.Contains(metrics, `caddy_vastai_spend_dollars_total{pool="llm"}`) || !strings.Contains(metrics, `caddy_vastai_spend_dollars_per_hour{pool="llm"} 0`) {
		t.Fatalf("metrics lack the spend series:\n%s", grepLines(metrics, "spend"))
	}
}

func TestCostsRefusesBadParametersNamingThem(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	startCaddy(t, lifecycleConfig(t, sim.URL(), provisionPool, `	vastai_proxy llm`))
	waitFor(t, 30*time.Second, "the ledger to load", func() bool {
		code, _, _ := getCosts(t, "")
		return code == http.StatusOK
	})
	for _, tc := range []struct{ query, param string }{
		{"?by=gpu", "by"},
		{"?period=week", "period"},
		{"?since=2026-02-30", "since"},
		{"?since=yesterday", "since"},
		{"?per=day", "per"},
	} {
		code, _, body := getCosts(t, tc.query)
		if code != http.StatusBadRequest || !strings.Contains(body, tc.param+":") {
			t.Errorf("GET /vastai/costs%s: %d %s; want 400 naming %s", tc.query, code, body, tc.param)
		}
	}
	if code, body := adminDo(t, http.MethodPost, "/vastai/costs", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /vastai/costs: %d %s", code, body)
	}
}

func scrapeMetrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(testAdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
