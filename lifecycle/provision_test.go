package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestProvisionBringsInstanceToReady(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	ctx := ctxT(t)

	ops, err := m.Provision(ctx, "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].State != StatePending || ops[0].Kind != KindProvision {
		t.Fatalf("Provision returned %+v, want one pending provisioning", ops)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded || op.InstanceID == 0 || len(op.Attempts) != 1 {
		t.Fatalf("operation = %+v, want succeeded with one attempt", op)
	}
	if st, _, _ := h.fleet.State(op.InstanceID); st != FleetReady {
		t.Errorf("fleet state %q, want ready", st)
	}
	a := op.Attempts[0]
	if a.State != AttemptReady || a.InstanceID != op.InstanceID || a.MachineID == 0 || a.Price <= 0 || a.Ended.IsZero() {
		t.Errorf("attempt = %+v", a)
	}

	// The instance carries the label and a 32-character token.
	in := h.simInstance(op.InstanceID)
	if in.Label != op.Label || !strings.HasPrefix(in.Label, "cv:gw:p:"+op.ID) {
		t.Errorf("label %q, want %q", in.Label, op.Label)
	}
	if l, err := ParseLabel(in.Label); err != nil || l.Pool != "p" || l.OpID != op.ID || l.Gateway != "gw" {
		t.Errorf("ParseLabel(%q) = %+v, %v", in.Label, l, err)
	}
	row, err := h.api.ShowInstance(ctx, op.InstanceID)
	if err != nil {
		t.Fatal(err)
	}
	token := row.ExtraEnv[EnvToken]
	if len(token) != TokenLen || strings.Trim(token, tokenAlphabet) != "" {
		t.Fatalf("token %q is not %d characters of [A-Za-z0-9]", token, TokenLen)
	}
	if row.ExtraEnv["-p 8000:8000"] != "1" || row.ExtraEnv["VLLM_MODEL"] != "test/model" {
		t.Errorf("template env not passed: %v", row.ExtraEnv.Vars())
	}

	// Records: the instance is active; nothing stored holds the token.
	recs := m.Instances()
	if len(recs) != 1 || recs[0].ID != op.InstanceID || recs[0].State != InstanceActive || recs[0].OpID != op.ID {
		t.Fatalf("records = %+v", recs)
	}
	keys, err := h.store.List(ctx, "vastai", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		b, err := h.store.Load(ctx, k)
		if err != nil {
			continue // a "directory"
		}
		if strings.Contains(string(b), token) {
			t.Errorf("store key %s contains the instance token", k)
		}
	}
	opJSON, _ := json.Marshal(op)
	if strings.Contains(string(opJSON), token) {
		t.Error("operation JSON contains the token")
	}
	if !strings.Contains(strings.Join(keys, " "), "vastai/gw/operations/"+op.ID+".json") {
		t.Errorf("operation record missing from store keys %v", keys)
	}
}

// TestProvisionReplacesFailedAttempts covers the failures that must end in
// a verified destruction and a new attempt on another machine.
func TestProvisionReplacesFailedAttempts(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// hook breaks the first attempt at a step.
		step    string
		breakFn func(h *harness, a Attempt)
		errPart string
		// destroyed: the first attempt had an instance to destroy.
		destroyed bool
		blocked   bool
	}{
		{
			name: "no_such_ask", step: "before-create",
			breakFn: func(h *harness, a Attempt) { h.sim.RemoveOffer(a.OfferID) },
			errPart: "no_such_ask",
		},
		{
			name: "exited", step: "waiting",
			breakFn:   func(h *harness, a Attempt) { h.sim.SetStatus(a.InstanceID, "exited") },
			errPart:   "", // the fleet or the row may report it first
			destroyed: true, blocked: true,
		},
		{
			name: "intended_stopped", step: "waiting",
			breakFn:   func(h *harness, a Attempt) { h.sim.SetIntendedStatus(a.InstanceID, "stopped") },
			errPart:   "intended_status",
			destroyed: true, blocked: true,
		},
		{
			name: "never_ready", step: "waiting",
			breakFn:   func(h *harness, a Attempt) { h.sim.SetEngineReady(a.InstanceID, false) },
			errPart:   "not ready within",
			destroyed: true, blocked: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(nil))
			// The pool keeps the package's 3s ready_timeout: never_ready
			// waits it out, and the second attempt must not hit it on a
			// loaded machine.
			m := h.manager(h.config(nil))
			broken := false
			m.hook = func(op *Operation, step string) error {
				if step == tc.step && !broken && len(op.Attempts) == 1 {
					broken = true
					tc.breakFn(h, op.Attempts[0])
				}
				return nil
			}
			ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
			if err != nil {
				t.Fatal(err)
			}
			op := waitOp(t, 60*time.Second, m, ops[0].ID)
			if op.State != StateSucceeded || len(op.Attempts) != 2 {
				t.Fatalf("operation = %s (%s) with %d attempts, want succeeded after 2: %+v", op.State, op.Error, len(op.Attempts), op.Attempts)
			}
			first, second := op.Attempts[0], op.Attempts[1]
			if first.State != AttemptFailed || !strings.Contains(first.Error, tc.errPart) || first.Ended.IsZero() {
				t.Errorf("first attempt = %+v, want failed mentioning %q", first, tc.errPart)
			}
			if first.MachineID == second.MachineID {
				t.Errorf("second attempt reused machine %d", first.MachineID)
			}
			if tc.destroyed {
				in := h.simInstance(first.InstanceID)
				if !in.Destroyed || !in.Gone {
					t.Errorf("first instance %d not destroyed: %+v", first.InstanceID, in)
				}
				// The destruction was its own verified operation.
				var found bool
				for _, o := range m.Operations() {
					if o.Kind == KindDestroy && o.InstanceID == first.InstanceID {
						found = o.State == StateSucceeded && o.Parent == op.ID
					}
				}
				if !found {
					t.Error("no succeeded destroy operation for the failed attempt's instance")
				}
			} else if first.InstanceID != 0 {
				t.Errorf("first attempt has instance %d, want none", first.InstanceID)
			}
			blocked, err := m.loadBlocklist(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			isBlocked := len(blocked) == 1 && blocked[0] == first.MachineID
			if isBlocked != tc.blocked {
				t.Errorf("blocklist = %v, want machine %d blocked: %v", blocked, first.MachineID, tc.blocked)
			}
			if alive := h.ours(true); len(alive) != 1 || alive[0].ID != op.InstanceID {
				t.Errorf("alive instances = %+v, want only %d", alive, op.InstanceID)
			}
		})
	}
}

// TestProvisionGivesUpAfterMaxAttempts: an engine that never gets ready
// (EngineReadyDelay longer than ReadyTimeout) on every machine. Each
// attempt is on another machine and is destroyed; nothing is left.
func TestProvisionGivesUpAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.EngineReadyDelay = time.Minute }))
	m := h.manager(h.config(func(c *Config) {
		p := c.Pools["p"]
		p.ReadyTimeout = jsondur.Duration(300 * time.Millisecond)
		p.MaxAttempts = 3
		p.Offer.MinDirectPorts = 0 // three RTX 4090 machines
		c.Pools["p"] = p
	}))
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 20*time.Second, m, ops[0].ID)
	if op.State != StateFailed || len(op.Attempts) != 3 || !strings.Contains(op.Error, "all 3 attempts failed") {
		t.Fatalf("operation = %s %q with %d attempts", op.State, op.Error, len(op.Attempts))
	}
	machines := map[int64]bool{}
	for _, a := range op.Attempts {
		if machines[a.MachineID] {
			t.Errorf("machine %d used twice", a.MachineID)
		}
		machines[a.MachineID] = true
		if a.State != AttemptFailed || !strings.Contains(a.Error, "not ready within") {
			t.Errorf("attempt %+v", a)
		}
		if in := h.simInstance(a.InstanceID); !in.Destroyed || !in.Gone {
			t.Errorf("instance %d of a failed attempt not destroyed", a.InstanceID)
		}
	}
	if alive := h.ours(true); len(alive) != 0 {
		t.Errorf("instances left alive: %+v", alive)
	}
}

func TestCreateSuccessFalseIsTracked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	m.hook = func(op *Operation, step string) error {
		switch step {
		case "before-create":
			h.sim.SetFaults(vastsim.Faults{CreateSuccessFalse: true})
		case "after-create":
			h.sim.SetFaults(vastsim.Faults{})
		}
		return nil
	}
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded || len(op.Attempts) != 1 || op.InstanceID == 0 {
		t.Fatalf("operation = %+v", op)
	}
	if alive := h.ours(true); len(alive) != 1 || alive[0].ID != op.InstanceID {
		t.Errorf("alive = %+v", alive)
	}
}

func TestCreateUncertainResolvedByLabel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	m.hook = func(op *Operation, step string) error {
		switch step {
		case "before-create":
			// The create is executed but its answer is truncated: the
			// "lost response" case.
			h.fleet.paused.Store(true)
			h.sim.SetFaults(vastsim.Faults{MalformedJSON: true})
		case "after-create":
			h.sim.SetFaults(vastsim.Faults{})
			h.fleet.paused.Store(false)
		}
		return nil
	}
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded || len(op.Attempts) != 1 {
		t.Fatalf("operation = %s %q, %d attempts: %+v", op.State, op.Error, len(op.Attempts), op.Attempts)
	}
	all := h.ours(false)
	if len(all) != 1 || all[0].ID != op.InstanceID || all[0].Destroyed {
		t.Errorf("instances with our label = %+v, want exactly the one found by label", all)
	}
	// The label lookup happened before any second create.
	creates := 0
	for _, c := range h.sim.APICalls() {
		if strings.HasPrefix(c.Route, "PUT /api/v0/asks/") {
			creates++
		}
	}
	if creates != 1 {
		t.Errorf("%d create calls, want 1", creates)
	}
}

func TestProvisionWithOfferID(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{OfferID: 29911230})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 10*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded || op.Attempts[0].OfferID != 29911230 {
		t.Fatalf("operation = %+v", op)
	}
	if _, err := m.Provision(ctxT(t), "p", ProvisionRequest{OfferID: 29911230}); !errors.Is(err, ErrNoOffers) {
		t.Errorf("renting a rented offer: %v, want ErrNoOffers", err)
	}
	if _, err := m.Provision(ctxT(t), "p", ProvisionRequest{OfferID: 1, Count: 2}); err == nil {
		t.Error("offer_id with count 2 accepted")
	}
}

func TestProvisionRefusals(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		sim    func(*vastsim.Options)
		cfg    func(*Config)
		before int // instances provisioned first
		req    ProvisionRequest
		pool   string
		check  func(t *testing.T, err error)
	}{
		{
			name: "unknown pool", pool: "nope",
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrUnknownPool) {
					t.Errorf("err = %v, want ErrUnknownPool", err)
				}
			},
		},
		{
			name: "instance price cap with an explicit offer",
			cfg: func(c *Config) {
				p := c.Pools["p"]
				p.MaxPricePerHour = 0.38
				c.Pools["p"] = p
			},
			req: ProvisionRequest{OfferID: 29911230}, // $0.40 + storage
			check: func(t *testing.T, err error) {
				var be *BudgetError
				if !errors.As(err, &be) || be.Scope != ScopeInstance || be.Limit != 0.38 || be.Requested < 0.40 {
					t.Errorf("err = %v, want an instance BudgetError with figures", err)
				}
			},
		},
		{
			name: "no offer under the price cap",
			cfg: func(c *Config) {
				p := c.Pools["p"]
				p.MaxPricePerHour = 0.10
				c.Pools["p"] = p
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrNoOffers) {
					t.Errorf("err = %v, want ErrNoOffers", err)
				}
			},
		},
		{
			name: "pool budget",
			cfg: func(c *Config) {
				p := c.Pools["p"]
				p.MaxSpendPerHour = 0.5
				c.Pools["p"] = p
			},
			before: 1,
			check: func(t *testing.T, err error) {
				var be *BudgetError
				if !errors.As(err, &be) || be.Scope != ScopePool || be.Limit != 0.5 ||
					be.Current < 0.35 || be.Current > 0.37 || be.Requested < 0.35 || !errors.Is(err, ErrBudget) {
					t.Errorf("err = %v (%+v), want a pool BudgetError with figures", err, be)
				}
			},
		},
		{
			name:   "gateway budget",
			cfg:    func(c *Config) { c.MaxSpendPerHour = 0.6 },
			before: 1,
			check: func(t *testing.T, err error) {
				var be *BudgetError
				if !errors.As(err, &be) || be.Scope != ScopeGateway || be.Limit != 0.6 || be.Current < 0.35 {
					t.Errorf("err = %v, want a gateway BudgetError", err)
				}
			},
		},
		{
			name: "low credit",
			sim:  func(o *vastsim.Options) { o.Credit = 3 },
			cfg:  func(c *Config) { c.MinCredit = 5 },
			check: func(t *testing.T, err error) {
				var be *BudgetError
				if !errors.As(err, &be) || be.Scope != ScopeCredit || be.Limit != 5 || be.Current != 3 {
					t.Errorf("err = %v, want a credit BudgetError with figures", err)
				}
			},
		},
		{
			name: "max instances",
			cfg: func(c *Config) {
				p := c.Pools["p"]
				p.MaxInstances = 1
				c.Pools["p"] = p
			},
			before: 1,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrMaxInstances) || !strings.Contains(err.Error(), "max_instances 1") {
					t.Errorf("err = %v, want ErrMaxInstances", err)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fastSim(tc.sim))
			m := h.manager(h.config(tc.cfg))
			for i := 0; i < tc.before; i++ {
				if _, err := m.Provision(ctxT(t), "p", ProvisionRequest{}); err != nil {
					t.Fatal(err)
				}
			}
			pool := tc.pool
			if pool == "" {
				pool = "p"
			}
			ops, err := m.Provision(ctxT(t), pool, tc.req)
			if err == nil {
				t.Fatalf("Provision succeeded with %d operations", len(ops))
			}
			tc.check(t, err)
			if n := len(h.ours(false)); n > tc.before {
				t.Errorf("%d instances created, want at most %d", n, tc.before)
			}
		})
	}
}

// TestBudgetRechecksBeforeCreate: budgets are checked again before each
// create, counting creates in progress, so concurrent requests cannot
// overshoot.
func TestBudgetRechecksBeforeCreate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) { c.MaxSpendPerHour = 0.8 }))
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		waitOp(t, 10*time.Second, m, o.ID)
	}
	if _, err := m.Provision(ctxT(t), "p", ProvisionRequest{}); !errors.Is(err, ErrBudget) {
		t.Fatalf("third instance: %v, want a budget refusal", err)
	}
	if n := len(h.ours(true)); n != 2 {
		t.Errorf("%d instances, want 2", n)
	}
	sv := m.Pools()
	if sv.SpendPerHour < 0.7 || sv.SpendPerHour > 0.8 {
		t.Errorf("spend rate %v", sv.SpendPerHour)
	}
}

func TestOffers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(nil))
	ctx := ctxT(t)
	offers, err := m.Offers(ctx, "p", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Every single-GPU RTX 4090 with open ports (24564 MB counts as 24 GB),
	// cheapest first.
	if len(offers) != 3 {
		t.Fatalf("got %d offers, want 3: %+v", len(offers), offers)
	}
	for i, o := range offers {
		if o.GPUName != "RTX 4090" || o.NumGPUs != 1 || (i > 0 && o.DPHTotal < offers[i-1].DPHTotal) {
			t.Errorf("offer %d = %+v", i, o)
		}
	}
	searches := func() int {
		n := 0
		for _, c := range h.sim.APICalls() {
			if c.Route == "POST /api/v0/bundles/" {
				n++
			}
		}
		return n
	}
	before := searches()
	if _, err := m.Offers(ctx, "p", nil); err != nil {
		t.Fatal(err)
	}
	if searches() != before {
		t.Error("second identical search was not served from the cache")
	}
	// Overrides and the blocklist.
	m.blockMachine(ctx, 41001, "test", "test")
	us, err := m.Offers(ctx, "p", &OfferFilter{Countries: []string{"US"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(us) != 0 {
		t.Errorf("US offers with machine 41001 blocked = %+v, want none", us)
	}
	ca, err := m.Offers(ctx, "p", &OfferFilter{Countries: []string{"CA"}, MaxDPH: 1})
	if err != nil || len(ca) != 1 || ca[0].MachineID != 41002 {
		t.Errorf("CA offers = %+v, %v", ca, err)
	}
	if _, err := m.Offers(ctx, "nope", nil); !errors.Is(err, ErrUnknownPool) {
		t.Errorf("unknown pool: %v", err)
	}
}

func TestBuildQueryUnits(t *testing.T) {
	tpl := testPool().withDefaults()
	tpl.MaxPricePerHour = 0.5
	tpl.Offer.MaxDPH = 0.6
	tpl.Offer.Countries = []string{"US"}
	tpl.Offer.MinReliability = 0.95
	tpl.Offer.MinDirectPorts = 1
	tpl.Offer.MinCUDA = 12.2
	tpl.Offer.Verified = true
	q := buildQuery(tpl, tpl.Offer, []int64{7, 8})
	b, err := json.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"gpu_ram":           `{"gte":23520}`,
		"dph_total":         `{"lte":0.5}`,
		"machine_id":        `{"notin":[7,8]}`,
		"geolocation":       `{"in":["US"]}`,
		"reliability2":      `{"gte":0.95}`,
		"direct_port_count": `{"gte":1}`,
		"cuda_max_good":     `{"gte":12.2}`,
		"verified":          `{"eq":true}`,
		"type":              `"on-demand"`,
		"order":             `[["dph_total","asc"]]`,
		"allocated_storage": `10`,
	}
	for k, w := range want {
		g, _ := json.Marshal(got[k])
		if string(g) != w {
			t.Errorf("%s = %s, want %s", k, g, w)
		}
	}
	// A 24564 MB card is a 24 GB card; ×1024 would have excluded it.
	if _, ok := eligible(tpl, tpl.Offer, nil, vastclient.Offer{ID: 1, GPUName: "RTX 4090", NumGPUs: 1,
		GPURAM: 24564, DPHTotal: 0.4, Reliability2: 0.99, Geolocation: "Texas, US", DirectPortCount: 4,
		CUDAMaxGood: 12.4, Verification: "verified"}); !ok {
		t.Error("a 24564 MB RTX 4090 was refused")
	}
	bid := tpl
	bid.Type, bid.BidPrice = TypeBid, 0.2
	bq := buildQuery(bid, bid.Offer, nil)
	if _, ok := bq.Filters["min_bid"]; !ok || bq.Type != "bid" {
		t.Errorf("bid query = %+v", bq)
	}
	if p := effectivePrice(bid, vastclient.Offer{DPHTotal: 0.5, DPHBase: 0.45}); p < 0.2499 || p > 0.2501 {
		t.Errorf("bid effective price = %v, want 0.25", p)
	}
}

func TestCreateRequest(t *testing.T) {
	m := &Manager{cfg: Config{GatewayID: "gw"}.withDefaults()}
	tpl := testPool().withDefaults()
	a := m.createRequest(tpl, "cv:gw:p:0123456789")
	b := m.createRequest(tpl, "cv:gw:p:0123456789")
	if a.Env[EnvToken] == b.Env[EnvToken] || len(a.Env[EnvToken]) != TokenLen {
		t.Error("tokens are not fresh per instance")
	}
	if _, ok := tpl.Env[EnvToken]; ok {
		t.Error("the template's env was modified")
	}
	if a.Price != nil || a.Label != "cv:gw:p:0123456789" || a.Disk != 10 {
		t.Errorf("request = %+v", a)
	}
	tpl.Type, tpl.BidPrice = TypeBid, 0.3
	if r := m.createRequest(tpl, "x"); r.Price == nil || *r.Price != 0.3 {
		t.Error("bid price not sent")
	}
	_ = context.Background()
}

// TestNeverReadyReplacedOnAnotherMachine: engines that stay behind the
// portal placeholder longer than ReadyTimeout (EngineReadyDelay) are
// destroyed and replaced on another machine until one gets ready.
func TestNeverReadyReplacedOnAnotherMachine(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(func(o *vastsim.Options) { o.EngineReadyDelay = time.Minute }))
	// The package's 3s ready_timeout: the first attempt waits it out, the
	// second must not hit it on a loaded machine.
	m := h.manager(h.config(nil))
	m.hook = func(op *Operation, step string) error {
		if step == "waiting" && len(op.Attempts) == 2 {
			// The second host loads its model in time.
			h.sim.SetEngineReady(op.Attempts[1].InstanceID, true)
		}
		return nil
	}
	ops, err := m.Provision(ctxT(t), "p", ProvisionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	op := waitOp(t, 60*time.Second, m, ops[0].ID)
	if op.State != StateSucceeded || len(op.Attempts) != 2 {
		t.Fatalf("operation %s %q, attempts %+v", op.State, op.Error, op.Attempts)
	}
	a, b := op.Attempts[0], op.Attempts[1]
	if a.MachineID == b.MachineID || !strings.Contains(a.Error, "not ready within") {
		t.Errorf("attempts %+v", op.Attempts)
	}
	if in := h.simInstance(a.InstanceID); !in.Destroyed || !in.Gone {
		t.Error("the never-ready instance was not destroyed")
	}
}

// TestBidPool: a bid pool sends its price and is budgeted at the bid.
func TestBidPool(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fastSim(nil))
	m := h.manager(h.config(func(c *Config) {
		p := c.Pools["p"]
		p.Type, p.BidPrice = TypeBid, 0.2
		p.MaxPricePerHour = 0.25 // below every on-demand price
		c.Pools["p"] = p
	}))
	op := provisionOne(t, m)
	row, err := h.api.ShowInstance(ctxT(t), op.InstanceID)
	if err != nil {
		t.Fatal(err)
	}
	if !row.IsBid || row.DPHTotal > 0.21 {
		t.Errorf("instance is_bid=%v dph_total=%v, want a $0.20 bid", row.IsBid, row.DPHTotal)
	}
	if p := op.Attempts[0].Price; p < 0.2 || p > 0.21 {
		t.Errorf("attempt price %v, want the bid plus storage", p)
	}
}

func TestBudgetErrorMessages(t *testing.T) {
	t.Parallel()
	cases := []struct {
		e    BudgetError
		want []string
	}{
		{BudgetError{Scope: ScopeCredit, Limit: 5, Current: 3}, []string{"$3.00", "$5.00", "min_credit"}},
		{BudgetError{Scope: ScopeInstance, Pool: "p", Limit: 0.38, Requested: 0.4}, []string{`"p"`, "$0.4000/h", "$0.3800/h", "max_price_per_hour"}},
		{BudgetError{Scope: ScopePool, Pool: "p", Limit: 0.5, Current: 0.35, Requested: 0.36}, []string{"$0.3500/h", "$0.3600/h", "$0.5000/h"}},
		{BudgetError{Scope: ScopeGateway, Limit: 1, Current: 0.9, Requested: 0.2}, []string{"gateway", "$0.9000/h", "$1.0000/h"}},
	}
	for _, tc := range cases {
		err := error(&tc.e)
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q does not mention %q", err.Error(), w)
			}
		}
		if !errors.Is(err, ErrBudget) {
			t.Error("not ErrBudget")
		}
		b, _ := json.Marshal(tc.e)
		if !strings.Contains(string(b), `"scope":"`+tc.e.Scope+`"`) {
			t.Errorf("JSON %s", b)
		}
	}
}

// TestEligibleRechecksFilters: the client re-checks every filter, so a
// server ignoring one cannot make the gateway rent the wrong thing.
func TestEligibleRechecksFilters(t *testing.T) {
	t.Parallel()
	tpl := testPool().withDefaults()
	tpl.MaxPricePerHour = 0.5
	f := tpl.Offer
	f.MaxDPH = 0.6
	f.MinReliability = 0.95
	f.Verified = true
	f.Countries = []string{"US", "CA"}
	f.MinCUDA = 12.2
	good := vastclient.Offer{ID: 1, MachineID: 9, GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHTotal: 0.4,
		Reliability2: 0.99, Verification: "verified", Geolocation: "Quebec, CA", DirectPortCount: 4, CUDAMaxGood: 12.4}
	if why, ok := eligible(tpl, f, nil, good); !ok {
		t.Fatalf("good offer refused: %s", why)
	}
	cases := map[string]func(o *vastclient.Offer){
		"no id":                          func(o *vastclient.Offer) { o.ID = 0 },
		"no price":                       func(o *vastclient.Offer) { o.DPHTotal = 0 },
		"machine blocklisted":            func(o *vastclient.Offer) { o.MachineID = 7 },
		"gpu_name":                       func(o *vastclient.Offer) { o.GPUName = "RTX 3090" },
		"num_gpus":                       func(o *vastclient.Offer) { o.NumGPUs = 2 },
		"gpu_ram":                        func(o *vastclient.Offer) { o.GPURAM = 16000 },
		"price above max_price_per_hour": func(o *vastclient.Offer) { o.DPHTotal = 0.55 },
		"reliability2":                   func(o *vastclient.Offer) { o.Reliability2 = 0.9 },
		"not verified":                   func(o *vastclient.Offer) { o.Verification = "unverified" },
		"direct_port_count":              func(o *vastclient.Offer) { o.DirectPortCount = 0 },
		"cuda_max_good":                  func(o *vastclient.Offer) { o.CUDAMaxGood = 12.0 },
		"country":                        func(o *vastclient.Offer) { o.Geolocation = "Spain, ES" },
	}
	for want, mod := range cases {
		o := good
		mod(&o)
		if why, ok := eligible(tpl, f, map[int64]bool{7: true}, o); ok || why != want {
			t.Errorf("%s: eligible = %v (%q)", want, ok, why)
		}
	}
	merged := mergeFilter(tpl.Offer, &OfferFilter{GPUName: "RTX 3090", Countries: []string{"PL"}, Limit: 3,
		Extra: map[string]map[string]any{"inet_down": {"gte": 100}}})
	if merged.GPUName != "RTX 3090" || merged.NumGPUs != 1 || merged.Limit != 3 || merged.Extra["inet_down"] == nil {
		t.Errorf("merged filter = %+v", merged)
	}
	if tpl.Offer.GPUName != "RTX 4090" || tpl.Offer.Extra != nil {
		t.Error("merging modified the pool's filter")
	}
}

// TestBudgetRateCountsStartingInstancesInFull: budgets take what an
// instance bills from ledger.Rate, except that one still starting counts at
// its full dph_total, as a create in progress does.
func TestBudgetRateCountsStartingInstancesInFull(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   vastclient.Instance
		want float64
	}{
		{"running", vastclient.Instance{ActualStatus: "running", CurState: "running"}, 1.0},
		{"loading counts in full", vastclient.Instance{ActualStatus: "loading"}, 1.0},
		{"created counts in full", vastclient.Instance{ActualStatus: "created"}, 1.0},
		{"null counts in full", vastclient.Instance{}, 1.0},
		{"stopped counts its storage", vastclient.Instance{ActualStatus: "stopped", CurState: "stopped"}, 0.01},
		{"loading but stopped counts its storage", vastclient.Instance{ActualStatus: "loading", CurState: "stopped"}, 0.01},
		{"exited counts its storage", vastclient.Instance{ActualStatus: "exited"}, 0.01},
		{"unloaded counts nothing", vastclient.Instance{ActualStatus: "loading", CurState: "unloaded"}, 0},
	}
	for _, tc := range cases {
		in := tc.in
		in.DPHTotal, in.StorageTotalCost = 1.0, 0.01
		if got := budgetRate(&in); got != tc.want {
			t.Errorf("%s: budgetRate = %v, want %v", tc.name, got, tc.want)
		}
	}
}
