// Package display formats figures the way operators read them in the CLI,
// the terminal view and the dashboard: money as $0.40/h, durations as 3m12s.
// One home for these rules keeps the three surfaces in agreement.
package display

import (
	"fmt"
	"math"
	"time"
)

// Rate formats a spend rate in dollars per hour: "$0.40/h". Rates under a
// cent keep three decimals so a storage-only rate does not read as free.
func Rate(perHour float64) string {
	return Dollars(perHour) + "/h"
}

// Dollars formats an amount of money: "$12.34", "$0.004" under a cent,
// "-$1.00" for a negative amount (a refund or a correction).
func Dollars(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	sign := ""
	if v < 0 {
		sign, v = "-", -v
	}
	if v != 0 && v < 0.01 {
		return fmt.Sprintf("%s$%.3f", sign, v)
	}
	return fmt.Sprintf("%s$%.2f", sign, v)
}

// Duration formats a duration to whole seconds, largest units first, at
// most two units: "3m12s", "2h05m", "4d03h", "45s", "0s".
func Duration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, (s%3600)/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, (s%86400)/3600)
	}
}

// Since formats the time elapsed since t, or "-" for the zero time.
func Since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return Duration(now.Sub(t))
}

// Percent formats a fraction or a percentage already scaled to 0-100.
func Percent(p float64) string {
	if math.IsNaN(p) || p < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", p)
}

// MiB formats a memory amount given in MiB as "12.3/24.0 GiB" style parts.
func GiB(mib float64) string {
	return fmt.Sprintf("%.1f GiB", mib/1024)
}

// Table renders rows as left-aligned columns separated by two spaces, with
// the header first. Cells are measured in runes so "$" and "µ" align.
func Table(header []string, rows [][]string) string {
	return TableStyled(header, rows, nil)
}
