package vastsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	tests := []struct {
		name  string
		f     Faults
		check func(t *testing.T, s *Sim, c *apiClient, id int64)
	}{
		{"status 500 JSON", Faults{Status: 500}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			r := c.do("GET", "/api/v1/instances/", nil)
			if r.status != 500 || r.obj(t)["success"] != false {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"status 502 text", Faults{Status: 502}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			r := c.do("DELETE", fmt.Sprintf("/api/v0/instances/%d/", id), nil)
			if r.status != 502 || json.Valid(r.body) || !strings.Contains(string(r.body), "502 Bad Gateway") {
				t.Fatalf("%d %s", r.status, r.body)
			}
			s.SetFaults(Faults{})
			if s.info(t, id).Destroyed {
				t.Fatal("a faulted call must not change state")
			}
		}},
		{"custom body", Faults{Status: 400, Body: `{"error":"invalid_args","jupyter_token":"t"}`}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			r := c.do("GET", "/api/v1/instances/", nil)
			if r.status != 400 || string(r.body) != `{"error":"invalid_args","jupyter_token":"t"}` || r.header.Get("Content-Type") != "application/json" {
				t.Fatalf("%d %q %q", r.status, r.body, r.header.Get("Content-Type"))
			}
			s.SetFaults(Faults{Status: 500, Body: "plain"})
			if r := c.do("GET", "/api/v1/instances/", nil); r.status != 500 || string(r.body) != "plain" {
				t.Fatalf("%d %q", r.status, r.body)
			}
		}},
		{"status 503", Faults{Status: 503}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			if r := c.do("POST", "/api/v0/bundles/", map[string]any{}); r.status != 503 {
				t.Fatalf("%d", r.status)
			}
		}},
		{"rate limit rotates shapes", Faults{RateLimit: true}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			kinds := map[string]bool{}
			for range 5 {
				r := c.do("GET", "/api/v1/instances/", nil)
				if r.status != 429 || r.header.Get("Retry-After") != "" {
					t.Fatalf("%d retry-after=%q", r.status, r.header.Get("Retry-After"))
				}
				kind := "text"
				var m map[string]any
				if json.Unmarshal(r.body, &m) == nil {
					keys := []string{}
					for k := range m {
						keys = append(keys, k)
					}
					kind = fmt.Sprint(len(keys), m["detail"] != nil, m["error"], m["code"])
				} else if !strings.HasPrefix(string(r.body), "API requests too frequent") {
					t.Fatalf("text body %q", r.body)
				}
				kinds[kind] = true
			}
			if len(kinds) != 4 {
				t.Fatalf("saw %d body shapes: %v", len(kinds), kinds)
			}
		}},
		{"latency", Faults{Latency: 300 * time.Millisecond}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			c.hc.Timeout = 100 * time.Millisecond
			req, _ := http.NewRequest("GET", c.base+"/api/v1/instances/", nil)
			req.Header.Set("Authorization", "Bearer "+c.key)
			_, err := c.hc.Do(req)
			var ne net.Error
			if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("want timeout, got %v", err)
			}
			c.hc.Timeout = 5 * time.Second
			start := time.Now()
			if r := c.do("GET", "/api/v1/instances/", nil); r.status != 200 || time.Since(start) < 250*time.Millisecond {
				t.Fatalf("%d after %s", r.status, time.Since(start))
			}
		}},
		{"malformed JSON", Faults{MalformedJSON: true}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			r := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil)
			var v any
			if r.status != 200 || json.Unmarshal(r.body, &v) == nil || len(r.body) == 0 {
				t.Fatalf("%d %q", r.status, r.body)
			}
		}},
		{"malformed create still creates", Faults{MalformedJSON: true, Count: 1}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			before := len(s.Instances())
			r := c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", firstOfferID), map[string]any{"image": "x", "env": map[string]string{}})
			if r.status != 200 || json.Valid(r.body) {
				t.Fatalf("%d %q", r.status, r.body)
			}
			if len(s.Instances()) != before+1 {
				t.Fatal("the lost-response create did not create an instance")
			}
		}},
		{"empty body", Faults{EmptyBody: true}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			r := c.do("GET", "/api/v1/instances/", nil)
			if r.status != 200 || len(r.body) != 0 {
				t.Fatalf("%d %q", r.status, r.body)
			}
		}},
		{"omit from list", Faults{}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			other := launch(t, s, LaunchSpec{Running: true, Label: "x"})
			s.SetFaults(Faults{OmitFromList: []int64{id}})
			m := c.do("GET", "/api/v1/instances/", nil).obj(t)
			rows := m["instances"].([]any)
			if len(rows) != 1 || inum(t, rows[0].(map[string]any)["id"]) != other || inum(t, m["total_instances"]) != 1 {
				t.Fatalf("list %s", rows)
			}
			if c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"] == nil {
				t.Fatal("show must still know the omitted instance")
			}
			s.SetFaults(Faults{})
			if n := inum(t, c.do("GET", "/api/v1/instances/", nil).obj(t)["total_instances"]); n != 2 {
				t.Fatalf("after clearing: %d", n)
			}
		}},
		{"count limits the fault", Faults{Status: 503, Count: 2}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			got := []int{}
			for range 3 {
				got = append(got, c.do("GET", "/api/v1/instances/", nil).status)
			}
			if fmt.Sprint(got) != "[503 503 200]" {
				t.Fatalf("statuses %v", got)
			}
		}},
		{"create success false with a real contract", Faults{CreateSuccessFalse: true}, func(t *testing.T, s *Sim, c *apiClient, id int64) {
			m := c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", firstOfferID), map[string]any{"image": "x", "env": map[string]string{}}).obj(t)
			nc := inum(t, m["new_contract"])
			if m["success"] != false || nc <= 0 {
				t.Fatalf("%v", m)
			}
			if c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", nc), nil).obj(t)["instances"] == nil {
				t.Fatal("the instance behind success:false must exist")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, c := startSim(t, fastOpts())
			id := launch(t, s, LaunchSpec{Running: true})
			s.SetFaults(tc.f)
			tc.check(t, s, c, id)
		})
	}
}

// firstOfferID is the first default offer. Tests with faults active use it
// instead of a search, which would consume the fault.
const firstOfferID = 29907796

func TestRateLimits(t *testing.T) {
	opts := fastOpts()
	opts.RateLimits = true
	opts.APIKey = ""
	s, c := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Running: true})

	first := c.do("GET", "/api/v1/instances/", nil)
	second := c.do("GET", "/api/v1/instances/", nil)
	if first.status != 200 || second.status != 429 {
		t.Fatalf("statuses %d %d", first.status, second.status)
	}
	if second.header.Get("Retry-After") != "" {
		t.Fatal("vast.ai sends no Retry-After")
	}
	// Limits are per endpoint and per identity.
	if r := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil); r.status != 200 {
		t.Fatalf("other endpoint: %d", r.status)
	}
	c2 := *c
	c2.key = "another-key"
	if r := c2.do("GET", "/api/v1/instances/", nil); r.status != 200 {
		t.Fatalf("other identity: %d", r.status)
	}
	// Show has a 2 s threshold; destroy 3 s.
	if r := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil); r.status != 429 {
		t.Fatalf("show twice: %d", r.status)
	}
	// After the threshold the list answers again; 429s do not extend it.
	waitFor(t, 3*time.Second, "list to be allowed again", func() bool {
		return c.do("GET", "/api/v1/instances/", nil).status == 200
	})
	var limited int
	for _, call := range s.APICalls() {
		if call.Status == 429 {
			limited++
		}
	}
	if limited < 2 {
		t.Fatalf("call log shows %d 429s", limited)
	}

	// Offer search: 10 per minute.
	statuses := []int{}
	for range 11 {
		statuses = append(statuses, c.do("POST", "/api/v0/bundles/", map[string]any{}).status)
	}
	if statuses[9] != 200 || statuses[10] != 429 {
		t.Fatalf("bundles statuses %v", statuses)
	}
}

func TestConcurrentUse(t *testing.T) {
	opts := fastOpts()
	opts.LoadingDelay = 50 * time.Millisecond
	opts.DestroyDelay = 50 * time.Millisecond
	opts.TokenInterval = time.Millisecond
	s, c := startSim(t, opts)
	ids := []int64{}
	for range 4 {
		ids = append(ids, launch(t, s, LaunchSpec{Running: true}))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 5 * time.Second}
			get := func(path string) int {
				req, _ := http.NewRequest("GET", c.base+path, nil)
				req.Header.Set("Authorization", "Bearer "+testKey)
				resp, err := hc.Do(req)
				if err != nil {
					errs <- err
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			for i := range 15 {
				id := ids[(w+i)%len(ids)]
				switch i % 5 {
				case 0:
					get("/api/v1/instances/")
				case 1:
					get(fmt.Sprintf("/api/v0/instances/%d/", id))
				case 2:
					for _, in := range s.Instances() {
						if in.ID == id && in.EngineAddr != "" {
							req, _ := http.NewRequest("POST", "http://"+in.EngineAddr+"/v1/completions",
								strings.NewReader(`{"prompt":"x","max_tokens":3,"stream":true}`))
							req.Header.Set("Authorization", "Bearer "+in.JupyterToken)
							if resp, err := hc.Do(req); err == nil {
								resp.Body.Close()
							}
						}
					}
				case 3:
					nid, err := s.Launch(LaunchSpec{})
					if err != nil {
						errs <- err
						continue
					}
					s.SetStatus(nid, "running")
					s.HangEngine(nid, true)
					s.HangEngine(nid, false)
					s.Remove(nid)
				case 4:
					s.SetFaults(Faults{OmitFromList: []int64{id}, Count: 1})
					_ = s.Engine(id)
					_ = s.APICalls()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
