package display

import (
	"math"
	"testing"
)

func TestBarAndTruncate(t *testing.T) {
	tests := []struct{ got, want string }{
		{Bar(0.5, 10), "█████░░░░░"},
		{Bar(0, 4), "░░░░"},
		{Bar(1.7, 4), "████"},
		{Bar(-1, 4), "░░░░"},
		{Bar(math.NaN(), 3), "···"},
		{Bar(0.5, 0), ""},
		{Truncate("127.0.0.1:40123", 8), "127.0.0…"},
		{Truncate("abc", 3), "abc"},
		{Truncate("abc", 1), "…"},
		{Truncate("abc", 0), ""},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("case %d: got %q, want %q", i, tt.got, tt.want)
		}
	}
}
