package backoff

import (
	"testing"
	"time"
)

func TestExponential(t *testing.T) {
	tests := []struct {
		name         string
		first, limit time.Duration
		n            int
		want         time.Duration
	}{
		{"first failure waits first", 10 * time.Second, 5 * time.Minute, 1, 10 * time.Second},
		{"second doubles", 10 * time.Second, 5 * time.Minute, 2, 20 * time.Second},
		{"fifth", 10 * time.Second, 5 * time.Minute, 5, 160 * time.Second},
		{"capped", 10 * time.Second, 5 * time.Minute, 6, 5 * time.Minute},
		{"huge n stays capped", 10 * time.Second, 5 * time.Minute, 1 << 30, 5 * time.Minute},
		{"n zero counts as one", time.Second, time.Minute, 0, time.Second},
		{"limit below first caps first", time.Minute, time.Second, 1, time.Second},
		{"zero first", 0, time.Minute, 3, 0},
		{"negative first", -time.Second, time.Minute, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Exponential(tt.first, tt.limit, tt.n); got != tt.want {
				t.Errorf("Exponential(%s, %s, %d) = %s, want %s", tt.first, tt.limit, tt.n, got, tt.want)
			}
		})
	}
}

// TestExponentialMatchesIterativeDoubling pins the equivalence with the
// "backoff = min(backoff*2, max)" loops that callers may still carry.
func TestExponentialMatchesIterativeDoubling(t *testing.T) {
	first, limit := 5*time.Second, 2*time.Minute
	d := first
	for n := 1; n <= 20; n++ {
		if got := Exponential(first, limit, n); got != d {
			t.Fatalf("round %d: Exponential = %s, iterative = %s", n, got, d)
		}
		d = min(d*2, limit)
	}
}
