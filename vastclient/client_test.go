package vastclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"missing key", Config{}, "api_key"},
		{"blank key", Config{APIKey: "  \n"}, "api_key"},
		{"key with inner space", Config{APIKey: "ab cd"}, "api_key"},
		{"relative url", Config{APIKey: "k", BaseURL: "console.vast.ai"}, "api_url"},
		{"ftp url", Config{APIKey: "k", BaseURL: "ftp://console.vast.ai"}, "api_url"},
		{"no host", Config{APIKey: "k", BaseURL: "https://"}, "api_url"},
		{"query", Config{APIKey: "k", BaseURL: "https://console.vast.ai/?api_key=x"}, "api_url"},
		{"userinfo", Config{APIKey: "k", BaseURL: "https://u:p@console.vast.ai"}, "api_url"},
		{"unknown endpoint", Config{APIKey: "k", Pacing: map[Endpoint]time.Duration{"bogus": time.Second}}, "pacing"},
		{"negative pacing", Config{APIKey: "k", Pacing: map[Endpoint]time.Duration{EndpointList: -1}}, "pacing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want one naming %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "u:p@") {
				t.Errorf("error repeats URL credentials: %v", err)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	c, err := New(Config{APIKey: " key-with-newline\n"})
	if err != nil {
		t.Fatal(err)
	}
	if c.base != DefaultBaseURL || c.key != "key-with-newline" || c.userAgent != "caddy-vastai/"+Version {
		t.Errorf("defaults: base=%q key=%q ua=%q", c.base, c.key, c.userAgent)
	}
	if c.timeout != 30*time.Second || c.maxAttempts != 4 || c.backoffBase != 500*time.Millisecond || c.backoffMax != 10*time.Second {
		t.Errorf("defaults: timeout=%s attempts=%d backoff=%s..%s", c.timeout, c.maxAttempts, c.backoffBase, c.backoffMax)
	}
	for ep, want := range DefaultPacing() {
		if got := c.pacers[ep].interval; got != want {
			t.Errorf("pacing %s = %s, want %s", ep, got, want)
		}
	}

	c, err = New(Config{APIKey: "k", BaseURL: "http://127.0.0.1:9/prefix//", Pacing: map[Endpoint]time.Duration{EndpointList: 0}})
	if err != nil {
		t.Fatal(err)
	}
	if c.base != "http://127.0.0.1:9/prefix" {
		t.Errorf("base = %q, want trailing slashes trimmed", c.base)
	}
	if c.pacers[EndpointList].interval != 0 || c.pacers[EndpointCreate].interval != 4500*time.Millisecond {
		t.Errorf("a partial pacing map must disable list and keep the other defaults")
	}
}

func TestRequestHeaders(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, n int) {
		switch {
		case r.URL.Path == "/api/v0/users/current/":
			writeJSON(w, 200, `{"id": 7, "email": "a@example.com", "credit": 42.5, "balance": -1.25}`)
		default:
			writeJSON(w, 200, `{"success": true}`)
		}
	})
	c := newTestClient(t, testConfig(f.URL))
	ctx := testCtx(t)
	u, err := c.CurrentUser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if *u != (User{ID: 7, Email: "a@example.com", Credit: 42.5, Balance: -1.25}) {
		t.Errorf("user = %+v", *u)
	}
	if err := c.SetLabel(ctx, 5, "x"); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests", len(reqs))
	}
	for i, r := range reqs {
		if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
			t.Errorf("request %d Authorization = %q", i, got)
		}
		if _, ok := r.Query["api_key"]; ok {
			t.Errorf("request %d sent the key as a query parameter", i)
		}
		if ua := r.Header.Get("User-Agent"); !strings.Contains(ua, Version) || !strings.HasPrefix(ua, "caddy-vastai/") {
			t.Errorf("request %d User-Agent = %q, want caddy-vastai/%s", i, ua, Version)
		}
		if got := r.Header.Get("Accept"); got != "application/json" {
			t.Errorf("request %d Accept = %q", i, got)
		}
	}
	if ct := reqs[0].Header.Get("Content-Type"); ct != "" {
		t.Errorf("GET without body has Content-Type %q", ct)
	}
	if ct := reqs[1].Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("PUT with body has Content-Type %q", ct)
	}
}

// listServer serves n instances through the v1 list with keyset pagination
// (pages of at most 25, like vast.ai).
func listServer(t *testing.T, n int) *fakeServer {
	return newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
		if r.URL.Path != "/api/v1/instances/" || r.Method != http.MethodGet {
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
			writeJSON(w, 404, `{}`)
			return
		}
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		if limit > 25 || limit <= 0 {
			limit = 25
		}
		after := 0
		if tok := r.URL.Query().Get("after_token"); tok != "" {
			after, _ = strconv.Atoi(strings.TrimPrefix(tok, "tok-"))
		}
		var rows []string
		last := 0
		for id := after + 1; id <= n && len(rows) < limit; id++ {
			rows = append(rows, fmt.Sprintf(`{"id": %d, "label": "l%d", "actual_status": "running", "extra_env": [["K","V"]], "ports": null}`, 1000+id, id))
			last = id
		}
		next := "null"
		if last < n && last > 0 {
			next = fmt.Sprintf(`"tok-%d"`, last)
		}
		writeJSON(w, 200, fmt.Sprintf(`{"success": true, "instances_found": %d, "total_instances": %d, "next_token": %s, "instances": [%s]}`,
			len(rows), n, next, strings.Join(rows, ",")))
	})
}

func TestListInstancesPagination(t *testing.T) {
	f := listServer(t, 30)
	c := newTestClient(t, testConfig(f.URL))
	res, err := c.ListInstances(testCtx(t), ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pages != 2 || len(res.Instances) != 30 || res.Skipped != 0 {
		t.Fatalf("pages=%d instances=%d skipped=%d, want 2/30/0", res.Pages, len(res.Instances), res.Skipped)
	}
	for i, in := range res.Instances {
		if in.ID != int64(1001+i) || in.ExtraEnv["K"] != "V" {
			t.Fatalf("instance %d = %+v", i, in)
		}
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if got := reqs[0].Query["limit"]; len(got) != 1 || got[0] != "25" {
		t.Errorf("limit = %v", got)
	}
	if _, ok := reqs[0].Query["after_token"]; ok {
		t.Errorf("first page sent an after_token")
	}
	if got := reqs[1].Query["after_token"]; len(got) != 1 || got[0] != "tok-25" {
		t.Errorf("second page after_token = %v", got)
	}
}

func TestListInstancesEmptyAndLabel(t *testing.T) {
	f := listServer(t, 0)
	c := newTestClient(t, testConfig(f.URL))
	res, err := c.ListInstances(testCtx(t), ListOptions{Label: `pool "a"`})
	if err != nil {
		t.Fatal(err)
	}
	if res.Instances == nil || len(res.Instances) != 0 || res.Pages != 1 {
		t.Fatalf("res = %+v", res)
	}
	sf := f.requests()[0].Query["select_filters"]
	if len(sf) != 1 {
		t.Fatalf("select_filters = %v", sf)
	}
	var filt map[string]map[string]string
	if err := json.Unmarshal([]byte(sf[0]), &filt); err != nil || filt["label"]["eq"] != `pool "a"` {
		t.Fatalf("select_filters = %q (%v)", sf[0], err)
	}
}

func TestListInstancesAcceptedShapes(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    int
		skipped int
	}{
		{"null instances without total", `{"success": true, "instances": null, "next_token": null}`, 0, 0},
		{"null instances with total 0", `{"instances": null, "total_instances": 0}`, 0, 0},
		{"v0-style body without success", string(fixture(t, "vast/docs_list_instances_v0_empty__hello-world.json")), 0, 0},
		{"empty next token", `{"instances": [{"id": 1}], "next_token": ""}`, 1, 0},
		{"invalid rows skipped", `{"instances": [{"id": 1}, {"id": null}, {}, {"id": "abc"}, {"id": -3}, {"id": 2.5}, 17, "x", null, {"id": "2"}]}`, 2, 8},
		{"duplicate ids", `{"instances": [{"id": 1}, {"id": 1}]}`, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) { writeJSON(w, 200, tt.body) })
			c := newTestClient(t, testConfig(f.URL))
			res, err := c.ListInstances(testCtx(t), ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Instances) != tt.want || res.Skipped != tt.skipped {
				t.Fatalf("instances=%d skipped=%d, want %d/%d", len(res.Instances), res.Skipped, tt.want, tt.skipped)
			}
		})
	}
}

// TestListInstancesFailuresAreErrors is the money-safety test: every way a
// listing can fail must be an error, never an empty result.
func TestListInstancesFailuresAreErrors(t *testing.T) {
	type page struct {
		status int
		body   string
	}
	good := page{200, `{"success": true, "instances": [{"id": 1}], "next_token": "t1"}`}
	tests := []struct {
		name   string
		pages  []page // the last one repeats
		is     error
		status int
	}{
		{"410 deprecated", []page{{410, `{"success":false,"error":"deprecated_endpoint","msg":"/api/v0/instances/ is deprecated."}`}}, ErrDeprecated, 410},
		{"500", []page{{500, `Internal Server Error`}}, ErrServer, 500},
		{"503 exhausted", []page{{503, `<html>503</html>`}}, ErrServer, 503},
		{"404 auth_error", []page{{404, string(fixture(t, "vast/docs_error_401_auth_error__openapi-show_instance.json"))}}, ErrAuth, 404},
		{"401 auth_error", []page{{401, string(fixture(t, "vast/docs_error_401_auth_error__openapi-show_instance.json"))}}, ErrAuth, 401},
		{"400 invalid filter", []page{{400, string(fixture(t, "vast/docsassembled_error_400_v1_instances_invalid_filter__openapi-show_instances.json"))}}, nil, 400},
		{"200 garbage", []page{{200, `<html>hello</html>`}}, ErrUnexpectedResponse, 0},
		{"200 empty body", []page{{200, ``}}, ErrUnexpectedResponse, 0},
		{"200 null body", []page{{200, `null`}}, ErrUnexpectedResponse, 0},
		{"200 array body", []page{{200, `[]`}}, ErrUnexpectedResponse, 0},
		{"200 truncated", []page{{200, `{"success": true, "instances": [{"id": 1}`}}, ErrUnexpectedResponse, 0},
		{"200 success false", []page{{200, `{"success": false, "msg": "something broke"}`}}, nil, 200},
		{"200 success false with instances", []page{{200, `{"success": false, "instances": []}`}}, nil, 200},
		{"200 error code without success", []page{{200, `{"error": "invalid_request", "msg": "bad"}`}}, nil, 200},
		{"200 missing instances key", []page{{200, `{"success": true, "instances_found": 0}`}}, ErrUnexpectedResponse, 0},
		{"200 instances not array", []page{{200, `{"success": true, "instances": {"id": 1}}`}}, ErrUnexpectedResponse, 0},
		{"200 instances string", []page{{200, `{"success": true, "instances": ""}`}}, ErrUnexpectedResponse, 0},
		{"200 null instances with total 3", []page{{200, `{"success": true, "instances": null, "total_instances": 3}`}}, ErrUnexpectedResponse, 0},
		{"200 null instances with garbage total", []page{{200, `{"instances": null, "total_instances": "many"}`}}, ErrUnexpectedResponse, 0},
		{"next_token object", []page{{200, `{"instances": [], "next_token": {"a": 1}}`}}, ErrUnexpectedResponse, 0},
		{"second page 500", []page{good, {500, `oops`}}, ErrServer, 500},
		{"second page garbage", []page{good, {200, `nope`}}, ErrUnexpectedResponse, 0},
		{"second page success false", []page{good, {200, `{"success": false, "error": "invalid_token", "msg": "bad after_token"}`}}, nil, 200},
		{"repeated next_token", []page{good}, ErrUnexpectedResponse, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) {
				p := tt.pages[min(n, len(tt.pages))-1]
				writeJSON(w, p.status, p.body)
			})
			c := newTestClient(t, testConfig(f.URL))
			res, err := c.ListInstances(testCtx(t), ListOptions{})
			if err == nil || res != nil {
				t.Fatalf("ListInstances() = %+v, %v; want nil and an error", res, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not match %v", err, tt.is)
			}
			if tt.status != 0 {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != tt.status || ae.Path != "/api/v1/instances/" || ae.Method != "GET" {
					t.Errorf("error %v: want *APIError with status %d", err, tt.status)
				}
			}
		})
	}
}

func TestListInstancesLoopGuard(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) {
		writeJSON(w, 200, fmt.Sprintf(`{"instances": [{"id": %d}], "next_token": "t%d"}`, n, n))
	})
	c := newTestClient(t, testConfig(f.URL))
	_, err := c.ListInstances(testCtx(t), ListOptions{})
	if !errors.Is(err, ErrUnexpectedResponse) || !strings.Contains(err.Error(), "pages") {
		t.Fatalf("err = %v, want the page limit", err)
	}
	if got := f.count(); got != maxListPages {
		t.Errorf("server saw %d pages, want %d", got, maxListPages)
	}
}

func TestShowInstance(t *testing.T) {
	tests := []struct {
		name   string
		id     int64 // default 883
		status int
		body   string
		check  func(t *testing.T, in *Instance)
		is     []error
		isNot  []error
	}{
		{
			name: "wrapped with ports", id: 12345, status: 200, body: string(fixture(t, "gpushopper/get-instance-wrapped-with-ports.json")),
			check: func(t *testing.T, in *Instance) {
				if p, ok := in.Ports.HostPort(8000, "tcp"); !ok || p != 33526 {
					t.Errorf("HostPort(8000) = %d, %v", p, ok)
				}
				if in.PublicIPAddr != "65.130.162.74" || in.ActualStatus != "running" {
					t.Errorf("instance = %+v", in)
				}
			},
		},
		{
			name: "docs example with ports list", status: 200, body: string(fixture(t, "vast/docs_show_instance_example_id883__docs-openapi-via-utopia-scala.json")),
			check: func(t *testing.T, in *Instance) {
				if len(in.Ports) != 0 || len(in.ExtraEnv) != 0 || in.Label != "" || in.GPUUtil != nil {
					t.Errorf("instance = %+v", in)
				}
				if in.GPUName != "RTX A5000" || in.MachineID != 178 || in.JupyterToken == "" {
					t.Errorf("instance = %+v", in)
				}
			},
		},
		{
			name: "partial object without id", status: 200, body: string(fixture(t, "vast/docs_show_instance_loading_partial__hello-world.json")),
			check: func(t *testing.T, in *Instance) {
				if in.ID != 883 || in.ActualStatus != "loading" || in.SSHPort != 12345 {
					t.Errorf("instance = %+v", in)
				}
			},
		},
		{
			name: "single-element array", status: 200, body: `{"instances": [{"id": 883, "actual_status": "running"}]}`,
			check: func(t *testing.T, in *Instance) {
				if in.ID != 883 {
					t.Errorf("instance = %+v", in)
				}
			},
		},
		{name: "null", status: 200, body: string(fixture(t, "gpushopper/get-instance-deleted-http200.json")), is: []error{ErrNotFound}},
		{name: "empty object", status: 200, body: `{"instances": {}}`, is: []error{ErrNotFound}},
		{name: "empty array", status: 200, body: `{"instances": []}`, is: []error{ErrNotFound}},
		{name: "404 not_found", status: 404, body: `{"success": false, "error": "not_found", "msg": "no such instance"}`, is: []error{ErrNotFound}},
		{name: "404 no_such_instance", status: 404, body: `{"success": false, "error": "no_such_instance"}`, is: []error{ErrNotFound}},
		{name: "404 auth_error", status: 404, body: string(fixture(t, "vast/docs_error_401_auth_error__openapi-show_instance.json")), is: []error{ErrAuth}, isNot: []error{ErrNotFound}},
		{name: "401 auth_error", status: 401, body: string(fixture(t, "vast/docs_error_401_auth_error__openapi-show_instance.json")), is: []error{ErrAuth}, isNot: []error{ErrNotFound}},
		{name: "bare 404 is not not-found", status: 404, body: `<html>Not Found</html>`, isNot: []error{ErrNotFound, ErrAuth}},
		{name: "other id", status: 200, body: `{"instances": {"id": 884}}`, is: []error{ErrUnexpectedResponse}, isNot: []error{ErrNotFound}},
		{name: "string payload", status: 200, body: `{"instances": "destroying"}`, is: []error{ErrUnexpectedResponse}, isNot: []error{ErrNotFound}},
		{name: "missing key", status: 200, body: `{"instance": {"id": 883}}`, is: []error{ErrUnexpectedResponse}, isNot: []error{ErrNotFound}},
		{name: "success false", status: 200, body: `{"success": false, "msg": "nope"}`, isNot: []error{ErrNotFound}},
		{name: "garbage", status: 200, body: `{{{`, is: []error{ErrUnexpectedResponse}, isNot: []error{ErrNotFound}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.id
			if id == 0 {
				id = 883
			}
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
				if r.Method != http.MethodGet || r.URL.Path != fmt.Sprintf("/api/v0/instances/%d/", id) {
					t.Errorf("request %s %s", r.Method, r.URL.Path)
				}
				writeJSON(w, tt.status, tt.body)
			})
			c := newTestClient(t, testConfig(f.URL))
			in, err := c.ShowInstance(testCtx(t), id)
			if tt.check != nil {
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, in)
				return
			}
			if err == nil || in != nil {
				t.Fatalf("ShowInstance() = %+v, %v; want an error", in, err)
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("error %v does not match %v", err, target)
				}
			}
			for _, target := range tt.isNot {
				if errors.Is(err, target) {
					t.Errorf("error %v must not match %v", err, target)
				}
			}
		})
	}
}

func TestInvalidIDsMakeNoRequest(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) { writeJSON(w, 200, `{}`) })
	c := newTestClient(t, testConfig(f.URL))
	ctx := testCtx(t)
	if _, err := c.ShowInstance(ctx, 0); err == nil {
		t.Error("ShowInstance(0) succeeded")
	}
	if err := c.DestroyInstance(ctx, -1); err == nil {
		t.Error("DestroyInstance(-1) succeeded")
	}
	if err := c.SetLabel(ctx, 0, "x"); err == nil {
		t.Error("SetLabel(0) succeeded")
	}
	if _, err := c.CreateInstance(ctx, 0, CreateRequest{Image: "i"}); err == nil {
		t.Error("CreateInstance(0) succeeded")
	}
	if f.count() != 0 {
		t.Errorf("server saw %d requests", f.count())
	}
}

// The four 429 body shapes of the reference, each followed by success.
func rateLimitBodies(t *testing.T) map[string]struct {
	body, contentType string
} {
	return map[string]struct{ body, contentType string }{
		"plain text":          {"API requests too frequent: endpoint threshold=1.0", "text/plain"},
		"detail":              {string(fixture(t, "vast/docs_error_429_detail__openapi-create_instance.json")), "application/json"},
		"rate_limit_exceeded": {string(fixture(t, "vast/docsassembled_error_429_destroy__openapi-destroy_instance.json")), "application/json"},
		"message and code":    {string(fixture(t, "gpushopper/error-429-too-many-requests.json")), "application/json"},
	}
}

func TestRateLimitRetried(t *testing.T) {
	for name, rl := range rateLimitBodies(t) {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) {
				if n == 1 {
					w.Header().Set("Content-Type", rl.contentType)
					w.WriteHeader(429)
					_, _ = w.Write([]byte(rl.body))
					return
				}
				writeJSON(w, 200, `{"instances": [{"id": 5}]}`)
			})
			c := newTestClient(t, testConfig(f.URL))
			res, err := c.ListInstances(testCtx(t), ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Instances) != 1 || f.count() != 2 {
				t.Fatalf("instances=%d requests=%d", len(res.Instances), f.count())
			}
		})
	}
}

func TestRateLimitExhausted(t *testing.T) {
	for name, rl := range rateLimitBodies(t) {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) {
				writeText(w, 429, rl.body)
			})
			c := newTestClient(t, testConfig(f.URL))
			err := c.DestroyInstance(testCtx(t), 9)
			if !errors.Is(err, ErrRateLimited) {
				t.Fatalf("err = %v, want ErrRateLimited", err)
			}
			if f.count() != 4 {
				t.Errorf("server saw %d requests, want MaxAttempts=4", f.count())
			}
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != 429 || ae.Msg == "" {
				t.Errorf("err = %#v", err)
			}
		})
	}
}

func TestIdempotentRetries(t *testing.T) {
	tests := []struct {
		name      string
		fail      func(t *testing.T, w http.ResponseWriter)
		wantCalls int // 0: at least 2
		wantErr   error
	}{
		{"502 retried", func(t *testing.T, w http.ResponseWriter) { writeText(w, 502, "Bad Gateway") }, 2, nil},
		{"503 retried", func(t *testing.T, w http.ResponseWriter) { writeText(w, 503, "") }, 2, nil},
		{"504 retried", func(t *testing.T, w http.ResponseWriter) { writeText(w, 504, "") }, 2, nil},
		{"connection reset retried", func(t *testing.T, w http.ResponseWriter) { hangUp(t, w) }, 0, nil},
		{"500 not retried", func(t *testing.T, w http.ResponseWriter) { writeText(w, 500, "boom") }, 1, ErrServer},
		{"400 not retried", func(t *testing.T, w http.ResponseWriter) {
			writeJSON(w, 400, `{"success": false, "error": "invalid_args", "msg": "bad"}`)
		}, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) {
				if n == 1 {
					tt.fail(t, w)
					return
				}
				writeJSON(w, 200, `{"success": true}`)
			})
			c := newTestClient(t, testConfig(f.URL))
			err := c.SetState(testCtx(t), 3, StateStopped)
			if tt.wantCalls == 1 {
				if err == nil {
					t.Fatal("want an error")
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := f.count(); (tt.wantCalls == 0 && got < 2) || (tt.wantCalls != 0 && got != tt.wantCalls) {
				t.Errorf("server saw %d requests, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestConnectionRefusedBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := newTestClient(t, testConfig("http://"+addr))
	_, err = c.ListInstances(testCtx(t), ListOptions{})
	if err == nil {
		t.Fatal("want an error")
	}
	if !strings.Contains(err.Error(), "GET /api/v1/instances/") {
		t.Errorf("error lacks context: %v", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Errorf("error %v does not wrap the network error", err)
	}
	// Create may retry a refused connection, and must not call it uncertain.
	_, err = c.CreateInstance(testCtx(t), 1, CreateRequest{Image: "img"})
	if err == nil || errors.Is(err, ErrCreateUncertain) {
		t.Errorf("create on a refused connection: %v, want a certain error", err)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var target atomic.Int32
	dest := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		target.Add(1)
		writeJSON(w, 200, `{"success": true}`)
	})
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		http.Redirect(w, r, dest.URL+r.URL.Path, http.StatusPermanentRedirect)
	})
	c := newTestClient(t, testConfig(f.URL))
	err := c.DestroyInstance(testCtx(t), 1)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 308 {
		t.Fatalf("err = %v, want an APIError with status 308", err)
	}
	if target.Load() != 0 {
		t.Error("the redirect was followed")
	}
}

func TestCreateInstance(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
		if r.Method != http.MethodPut || r.URL.Path != "/api/v0/asks/555/" {
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		}
		writeJSON(w, 200, string(fixture(t, "vast/docs_create_instance_success__hello-world.json")))
	})
	c := newTestClient(t, testConfig(f.URL))
	res, err := c.CreateInstance(testCtx(t), 555, CreateRequest{Image: "vastai/vllm:latest", Label: "caddy-vastai:x", Disk: 40})
	if err != nil {
		t.Fatal(err)
	}
	if res.InstanceID != 12345678 || !res.Success || res.InstanceAPIKey != "d15a..." {
		t.Fatalf("res = %+v", res)
	}
	if b, _ := json.Marshal(res); strings.Contains(string(b), "d15a") {
		t.Errorf("CreateResult JSON exposes the instance key: %s", b)
	}
	var sent map[string]any
	if err := json.Unmarshal(f.requests()[0].Body, &sent); err != nil {
		t.Fatal(err)
	}
	env, ok := sent["env"].(map[string]any)
	if !ok || len(env) != 0 {
		t.Errorf("env = %#v, want {}", sent["env"])
	}
	if sent["client_id"] != "me" || sent["label"] != "caddy-vastai:x" || sent["disk"] != 40.0 {
		t.Errorf("body = %v", sent)
	}
	for _, k := range []string{"price", "cancel_unavail", "args", "onstart", "template_hash_id", "target_state"} {
		if _, ok := sent[k]; ok {
			t.Errorf("body has %q although it was not set: %v", k, sent)
		}
	}
	if ct := f.requests()[0].Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestCreateRequestJSON(t *testing.T) {
	// The documentation's vLLM example, plus client_id.
	req := CreateRequest{
		Image:   "vllm/vllm-openai:latest",
		Label:   "vllm-inference-server",
		Disk:    50,
		Runtype: "ssh_direct",
		Env: map[string]string{
			"MODEL_ID":     "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
			"HF_TOKEN":     "hf_xxxYourTokenHere",
			"-p 8000:8000": "1",
		},
		Onstart: "vllm serve $MODEL_ID --port 8000",
	}
	got, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	_ = json.Unmarshal(fixture(t, "vast/request_create_instance_vllm_body__creating-instances-with-api.json"), &want)
	want["client_id"] = "me"
	wantJSON, _ := json.Marshal(want)
	if !jsonEqual(t, got, wantJSON) {
		t.Errorf("got  %s\nwant %s", got, wantJSON)
	}

	price, no := 0.25, false
	got, _ = json.Marshal(CreateRequest{ClientID: "other", TemplateHashID: "h", Price: &price, CancelUnavail: &no, Args: []string{"a"}, TargetState: "stopped"})
	want2 := `{"client_id":"other","template_hash_id":"h","env":{},"args":["a"],"price":0.25,"target_state":"stopped","cancel_unavail":false}`
	if !jsonEqual(t, got, []byte(want2)) {
		t.Errorf("got %s, want %s", got, want2)
	}
}

func TestCreateValidation(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) { writeJSON(w, 200, `{}`) })
	c := newTestClient(t, testConfig(f.URL))
	zero := 0.0
	bad := []CreateRequest{
		{Image: "i", Label: strings.Repeat("é", 257)},
		{},
		{Image: "i", Env: map[string]string{"": "x"}},
		{Image: "i", Price: &zero},
		{Image: "i", Disk: -1},
	}
	for i, req := range bad {
		if _, err := c.CreateInstance(testCtx(t), 1, req); err == nil {
			t.Errorf("request %d accepted", i)
		}
	}
	if _, err := c.CreateInstance(testCtx(t), 1, CreateRequest{Image: "i", Label: strings.Repeat("é", 256)}); err == nil {
		t.Error("a 256-character label must be sent (the fake answers {}, which is uncertain)")
	} else if !errors.Is(err, ErrCreateUncertain) {
		t.Errorf("err = %v", err)
	}
	if f.count() != 1 {
		t.Errorf("server saw %d requests, want 1", f.count())
	}
}

func TestCreateOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		respond   func(t *testing.T, w http.ResponseWriter, r *http.Request, n int)
		wantCalls int
		wantID    int64
		is        []error
		isNot     []error
		askID     int64
	}{
		{
			name: "429 then success is retried",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				if n == 1 {
					writeJSON(w, 429, string(fixture(t, "vast/docs_error_429_detail__openapi-create_instance.json")))
					return
				}
				writeJSON(w, 200, string(fixture(t, "gpushopper/create-instance-response.json")))
			},
			wantCalls: 2, wantID: 12345678,
		},
		{
			name: "429 plain text then success",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				if n == 1 {
					writeText(w, 429, "API requests too frequent")
					return
				}
				writeJSON(w, 200, `{"success": true, "new_contract": 77}`)
			},
			wantCalls: 2, wantID: 77,
		},
		{
			name: "success false with new_contract is tracked",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 200, `{"success": false, "new_contract": 4242, "msg": "bid"}`)
			},
			wantCalls: 1, wantID: 4242,
		},
		{
			name: "new_contract as string is tracked",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 200, `{"new_contract": "4243"}`)
			},
			wantCalls: 1, wantID: 4243,
		},
		{
			name: "non-2xx with new_contract is tracked",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 500, `{"success": false, "new_contract": 4244}`)
			},
			wantCalls: 1, wantID: 4244,
		},
		{
			name:      "502 is not retried",
			respond:   func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) { writeText(w, 502, "Bad Gateway") },
			wantCalls: 1, is: []error{ErrCreateUncertain, ErrServer},
		},
		{
			name: "503 is not retried",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 503, `{"detail": "busy"}`)
			},
			wantCalls: 1, is: []error{ErrCreateUncertain, ErrServer},
		},
		{
			name:      "500 is uncertain",
			respond:   func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) { writeText(w, 500, "") },
			wantCalls: 1, is: []error{ErrCreateUncertain, ErrServer},
		},
		{
			name:      "connection reset is uncertain",
			respond:   func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) { hangUp(t, w) },
			wantCalls: 1, is: []error{ErrCreateUncertain},
		},
		{
			name:      "unparseable 2xx is uncertain",
			respond:   func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, `{"success": tr`) },
			wantCalls: 1, is: []error{ErrCreateUncertain, ErrUnexpectedResponse},
		},
		{
			name: "2xx without new_contract is uncertain",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 200, `{"success": true}`)
			},
			wantCalls: 1, is: []error{ErrCreateUncertain},
		},
		{
			name: "success false without contract is a failure",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 200, `{"success": false, "error": "invalid_price", "msg": "bad price"}`)
			},
			wantCalls: 1, isNot: []error{ErrCreateUncertain},
		},
		{
			name: "no_such_ask as 400 invalid_args",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 400, string(fixture(t, "gpushopper/error-400-no_such_ask.json")))
			},
			wantCalls: 1, is: []error{ErrNoSuchAsk}, isNot: []error{ErrCreateUncertain, ErrNotFound}, askID: 29907796,
		},
		{
			name: "no_such_ask as 404",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 404, string(fixture(t, "vast/docsassembled_error_404_no_such_ask__openapi-create_instance.json")))
			},
			wantCalls: 1, is: []error{ErrNoSuchAsk}, isNot: []error{ErrCreateUncertain, ErrNotFound}, askID: 1234567,
		},
		{
			name: "no_such_ask as 410",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 410, string(fixture(t, "vast/docsassembled_error_410_no_such_ask__openapi-create_instance.json")))
			},
			wantCalls: 1, is: []error{ErrNoSuchAsk}, isNot: []error{ErrCreateUncertain, ErrDeprecated}, askID: 1234567,
		},
		{
			name: "no_such_ask as plain text",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeText(w, 404, "error 404/3603: no_such_ask gone")
			},
			wantCalls: 1, is: []error{ErrNoSuchAsk},
		},
		{
			name: "403 own offer",
			respond: func(t *testing.T, w http.ResponseWriter, r *http.Request, n int) {
				writeJSON(w, 403, `{"success": false, "error": "forbidden", "msg": "cannot rent your own machine"}`)
			},
			wantCalls: 1, isNot: []error{ErrCreateUncertain, ErrAuth, ErrNoSuchAsk},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, n int) { tt.respond(t, w, r, n) })
			c := newTestClient(t, testConfig(f.URL))
			res, err := c.CreateInstance(testCtx(t), 555, CreateRequest{Image: "img", Label: "lbl"})
			if got := f.count(); got != tt.wantCalls {
				t.Errorf("server saw %d requests, want %d", got, tt.wantCalls)
			}
			if tt.wantID != 0 {
				if err != nil || res == nil || res.InstanceID != tt.wantID {
					t.Fatalf("CreateInstance() = %+v, %v; want instance %d", res, err, tt.wantID)
				}
				return
			}
			if err == nil || res != nil {
				t.Fatalf("CreateInstance() = %+v, %v; want an error", res, err)
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("error %v does not match %v", err, target)
				}
			}
			for _, target := range tt.isNot {
				if errors.Is(err, target) {
					t.Errorf("error %v must not match %v", err, target)
				}
			}
			if tt.askID != 0 {
				var ae *APIError
				if !errors.As(err, &ae) || ae.AskID != tt.askID {
					t.Errorf("AskID: err = %#v", err)
				}
			}
		})
	}
}

func TestCreateTimeoutNotRetried(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		<-r.Context().Done() // never answers; the client's attempt times out
	})
	cfg := testConfig(f.URL)
	cfg.RequestTimeout = 100 * time.Millisecond
	c := newTestClient(t, cfg)
	_, err := c.CreateInstance(testCtx(t), 555, CreateRequest{Image: "img", Label: "lbl"})
	if !errors.Is(err, ErrCreateUncertain) {
		t.Fatalf("err = %v, want ErrCreateUncertain", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "request_timeout") {
		t.Errorf("err = %v, want the attempt timeout named", err)
	}
	if got := f.count(); got != 1 {
		t.Errorf("server saw %d requests, want exactly 1", got)
	}
}

func TestCreateCallerCancelInFlight(t *testing.T) {
	arrived := make(chan struct{})
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		close(arrived)
		<-r.Context().Done()
	})
	c := newTestClient(t, testConfig(f.URL))
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() { <-arrived; cancel() }()
	_, err := c.CreateInstance(ctx, 555, CreateRequest{Image: "img"})
	if !errors.Is(err, ErrCreateUncertain) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrCreateUncertain and context.Canceled", err)
	}
	if f.count() != 1 {
		t.Errorf("server saw %d requests", f.count())
	}
}

// A dial that fails before anything is written is the one transport failure
// create may retry.
func TestCreateRetriesDialFailure(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		writeJSON(w, 200, `{"success": true, "new_contract": 99, "instance_api_key": "k"}`)
	})
	var dials atomic.Int32
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	cfg := testConfig(f.URL)
	cfg.HTTPClient = &http.Client{Transport: tr}
	c := newTestClient(t, cfg)
	res, err := c.CreateInstance(testCtx(t), 555, CreateRequest{Image: "img"})
	if err != nil || res.InstanceID != 99 {
		t.Fatalf("CreateInstance() = %+v, %v", res, err)
	}
	if dials.Load() != 2 || f.count() != 1 {
		t.Errorf("dials=%d requests=%d, want 2 and 1", dials.Load(), f.count())
	}
}

func TestDestroyInstance(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		is     error
		code   string
		ok     bool
	}{
		{"success", 200, `{"success": true}`, nil, "", true},
		{"404 not_found", 404, `{"success": false, "error": "not_found", "msg": "Instance not found"}`, ErrNotFound, "not_found", false},
		{"success false", 200, `{"success": false, "msg": "could not destroy"}`, nil, "", false},
		{"auth", 404, `{"success": false, "error": "auth_error", "msg": "Invalid user key"}`, ErrAuth, "auth_error", false},
		{"garbage 200", 200, `ok`, ErrUnexpectedResponse, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
				if r.Method != http.MethodDelete || r.URL.Path != "/api/v0/instances/77/" || string(body) != "{}" {
					t.Errorf("request %s %s %q", r.Method, r.URL.Path, body)
				}
				writeJSON(w, tt.status, tt.body)
			})
			c := newTestClient(t, testConfig(f.URL))
			err := c.DestroyInstance(testCtx(t), 77)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			if tt.is != ErrUnexpectedResponse {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Code != tt.code || ae.Path != "/api/v0/instances/{id}/" || ae.Method != "DELETE" {
					t.Errorf("err = %#v", err)
				}
			}
		})
	}
}

func TestSetLabelAndState(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
		if r.Method != http.MethodPut {
			t.Errorf("method %s", r.Method)
		}
		if r.URL.Path == "/api/v0/instances/404/" {
			writeJSON(w, 404, `{"success": false, "error": "no_such_instance", "msg": "Instance 404 not found"}`)
			return
		}
		writeJSON(w, 200, string(fixture(t, "vast/docsassembled_label_success__openapi-label_instance.json")))
	})
	c := newTestClient(t, testConfig(f.URL))
	ctx := testCtx(t)
	if err := c.SetLabel(ctx, 12345, "My ML Training Job"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLabel(ctx, 12345, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLabel(ctx, 12345, strings.Repeat("x", 1024)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetState(ctx, 12345, StateRunning); err != nil {
		t.Fatal(err)
	}
	if err := c.SetState(ctx, 12345, StateStopped); err != nil {
		t.Fatal(err)
	}
	before := f.count()
	if err := c.SetLabel(ctx, 12345, strings.Repeat("x", 1025)); err == nil {
		t.Error("label of 1025 characters accepted")
	}
	for _, s := range []string{"", "destroyed", "Running", "frozen"} {
		if err := c.SetState(ctx, 12345, s); err == nil {
			t.Errorf("state %q accepted", s)
		}
	}
	if f.count() != before {
		t.Errorf("client-side validation failures sent requests")
	}
	if err := c.SetLabel(ctx, 404, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
	if err := c.SetState(ctx, 404, StateStopped); !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
	want := []string{`{"label":"My ML Training Job"}`, `{"label":""}`, "", `{"state":"running"}`, `{"state":"stopped"}`}
	for i, r := range f.requests()[:5] {
		if want[i] != "" && string(r.Body) != want[i] {
			t.Errorf("request %d body %s, want %s", i, r.Body, want[i])
		}
		if r.Path != "/api/v0/instances/12345/" {
			t.Errorf("request %d path %s", i, r.Path)
		}
	}
}

func TestCurrentUser(t *testing.T) {
	tests := []struct {
		name, body string
		status     int
		want       *User
		is         error
	}{
		{"fixture", string(fixture(t, "gpushopper/users-current-credit.json")), 200, &User{Credit: 42.5}, nil},
		{"strings", `{"id": "12", "email": " me@example.com ", "credit": "3.5", "balance": null}`, 200, &User{ID: 12, Email: "me@example.com", Credit: 3.5}, nil},
		{"auth", `{"success": false, "error": "auth_error", "msg": "Invalid user key"}`, 401, nil, ErrAuth},
		{"array", `[]`, 200, nil, ErrUnexpectedResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) { writeJSON(w, tt.status, tt.body) })
			c := newTestClient(t, testConfig(f.URL))
			u, err := c.CurrentUser(testCtx(t))
			if tt.want != nil {
				if err != nil || *u != *tt.want {
					t.Fatalf("CurrentUser() = %+v, %v; want %+v", u, err, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
		})
	}
}

// TestAPIKeyNeverLeaks uses a server that echoes the key back in every
// error shape it can, and checks errors and logs.
func TestAPIKeyNeverLeaks(t *testing.T) {
	key := "sk/live+" + testKey // a "/" lets the server escape it as "\/"
	echo := func(r *http.Request) string { return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") }
	shapes := []func(w http.ResponseWriter, r *http.Request){
		func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 404, fmt.Sprintf(`{"success": false, "error": "auth_error", "msg": "Invalid user key %s"}`, echo(r)))
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeText(w, 400, "bad key: "+echo(r)+"\nagain "+echo(r))
		},
		func(w http.ResponseWriter, r *http.Request) {
			escaped := strings.ReplaceAll(echo(r), "/", `\/`)
			writeJSON(w, 400, fmt.Sprintf(`{"error": "x_%s", "detail": [{"loc": "%s"}], "message": "m"}`, escaped, escaped))
		},
		func(w http.ResponseWriter, r *http.Request) {
			escaped := strings.ReplaceAll(echo(r), "s", `\u0073`)
			writeJSON(w, 200, fmt.Sprintf(`{"success": false, "msg": "key=%s"}`, escaped))
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeText(w, 503, strings.Repeat("x", 500)+echo(r))
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeText(w, 429, "too frequent for "+echo(r))
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, `not json `+echo(r))
		},
	}
	for i, shape := range shapes {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) { shape(w, r) })
			logger, logs := observedLogger()
			cfg := testConfig(f.URL)
			cfg.APIKey = key
			cfg.Logger = logger
			c := newTestClient(t, cfg)
			ctx := testCtx(t)
			var errs []error
			_, err := c.ListInstances(ctx, ListOptions{Label: "l"})
			errs = append(errs, err)
			_, err = c.ShowInstance(ctx, 1)
			errs = append(errs, err)
			_, err = c.CreateInstance(ctx, 1, CreateRequest{Image: "i"})
			errs = append(errs, err)
			errs = append(errs, c.DestroyInstance(ctx, 1))
			_, err = c.SearchOffers(ctx, OfferQuery{})
			errs = append(errs, err)
			for j, err := range errs {
				if err == nil {
					t.Fatalf("call %d succeeded", j)
				}
				if s := err.Error(); strings.Contains(s, key) || strings.Contains(s, testKey) {
					t.Errorf("call %d error leaks the key: %s", j, s)
				}
				var ae *APIError
				if errors.As(err, &ae) {
					for _, s := range []string{ae.Error(), ae.Body, ae.Msg, ae.Code, fmt.Sprintf("%+v", *ae)} {
						if strings.Contains(s, testKey) {
							t.Errorf("call %d APIError leaks the key: %q", j, s)
						}
					}
					if len(ae.Body) > 512 {
						t.Errorf("Body is %d bytes", len(ae.Body))
					}
				}
			}
			if all := logs.String(); strings.Contains(all, testKey) {
				t.Errorf("logs leak the key: %s", all)
			}
		})
	}

	// The raw excerpt shows where the key was.
	ae := parseAPIError("GET", "/p", 400, []byte("x "+key+" y"), key)
	if ae.Body != "x [REDACTED] y" {
		t.Errorf("Body = %q", ae.Body)
	}
}

func TestSearchOffers(t *testing.T) {
	var lastBody []byte
	respBody := ""
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v0/bundles/" {
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		}
		lastBody = body
		writeJSON(w, 200, respBody)
	})
	c := newTestClient(t, testConfig(f.URL))
	ctx := testCtx(t)

	// The documentation's example query.
	q := OfferQuery{
		Filters: map[string]map[string]any{
			"verified":          {"eq": true},
			"rentable":          {"eq": true},
			"gpu_name":          {"eq": "RTX 4090"},
			"num_gpus":          {"eq": 1},
			"direct_port_count": {"gte": 1},
		},
		Order: [][2]string{{"dlperf_per_dphtotal", "desc"}},
		Type:  "on-demand",
		Limit: 5,
	}
	respBody = `{"offers": [{"id": 1, "gpu_name": "RTX 4090", "dph_total": 0.4, "gpu_ram": 24564, "rentable": true}, {"id": null}, {"id": "2", "num_gpus": "2", "cuda_max_good": "12.4"}]}`
	offers, err := c.SearchOffers(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, lastBody, fixture(t, "vast/request_search_offers_body__hello-world.json")) {
		t.Errorf("body %s differs from the documentation's example", lastBody)
	}
	if len(offers) != 2 || offers[0].GPURAM != 24564 || !offers[0].Rentable || offers[1].NumGPUs != 2 || offers[1].CUDAMaxGood != 12.4 {
		t.Errorf("offers = %+v", offers)
	}

	// The documentation's response, where "offers" is an object.
	respBody = string(fixture(t, "vast/docs_search_offers_response_example__openapi-yaml.json"))
	offers, err = c.SearchOffers(ctx, OfferQuery{AllocatedStorage: 40, Order: [][2]string{{"dph_total", "asc"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := Offer{
		ID: 12345678, AskContractID: 12345678, MachineID: 88888, HostID: 55555,
		NumGPUs: 4, GPUName: "Imaginary RTX 9999", GPURAM: 24576, GPUTotalRAM: 49152,
		DPHTotal: 0.234567, DPHBase: 0.123456, MinBid: 0.111111, StorageCost: 0.987654,
		Reliability2: 0.9999, Verification: "verified", Geolocation: "Atlantis, AT",
		CUDAMaxGood: 11.2, DirectPortCount: 42, DiskSpace: 2048.5, InetUp: 8765.4, InetDown: 9876.5, Rentable: true,
	}
	if len(offers) != 1 || offers[0] != want {
		t.Errorf("offers = %+v\nwant %+v", offers, want)
	}
	if !jsonEqual(t, lastBody, []byte(`{"allocated_storage": 40, "order": [["dph_total", "asc"]]}`)) {
		t.Errorf("body %s", lastBody)
	}

	for _, body := range []string{`{"offers": null}`, `{"offers": []}`} {
		respBody = body
		offers, err = c.SearchOffers(ctx, OfferQuery{})
		if err != nil || offers == nil || len(offers) != 0 {
			t.Errorf("%s: offers=%v err=%v", body, offers, err)
		}
	}
	for _, body := range []string{`{"success": true}`, `{"offers": 3}`, `oops`, `{"success": false, "error": "bad_request", "msg": "q.gpu_name: Input should be a valid dictionary"}`} {
		respBody = body
		if offers, err := c.SearchOffers(ctx, OfferQuery{}); err == nil {
			t.Errorf("%s: offers=%v, want an error", body, offers)
		}
	}

	n := f.count()
	for _, bad := range []OfferQuery{
		{Filters: map[string]map[string]any{"type": {"eq": "x"}}},
		{Filters: map[string]map[string]any{"gpu_name": {}}},
		{Filters: map[string]map[string]any{"": {"eq": 1}}},
	} {
		if _, err := c.SearchOffers(ctx, bad); err == nil {
			t.Errorf("query %+v accepted", bad)
		}
	}
	if f.count() != n {
		t.Error("invalid queries were sent")
	}
}

func TestPathPrefixKept(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		if r.URL.Path != "/proxy/api/v0/users/current/" {
			t.Errorf("path %s", r.URL.Path)
		}
		writeJSON(w, 200, `{"id": 1}`)
	})
	u, _ := url.JoinPath(f.URL, "proxy/")
	c := newTestClient(t, testConfig(u))
	if _, err := c.CurrentUser(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}
