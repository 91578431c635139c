package vastclient

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// countingTransport counts the response bytes read through it.
type countingTransport struct {
	base  http.RoundTripper
	bytes atomic.Int64
	reqs  atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.reqs.Add(1)
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.bytes}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func startSim(t testing.TB, opts vastsim.Options) *vastsim.Sim {
	t.Helper()
	opts.APIKey = testKey
	opts.SSHDisabled = true
	// Instances stay loading: no engines, only rows.
	opts.LoadingDelay = time.Hour
	sim := vastsim.New(opts)
	if _, err := sim.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim
}

func launchN(t testing.TB, sim *vastsim.Sim, n int, label func(i int) string) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := sim.Launch(vastsim.LaunchSpec{Label: label(i), Env: map[string]string{"WEB_PASSWORD": "pw-long-enough"}}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestListFiltersAndColumnsReachTheServer checks that Labels and Columns
// become select_filters and select_cols, and that vastsim, like vast.ai,
// answers with only the matching rows and the asked columns.
func TestListFiltersAndColumnsReachTheServer(t *testing.T) {
	sim := startSim(t, vastsim.Options{})
	launchN(t, sim, 60, func(i int) string { return []string{"vllm-a", "vllm-b", "other"}[i%3] })
	c := newTestClient(t, testConfig(sim.URL()))
	res, err := c.ListInstances(testCtx(t), ListOptions{Labels: []string{"vllm-a", "vllm-b"}, Columns: []string{"label", "actual_status"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 40 || res.Pages != 2 {
		t.Fatalf("%d instances in %d pages, want 40 in 2", len(res.Instances), res.Pages)
	}
	for _, in := range res.Instances {
		if in.Label == "other" || in.ID <= 0 || in.GPUName != "" || len(in.ExtraEnv) != 0 {
			t.Fatalf("row %+v: wrong label, or columns that were not asked for", in)
		}
	}
	calls := sim.APICalls()
	q := calls[len(calls)-1].Query
	for _, want := range []string{"select_filters=", "select_cols=", "after_token="} {
		if !strings.Contains(q, want) {
			t.Errorf("last page query %q lacks %s", q, want)
		}
	}
	if _, err := c.ListInstances(testCtx(t), ListOptions{Label: "x", Labels: []string{"y"}}); err == nil {
		t.Error("Label with Labels accepted")
	}
}

// TestListingTimeOf1000Instances measures a full listing of a 1000-instance
// account at vast.ai's real pacing (1 request/s on the list endpoint,
// enforced by vastsim too), unfiltered and filtered to the 100 instances
// of exact-label pools, with and without select_cols. It reports and never
// asserts a speed. It takes about 90 s, so it runs only when
// VASTAI_LISTING_BENCH is set:
//
//	VASTAI_LISTING_BENCH=1 go test -run TestListingTimeOf1000Instances -v ./vastclient/
func TestListingTimeOf1000Instances(t *testing.T) {
	if os.Getenv("VASTAI_LISTING_BENCH") == "" {
		t.Skip("set VASTAI_LISTING_BENCH=1 to measure listing times (about 90 s)")
	}
	sim := startSim(t, vastsim.Options{RateLimits: true})
	launchN(t, sim, 1000, func(i int) string {
		if i%10 == 0 {
			return "vllm-a"
		}
		return "batch-" + string(rune('a'+i%7))
	})
	ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone()}
	cfg := testConfig(sim.URL())
	cfg.Pacing = nil // the real per-endpoint pacing
	cfg.HTTPClient = &http.Client{Transport: ct}
	c := newTestClient(t, cfg)
	for _, tc := range []struct {
		name string
		opts ListOptions
	}{
		{"whole account (before)", ListOptions{}},
		{"whole account, select_cols", ListOptions{Columns: InstanceColumns}},
		{"exact labels of the pools", ListOptions{Labels: []string{"vllm-a"}}},
	} {
		b0, r0 := ct.bytes.Load(), ct.reqs.Load()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		res, err := c.ListInstances(ctx, tc.opts)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%-28s %4d instances, %2d pages, %3d requests, %6.1f s, %7.0f KiB",
			tc.name, len(res.Instances), res.Pages, ct.reqs.Load()-r0, time.Since(start).Seconds(), float64(ct.bytes.Load()-b0)/1024)
	}
}
