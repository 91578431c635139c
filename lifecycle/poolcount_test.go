package lifecycle

import (
	"math"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// TestPoolCountCountsACreatedInstanceOnce: recordCreated writes the
// instance record before the attempt learns the instance id. A count taken
// in between must not see the instance and its operation as two.
func TestPoolCountCountsACreatedInstanceOnce(t *testing.T) {
	cases := []struct {
		name         string
		rec          InstanceRecord
		attemptID    int64
		wantBilling  int
		wantProgress int
	}{
		{"attempt knows the id", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceProvisioning}, 7, 1, 0},
		{"record written, attempt not yet", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceProvisioning}, 0, 1, 0},
		// A failed attempt's instance is being destroyed while the
		// operation tries again: both may bill.
		{"previous attempt destroying", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceDestroying}, 0, 1, 1},
		{"another operation's instance", InstanceRecord{ID: 7, Pool: "p", OpID: "op0", State: InstanceActive}, 0, 1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.rec
			recs := &records{
				insts: map[int64]*InstanceRecord{rec.ID: &rec},
				ops: map[string]*Operation{"op1": {ID: "op1", Kind: KindProvision, Pool: "p", State: StateCreating,
					Attempts: []Attempt{{InstanceID: tc.attemptID}}}},
			}
			c := (&Manager{}).poolCount(recs, "p", nil)
			if c.billing != tc.wantBilling || c.inProgress != tc.wantProgress {
				t.Errorf("billing %d, in progress %d; want %d, %d", c.billing, c.inProgress, tc.wantBilling, tc.wantProgress)
			}
		})
	}
}

// TestSpendRatesCountsACreatedInstanceOnce: between recordCreated writing
// the instance's record and the attempt learning its id, the budget must
// count the instance once, not once as a record and once as the
// operation's reserved price (which refused a provisioning that fit, seen
// under load in TestBudgetRechecksBeforeCreate).
func TestSpendRatesCountsACreatedInstanceOnce(t *testing.T) {
	cases := []struct {
		name      string
		rec       InstanceRecord
		attemptID int64
		want      float64
	}{
		{"attempt knows the id", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceProvisioning, Price: 0.35}, 7, 0.35},
		{"record written, attempt not yet", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceProvisioning, Price: 0.35}, 0, 0.35},
		{"previous attempt destroying", InstanceRecord{ID: 7, Pool: "p", OpID: "op1", State: InstanceDestroying, Price: 0.35}, 0, 0.70},
		{"another operation's instance", InstanceRecord{ID: 7, Pool: "p", OpID: "op0", State: InstanceActive, Price: 0.35}, 0, 0.70},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.rec
			recs := &records{
				insts: map[int64]*InstanceRecord{rec.ID: &rec},
				ops: map[string]*Operation{"op1": {ID: "op1", Kind: KindProvision, Pool: "p", State: StateCreating,
					Attempts: []Attempt{{InstanceID: tc.attemptID, Price: 0.35}}}},
			}
			sv := (&Manager{fleet: noListing{}}).spendRates(recs, "")
			if math.Abs(sv.total-tc.want) > 1e-9 || math.Abs(sv.pool["p"]-tc.want) > 1e-9 {
				t.Errorf("spend %.2f (pool %.2f), want %.2f", sv.total, sv.pool["p"], tc.want)
			}
		})
	}
}

// noListing is a Fleet before its first listing: spend comes from the
// records alone.
type noListing struct{ Fleet }

func (noListing) Instances() ([]vastclient.Instance, time.Time, bool) { return nil, time.Time{}, false }
