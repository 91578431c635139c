package vastai

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
	"github.com/caddyserver/caddy/v2"
)

// policySite is a vastai_proxy site with the given lb_policy block.
func policySite(policy string) string {
	return "\tvastai_proxy llm {\n\t\tlb_policy " + policy + "\n\t}"
}

// servedBy sends a short completion through the proxy and returns the
// instance that served it (the X-Vastai-Instance response header).
func servedBy(t *testing.T, header http.Header, prompt string) int64 {
	t.Helper()
	body := fmt.Sprintf(`{"model":"vastsim/tiny-llm","prompt":%q,"max_tokens":2}`, prompt)
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d through the proxy", resp.StatusCode)
	}
	id, err := strconv.ParseInt(resp.Header.Get(InstanceHeader), 10, 64)
	if err != nil {
		t.Fatalf("no %s header: %v", InstanceHeader, err)
	}
	return id
}

func pin(id int64) http.Header {
	return http.Header{InstanceHeader: {strconv.FormatInt(id, 10)}}
}

// decisions returns the route-decision counter of a reason, from /metrics.
func decisions(t *testing.T, policy, reason string) int {
	t.Helper()
	_, metrics := adminGET(t, "/metrics", nil)
	prefix := fmt.Sprintf(`caddy_vastai_route_decisions_total{policy=%q,pool="llm",reason=%q} `, policy, reason)
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestPinnedRequestsGoToTheNamedInstance: X-Vastai-Instance sends a
// request to that instance, whatever its load; an unknown id falls back
// to the policy.
func TestPinnedRequestsGoToTheNamedInstance(t *testing.T) {
	for _, policy := range []string{"vastai_least_load", "vastai_cache_aware"} {
		t.Run(policy, func(t *testing.T) {
			sim := newSim(t, vastsim.Options{})
			ids := launch(t, sim, 3, "llm-")
			startCaddy(t, testConfig(sim.URL(), llmPool, policySite(policy)))
			waitRoutable(t, 10*time.Second, ids)
			stop := holdStreams(t, 2, pin(ids[1])) // the pinned one is the busiest
			defer stop()
			waitFor(t, 10*time.Second, "2 streams in flight", func() bool { return instanceInFlight(t, ids[1]) == 2 })
			for range 10 {
				if got := servedBy(t, pin(ids[1]), "pinned"); got != ids[1] {
					t.Fatalf("pinned to %d, served by %d", ids[1], got)
				}
			}
			if got := servedBy(t, pin(999999), "unknown pin"); got == ids[1] {
				t.Errorf("an unknown pin went to the busiest instance %d", got)
			}
			if n := decisions(t, policy, "pinned"); n < 12 {
				t.Errorf("pinned decisions = %d, want at least 12", n)
			}
		})
	}
}

// instanceInFlight is the gateway's in-flight count for an instance.
func instanceInFlight(t *testing.T, id int64) int64 {
	var v struct {
		InFlight *int64 `json:"in_flight"`
	}
	adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &v)
	if v.InFlight == nil {
		return 0
	}
	return *v.InFlight
}

// TestLeastLoadAvoidsTheBusyInstance: with long streams held on one
// instance, new requests go to the others.
func TestLeastLoadAvoidsTheBusyInstance(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, policySite("vastai_least_load")))
	waitRoutable(t, 10*time.Second, ids)
	stop := holdStreams(t, 3, pin(ids[0]))
	defer stop()
	waitFor(t, 10*time.Second, "3 streams in flight", func() bool { return instanceInFlight(t, ids[0]) == 3 })
	seen := map[int64]int{}
	for range 20 {
		seen[servedBy(t, nil, "spread")]++
	}
	if seen[ids[0]] != 0 || seen[ids[1]] == 0 || seen[ids[2]] == 0 {
		t.Errorf("requests per instance %v: want none on the busy %d and some on each other", seen, ids[0])
	}
}

// TestSessionSticksThenOverflows: a session stays on one instance, moves
// when that instance is loaded beyond 1.25× the average, and its
// overflow decisions are counted.
func TestSessionSticksThenOverflows(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, policySite("vastai_least_load {\n\t\t\tsession_header X-Session-ID\n\t\t}")))
	waitRoutable(t, 10*time.Second, ids)
	session := http.Header{"X-Session-Id": {"user-7"}}
	home := servedBy(t, session, "turn 1")
	for turn := 2; turn <= 10; turn++ {
		if got := servedBy(t, session, fmt.Sprint("turn ", turn)); got != home {
			t.Fatalf("turn %d went to %d, the session's instance is %d", turn, got, home)
		}
	}
	stop := holdStreams(t, 4, pin(home))
	waitFor(t, 10*time.Second, "4 streams on the session's instance", func() bool { return instanceInFlight(t, home) == 4 })
	moved := servedBy(t, session, "overflow")
	if moved == home {
		t.Errorf("the session stayed on %d with 4 of 4 requests in flight there", home)
	}
	if n := decisions(t, "vastai_least_load", "session_overflow"); n < 1 {
		t.Errorf("session_overflow decisions = %d, want ≥ 1", n)
	}
	stop()
	waitFor(t, 10*time.Second, "the streams to end", func() bool { return instanceInFlight(t, home) == 0 })
	if got := servedBy(t, session, "back home"); got != home {
		t.Errorf("the session did not return to %d after the load ended: %d", home, got)
	}
}

// TestSaturatedEngineIsSkipped: an engine that queues with its KV cache
// full (from its scraped /metrics) gets no new requests while another has
// room.
func TestSaturatedEngineIsSkipped(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 2, "llm-")
	full, free := ids[0], ids[1]
	if err := sim.SetEngine(full, vastsim.EngineSpec{Slots: 1, KVBlocks: 1, Metrics: vastsim.MetricsVLLM}); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+enginesBlock, policySite("vastai_least_load")))
	waitRoutable(t, 10*time.Second, ids)
	stop := holdStreams(t, 2, pin(full)) // one runs with the KV cache full, one waits
	defer stop()
	waitFor(t, 15*time.Second, "the saturated engine's figures", func() bool {
		l, _ := sim.EngineLoad(full)
		var v struct {
			Engine *struct {
				Waiting float64 `json:"waiting"`
				Fresh   bool    `json:"fresh"`
			} `json:"engine"`
		}
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", full), &v)
		return l.Waiting == 1 && v.Engine != nil && v.Engine.Fresh && v.Engine.Waiting == 1
	})
	// Hold the free instance busier than the saturated one's own count,
	// so that only saturation (not load) keeps requests away from it.
	stopFree := holdStreams(t, 3, pin(free))
	defer stopFree()
	waitFor(t, 10*time.Second, "3 streams on the free instance", func() bool { return instanceInFlight(t, free) == 3 })
	for range 10 {
		if got := servedBy(t, nil, "anyone"); got != free {
			t.Fatalf("a request went to the saturated instance %d", got)
		}
	}
}

// TestCacheAwareFollowsThePrefix: turns of a conversation that share a
// long prefix go to the instance that served the first, and the hits are
// counted.
func TestCacheAwareFollowsThePrefix(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, policySite("vastai_cache_aware")))
	waitRoutable(t, 10*time.Second, ids)
	system := strings.Repeat("You are a careful assistant who answers briefly. ", 40)
	for conv := range 3 {
		prompt := fmt.Sprintf("conversation %d: ", conv) + system
		home := servedBy(t, nil, prompt)
		for turn := range 5 {
			prompt += fmt.Sprintf(" user turn %d, assistant answer %d.", turn, turn)
			if got := servedBy(t, nil, prompt); got != home {
				t.Fatalf("conversation %d turn %d went to %d, its prefix is on %d", conv, turn, got, home)
			}
		}
	}
	if n := decisions(t, "vastai_cache_aware", "cache_hit"); n < 15 {
		t.Errorf("cache_hit decisions = %d, want at least 15", n)
	}
	if _, metrics := adminGET(t, "/metrics", nil); !strings.Contains(string(metrics), `caddy_vastai_prefix_index_entries{pool="llm"} `) {
		t.Errorf("metrics lack the prefix index size:\n%s", grepLines(string(metrics), "prefix"))
	}
}

// TestInFlightCountsSurviveChurn is the accounting stress test through
// Caddy: concurrent requests that finish, stream, are cancelled by the
// client or cut by a dying engine, across config reloads that swap the
// policy, never leave a count negative, and every count returns to 0.
func TestInFlightCountsSurviveChurn(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	policies := []string{"vastai_least_load", "vastai_cache_aware {\n\t\t\tsession_header X-Session-ID\n\t\t}", "vastai_least_load {\n\t\t\tmax_requests 4\n\t\t}"}
	tc := startCaddy(t, testConfig(sim.URL(), llmPool, policySite(policies[0])))
	waitRoutable(t, 10*time.Second, ids)

	st := currentState(t)
	negative := make(chan int64, 1)
	watchDone := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() { // sample the counts while the churn runs
		defer close(watchDone)
		for {
			for _, id := range ids {
				if n := st.inflight.count(id); n < 0 {
					select {
					case negative <- n:
					default:
					}
				}
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	churn(t, 24, 8)
	for i, p := range policies[1:] {
		tc.InitServer(testConfig(sim.URL(), llmPool, policySite(p)), "caddyfile")
		if i == 0 {
			sim.KillEngine(ids[2]) // streams to it are cut mid-body
		}
		churn(t, 24, 8)
	}
	close(stopWatch)
	<-watchDone
	select {
	case n := <-negative:
		t.Fatalf("an in-flight count went negative: %d", n)
	default:
	}
	waitFor(t, 15*time.Second, "every in-flight count back to 0", func() bool {
		for _, id := range ids {
			if st.inflight.count(id) != 0 {
				return false
			}
		}
		return true
	})
}

// currentState returns the shared state the running config uses.
func currentState(t *testing.T) *state {
	t.Helper()
	v, _, err := states.LoadOrNew(stateKey, func() (caddy.Destructor, error) { return nil, errors.New("no state") })
	if err != nil {
		t.Fatal(err)
	}
	_, _ = states.Delete(stateKey) // LoadOrNew took a reference
	return v.(*state)
}

// churn runs workers × each requests of random kinds: short completions,
// streams read to the end, streams the client abandons part way.
func churn(t *testing.T, workers, each int) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range each {
				ctx, cancel := context.WithCancel(context.Background())
				body := fmt.Sprintf(`{"model":"vastsim/tiny-llm","prompt":"churn %d %d","max_tokens":%d,"stream":%v}`, w, k, 4+(w*k)%40, k%2 == 0)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, testProxyURL+"/v1/completions", strings.NewReader(body))
				req.Header.Set("X-Session-ID", fmt.Sprint("s", w%5))
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					if (w+k)%3 == 0 {
						_, _ = resp.Body.Read(make([]byte, 64))
						cancel() // the client goes away mid-response
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				cancel()
			}
		}()
	}
	wg.Wait()
}
