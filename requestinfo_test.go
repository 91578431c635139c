package vastai

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRequestInfoPassesTheBodyOnIntact checks that inspection reads the
// body once, bounded, and that the upstream still receives every byte.
func TestRequestInfoPassesTheBodyOnIntact(t *testing.T) {
	big := `{"model":"m","prompt":"` + strings.Repeat("p", 3000) + `"}`
	cases := []struct {
		name, body string
		limit      int64
		model      string
		textLen    int
	}{
		{"small", `{"model":"m","prompt":"hi"}`, 1 << 10, "m", 2},
		{"larger than the bound", big, 100, "m", 0},
		{"not json", "a=b", 1 << 10, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, "http://x/v1/completions", strings.NewReader(c.body))
			info := requestInfo(r, c.limit)
			if again := requestInfo(r, c.limit); again != info {
				t.Error("a second look read the body again")
			}
			if info.Model != c.model || len(info.Text) != c.textLen {
				t.Errorf("info = model %q, %d bytes of text; want %q, %d", info.Model, len(info.Text), c.model, c.textLen)
			}
			got, err := io.ReadAll(r.Body)
			if err != nil || string(got) != c.body {
				t.Errorf("body after inspection = %d bytes (err %v), want the %d bytes sent", len(got), err, len(c.body))
			}
		})
	}
}

func TestRequestInfoSkipsRequestsWithoutABody(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "http://x/v1/models", nil)
	if info := requestInfo(r, 0); info.Model != "" || r.Body != nil {
		t.Errorf("GET inspected: %+v, body %v", info, r.Body)
	}
	r, _ = http.NewRequest(http.MethodPost, "http://x/", strings.NewReader(`{"model":"m"}`))
	r, info := withRequestInfo(r, 0)
	r.Body = io.NopCloser(strings.NewReader("")) // as reverse_proxy's wrapper hides ours
	if got := requestInfo(r, 0); got != info || got.Model != "m" {
		t.Errorf("context lookup = %+v, want the first inspection's %+v", got, info)
	}
}
