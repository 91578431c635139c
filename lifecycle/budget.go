package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/caddy-vastai/caddy-vastai/ledger"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Budget scopes.
const (
	// ScopeInstance is the per-instance price cap (max_price_per_hour).
	ScopeInstance = "instance"
	// ScopePool is a pool's max_spend_per_hour.
	ScopePool = "pool"
	// ScopeGateway is the gateway's max_spend_per_hour.
	ScopeGateway = "gateway"
	// ScopeCredit is the account balance guard (min_credit).
	ScopeCredit = "credit"
)

// BudgetError is a refusal to create an instance because of a budget. It
// matches ErrBudget; callers answer it with HTTP 409 and the figures.
type BudgetError struct {
	// Scope is ScopeInstance, ScopePool, ScopeGateway or ScopeCredit.
	Scope string `json:"scope"`
	// Pool is the pool concerned.
	Pool string `json:"pool,omitempty"`
	// Limit is the configured limit: $/hour, or dollars of credit.
	Limit float64 `json:"limit"`
	// Current is the spend rate now in $/hour (running instances plus
	// creates in progress), or the account credit in dollars.
	Current float64 `json:"current"`
	// Requested is the $/hour the refused request would add.
	Requested float64 `json:"requested"`
}

// Error describes the refusal with its figures.
func (e *BudgetError) Error() string {
	switch e.Scope {
	case ScopeCredit:
		return fmt.Sprintf("account credit $%.2f is below min_credit $%.2f", e.Current, e.Limit)
	case ScopeInstance:
		return fmt.Sprintf("pool %q: instance price $%.4f/h exceeds max_price_per_hour $%.4f/h",
			e.Pool, e.Requested, e.Limit)
	case ScopePool:
		return fmt.Sprintf("pool %q spends $%.4f/h; $%.4f/h more would exceed its max_spend_per_hour $%.4f/h",
			e.Pool, e.Current, e.Requested, e.Limit)
	default:
		return fmt.Sprintf("the gateway spends $%.4f/h; $%.4f/h more would exceed max_spend_per_hour $%.4f/h",
			e.Current, e.Requested, e.Limit)
	}
}

// Is makes errors.Is(err, ErrBudget) true.
func (e *BudgetError) Is(target error) bool { return target == ErrBudget }

// budgetRate is what an instance row counts against a budget: what it
// bills now (ledger.Rate, the one rule for that), except that an instance
// not running yet (ledger.Starting) counts at its full dph_total. Like a
// create in progress it is committed to: counting only its storage while it
// loads would let the next creates overspend once it runs.
func budgetRate(in *vastclient.Instance) float64 {
	if ledger.Starting(in) {
		return in.DPHTotal
	}
	return ledger.Rate(in)
}

// spendView is the current spend rate in $/hour.
type spendView struct {
	pool  map[string]float64
	total float64
}

func (s *spendView) add(pool string, rate float64) {
	s.pool[pool] += rate
	s.total += rate
}

// spendRates adds up what the gateway spends per hour: every instance of
// ours in the latest listing at its row's rate, every live record the
// listing does not show at its recorded price, and every provisioning in
// progress whose instance is not counted yet at its reserved price. Counting
// too much only refuses early; counting too little overspends.
func (m *Manager) spendRates(recs *records, excludeOp string) spendView {
	sv := spendView{pool: map[string]float64{}}
	rows, _, _ := m.latestListing()
	counted := map[int64]bool{}
	for i := range rows {
		row := &rows[i]
		rec := recs.insts[row.ID]
		pool := ""
		switch {
		case rec != nil && rec.State == InstanceStarting:
			// A warm start is committed to its full price: the listing
			// may still show it stopped or scheduling (storage only).
			counted[row.ID] = true
			sv.add(rec.Pool, max(budgetRate(row), rec.Price))
			continue
		case rec != nil && rec.Live():
			pool = rec.Pool
		case rec != nil:
			continue // destroyed or gone: the row is a lingering view
		default:
			l, ok := ownedLabel(m.cfg.GatewayID, row.Label)
			if !ok {
				continue
			}
			pool = l.Pool
		}
		counted[row.ID] = true
		sv.add(pool, budgetRate(row))
	}
	for id, rec := range recs.insts {
		if rec.Live() && !counted[id] {
			counted[id] = true
			rate := rec.Price
			if rec.State == InstanceStopped && rec.StoppedRate > 0 {
				rate = rec.StoppedRate
			}
			sv.add(rec.Pool, rate)
		}
	}
	serving := recs.servingOps()
	for _, op := range recs.ops {
		if op.Kind != KindProvision || op.Final() || op.ID == excludeOp || countedOp(op, counted, serving) {
			continue
		}
		price := op.EstimatedPrice
		if cur := op.current(); cur != nil && cur.Price > 0 {
			price = cur.Price
		}
		sv.add(op.Pool, price)
	}
	return sv
}

// checkSpend refuses adding rate $/hour to pool when a pool or gateway
// budget would be exceeded.
func (m *Manager) checkSpend(recs *records, pool string, tpl PoolTemplate, rate float64, excludeOp string) error {
	if tpl.MaxSpendPerHour <= 0 && m.cfg.MaxSpendPerHour <= 0 {
		return nil
	}
	sv := m.spendRates(recs, excludeOp)
	if tpl.MaxSpendPerHour > 0 && sv.pool[pool]+rate > tpl.MaxSpendPerHour+priceEpsilon {
		return &BudgetError{Scope: ScopePool, Pool: pool, Limit: tpl.MaxSpendPerHour, Current: sv.pool[pool], Requested: rate}
	}
	if m.cfg.MaxSpendPerHour > 0 && sv.total+rate > m.cfg.MaxSpendPerHour+priceEpsilon {
		return &BudgetError{Scope: ScopeGateway, Pool: pool, Limit: m.cfg.MaxSpendPerHour, Current: sv.total, Requested: rate}
	}
	return nil
}

// checkCredit refuses new instances while the account credit is below
// MinCredit. When the credit cannot be read the answer is no, with the
// reading's error: a guard that fails open guards nothing.
func (m *Manager) checkCredit(ctx context.Context, pool string) error {
	if m.cfg.MinCredit <= 0 {
		return nil
	}
	u, err := m.api.CurrentUser(ctx)
	if err != nil {
		return fmt.Errorf("reading the account credit for min_credit: %w", err)
	}
	if u.Credit < m.cfg.MinCredit {
		return &BudgetError{Scope: ScopeCredit, Pool: pool, Limit: m.cfg.MinCredit, Current: u.Credit}
	}
	return nil
}

// noteRefusal counts budget refusals.
func (m *Manager) noteRefusal(err error) {
	if errors.Is(err, ErrBudget) {
		m.stats.budgetRefusals.Add(1)
	}
}
