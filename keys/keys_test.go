package keys

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

func configKey(name, secret string, mod func(*Key)) Key {
	k := Key{Name: name, Hash: Hash(secret), Source: SourceConfig}
	if mod != nil {
		mod(&k)
	}
	return k
}

func TestLookup(t *testing.T) {
	r := New(lifecycle.NewMemoryStore(), "vastai/keys", "gw")
	now := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	r.SetConfigKeys([]Key{
		configKey("a", "sa", nil),
		configKey("old", "so", func(k *Key) { k.Expires = now.Add(-time.Second) }),
		configKey("gone", "sg", func(k *Key) { k.Revoked = now.Add(-time.Hour) }),
	})
	cases := []struct {
		secret string
		want   error
	}{
		{"sa", nil}, {"", ErrMissingKey}, {"nope", ErrUnknownKey}, {"so", ErrExpired}, {"sg", ErrRevoked},
	}
	for _, tc := range cases {
		_, err := r.Snapshot().Lookup(tc.secret, now)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Lookup(%q) = %v, want %v", tc.secret, err, tc.want)
		}
	}
}

func TestAllows(t *testing.T) {
	e := &Entry{Key: Key{Limits: Limits{Pools: []string{"llm"}, Models: []string{"m1"}}}}
	cases := []struct {
		pool, model string
		want        error
	}{
		{"llm", "m1", nil}, {"", "m1", nil}, {"other", "m1", ErrPoolNotAllowed}, {"llm", "m2", ErrModelNotAllowed}, {"llm", "", ErrModelNotAllowed},
	}
	for _, tc := range cases {
		if err := e.Allows(tc.pool, tc.model); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Allows(%q, %q) = %v, want %v", tc.pool, tc.model, err, tc.want)
		}
	}
}

// TestBudgetHoldsUnderConcurrency: 50 requests at once against a budget
// that fits 10 reservations; each spends its reservation. No more than 10
// are admitted, so spend never passes the budget.
func TestBudgetHoldsUnderConcurrency(t *testing.T) {
	r := New(lifecycle.NewMemoryStore(), "vastai/keys", "gw")
	r.SetConfigKeys([]Key{configKey("a", "sa", func(k *Key) { k.Budget = 1.0 })})
	e, _ := r.Snapshot().Lookup("sa", time.Now())
	d := Demand{Tokens: 1000, Dollars: 0.1}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var tickets []*Ticket
	refused := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk, err := e.Admit(d, time.Now())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if !errors.Is(err, ErrBudgetExceeded) {
					t.Errorf("refusal %v, want budget_exceeded", err)
				}
				refused++
				return
			}
			tickets = append(tickets, tk)
		}()
	}
	wg.Wait()
	if len(tickets) != 10 || refused != 40 {
		t.Fatalf("admitted %d, refused %d; want 10 and 40", len(tickets), refused)
	}
	for _, tk := range tickets {
		tk.Settle(Outcome{TokensIn: 10, TokensOut: 10, Dollars: 0.1}, time.Now())
		tk.Release() // after a settle: no effect
	}
	u, reserved, inFlight := e.Usage(time.Now())
	if got := u.Month.Spend; got > 1.0+1e-9 || got < 1.0-1e-9 || reserved > 1e-9 || inFlight != 0 {
		t.Fatalf("spend %v reserved %v in flight %d; want 1.0, 0, 0", got, reserved, inFlight)
	}
	if _, err := e.Admit(d, time.Now()); !errors.Is(err, ErrBudgetExceeded) {
		t.Fatalf("after the budget is spent: %v", err)
	}
}

func TestLimits(t *testing.T) {
	now := time.Date(2026, 12, 3, 8, 0, 30, 0, time.UTC)
	cases := []struct {
		name  string
		key   Key
		n     int // admitted before the refusal
		limit string
	}{
		{"max_parallel", Key{Limits: Limits{MaxParallel: 3}}, 3, "max_parallel"},
		{"rpm", Key{Limits: Limits{RPM: 5}}, 5, "rpm"},
		{"tpm", Key{Limits: Limits{TPM: 2500}}, 2, "tpm"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &account{}
			for i := range tc.n {
				if _, err := a.admit(&tc.key, Demand{Tokens: 1000}, now); err != nil {
					t.Fatalf("request %d refused: %v", i+1, err)
				}
			}
			_, err := a.admit(&tc.key, Demand{Tokens: 1000}, now)
			var le *LimitError
			if !errors.As(err, &le) || le.Limit != tc.limit || !errors.Is(err, ErrRateLimited) || le.RetryAfter <= 0 {
				t.Fatalf("refusal %v, want %s with a Retry-After", err, tc.limit)
			}
		})
	}
}

func TestReleaseExactlyOnce(t *testing.T) {
	a := &account{}
	k := &Key{Limits: Limits{MaxParallel: 1, Budget: 1}}
	tk, err := a.admit(k, Demand{Dollars: 0.5}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tk.Release()
	tk.Release()
	tk.Settle(Outcome{Dollars: 0.5}, time.Now())
	if a.parallel != 0 || a.reserved != 0 || a.local.Total.Spend != 0 {
		t.Fatalf("parallel %d reserved %v spend %v after release", a.parallel, a.reserved, a.local.Total.Spend)
	}
}

// TestTwoGateways: keys created on one gateway work on the other after a
// poll, a revocation reaches it within a poll, and the spend each writes
// is summed by the other.
func TestTwoGateways(t *testing.T) {
	ctx := context.Background()
	st := lifecycle.NewMemoryStore()
	a, b := New(st, "vastai/keys", "gw-a"), New(st, "vastai/keys", "gw-b")
	for _, r := range []*Registry{a, b} {
		if err := r.Poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	secret, _, err := a.Create(ctx, Spec{Name: "team-b", Limits: Limits{Budget: 1, Period: PeriodDay}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, SecretPrefix) || len(secret) < 40 {
		t.Fatalf("secret %q", secret)
	}
	if _, err := b.Snapshot().Lookup(secret, time.Now()); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("before a poll on b: %v", err)
	}
	mustPoll(t, b)
	eb, err := b.Snapshot().Lookup(secret, time.Now())
	if err != nil {
		t.Fatalf("after a poll on b: %v", err)
	}
	tk, _ := eb.Admit(Demand{Dollars: 0.3}, time.Now())
	tk.Settle(Outcome{Dollars: 0.3}, time.Now())
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, a)
	ea, _ := a.Snapshot().Lookup(secret, time.Now())
	if _, err := ea.Admit(Demand{Dollars: 0.8}, time.Now()); !errors.Is(err, ErrBudgetExceeded) {
		t.Fatalf("a sees b's spend: admit of 0.8 over 0.3 spent of 1: %v", err)
	}
	if _, err := a.Revoke(ctx, "team-b"); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, b)
	if _, err := b.Snapshot().Lookup(secret, time.Now()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("on b after a poll: %v, want revoked", err)
	}
	for _, k := range mustList(t, st) {
		v, _ := st.Load(ctx, k)
		if strings.Contains(string(v), secret) {
			t.Errorf("storage %s holds the secret", k)
		}
	}
}

// TestRestartContinuesSpend: a gateway that restarts reads its own spend
// record before writing, so persisted spend is not lost.
func TestRestartContinuesSpend(t *testing.T) {
	ctx := context.Background()
	st := lifecycle.NewMemoryStore()
	k := configKey("a", "sa", func(k *Key) { k.Budget = 1 })
	r1 := New(st, "vastai/keys", "gw")
	r1.SetConfigKeys([]Key{k})
	mustPoll(t, r1)
	e, _ := r1.Snapshot().Lookup("sa", time.Now())
	tk, _ := e.Admit(Demand{Dollars: 0.4}, time.Now())
	tk.Settle(Outcome{Dollars: 0.4, TokensIn: 5}, time.Now())
	if err := r1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := New(st, "vastai/keys", "gw")
	r2.SetConfigKeys([]Key{k})
	if err := r2.Flush(ctx); err != nil { // before its first poll: writes nothing
		t.Fatal(err)
	}
	mustPoll(t, r2)
	e2, _ := r2.Snapshot().Lookup("sa", time.Now())
	if u, _, _ := e2.Usage(time.Now()); u.Month.Spend < 0.4-1e-9 || u.Total.TokensIn != 5 {
		t.Fatalf("after a restart: %+v", u.Month)
	}
}

func mustPoll(t *testing.T, r *Registry) {
	t.Helper()
	if err := r.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func mustList(t *testing.T, st *lifecycle.MemoryStore) []string {
	t.Helper()
	l, err := st.List(context.Background(), "vastai", true)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// BenchmarkKeyCheck is the key check on the request path: the hash of
// the secret, the snapshot lookup, the pool and model check, the
// admission (limits and budget reservation) and the settlement.
func BenchmarkKeyCheck(b *testing.B) {
	r := New(lifecycle.NewMemoryStore(), "vastai/keys", "gw")
	var list []Key
	for i := range 1000 {
		list = append(list, configKey("k"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26%26)), "secret-"+string(rune(i)), nil))
	}
	list = append(list, configKey("bench", "cvk_bench-secret-0123456789abcdefghijklmnopqrstuv", func(k *Key) {
		k.Pools, k.Models, k.RPM, k.TPM, k.MaxParallel, k.Budget = []string{"llm"}, []string{"m1"}, 1<<30, 1<<40, 1<<20, 1e12
	}))
	r.SetConfigKeys(list)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e, err := r.Snapshot().Lookup("cvk_bench-secret-0123456789abcdefghijklmnopqrstuv", now)
			if err != nil {
				b.Fatal(err)
			}
			if err := e.Allows("llm", "m1"); err != nil {
				b.Fatal(err)
			}
			tk, err := e.Admit(Demand{Tokens: 1100, Dollars: 0.001}, now)
			if err != nil {
				b.Fatal(err)
			}
			tk.Settle(Outcome{TokensIn: 100, TokensOut: 1000, Dollars: 0.001}, now)
		}
	})
}

// TestRunFlushesOnStop: the loop writes the spend when it stops, so a
// shutdown loses nothing settled.
func TestRunFlushesOnStop(t *testing.T) {
	st := lifecycle.NewMemoryStore()
	r := New(st, "vastai/keys", "gw")
	r.SetConfigKeys([]Key{configKey("a", "sa", nil)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, time.Hour, time.Hour, func(op string, err error) { t.Errorf("%s: %v", op, err) })
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !r.isLoaded() {
		if time.Now().After(deadline) {
			t.Fatal("the first poll did not happen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e, _ := r.Snapshot().Lookup("sa", time.Now())
	tk, _ := e.Admit(Demand{}, time.Now())
	tk.Settle(Outcome{TokensIn: 3, TokensOut: 4, Dollars: 0.25}, time.Now())
	cancel()
	<-done
	b, err := st.Load(context.Background(), "vastai/keys/spend/gw.json")
	if err != nil || !strings.Contains(string(b), `"spend":0.25`) {
		t.Fatalf("spend record after stop: %s (%v)", b, err)
	}
}

// TestReservationsSharedAcrossGateways: a request in flight on one
// gateway holds its reservation against the budget on the others after a
// flush and a poll; when that gateway stops writing (it died), its
// reservations stop counting after ReservationTTL.
func TestReservationsSharedAcrossGateways(t *testing.T) {
	ctx := context.Background()
	st := lifecycle.NewMemoryStore()
	k := configKey("a", "sa", func(k *Key) { k.Budget = 1 })
	a, b := New(st, "vastai/keys", "gw-a"), New(st, "vastai/keys", "gw-b")
	for _, r := range []*Registry{a, b} {
		r.SetConfigKeys([]Key{k})
		mustPoll(t, r)
	}
	eb, _ := b.Snapshot().Lookup("sa", time.Now())
	held, err := eb.Admit(Demand{Dollars: 0.7}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, a)
	ea, _ := a.Snapshot().Lookup("sa", time.Now())
	if _, err := ea.Admit(Demand{Dollars: 0.5}, time.Now()); !errors.Is(err, ErrBudgetExceeded) {
		t.Fatalf("with 0.7 of 1 reserved on b: %v", err)
	}
	a.now = func() time.Time { return time.Now().Add(ReservationTTL + time.Second) }
	mustPoll(t, a)
	tk, err := ea.Admit(Demand{Dollars: 0.5}, time.Now())
	if err != nil {
		t.Fatalf("b's record is older than ReservationTTL: %v", err)
	}
	tk.Release()
	held.Settle(Outcome{Dollars: 0.7}, time.Now())
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	a.now = time.Now
	mustPoll(t, a)
	if _, err := ea.Admit(Demand{Dollars: 0.5}, time.Now()); !errors.Is(err, ErrBudgetExceeded) {
		t.Fatalf("with 0.7 of 1 spent on b: %v", err)
	}
}

// TestHistorySumsDaysAndGateways: spend per key per day and month, kept
// when the day turns, summed over two gateways on one storage.
func TestHistorySumsDaysAndGateways(t *testing.T) {
	ctx := context.Background()
	st := lifecycle.NewMemoryStore()
	day1 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := day1
	a, b := New(st, "vastai/keys", "gw-a"), New(st, "vastai/keys", "gw-b")
	for _, r := range []*Registry{a, b} {
		r.now = func() time.Time { return clock }
		mustPoll(t, r)
	}
	secret, _, err := a.Create(ctx, Spec{Name: "team-h"})
	if err != nil {
		t.Fatal(err)
	}
	mustPoll(t, b)
	spend := func(r *Registry, dollars float64) {
		t.Helper()
		e, err := r.Snapshot().Lookup(secret, clock)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := e.Admit(Demand{Dollars: dollars}, clock)
		if err != nil {
			t.Fatal(err)
		}
		tk.Settle(Outcome{Dollars: dollars, TokensIn: 10, TokensOut: 20}, clock)
	}
	spend(a, 0.25)
	spend(b, 0.5)
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	clock = day1.Add(24 * time.Hour) // 2026-12-01: a new day and a new month
	spend(a, 1)
	days, err := a.History(ctx, PeriodDay)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		period string
		spend  float64
		reqs   int64
	}{{"2026-11-30", 0.75, 2}, {"2026-12-01", 1, 1}}
	if len(days) != len(want) {
		t.Fatalf("day rows %+v, want %d", days, len(want))
	}
	for i, w := range want {
		if d := days[i]; d.Key != "team-h" || d.Period != w.period || math.Abs(d.Spend-w.spend) > 1e-9 || d.Requests != w.reqs {
			t.Errorf("row %d = %+v, want %s $%.2f %d requests", i, d, w.period, w.spend, w.reqs)
		}
	}
	months, _ := a.History(ctx, PeriodMonth)
	if len(months) != 2 || months[0].Period != "2026-11" || math.Abs(months[0].Spend-0.75) > 1e-9 || months[1].Period != "2026-12" {
		t.Errorf("month rows %+v, want 2026-11 $0.75 and 2026-12 $1", months)
	}
	// A restart of gateway a keeps its closed days.
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	a2 := New(st, "vastai/keys", "gw-a")
	a2.now = func() time.Time { return clock }
	mustPoll(t, a2)
	if again, _ := a2.History(ctx, PeriodDay); len(again) != 2 || math.Abs(again[0].Spend-0.75) > 1e-9 {
		t.Errorf("after a restart: %+v", again)
	}
}
