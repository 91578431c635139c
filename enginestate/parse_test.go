package enginestate

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParse(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name    string
		body    string // inline page, or "@file" for a fixture
		ok      bool
		want    State
		wantErr bool
	}{
		{name: "vLLM V1 with two DP engines sums counts, averages KV", body: "@vllm_v1_dp2.txt", ok: true,
			want: State{Engine: EngineVLLM, Waiting: 4, Running: 12, KVCacheUse: 0.4}},
		{name: "vLLM legacy falls back to gpu_cache_usage_perc", body: "@vllm_legacy.txt", ok: true,
			want: State{Engine: EngineVLLM, Waiting: 0, Running: 2, KVCacheUse: 0.12}},
		{name: "vLLM with both KV names prefers kv_cache_usage_perc", body: "@vllm_both_kv.txt", ok: true,
			want: State{Engine: EngineVLLM, Waiting: 0, Running: 1, KVCacheUse: 0.25}},
		{name: "SGLang sums tp ranks", body: "@sglang_tp2.txt", ok: true,
			want: State{Engine: EngineSGLang, Waiting: 6, Running: 18, KVCacheUse: 0.42}},
		{name: "TGI has no KV figure", body: "@tgi.txt", ok: true,
			want: State{Engine: EngineTGI, Waiting: 6, Running: 32, KVCacheUse: nan}},
		{name: "a page of no engine is not ok", body: "@caddy_only.txt", ok: false},
		{name: "empty page is not ok", body: "", ok: false},
		{name: "untyped samples without HELP/TYPE", ok: true,
			body: "vllm:num_requests_waiting{engine=\"0\"} 2\nvllm:num_requests_running{engine=\"0\"} 1\n",
			want: State{Engine: EngineVLLM, Waiting: 2, Running: 1, KVCacheUse: nan}},
		{name: "waiting only: running is 0", ok: true,
			body: "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs 3\n",
			want: State{Engine: EngineSGLang, Waiting: 3, KVCacheUse: nan}},
		{name: "NaN and negative samples are ignored or clamped", ok: true,
			body: "vllm:num_requests_waiting{engine=\"0\"} NaN\nvllm:num_requests_waiting{engine=\"1\"} -2\n" +
				"vllm:num_requests_running -1\nvllm:kv_cache_usage_perc 1.7\n",
			want: State{Engine: EngineVLLM, Waiting: 0, Running: 0, KVCacheUse: 1}},
		{name: "only NaN waiting is unreadable", ok: false, body: "vllm:num_requests_waiting NaN\n"},
		{name: "quoted UTF-8 metric names", ok: true,
			body: "{\"vllm:num_requests_waiting\",engine=\"0\"} 5\n",
			want: State{Engine: EngineVLLM, Waiting: 5, KVCacheUse: nan}},
		{name: "malformed line is an error", body: "vllm:num_requests_waiting{engine=\"0\" 5\n", wantErr: true},
		// expfmt v0.71.0 dereferences a nil metric here (found by FuzzParse):
		// an engine must not be able to crash the gateway with its page.
		{name: "parser panic on a nameless sample after TYPE is an error", body: "# TYPE a counter\n{}", wantErr: true},
		{name: "conflicting TYPE is an error", body: "# TYPE x gauge\n# TYPE x counter\nx 1\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			if f, ok := strings.CutPrefix(tc.body, "@"); ok {
				body = fixture(t, f)
			}
			st, ok, err := Parse(bytes.NewReader(body))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (state %+v)", ok, tc.ok, st)
			}
			if !ok {
				return
			}
			if st.Engine != tc.want.Engine || st.Waiting != tc.want.Waiting || st.Running != tc.want.Running {
				t.Errorf("got %+v, want %+v", st, tc.want)
			}
			if math.IsNaN(tc.want.KVCacheUse) {
				if st.HasKVCacheUse() {
					t.Errorf("KVCacheUse = %v, want unknown", st.KVCacheUse)
				}
			} else if math.Abs(st.KVCacheUse-tc.want.KVCacheUse) > 1e-9 {
				t.Errorf("KVCacheUse = %v, want %v", st.KVCacheUse, tc.want.KVCacheUse)
			}
		})
	}
}

func TestParseBodyBound(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("vllm:num_requests_waiting 1\n")
	for b.Len() < 2048 {
		b.WriteString("# filler comment line of an oversized page\n")
	}
	if _, _, err := ParseLimit(bytes.NewReader(b.Bytes()), 1024); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("err = %v, want ErrBodyTooLarge", err)
	}
	st, ok, err := ParseLimit(bytes.NewReader(b.Bytes()), int64(b.Len()))
	if err != nil || !ok || st.Waiting != 1 {
		t.Fatalf("page of exactly the limit: %+v %v %v", st, ok, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"vllm_v1_dp2.txt", "vllm_legacy.txt", "sglang_tp2.txt", "tgi.txt", "caddy_only.txt"} {
		f.Add(fixture(f, name))
	}
	f.Add([]byte("vllm:num_requests_waiting{engine=\"0\"} +Inf\n"))
	f.Add([]byte("{\"sglang:num_queue_reqs\"} 1e308\nsglang:token_usage -0\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		st, ok, err := ParseLimit(bytes.NewReader(body), 1<<16)
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
		if !ok {
			return
		}
		if st.Engine != EngineVLLM && st.Engine != EngineSGLang && st.Engine != EngineTGI {
			t.Fatalf("engine %q", st.Engine)
		}
		if !(st.Waiting >= 0) || !(st.Running >= 0) || math.IsInf(st.Waiting, 0) || math.IsInf(st.Running, 0) {
			t.Fatalf("negative, NaN or infinite counts: %+v", st)
		}
		if st.HasKVCacheUse() && (st.KVCacheUse < 0 || st.KVCacheUse > 1) {
			t.Fatalf("KV use out of range: %v", st.KVCacheUse)
		}
	})
}
