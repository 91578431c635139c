package vastsim

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func controlDo(t *testing.T, base, method, path, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func apiListStatus(t *testing.T, base string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/instances/", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestControlEndpointsDriveTheSimulator(t *testing.T) {
	s := New(Options{APIKey: "k"})
	defer s.Close()
	base, err := s.Start("")
	if err != nil {
		t.Fatal(err)
	}
	code, body := controlDo(t, base, http.MethodPost, "/_sim/instances", `{"label":"llm-9","dph":0.5}`)
	var inst controlInstance
	if code != http.StatusOK || json.Unmarshal([]byte(body), &inst) != nil || inst.ID == 0 || inst.ActualStatus != "running" {
		t.Fatalf("launch: %d %s", code, body)
	}
	if strings.Contains(body, "token") {
		t.Fatalf("the control view carries a token: %s", body)
	}
	id := "/_sim/instances/" + strconv.FormatInt(inst.ID, 10)
	hung := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.instances[inst.ID].hung }
	ready := func() *bool { s.mu.Lock(); defer s.mu.Unlock(); return s.instances[inst.ID].readyOverride }
	status := func() string {
		for _, in := range s.Instances() {
			if in.ID == inst.ID {
				return in.ActualStatus
			}
		}
		return "?"
	}
	steps := []struct {
		method, path, body string
		wantCode           int
		check              func() bool
	}{
		{"POST", id + "/hang", "", 200, func() bool { return hung() }},
		{"POST", id + "/unready", "", 200, func() bool { r := ready(); return r != nil && !*r }},
		{"POST", id + "/recover", "", 200, func() bool { r := ready(); return !hung() && r != nil && *r && status() == "running" }},
		{"POST", id + "/exit", "", 200, func() bool { return status() == "exited" }},
		{"POST", id + "/status", `{"status":"offline"}`, 200, func() bool { return status() == "offline" }},
		{"POST", id + "/recover", "", 200, func() bool { return status() == "running" }},
		{"POST", id + "/kill", "", 200, func() bool { return !s.controlInstance(inst.ID).EngineUp && status() == "running" }},
		{"PUT", "/_sim/faults", `{"status":503}`, 200, func() bool { return apiListStatus(t, base) == 503 }},
		{"PUT", "/_sim/faults", `{"rate_limit":true,"count":1}`, 200, func() bool {
			return apiListStatus(t, base) == 429 && apiListStatus(t, base) == 200
		}},
		{"PUT", "/_sim/faults", `{"latency":"soon"}`, 400, func() bool { return true }},
		{"PUT", "/_sim/faults", `{"stauts":500}`, 400, func() bool { return apiListStatus(t, base) == 200 }},
		{"PUT", "/_sim/faults", `{"status":500}`, 200, func() bool { return apiListStatus(t, base) == 500 }},
		{"DELETE", "/_sim/faults", "", 200, func() bool { return apiListStatus(t, base) == 200 }},
		{"POST", "/_sim/instances/999999/hang", "", 404, func() bool { return true }},
		{"POST", id + "/explode", "", 404, func() bool { return true }},
		{"GET", id + "/hang", "", 405, func() bool { return true }},
		{"DELETE", id, "", 200, func() bool { return s.controlInstance(inst.ID).Destroyed }},
	}
	for _, st := range steps {
		code, body := controlDo(t, base, st.method, st.path, st.body)
		if code != st.wantCode {
			t.Fatalf("%s %s %s: %d %s, want %d", st.method, st.path, st.body, code, body, st.wantCode)
		}
		if !st.check() {
			t.Fatalf("%s %s %s: answered %d %s but had no effect", st.method, st.path, st.body, code, body)
		}
	}
	// Errors name the field.
	if _, body := controlDo(t, base, "PUT", "/_sim/faults", `{"latency":"soon"}`); !strings.Contains(body, "latency") {
		t.Errorf("bad latency answer does not name the field: %s", body)
	}
	if _, body := controlDo(t, base, "PUT", "/_sim/faults", `{"stauts":500}`); !strings.Contains(body, "stauts") {
		t.Errorf("unknown field answer does not name it: %s", body)
	}
	// The listing and its billing.
	code, body = controlDo(t, base, "GET", "/_sim/instances", "")
	var list []controlInstance
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].Billing.Dollars <= 0 || list[0].Billing.RatePerHour != 0 {
		t.Fatalf("GET /_sim/instances: %d %s", code, body)
	}
	// Control calls are not API calls: they bypass faults and the call log.
	for _, c := range s.APICalls() {
		if strings.HasPrefix(c.Path, ControlPrefix) {
			t.Fatalf("control call logged as an API call: %+v", c)
		}
	}
}
