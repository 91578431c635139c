package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestRunServesAndShutsDown(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		key     string
		wantN   int
		wantKey string
	}{
		{"defaults from VAST_API_KEY", []string{"-listen", "127.0.0.1:0", "-instances", "2"}, map[string]string{"VAST_API_KEY": "from-env"}, "from-env", 2, "from-env"},
		{"demo key fallback", []string{"-listen", "127.0.0.1:0", "-instances", "1", "-token-interval", "1ms"}, nil, "demo-key", 1, "demo-key"},
		{"explicit key", []string{"-listen", "127.0.0.1:0", "-api-key", "k2", "-instances", "0", "-rate-limits"}, map[string]string{"VAST_API_KEY": "ignored"}, "k2", 0, "k2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				err := run(ctx, tc.args, pw, io.Discard, func(k string) string { return tc.env[k] })
				pw.CloseWithError(io.EOF)
				done <- err
			}()
			lines := make(chan string, 16)
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			next := func() string {
				select {
				case l := <-lines:
					return l
				case <-time.After(5 * time.Second):
					t.Fatal("no output")
					return ""
				}
			}
			m := regexp.MustCompile(`^vastsim API: (http://127\.0\.0\.1:\d+) \(api key "([^"]*)"\)$`).FindStringSubmatch(next())
			if m == nil || m[2] != tc.wantKey {
				t.Fatalf("first line %v", m)
			}
			base := m[1]
			for i := 1; i <= tc.wantN; i++ {
				l := next()
				if !strings.Contains(l, "label=llm-") || !strings.Contains(l, "engine=http://127.0.0.1:") {
					t.Fatalf("instance line %q", l)
				}
			}

			req, _ := http.NewRequest("GET", base+"/api/v1/instances/", nil)
			req.Header.Set("Authorization", "Bearer "+tc.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Total     int `json:"total_instances"`
				Instances []struct {
					Status string `json:"actual_status"`
				} `json:"instances"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != 200 || body.Total != tc.wantN {
				t.Fatalf("list: %d total %d", resp.StatusCode, body.Total)
			}
			for _, in := range body.Instances {
				if in.Status != "running" {
					t.Fatalf("launched instance is %q", in.Status)
				}
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("run did not return after cancellation")
			}
			if _, err := http.Get(base + "/api/v1/instances/"); err == nil {
				t.Fatal("API still serving after shutdown")
			}
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-instances", "-1"}, {"-nope"}, {"-listen", "256.0.0.1:bad"}} {
		err := run(context.Background(), args, io.Discard, io.Discard, func(string) string { return "" })
		if err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestRunPrintsAndServesTheFaultControls(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"-listen", "127.0.0.1:0", "-instances", "1", "-ssh=false"}, pw, io.Discard, func(string) string { return "" })
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	sc := bufio.NewScanner(pr)
	var base, id, controls string
	for controls == "" && sc.Scan() {
		l := sc.Text()
		if m := regexp.MustCompile(`^vastsim API: (\S+) `).FindStringSubmatch(l); m != nil {
			base = m[1]
		}
		if m := regexp.MustCompile(`^instance (\d+) `).FindStringSubmatch(l); m != nil {
			id = m[1]
		}
		if m := regexp.MustCompile(`^fault controls: (\S+) `).FindStringSubmatch(l); m != nil {
			controls = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if base == "" || id == "" || controls != base+"/_sim/" {
		t.Fatalf("api %q, instance %q, controls %q", base, id, controls)
	}
	do := func(method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer demo-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	listStatus := func() string {
		req, _ := http.NewRequest("GET", base+"/api/v1/instances/", nil)
		req.Header.Set("Authorization", "Bearer demo-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Instances []struct {
				Status string `json:"actual_status"`
			} `json:"instances"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != 200 || len(body.Instances) != 1 {
			return "http " + http.StatusText(resp.StatusCode)
		}
		return body.Instances[0].Status
	}
	steps := []struct {
		method, path, body string
		want               string
	}{
		{"PUT", "/_sim/faults", `{"status":500}`, "http " + http.StatusText(500)},
		{"PUT", "/_sim/faults", `{"rate_limit":true}`, "http " + http.StatusText(429)},
		{"DELETE", "/_sim/faults", "", "running"},
		{"POST", "/_sim/instances/" + id + "/exit", "", "exited"},
		{"POST", "/_sim/instances/" + id + "/recover", "", "running"},
	}
	for _, s := range steps {
		if code := do(s.method, s.path, s.body); code != 200 {
			t.Fatalf("%s %s: %d", s.method, s.path, code)
		}
		if got := listStatus(); got != s.want {
			t.Fatalf("after %s %s %s the API answers %q, want %q", s.method, s.path, s.body, got, s.want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
