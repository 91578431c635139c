package gpumetrics

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

// vastproxyFields is shutej/vastproxy's query.
var vastproxyFields = []string{"utilization.gpu", "temperature.gpu"}

// gpushopperFields is cloud-gpu-shopper's query.
var gpushopperFields = []string{"name", "memory.used", "memory.total", "utilization.gpu", "temperature.gpu", "power.draw"}

func TestParseFieldsFixtures(t *testing.T) {
	tests := []struct {
		file       string
		fields     []string
		strip      bool
		want       []GPU
		wantErr    bool
		wantNoGPUs bool
		wantLines  []int // lines reported malformed
	}{
		{file: "nvidia_smi__gpu_test_normal.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(98), f(73))}},
		{file: "nvidia_smi__gpu_test_with_whitespace.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(42), f(65))}},
		{file: "nvidia_smi__gpu_test_zero_values.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(0), f(0))}},
		{file: "nvidia_smi__gpu_test_decimal_values.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(55.5), f(72.3))}},
		{file: "nvidia_smi__gpu_test_multi_gpu_3.txt", fields: vastproxyFields, want: []GPU{
			utilTemp(0, f(98), f(73)), utilTemp(1, f(45), f(60)), utilTemp(2, f(12), f(55)),
		}},
		{file: "nvidia_smi__gpu_test_multi_gpu_blank_line.txt", fields: vastproxyFields, want: []GPU{
			utilTemp(0, f(98), f(73)), utilTemp(1, f(45), f(60)),
		}},
		{file: "nvidia_smi__backend_test_FetchGPUMetrics.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(85), f(72))}},
		{file: "nvidia_smi__backend_test_GPUMetrics_loop.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(92), f(68))}},
		{file: "nvidia_smi__backend_test_health_loop.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(50), f(60))}},
		// vastproxy rejects these; here a non-numeric value is an unknown
		// reading, not a failed sample (its bug B4).
		{file: "nvidia_smi__gpu_test_non_numeric__ERR.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, nil, nil)}},
		{file: "nvidia_smi__gpu_test_first_non_numeric__ERR.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, nil, f(73))}},
		{file: "nvidia_smi__gpu_test_second_non_numeric__ERR.txt", fields: vastproxyFields, want: []GPU{utilTemp(0, f(73), nil)}},
		{file: "nvidia_smi__gpu_test_empty__ERR.txt", fields: vastproxyFields, wantErr: true, wantNoGPUs: true},
		{file: "nvidia_smi__gpu_test_whitespace_only__ERR.txt", fields: vastproxyFields, wantErr: true, wantNoGPUs: true},
		{file: "nvidia_smi__gpu_test_single_value__ERR.txt", fields: vastproxyFields, wantErr: true, wantNoGPUs: true, wantLines: []int{1}},
		{file: "nvidia-smi-query-csv.txt", fields: gpushopperFields, strip: true, want: []GPU{
			{Index: 0, Name: "NVIDIA GeForce RTX 4090", MemoryUsedMiB: f(1234), MemoryTotalMiB: f(24576), UtilizationGPU: f(45), TemperatureC: f(65), PowerDrawW: f(250)},
			{Index: 1, Name: "NVIDIA A100", MemoryUsedMiB: f(0), MemoryTotalMiB: f(81920), UtilizationGPU: nil, TemperatureC: f(35), PowerDrawW: nil},
		}},
		// Unstripped, the annotation line is malformed (8 comma-separated
		// fields): the two GPUs still parse, with an error naming line 1.
		{file: "nvidia-smi-query-csv.txt", fields: gpushopperFields, wantErr: true, wantLines: []int{1}, want: []GPU{
			{Index: 0, Name: "NVIDIA GeForce RTX 4090", MemoryUsedMiB: f(1234), MemoryTotalMiB: f(24576), UtilizationGPU: f(45), TemperatureC: f(65), PowerDrawW: f(250)},
			{Index: 1, Name: "NVIDIA A100", MemoryUsedMiB: f(0), MemoryTotalMiB: f(81920), UtilizationGPU: nil, TemperatureC: f(35), PowerDrawW: nil},
		}},
		// The plain nvidia-smi table is the output of the wrong command.
		{file: "nvidia-smi-full-rtx4090.txt", fields: QueryFields, wantErr: true, wantNoGPUs: true, wantLines: []int{1, 2, 3, 4, 5, 6, 7, 8}},
		{file: "query_full_3gpu.txt", fields: QueryFields, want: []GPU{
			{Index: 0, UUID: "GPU-3f1c2a9e-0b7d-4c1e-9a55-1d2e3f4a5b6c", Name: "NVIDIA H100 80GB HBM3",
				UtilizationGPU: f(87), UtilizationMemory: f(42), MemoryUsedMiB: f(61234), MemoryTotalMiB: f(81559),
				TemperatureC: f(64), PowerDrawW: f(512.31), PowerLimitW: f(700)},
			{Index: 1, UUID: "GPU-8a7b6c5d-4e3f-2a1b-0c9d-8e7f6a5b4c3d", Name: "NVIDIA A100-SXM4-80GB",
				MemoryUsedMiB: f(0), MemoryTotalMiB: f(81920), TemperatureC: f(35), PowerDrawW: f(61.02), PowerLimitW: f(400)},
			{Index: 2, UUID: "GPU-00000000-1111-2222-3333-444444444444", Name: "NVIDIA GeForce RTX 4090",
				UtilizationGPU: f(3), UtilizationMemory: f(1), MemoryUsedMiB: f(1), MemoryTotalMiB: f(24564)},
		}},
	}
	for _, tt := range tests {
		name := tt.file
		if tt.strip {
			name += "/stripped"
		}
		t.Run(name, func(t *testing.T) {
			in := readFixture(t, tt.file)
			if tt.strip {
				in = stripAnnotations(in)
			}
			got, err := ParseFields(in, tt.fields)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if errors.Is(err, ErrNoGPUs) != tt.wantNoGPUs {
				t.Errorf("errors.Is(err, ErrNoGPUs) = %v, want %v (err %v)", !tt.wantNoGPUs, tt.wantNoGPUs, err)
			}
			checkLineErrors(t, err, tt.wantLines)
			assertGPUs(t, got, tt.want)
		})
	}
}

func TestParseInline(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      []GPU
		wantErr   bool
		wantLines []int
	}{
		{
			name: "CRLF and surrounding whitespace",
			in:   "\r\n  0, GPU-a, Tesla T4, 10, 5, 100, 15360, 40, 27.5, 70 \r\n\t\n",
			want: []GPU{{Index: 0, UUID: "GPU-a", Name: "Tesla T4", UtilizationGPU: f(10), UtilizationMemory: f(5),
				MemoryUsedMiB: f(100), MemoryTotalMiB: f(15360), TemperatureC: f(40), PowerDrawW: f(27.5), PowerLimitW: f(70)}},
		},
		{
			name: "units left in are tolerated",
			in:   "3, GPU-b, L4, 50 %, 20 %, 1000 MiB, 23034 MiB, 55, 30.1 W, 72.0 W\n",
			want: []GPU{{Index: 3, UUID: "GPU-b", Name: "L4", UtilizationGPU: f(50), UtilizationMemory: f(20),
				MemoryUsedMiB: f(1000), MemoryTotalMiB: f(23034), TemperatureC: f(55), PowerDrawW: f(30.1), PowerLimitW: f(72)}},
		},
		{
			name: "non-finite and odd numbers are unknown",
			in:   "0, u, n, NaN, Inf, -Inf, 0x10, 1_0, , +Infinity\n",
			want: []GPU{{Index: 0, UUID: "u", Name: "n"}},
		},
		{
			name:      "one bad line among good ones",
			in:        "0, u0, n0, 1, 2, 3, 4, 5, 6, 7\n1, u1, truncated\n2, u2, n2, 1, 2, 3, 4, 5, 6, 7\n",
			wantErr:   true,
			wantLines: []int{2},
			want: []GPU{
				{Index: 0, UUID: "u0", Name: "n0", UtilizationGPU: f(1), UtilizationMemory: f(2), MemoryUsedMiB: f(3), MemoryTotalMiB: f(4), TemperatureC: f(5), PowerDrawW: f(6), PowerLimitW: f(7)},
				{Index: 2, UUID: "u2", Name: "n2", UtilizationGPU: f(1), UtilizationMemory: f(2), MemoryUsedMiB: f(3), MemoryTotalMiB: f(4), TemperatureC: f(5), PowerDrawW: f(6), PowerLimitW: f(7)},
			},
		},
		{
			name: "unparsable index falls back to position",
			in:   "[N/A], u, n, 1, 2, 3, 4, 5, 6, 7\n",
			want: []GPU{{Index: 0, UUID: "u", Name: "n", UtilizationGPU: f(1), UtilizationMemory: f(2), MemoryUsedMiB: f(3), MemoryTotalMiB: f(4), TemperatureC: f(5), PowerDrawW: f(6), PowerLimitW: f(7)}},
		},
		{
			name:    "nvidia-smi failure message",
			in:      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n",
			wantErr: true, wantLines: []int{1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			checkLineErrors(t, err, tt.wantLines)
			assertGPUs(t, got, tt.want)
		})
	}
}

func TestParseManyGPUsAndManyBadLines(t *testing.T) {
	var b strings.Builder
	for i := range 64 {
		b.WriteString(strings.Repeat("x", i%3) + "garbage\n")
		b.WriteString("7, u, n, 1, 2, 3, 4, 5, 6, 7\n")
	}
	got, err := Parse([]byte(b.String()))
	if len(got) != 64 {
		t.Fatalf("got %d GPUs, want 64", len(got))
	}
	if !errors.Is(err, ErrMalformedLine) || errors.Is(err, ErrNoGPUs) {
		t.Fatalf("err = %v", err)
	}
	// The error stays short however many lines are bad.
	if len(err.Error()) > 2000 {
		t.Errorf("error is %d bytes long", len(err.Error()))
	}
}

func TestParseFieldsNoFields(t *testing.T) {
	if _, err := ParseFields([]byte("1\n"), nil); err == nil {
		t.Fatal("no error for an empty field list")
	}
}

func TestGPUJSONNullForUnknown(t *testing.T) {
	got, err := ParseFields([]byte("[N/A], 61\n"), vastproxyFields)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"index":0,"uuid":"","name":"","utilization_gpu":null,"utilization_memory":null,"memory_used_mib":null,"memory_total_mib":null,"temperature_c":61,"power_draw_w":null,"power_limit_w":null}`
	if g := mustJSON(got[0]); g != want {
		t.Errorf("JSON:\n got  %s\n want %s", g, want)
	}
}

func TestQueryMatchesQueryFields(t *testing.T) {
	want := "--query-gpu=" + strings.Join(QueryFields, ",") + " "
	if !strings.Contains(Query, want) {
		t.Errorf("Query %q does not query QueryFields %v", Query, QueryFields)
	}
}

func FuzzParse(f *testing.F) {
	entries, err := os.ReadDir("testdata")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".txt") {
			f.Add(readFixture(f, e.Name()), uint8(0))
			f.Add(readFixture(f, e.Name()), uint8(1))
		}
	}
	f.Add([]byte("0, u, n, [N/A], [Not Supported], 1, 2, 3, 4.5, 1e400\n\n"), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, which uint8) {
		fields := QueryFields
		if which%2 == 1 {
			fields = vastproxyFields
		}
		gpus, err := ParseFields(in, fields)
		if len(gpus) == 0 && err == nil {
			t.Fatal("no GPUs and no error")
		}
		// Every result must be encodable: no NaN or Inf slips through.
		if _, jerr := json.Marshal(gpus); jerr != nil {
			t.Fatalf("JSON: %v", jerr)
		}
		if err != nil {
			_ = err.Error()
		}
	})
}
