package adminapi

import (
	"encoding/json"
	"testing"
	"time"
)

// TestEncodingOrder pins the field names, omitempty and order of what the
// server encodes: clients and scripts read these bodies.
func TestEncodingOrder(t *testing.T) {
	rate := 1.5
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"zero instance", Instance{},
			`{"id":0,"pool":null,"label":"","actual_status":null,"upstream":null,"routable":false,"state":"","state_since":null,"ready":false,"last_probe":null,"gpu_name":"","num_gpus":0,"dph_total":0,"accrued_dollars":0,"first_seen":"0001-01-01T00:00:00Z","last_seen":"0001-01-01T00:00:00Z","missed_listings":0,"in_flight":null,"requests_total":null,"engine":null}`},
		{"instance with probe and ssh", Instance{ID: 7, LastProbe: &Probe{Time: at, Status: 200, OK: true}, SSH: &SSH{Path: "direct"}, GPUs: []GPU{{CollectedAt: at}}},
			`{"id":7,"pool":null,"label":"","actual_status":null,"upstream":null,"routable":false,"state":"","state_since":null,"ready":false,"last_probe":{"time":"2026-01-02T03:04:05Z","status":200,"latency_ms":0,"ok":true},"gpus":[{"index":0,"uuid":"","name":"","utilization_gpu":null,"utilization_memory":null,"memory_used_mib":null,"memory_total_mib":null,"temperature_c":null,"power_draw_w":null,"power_limit_w":null,"collected_at":"2026-01-02T03:04:05Z"}],"ssh":{"path":"direct","reconnects":0},"gpu_name":"","num_gpus":0,"dph_total":0,"accrued_dollars":0,"first_seen":"0001-01-01T00:00:00Z","last_seen":"0001-01-01T00:00:00Z","missed_listings":0,"in_flight":null,"requests_total":null,"engine":null}`},
		{"pool", Pool{Name: "llm", Port: 8000, Members: []int64{}, Routable: []int64{}, States: map[string]int{}, SpendRate: rate, SpendPerHour: &rate},
			`{"name":"llm","port":8000,"members":[],"routable":[],"states":{},"spend_rate_dollars_per_hour":1.5,"spend_per_hour":1.5,"accrued_dollars":0}`},
		{"status", Status{Generation: 3, SpendPerHour: &rate},
			`{"generation":3,"last_success":null,"last_attempt":null,"listing_ok":false,"never_succeeded":false,"auth_error":false,"consecutive_failures":0,"stale_seconds":0,"listing_seconds":null,"listing_pages":0,"listing_labels":null,"data_age_seconds":null,"skipped_rows":0,"instances":0,"watchers_running":0,"spend_per_hour":1.5}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("encoding\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestDecodeOlderGateway: figures an older gateway lacks decode as absent.
func TestDecodeOlderGateway(t *testing.T) {
	var st Status
	if err := json.Unmarshal([]byte(`{"generation":2}`), &st); err != nil {
		t.Fatal(err)
	}
	if st.SpendPerHour != nil || st.Generation != 2 {
		t.Errorf("status %+v: want generation 2 and no spend_per_hour", st)
	}
	var in Instance
	if err := json.Unmarshal([]byte(`{"id":5,"pool":"llm"}`), &in); err != nil {
		t.Fatal(err)
	}
	if in.PoolName() != "llm" || (&Instance{}).PoolName() != "" {
		t.Errorf("PoolName %q, want llm", in.PoolName())
	}
}
