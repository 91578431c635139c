package vastsim

import (
	"math"
	"testing"
	"time"
)

func TestBillingFollowsTheLifecycle(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	mk := func() *instance {
		return &instance{created: t0, nullUntil: t0.Add(time.Minute), runningAt: t0.Add(4 * time.Minute),
			dphBase: 1.0, diskGB: 72, offer: Offer{StorageCost: 0.1}} // disk: 0.1*72/720 = $0.01/h
	}
	const disk, total = 0.01, 1.01
	tests := []struct {
		name     string
		change   func(in *instance)
		from, to time.Duration
		want     float64
		wantSecs float64
	}{
		{"null and loading bill the disk", nil, 0, 4 * time.Minute, disk * 4 / 60, 240},
		{"running bills dph_total", nil, 4 * time.Minute, 64 * time.Minute, total, 3600},
		{"across the boundaries", nil, 0, 64 * time.Minute, disk*4/60 + total, 3840},
		{"stopped bills the disk", func(in *instance) { in.stopped = true }, 4 * time.Minute, 64 * time.Minute, disk, 3600},
		{"scheduling bills the disk", func(in *instance) { in.stopped, in.scheduling = true, true }, 4 * time.Minute, 64 * time.Minute, disk, 3600},
		{"exited bills the disk", func(in *instance) { in.manual = "exited" }, 4 * time.Minute, 64 * time.Minute, disk, 3600},
		{"nothing after the destroy", func(in *instance) { in.destroyedAt = t0.Add(34 * time.Minute) }, 4 * time.Minute, 64 * time.Minute, total / 2, 1800},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := mk()
			if tc.change != nil {
				tc.change(in)
			}
			got, secs := in.accrual(t0.Add(tc.from), t0.Add(tc.to))
			if math.Abs(got-tc.want) > 1e-12 || math.Abs(secs-tc.wantSecs) > 1e-9 {
				t.Fatalf("accrual = $%v over %vs, want $%v over %vs", got, secs, tc.want, tc.wantSecs)
			}
		})
	}
}

func TestBillingStopsAtTheDestroyAndIsBookedAcrossChanges(t *testing.T) {
	s := New(Options{LoadingDelay: time.Millisecond})
	defer s.Close()
	id, err := s.Launch(LaunchSpec{Label: "x", DPH: 3600, Running: true}) // $1 a second
	if err != nil {
		t.Fatal(err)
	}
	s.SetStatus(id, "stopped")
	s.SetStatus(id, "running")
	s.Remove(id)
	b1, ok := s.Billing(id)
	if !ok || b1.Dollars <= 0 || b1.Ended.IsZero() || b1.RatePerHour != 0 {
		t.Fatalf("billing after the destroy: %+v", b1)
	}
	s.mu.Lock()
	in := s.instances[id]
	destroyedAt := in.destroyedAt
	span := destroyedAt.Sub(in.created).Seconds()
	s.mu.Unlock()
	if b1.BilledSeconds-span > 1e-9 || b1.Dollars > span*1.01 {
		t.Fatalf("billed $%v over %vs for an instance that lived %vs", b1.Dollars, b1.BilledSeconds, span)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Since(destroyedAt) < 5*time.Millisecond && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if b2, _ := s.Billing(id); b2.Dollars != b1.Dollars {
		t.Fatalf("billing went on after the destroy: $%v then $%v", b1.Dollars, b2.Dollars)
	}
}
