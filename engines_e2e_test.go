package vastai

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// enginesBlock scrapes fast so that the tests see fresh figures quickly.
const enginesBlock = `		engines {
			scrape_interval 150ms
			stale_after 2s
		}`

// holdStreams starts n slow streaming completions through the proxy and
// returns a function that ends them.
func holdStreams(t *testing.T, n int, header http.Header) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, n)
	for range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, testProxyURL+"/v1/completions",
			strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"hold","max_tokens":4000,"stream":true}`))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range header {
			req.Header[k] = v
		}
		go func() {
			defer func() { done <- struct{}{} }()
			if resp, err := http.DefaultClient.Do(req); err == nil {
				buf := make([]byte, 512)
				for {
					if _, err := resp.Body.Read(buf); err != nil {
						break
					}
				}
				resp.Body.Close()
			}
		}()
	}
	return func() {
		cancel()
		for range n {
			<-done
		}
	}
}

// TestEngineQueueAppearsInAdminAndMetrics checks the scrape end to end:
// the figures are read through the transport's token (the portal refuses
// a scrape without it), summed over vLLM's engine label, shown in
// /vastai/instances and exported as metrics.
func TestEngineQueueAppearsInAdminAndMetrics(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	if err := sim.SetEngine(ids[0], vastsim.EngineSpec{Slots: 1, Metrics: vastsim.MetricsVLLM}); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+enginesBlock, "\tvastai_proxy llm"))
	waitRoutable(t, 10*time.Second, ids)

	stop := holdStreams(t, 3, nil) // one runs, two wait for the single slot
	defer stop()

	path := fmt.Sprintf("/vastai/instances/%d", ids[0])
	var view struct {
		InFlight *int64 `json:"in_flight"`
		Engine   *struct {
			Kind    string   `json:"kind"`
			Waiting float64  `json:"waiting"`
			Running float64  `json:"running"`
			KV      *float64 `json:"kv_cache_use"`
			Fresh   bool     `json:"fresh"`
			Error   string   `json:"error"`
		} `json:"engine"`
	}
	waitFor(t, 15*time.Second, "the engine's queue of 2 in the admin API", func() bool {
		adminGET(t, path, &view)
		return view.Engine != nil && view.Engine.Fresh && view.Engine.Waiting == 2 && view.Engine.Running == 1
	})
	if view.Engine.Kind != "vllm" || view.Engine.KV == nil || view.Engine.Error != "" {
		t.Errorf("engine view = %+v, want kind vllm with a KV figure and no error", *view.Engine)
	}
	if view.InFlight == nil || *view.InFlight != 3 {
		t.Errorf("in_flight = %v, want 3", view.InFlight)
	}
	_, metrics := adminGET(t, "/metrics", nil)
	for _, want := range []string{
		fmt.Sprintf(`caddy_vastai_engine_waiting_requests{instance="%d",pool="llm"} 2`, ids[0]),
		fmt.Sprintf(`caddy_vastai_engine_running_requests{instance="%d",pool="llm"} 1`, ids[0]),
		fmt.Sprintf(`caddy_vastai_engine_metrics_fresh{instance="%d",pool="llm"} 1`, ids[0]),
		fmt.Sprintf(`caddy_vastai_instance_in_flight_requests{instance="%d",pool="llm"} 3`, ids[0]),
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(string(metrics), "caddy_vastai_engine"))
		}
	}
}

// TestEngineWithoutMetricsIsReportedNotFatal: an engine without /metrics
// (Ollama) keeps routing; the admin API says why there are no figures.
func TestEngineWithoutMetricsIsReportedNotFatal(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	if err := sim.SetEngine(ids[0], vastsim.EngineSpec{Metrics: vastsim.MetricsNone}); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+enginesBlock, "\tvastai_proxy llm"))
	waitRoutable(t, 10*time.Second, ids)
	var view struct {
		Engine *struct {
			Fresh bool   `json:"fresh"`
			Error string `json:"error"`
		} `json:"engine"`
	}
	waitFor(t, 10*time.Second, "a scrape error in the admin API", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", ids[0]), &view)
		return view.Engine != nil && view.Engine.Error != ""
	})
	if view.Engine.Fresh || !strings.Contains(view.Engine.Error, "404") {
		t.Errorf("engine view = %+v, want not fresh with the 404 named", *view.Engine)
	}
	if resp, _ := completion(t, http.DefaultClient); resp.StatusCode != http.StatusOK {
		t.Errorf("completion status = %d, want 200", resp.StatusCode)
	}
}
