package lifecycle

import "time"

// PoolScale is an autoscaled pool's size as this Manager sees it, for the
// admin API, metrics and the dashboard.
type PoolScale struct {
	// Desired is the count given to SetDesired; DesiredSet is false before
	// the first call (after a restart reconciliation then leaves the
	// pool's size alone).
	Desired    int  `json:"desired"`
	DesiredSet bool `json:"desired_set"`
	// Serving counts active instances that are not dead and not leaving.
	Serving int `json:"serving"`
	// Provisioning counts creates in progress, Starting warm starts in
	// progress, Leaving scale-downs in progress (draining, stopping,
	// destroying).
	Provisioning int `json:"provisioning"`
	Starting     int `json:"starting"`
	Leaving      int `json:"leaving"`
	// Stopped counts the warm pool's stopped instances and StoppedRate is
	// what they bill ($/hour, storage).
	Stopped     int     `json:"stopped"`
	StoppedRate float64 `json:"stopped_rate"`
	// LastRefusal is why the latest scale-up could not be made (budget,
	// max_instances, credit, no offer), and when; empty when the latest
	// one could.
	LastRefusal   string    `json:"last_refusal,omitempty"`
	LastRefusalAt time.Time `json:"last_refusal_at,omitzero"`
}

// SetDesired sets the count an autoscaled pool converges to, and asks Run
// for a reconciliation soon when it changed. It never blocks.
func (m *Manager) SetDesired(pool string, n int) {
	m.mu.Lock()
	if m.desired == nil {
		m.desired = map[string]int{}
	}
	prev, ok := m.desired[pool]
	m.desired[pool] = n
	m.mu.Unlock()
	if !ok || prev != n {
		m.Kick()
	}
}

// Kick asks Run for a reconciliation now; kicks coalesce. It never blocks.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// PoolScale returns an autoscaled pool's size; ok is false for a pool
// that is not configured or not autoscaled.
func (m *Manager) PoolScale(pool string) (PoolScale, bool) {
	tpl, ok := m.cfg.Pools[pool]
	if !ok || !tpl.Autoscale.Enabled {
		return PoolScale{}, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, set := m.desired[pool]
	return PoolScale{Desired: d, DesiredSet: set}, true
}
