package lifecycle

import (
	"sort"
	"time"

	"github.com/caddy-vastai/caddy-vastai/ledger"
)

// InstanceCost is one instance's spending.
type InstanceCost struct {
	ID     int64  `json:"id"`
	Pool   string `json:"pool,omitempty"`
	Label  string `json:"label,omitempty"`
	Status string `json:"status,omitempty"`
	// RatePerHour is what it bills now (ledger.Rate): dph_total while it
	// runs, its storage only while loading or stopped, nothing once gone.
	RatePerHour float64   `json:"rate_per_hour"`
	Started     time.Time `json:"started,omitzero"`
	// Seconds since start_date.
	Seconds float64 `json:"seconds"`
	// Accrued is RatePerHour × Seconds: an estimate (it assumes the
	// current rate held since the start, and ignores bandwidth).
	Accrued float64 `json:"accrued"`
}

// PoolCost aggregates a pool.
type PoolCost struct {
	Pool        string  `json:"pool"`
	Instances   int     `json:"instances"`
	RatePerHour float64 `json:"rate_per_hour"`
	Accrued     float64 `json:"accrued"`
}

// CostReport is the gateway's spending computed from the latest listing.
type CostReport struct {
	At time.Time `json:"at"`
	// ListedAt is when the listing used was taken; Known is false when
	// there was none yet (every figure is then zero, not "free").
	ListedAt    time.Time      `json:"listed_at,omitzero"`
	Known       bool           `json:"known"`
	Instances   []InstanceCost `json:"instances"`
	Pools       []PoolCost     `json:"pools"`
	RatePerHour float64        `json:"rate_per_hour"`
	Accrued     float64        `json:"accrued"`
}

// Cost reports what the gateway's instances (records or labels of this
// gateway) cost at now, from the routing side's latest listing (or the
// Manager's own if fresher). It makes no API call.
func (m *Manager) Cost(now time.Time) CostReport {
	rep := CostReport{At: now, Instances: []InstanceCost{}, Pools: []PoolCost{}}
	rows, at, ok := m.latestListing()
	if !ok {
		return rep
	}
	rep.Known, rep.ListedAt = true, at
	m.mu.Lock()
	insts := make(map[int64]InstanceRecord, len(m.insts))
	for id, r := range m.insts {
		insts[id] = *r
	}
	m.mu.Unlock()
	pools := map[string]*PoolCost{}
	for i := range rows {
		row := &rows[i]
		pool := ""
		if rec, ok := insts[row.ID]; ok {
			pool = rec.Pool
		} else if l, ok := ownedLabel(m.cfg.GatewayID, row.Label); ok {
			pool = l.Pool
		} else {
			continue
		}
		c := InstanceCost{ID: row.ID, Pool: pool, Label: row.Label, Status: row.ActualStatus, RatePerHour: ledger.Rate(row)}
		if row.StartDate > 0 {
			c.Started = time.Unix(0, int64(row.StartDate*1e9))
			c.Seconds = max(0, now.Sub(c.Started).Seconds())
		}
		c.Accrued = c.RatePerHour * c.Seconds / 3600
		rep.Instances = append(rep.Instances, c)
		pc := pools[pool]
		if pc == nil {
			pc = &PoolCost{Pool: pool}
			pools[pool] = pc
		}
		pc.Instances++
		pc.RatePerHour += c.RatePerHour
		pc.Accrued += c.Accrued
		rep.RatePerHour += c.RatePerHour
		rep.Accrued += c.Accrued
	}
	sort.Slice(rep.Instances, func(i, j int) bool { return rep.Instances[i].ID < rep.Instances[j].ID })
	for _, pc := range pools {
		rep.Pools = append(rep.Pools, *pc)
	}
	sort.Slice(rep.Pools, func(i, j int) bool { return rep.Pools[i].Pool < rep.Pools[j].Pool })
	return rep
}

// PoolStatus is one pool's size and spending, for an admin view.
type PoolStatus struct {
	Name         string `json:"name"`
	MinInstances int    `json:"min_instances"`
	MaxInstances int    `json:"max_instances,omitempty"`
	// Active and Provisioning count instance records; InProgress counts
	// provisionings whose instance is not recorded yet.
	Active       int `json:"active"`
	Provisioning int `json:"provisioning"`
	InProgress   int `json:"in_progress"`
	// Destroying counts instances being destroyed (destroy_failed
	// included): they may still bill.
	Destroying int `json:"destroying"`
	// SpendPerHour is what budgets compare against: running instances plus
	// creates in progress.
	SpendPerHour    float64 `json:"spend_per_hour"`
	MaxSpendPerHour float64 `json:"max_spend_per_hour,omitempty"`
	MaxPricePerHour float64 `json:"max_price_per_hour,omitempty"`
	Configured      bool    `json:"configured"`
}

// PoolsReport is every pool's status and the gateway's spend rate.
type PoolsReport struct {
	Pools           []PoolStatus `json:"pools"`
	SpendPerHour    float64      `json:"spend_per_hour"`
	MaxSpendPerHour float64      `json:"max_spend_per_hour,omitempty"`
	Stats           Stats        `json:"stats"`
}

// Pools reports the pools from what this Manager knows (records as of its
// last write or reconciliation, and the latest listing). It makes no API
// or Store call.
func (m *Manager) Pools() PoolsReport {
	m.mu.Lock()
	recs := &records{ops: map[string]*Operation{}, insts: map[int64]*InstanceRecord{}}
	for id, op := range m.ops {
		recs.ops[id] = op.clone()
	}
	for id, r := range m.insts {
		c := *r
		recs.insts[id] = &c
	}
	m.mu.Unlock()
	sv := m.spendRates(recs, "")
	byName := map[string]*PoolStatus{}
	get := func(name string) *PoolStatus {
		ps := byName[name]
		if ps == nil {
			ps = &PoolStatus{Name: name}
			if tpl, ok := m.cfg.Pools[name]; ok {
				ps.Configured = true
				ps.MinInstances, ps.MaxInstances = tpl.MinInstances, tpl.MaxInstances
				ps.MaxSpendPerHour, ps.MaxPricePerHour = tpl.MaxSpendPerHour, tpl.MaxPricePerHour
			}
			byName[name] = ps
		}
		return ps
	}
	for name := range m.cfg.Pools {
		get(name)
	}
	for _, r := range recs.insts {
		switch r.State {
		case InstanceActive:
			get(r.Pool).Active++
		case InstanceProvisioning:
			get(r.Pool).Provisioning++
		case InstanceDestroying, InstanceDestroyFailed:
			get(r.Pool).Destroying++
		}
	}
	for name, ps := range byName {
		c := m.poolCount(recs, name, nil)
		ps.InProgress = c.inProgress
		ps.SpendPerHour = sv.pool[name]
	}
	for name, rate := range sv.pool {
		get(name).SpendPerHour = rate
	}
	out := PoolsReport{SpendPerHour: sv.total, MaxSpendPerHour: m.cfg.MaxSpendPerHour, Stats: m.Stats()}
	for _, ps := range byName {
		out.Pools = append(out.Pools, *ps)
	}
	sort.Slice(out.Pools, func(i, j int) bool { return out.Pools[i].Name < out.Pools[j].Name })
	return out
}
