package vastsim

import "time"

// Billing is what the simulated account has charged for one instance. It
// follows vast.ai's billing as the reference describes it (vastai-api.md
// §9–10): dph_total (GPU plus disk) while the container holds the GPU,
// only the disk (storage_total_cost) before it runs (null, loading) and
// while stopped, scheduling (a start waiting for the GPU, warm.go) or
// exited, nothing once destroyed. Billing starts at
// start_date and stops at the DELETE.
type Billing struct {
	ID int64
	// Dollars charged so far.
	Dollars float64
	// BilledSeconds is the time charged at a non-zero rate.
	BilledSeconds float64
	// RatePerHour is the rate charged now.
	RatePerHour float64
	// Started and Ended bound the billing (Ended zero while it runs).
	Started, Ended time.Time
}

// Billing returns an instance's charges up to now; false for an unknown id.
func (s *Sim) Billing(id int64) (Billing, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil {
		return Billing{}, false
	}
	now := time.Now()
	d, secs := in.accrual(in.billFrom(), now)
	b := Billing{ID: id, Dollars: in.billed + d, BilledSeconds: in.billedSecs + secs, Started: in.created, Ended: in.destroyedAt}
	if !in.destroyed() {
		b.RatePerHour = in.rateAt(now)
	}
	return b, true
}

// billLocked books the charges up to now. It runs before every change of
// an instance's billing-relevant fields (every such change goes through
// lookupLocked), so between two calls the status is a pure function of
// time and the accrual is exact.
func (in *instance) billLocked(now time.Time) {
	from := in.billFrom()
	if !now.After(from) {
		return
	}
	d, secs := in.accrual(from, now)
	in.billed += d
	in.billedSecs += secs
	in.billedThrough = now
}

func (in *instance) billFrom() time.Time {
	if in.billedThrough.IsZero() {
		return in.created
	}
	return in.billedThrough
}

// accrual is the charge over [from, to) with the current fields, split at
// the lifecycle's time boundaries (null → loading → running).
func (in *instance) accrual(from, to time.Time) (dollars, secs float64) {
	if in.destroyed() && in.destroyedAt.Before(to) {
		to = in.destroyedAt
	}
	cuts := []time.Time{from}
	for _, c := range []time.Time{in.nullUntil, in.runningAt} {
		if c.After(cuts[len(cuts)-1]) && c.Before(to) {
			cuts = append(cuts, c)
		}
	}
	cuts = append(cuts, to)
	for i := 0; i+1 < len(cuts); i++ {
		a, b := cuts[i], cuts[i+1]
		if !b.After(a) {
			continue
		}
		rate := in.rateAt(a)
		dollars += rate * b.Sub(a).Seconds() / 3600
		if rate > 0 {
			secs += b.Sub(a).Seconds()
		}
	}
	return dollars, secs
}

// rateAt is the rate charged at t (t before any destruction).
func (in *instance) rateAt(t time.Time) float64 {
	disk := storageHour(in.offer.StorageCost, in.diskGB)
	// stopped covers scheduling: the GPU is not held until it starts.
	if in.stopped || in.manual == "stopped" {
		return disk
	}
	// The lifecycle of actualStatus, without the freeze at destruction:
	// accrual never asks past destroyedAt.
	switch {
	case in.manual == "created" || in.manual == "loading" || in.manual == "exited":
		return disk
	case in.manual != "":
		return in.dphBase + disk
	case t.Before(in.runningAt):
		return disk
	}
	return in.dphBase + disk
}
