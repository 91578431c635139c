package display

import (
	"math"
	"strings"
)

// Bar draws a fraction (0-1) as a fixed-width gauge, "█████░░░░░", so that
// GPU utilisation and memory of many instances can be compared at a glance.
// A fraction that is unknown (NaN) draws as a row of dots: an empty gauge
// would read as an idle GPU.
func Bar(fraction float64, width int) string {
	if width <= 0 {
		return ""
	}
	if math.IsNaN(fraction) || math.IsInf(fraction, 0) {
		return strings.Repeat("·", width)
	}
	fraction = math.Max(0, math.Min(1, fraction))
	full := int(math.Round(fraction * float64(width)))
	return strings.Repeat("█", full) + strings.Repeat("░", width-full)
}

// Truncate shortens s to at most n runes, marking the cut with "…", so a
// long upstream or error cannot push the next columns off the screen.
func Truncate(s string, n int) string {
	r := []rune(s)
	if n <= 0 {
		return ""
	}
	if len(r) <= n {
		return s
	}
	if n == 1 {
		return "…"
	}
	return string(r[:n-1]) + "…"
}
