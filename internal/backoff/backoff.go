// Package backoff holds the one rule for capped exponential backoff used
// between retries: the first wait is the minimum, each further consecutive
// failure doubles it, and the maximum caps it.
package backoff

import "time"

// Exponential returns the wait after the n-th consecutive failure: first
// doubled n-1 times, capped at limit. n below 1 counts as 1; a non-positive
// first gives 0. Doubling stops at the cap, so a large n cannot overflow.
func Exponential(first, limit time.Duration, n int) time.Duration {
	if first <= 0 {
		return 0
	}
	d := first
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}
