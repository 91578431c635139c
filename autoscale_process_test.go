package vastai

// Process-level autoscaling tests: the built binary killed with SIGKILL
// during a scale-up and during a scale-down, then restarted on the same
// storage (see process_test.go for the harness).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// procAutoscaleConfig is an autoscaled pool at min 0 with compressed
// timings; warm adds a warm pool of one stopped instance.
func procAutoscaleConfig(adminPort, httpPort int, storage, simURL string, warm bool) string {
	warmBlock := ""
	if warm {
		warmBlock = "warm {\n\t\t\t\t\tstopped 1\n\t\t\t\t\tstart_timeout 20s\n\t\t\t\t}"
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	storage file_system %s
	vastai {
		api_key {env.VAST_API_KEY}
		api_url %s
		poll_interval 500ms
		lease_ttl 2s
		provision_poll_interval 200ms
		reconcile_interval 2s
		pool llm {
			health {
				interval 200ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				offer {
					gpu_name "RTX 4090"
				}
				max_instances 3
				ready_timeout 30s
			}
			autoscale {
				min 0
				max 2
				decision_interval 200ms
				stable_window 2s
				panic_window 600ms
				scale_up_delay 5s
				scale_down_delay 2s
				idle_to_zero 4s
				drain_timeout 10s
				%s
			}
		}
	}
}

http://127.0.0.1:%d {
	vastai_proxy llm
}
`, adminPort, storage, simURL, warmBlock, httpPort)
}

// procAutoscale reads a process's autoscale view of pool llm.
func (p *caddyProc) autoscale() (adminapi.Autoscale, bool) {
	code, body := p.do(http.MethodGet, "/vastai/pools/llm")
	var v adminapi.Pool
	if code != http.StatusOK || json.Unmarshal(body, &v) != nil || v.Autoscale == nil {
		return adminapi.Autoscale{}, false
	}
	return *v.Autoscale, true
}

// TestKill9DuringScaleUpAndScaleDownLeaksNothing: a process killed while
// its scale-up's instance loads, or while its scale-down's destroy is in
// flight, is restarted on the same storage: the operation is resumed, no
// instance is leaked or made twice, and the pool converges (back to 0
// once idle).
func TestKill9DuringScaleUpAndScaleDownLeaksNothing(t *testing.T) {
	bin := builtCaddy(t)
	for _, phase := range []string{"scale-up", "scale-down"} {
		t.Run(phase, func(t *testing.T) {
			sim := newSim(t, vastsim.Options{APIKey: testAPIKey, LoadingDelay: 3 * time.Second, TokenInterval: 5 * time.Millisecond})
			dir := t.TempDir()
			storage := filepath.Join(dir, "storage")
			peak, stopWatch := watchLive(sim)
			defer stopWatch()
			adminPort, httpPort := freeTCPPort(t), freeTCPPort(t)
			cfg := procAutoscaleConfig(adminPort, httpPort, storage, sim.URL(), false)
			first := startProc(t, bin, dir, "first", cfg, adminPort)
			proxy := fmt.Sprintf("http://127.0.0.1:%d", httpPort)

			// A request wakes the pool from zero.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan int, 1)
			go func() { served <- proxiedStatus(ctx, proxy) }()
			waitFor(t, 30*time.Second, "the scale-up's instance to be created", func() bool { return len(ours(sim)) == 1 })
			inst := ours(sim)[0].ID
			if phase == "scale-up" {
				if l := ours(sim); l[0].ActualStatus == "running" {
					t.Fatalf("the instance is running already at the crash: %+v", l)
				}
			} else {
				if code := <-served; code != http.StatusOK {
					t.Fatalf("the held request got %d", code)
				}
				// Idle: the scale-down destroys it; its DELETE is slow to answer.
				sim.SetFaults(vastsim.Faults{SlowResponse: 5 * time.Second, Routes: []string{"DELETE /api/v0/instances/{id}/"}})
				waitFor(t, 60*time.Second, "the scale-down's destroy to reach vast.ai", func() bool {
					for _, call := range sim.APICalls() {
						if call.Route == "DELETE /api/v0/instances/{id}/" {
							return true
						}
					}
					return false
				})
			}
			first.kill()
			sim.SetFaults(vastsim.Faults{})

			second := startProc(t, bin, dir, "second", cfg, adminPort)
			if phase == "scale-up" {
				// The resumed provisioning serves a new request.
				if code := proxiedStatus(context.Background(), proxy); code != http.StatusOK {
					t.Fatalf("a request after the restart got %d (log %s)", code, second.log)
				}
				if l := ours(sim); len(l) != 1 || l[0].ID != inst {
					t.Fatalf("after the restart: live %+v, want only the instance %d made before the crash", l, inst)
				}
			}
			waitFor(t, 90*time.Second, "the idle pool back at zero, nothing live", func() bool {
				v, ok := second.autoscale()
				return ok && v.Desired == 0 && len(ours(sim)) == 0
			})
			created := 0
			for _, in := range sim.Instances() {
				if strings.HasPrefix(in.Label, "cv:default:llm:") {
					created++
				}
			}
			if created != 1 || peak() > 1 {
				t.Fatalf("%d instances created, %d live at once: the restart duplicated the scale-up\nfirst:\n%s\nsecond:\n%s",
					created, peak(), first.logTail(), second.logTail())
			}
		})
	}
}

// proxiedStatus sends one completion through the proxy at base and
// returns its status (0 when the connection failed).
func proxiedStatus(ctx context.Context, base string) int {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/completions",
		strings.NewReader(`{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
