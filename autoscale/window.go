package autoscale

import "time"

// slot is one bucket of the ring: the samples whose time falls in bucket
// number idx (time/width). n == 0 means empty.
type slot struct {
	idx int64
	sum float64
	n   int
}

// ring is a fixed array of buckets covering the stable window. A slot is
// reused when its bucket number falls out of the window, so memory never
// depends on the sample rate and old samples expire by time, not by count.
type ring struct {
	width int64
	slots []slot
}

func newRing(window, width time.Duration) ring {
	n := int((window + width - 1) / width)
	return ring{width: int64(width), slots: make([]slot, n)}
}

func (r *ring) bucket(t time.Time) int64 { return t.UnixNano() / r.width }

// add folds sum/n (n samples) into t's bucket. A sample older than what
// its slot now holds (a clock that went back) is dropped.
func (r *ring) add(t time.Time, sum float64, n int) {
	idx := r.bucket(t)
	s := &r.slots[int(uint64(idx)%uint64(len(r.slots)))]
	switch {
	case s.n == 0 || s.idx < idx:
		*s = slot{idx: idx, sum: sum, n: n}
	case s.idx == idx:
		s.sum += sum
		s.n += n
	}
}

// stats averages the bucket means of the newest span buckets up to now's
// bucket, and counts the buckets holding samples and those whose mean is
// at least high.
func (r *ring) stats(now time.Time, span int, high float64) (avg float64, buckets, highs int) {
	cur := r.bucket(now)
	var total float64
	for i := range r.slots {
		s := &r.slots[i]
		if s.n == 0 || s.idx > cur || s.idx <= cur-int64(span) {
			continue
		}
		m := s.sum / float64(s.n)
		total += m
		buckets++
		if m >= high {
			highs++
		}
	}
	if buckets > 0 {
		avg = total / float64(buckets)
	}
	return avg, buckets, highs
}

// export lists the non-empty buckets in slot order (Restore does not
// need them sorted).
func (r *ring) export() []Bucket {
	var out []Bucket
	for _, s := range r.slots {
		if s.n > 0 {
			out = append(out, Bucket{Start: time.Unix(0, s.idx*r.width).UTC(), Sum: s.sum, Count: s.n})
		}
	}
	return out
}
