package autoscale

import "time"

// Bucket is one window bucket in a State: the samples from Start for one
// Config.Bucket.
type Bucket struct {
	Start time.Time `json:"start"`
	Sum   float64   `json:"sum"`
	Count int       `json:"count"`
}

// State is everything a Decider remembers, so a config reload or a
// restart (stored as JSON) keeps its windows and streaks.
type State struct {
	// Started is false until the first Decide; Desired is then meaningful.
	Started bool `json:"started"`
	Desired int  `json:"desired"`
	// Ready and Load are the latest sample.
	Ready int     `json:"ready"`
	Load  float64 `json:"load"`
	// Seen is true once a sample came; LastRequest is the latest sample
	// with load (the idle clock).
	Seen        bool      `json:"seen"`
	LastRequest time.Time `json:"last_request"`
	// PanicUntil is when scale-down stops being blocked.
	PanicUntil time.Time `json:"panic_until"`
	// UpSince/UpAgreed and DownSince are the running streaks (zero: none).
	UpSince   time.Time `json:"up_since"`
	UpAgreed  int       `json:"up_agreed"`
	DownSince time.Time `json:"down_since"`
	// FromZero marks a backlog seen with nothing ready; SettleUntil ends
	// the settling after the first instance came up.
	FromZero    bool      `json:"from_zero"`
	SettleUntil time.Time `json:"settle_until"`
	// Buckets are the window's non-empty buckets.
	Buckets []Bucket `json:"buckets"`
}

// Snapshot returns a copy of the Decider's state.
func (d *Decider) Snapshot() State {
	return State{
		Started: d.started, Desired: d.desired, Ready: d.ready, Load: d.load,
		Seen: d.seen, LastRequest: d.lastRequest, PanicUntil: d.panicUntil,
		UpSince: d.upSince, UpAgreed: d.upAgreed, DownSince: d.downSince,
		FromZero: d.fromZero, SettleUntil: d.settleUntil,
		Buckets: d.ring.export(),
	}
}

// Restore replaces the Decider's state with s, typically taken from the
// Decider of the previous config. The buckets are refiled into this
// Decider's ring, so a changed Bucket or StableWindow keeps what still
// fits; a desired count outside the new [Min, Max] is clamped by the next
// Decide.
func (d *Decider) Restore(s State) {
	d.started, d.desired, d.ready, d.load = s.Started, s.Desired, s.Ready, s.Load
	d.seen, d.lastRequest, d.panicUntil = s.Seen, s.LastRequest, s.PanicUntil
	d.upSince, d.upAgreed, d.downSince = s.UpSince, s.UpAgreed, s.DownSince
	d.fromZero, d.settleUntil = s.FromZero, s.SettleUntil
	d.ring = newRing(d.cfg.StableWindow, d.cfg.Bucket)
	for _, b := range s.Buckets {
		if b.Count > 0 {
			d.ring.add(b.Start, b.Sum, b.Count)
		}
	}
}
