package vastclient

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// showFixture decodes the object under "instances" in a show fixture.
func showFixture(t *testing.T, name string) Instance {
	t.Helper()
	var wrapped struct {
		Instances Instance `json:"instances"`
	}
	if err := json.Unmarshal(fixture(t, name), &wrapped); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return wrapped.Instances
}

func instanceFixture(t *testing.T, name string) Instance {
	t.Helper()
	var in Instance
	if err := json.Unmarshal(fixture(t, name), &in); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return in
}

func TestPortsHostPort(t *testing.T) {
	dual := instanceFixture(t, "local/instance_dualstack_running.json")
	odd := instanceFixture(t, "local/instance_odd_types.json")
	wrapped := showFixture(t, "gpushopper/get-instance-wrapped-with-ports.json")
	docs := showFixture(t, "vast/docs_show_instance_example_id883__docs-openapi-via-utopia-scala.json")

	decode := func(s string) Ports {
		var p Ports
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			t.Fatalf("Ports.UnmarshalJSON(%s) = %v; it must never fail", s, err)
		}
		return p
	}

	tests := []struct {
		name   string
		ports  Ports
		port   int
		proto  string
		want   int
		wantOK bool
	}{
		{"dual-stack, IPv6 listed first", dual.Ports, 8000, "tcp", 41022, true},
		{"dual-stack, IPv4 first", dual.Ports, 22, "", 41019, true},
		{"port not mapped", dual.Ports, 8080, "tcp", 0, false},
		{"HostPort as string (capture)", wrapped.Ports, 8000, "tcp", 33526, true},
		{"second port (capture)", wrapped.Ports, 8080, "tcp", 44100, true},
		{"HostPort as number", odd.Ports, 8000, "tcp", 41022, true},
		{"HostPort empty", odd.Ports, 9000, "tcp", 0, false},
		{"bindings null", odd.Ports, 7000, "tcp", 0, false},
		{"ports as list (docs bug)", docs.Ports, 8080, "tcp", 0, false},
		{"null", decode(`null`), 8000, "tcp", 0, false},
		{"empty object", decode(`{}`), 8000, "tcp", 0, false},
		{"IPv6 only", decode(`{"8000/tcp": [{"HostIp": "::", "HostPort": "5000"}]}`), 8000, "tcp", 5000, true},
		{"invalid ports skipped", decode(`{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "0"}, {"HostIp": "0.0.0.0", "HostPort": "70000"}, {"HostIp": "0.0.0.0", "HostPort": "x"}, {"HostIp": "::", "HostPort": " 6000 "}]}`), 8000, "tcp", 6000, true},
		{"udp", decode(`{"8000/udp": [{"HostIp": "0.0.0.0", "HostPort": "7000"}]}`), 8000, "udp", 7000, true},
		{"udp is not tcp", decode(`{"8000/udp": [{"HostIp": "0.0.0.0", "HostPort": "7000"}]}`), 8000, "tcp", 0, false},
		{"no HostIp", decode(`{"8000/tcp": [{"HostPort": 7001}]}`), 8000, "tcp", 7001, true},
		{"garbage value", decode(`{"8000/tcp": "41022"}`), 8000, "tcp", 0, false},
		{"ports as string", decode(`"8000/http"`), 8000, "tcp", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.ports.HostPort(tt.port, tt.proto)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("HostPort(%d, %q) = %d, %v; want %d, %v", tt.port, tt.proto, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestEnvDecoding(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want Env
		vars []string
	}{
		{"pairs (real API)", `[["VLLM_ARGS","--port 8000"],["-p 8000:8000","1"]]`, Env{"VLLM_ARGS": "--port 8000", "-p 8000:8000": "1"}, []string{"VLLM_ARGS"}},
		{"fixture list_generic", string(fixture(t, "vastproxy/extra_env__list_generic.json")), Env{"KEY1": "val1", "KEY2": "val2"}, []string{"KEY1", "KEY2"}},
		{"fixture list_sglang", string(fixture(t, "vastproxy/extra_env__list_sglang_port7777.json")), Env{"SGLANG_ARGS": "--port 7777"}, []string{"SGLANG_ARGS"}},
		{"fixture short pair", string(fixture(t, "vastproxy/extra_env__list_short_pair.json")), Env{"K": "V"}, []string{"K"}},
		{"fixture empty key", string(fixture(t, "vastproxy/extra_env__list_empty_key.json")), Env{"GOOD": "ok"}, []string{"GOOD"}},
		{"fixture flag entry", string(fixture(t, "vastproxy/extra_env__list_with_flag_entry.json")), Env{"-flag": "val", "KEY": "val"}, []string{"KEY"}},
		{"fixture object (CLI form)", string(fixture(t, "vastproxy/extra_env__dict_generic.json")), Env{"FOO": "bar", "BAZ": "qux"}, []string{"BAZ", "FOO"}},
		{"fixture object vllm", string(fixture(t, "vastproxy/extra_env__dict_vllm_model_only.json")), Env{"VLLM_MODEL": "meta-llama/Llama-3-8B"}, []string{"VLLM_MODEL"}},
		{"fixture object both engines", string(fixture(t, "vastproxy/extra_env__dict_sglang8000_and_vllm9000.json")), Env{"SGLANG_ARGS": "--port 8000", "VLLM_ARGS": "--port 9000"}, []string{"SGLANG_ARGS", "VLLM_ARGS"}},
		{"object with number and empty key", `{"N": 3, "": "x", "S": "s"}`, Env{"N": "3", "S": "s"}, []string{"N", "S"}},
		{"pair with number value and extra element", `[["N", 3], ["A", "b", "c"], [1, "x"], "str", null]`, Env{"N": "3", "A": "b"}, []string{"A", "N"}},
		{"empty list", `[]`, Env{}, []string{}},
		{"null", `null`, nil, []string{}},
		{"string", `"FOO=bar"`, nil, []string{}},
		{"number", `42`, nil, []string{}},
		{"broken", `[["A"`, nil, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Env
			if err := json.Unmarshal([]byte(tt.raw), &e); err != nil {
				// Only syntactically broken JSON may fail, and then only
				// in json.Unmarshal's own validation, never in Env.
				if json.Valid([]byte(tt.raw)) {
					t.Fatalf("Env decode failed: %v", err)
				}
				if err := e.UnmarshalJSON([]byte(tt.raw)); err != nil {
					t.Fatalf("Env.UnmarshalJSON failed: %v", err)
				}
			}
			if !reflect.DeepEqual(e, tt.want) {
				t.Errorf("Env = %#v, want %#v", e, tt.want)
			}
			if got := e.Vars(); !reflect.DeepEqual(got, tt.vars) {
				t.Errorf("Vars() = %v, want %v", got, tt.vars)
			}
		})
	}
}

func TestInstanceDecodingFixtures(t *testing.T) {
	dual := instanceFixture(t, "local/instance_dualstack_running.json")
	if dual.ID != 4242001 || dual.ExtraEnv["WEB_PASSWORD"] != "abc123" || dual.ExtraEnv["-p 8000:8000"] != "1" ||
		dual.JupyterToken == "" || dual.GPUUtil != nil || dual.GPURAM != 24564 || dual.ImageRuntype != "ssh ssh_direc ssh_proxy" {
		t.Errorf("dual-stack instance = %+v", dual)
	}
	if b, _ := json.Marshal(dual); strings.Contains(string(b), dual.JupyterToken) {
		t.Errorf("JupyterToken is encoded: %s", b)
	}

	odd := instanceFixture(t, "local/instance_odd_types.json")
	if odd.ID != 4242002 || odd.Label != "padded" || odd.SSHPort != 30118 || odd.NumGPUs != 2 ||
		odd.DPHTotal != 0.5 || odd.GPUUtil == nil || *odd.GPUUtil != 87.5 || !odd.IsBid || odd.ActualStatus != "" {
		t.Errorf("odd instance = %+v", odd)
	}
	if !reflect.DeepEqual(odd.ExtraEnv, Env{"FOO": "bar", "N": "3"}) {
		t.Errorf("odd env = %#v", odd.ExtraEnv)
	}

	docs := showFixture(t, "vast/docs_show_instance_example_id883__docs-openapi-via-utopia-scala.json")
	if docs.ID != 883 || docs.GPUUtil != nil || docs.GPUTemp != nil || docs.ExtraEnv == nil || len(docs.ExtraEnv) != 0 {
		t.Errorf("docs instance = %+v", docs)
	}

	for _, raw := range []string{`{"id": null}`, `{}`, `{"id": "x"}`, `{"id": 0}`, `{"id": 1.5}`, `{"id": -4}`, `{"id": 1e300}`} {
		var in Instance
		if err := json.Unmarshal([]byte(raw), &in); err != nil {
			t.Errorf("%s: %v", raw, err)
		}
		if in.Valid() {
			t.Errorf("%s decoded as valid (id %d)", raw, in.ID)
		}
	}
	var in Instance
	if err := json.Unmarshal([]byte(`[1]`), &in); err == nil {
		t.Error("a non-object decoded as an instance")
	}
}
