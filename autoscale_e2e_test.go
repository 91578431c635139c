package vastai

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
	"github.com/chromedp/chromedp"
)

// autoscalePool is a pool at min 0 with time-compressed autoscale
// settings; %s is extra autoscale options.
const autoscalePool = `		lease_ttl 3s
		provision_poll_interval 100ms
		pool llm {
			health {
				interval 100ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 3
				max_price_per_hour 2
				ready_timeout 20s
%s
			}
			autoscale {
				min 0
				max 3
				target_load 8
				decision_interval 100ms
				stable_window 2s
				panic_window 600ms
				scale_up_delay 5s
				scale_down_delay 2s
				idle_to_zero 3s
				drain_timeout 10s
%s
			}
		}`

func autoscaleConfig(t testing.TB, sim *vastsim.Sim, provisionExtra, autoscaleExtra string) string {
	return lifecycleConfig(t, sim.URL(), fmt.Sprintf(autoscalePool, provisionExtra, autoscaleExtra), `	vastai_proxy llm`)
}

// poolAutoscale reads the pool's autoscale section of the admin API.
func poolAutoscale(t testing.TB, pool string) adminapi.Autoscale {
	t.Helper()
	var v adminapi.Pool
	if code, body := adminGET(t, "/vastai/pools/"+pool, &v); code != http.StatusOK || v.Autoscale == nil {
		t.Fatalf("GET /vastai/pools/%s: %d %s", pool, code, body)
	}
	return *v.Autoscale
}

// heldRequest sends one completion (a stream when stream is set) with an
// X-Request-Id, and reports its status and whether it ended properly.
type heldResult struct {
	id       string
	status   int
	complete bool
	body     string
	header   http.Header
}

func sendCompletion(ctx context.Context, id string, stream bool) heldResult {
	body := `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4}`
	if stream {
		body = `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4,"stream":true}`
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, testProxyURL+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return heldResult{id: id, body: err.Error()}
	}
	defer resp.Body.Close()
	r := heldResult{id: id, status: resp.StatusCode, header: resp.Header}
	if !stream || resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		r.body = string(b)
		r.complete = resp.StatusCode == http.StatusOK && strings.Contains(r.body, `"choices"`)
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "data: [DONE]" {
			r.complete = true
		}
	}
	return r
}

// TestABurstAtZeroIsHeldServedInOrderAndTheIdlePoolReturnsToZero: a pool
// at min 0 gets 40 requests (a quarter of them streams) while it has no
// instance. All are held, one instance is created, all 40 succeed and
// reach the engine in the order they arrived; then, idle, the pool goes
// back to 0 and the instance is destroyed with verification.
func TestABurstAtZeroIsHeldServedInOrderAndTheIdlePoolReturnsToZero(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: time.Second, TokenInterval: 5 * time.Millisecond})
	startCaddy(t, autoscaleConfig(t, sim, "", ""))
	waitFor(t, 30*time.Second, "the autoscaler's first decision", func() bool {
		v := poolAutoscale(t, "llm")
		return v.DecidedAt != nil && v.Waiting == "" && v.Desired == 0
	})

	const n = 40
	var sentMu sync.Mutex
	var sentOrder []string
	hook := func(req *http.Request) {
		sentMu.Lock()
		sentOrder = append(sentOrder, req.Header.Get("X-Request-Id"))
		sentMu.Unlock()
	}
	heldSentHook.Store(&hook)
	t.Cleanup(func() { heldSentHook.Store(nil) })
	results := make(chan heldResult, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("burst-%02d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- sendCompletion(context.Background(), id, i%4 == 0)
		}()
		// The next request is sent once this one is held, so the arrival
		// order is known; the instance cannot be ready this early (its
		// image loads for a second after the create).
		waitFor(t, 30*time.Second, id+" held", func() bool { return poolAutoscale(t, "llm").Held >= i+1 })
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.status != http.StatusOK || !r.complete {
			t.Errorf("%s: status %d, complete %v: %.300s", r.id, r.status, r.complete, r.body)
		}
	}
	created := 0
	var inst int64
	for _, in := range sim.Instances() {
		if strings.HasPrefix(in.Label, "cv:default:llm:") {
			created++
			inst = in.ID
		}
	}
	if created != 1 {
		t.Fatalf("%d instances created for the burst, want 1", created)
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("burst-%02d", i)
	}
	sentMu.Lock()
	sent := strings.Join(sentOrder, ",")
	sentMu.Unlock()
	if sent != strings.Join(want, ",") {
		t.Errorf("held requests written to the instance in the order %s, want the order of arrival %v", sent, want)
	}
	// The engine reads each connection on its own goroutine, so its
	// handlers may start a few microseconds out of that order; all 40
	// reach it, each once.
	arrivals := append([]string(nil), sim.Engine(inst).Arrivals...)
	sort.Strings(arrivals)
	if strings.Join(arrivals, ",") != strings.Join(want, ",") {
		t.Errorf("engine arrivals %v, want each of the 40 once", sim.Engine(inst).Arrivals)
	}
	v := poolAutoscale(t, "llm")
	if v.HeldTotal < n || v.Rejected["max_pending"]+v.Rejected["max_wait"] != 0 {
		t.Errorf("autoscale view after the burst: %+v", v)
	}

	// Idle: back to zero, and the instance destroyed with verification.
	waitFor(t, 60*time.Second, "the idle pool back at zero, its instance destroyed", func() bool {
		return len(ours(sim)) == 0 && poolAutoscale(t, "llm").Desired == 0
	})
	if v := poolAutoscale(t, "llm"); v.Reason != "idle_to_zero" && v.Reason != "hold" {
		t.Errorf("decision at zero: %s (%s)", v.Reason, v.Explanation)
	}
	waitFor(t, 60*time.Second, "the destroy verified", func() bool {
		var ops []operation
		adminGET(t, "/vastai/operations", &ops)
		for _, op := range ops {
			if op.Kind == "destroy" && op.InstanceID == inst && op.State == "succeeded" {
				return true
			}
		}
		return false
	})
	// Nothing woke the pool again: no request came.
	if c := createdFor(sim); len(c) != 1 {
		t.Errorf("instances created %v; the idle pool was woken without a request", c)
	}
	if v := poolAutoscale(t, "llm"); v.Desired != 0 {
		t.Errorf("desired %d after the idle pool's instance went (%s: %s)", v.Desired, v.Reason, v.Explanation)
	}
}

// TestHeldRequestsBeyondMaxPendingOrMaxWaitGet503CapacityUnavailable: a
// pool that cannot scale up (the account's credit is below min_credit) holds at most
// max_pending requests, refuses the next at once, answers the held ones
// with a 503 after max_wait, and forgets a client that gave up.
func TestHeldRequestsBeyondMaxPendingOrMaxWaitGet503CapacityUnavailable(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	cfg := autoscaleConfig(t, sim, "", "				max_pending 2\n				max_wait 2s")
	startCaddy(t, strings.Replace(cfg, "lease_ttl 3s", "lease_ttl 3s\n\t\tmin_credit 1000000", 1))
	waitFor(t, 30*time.Second, "the autoscaler's first decision", func() bool {
		v := poolAutoscale(t, "llm")
		return v.DecidedAt != nil && v.Waiting == ""
	})

	// A client that gives up while held leaves the queue at once.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan heldResult, 1)
	go func() { gone <- sendCompletion(ctx, "gives-up", false) }()
	waitFor(t, 30*time.Second, "the first request held", func() bool { return poolAutoscale(t, "llm").Held == 1 })
	cancel()
	<-gone
	waitFor(t, 30*time.Second, "the client that gave up out of the queue", func() bool { return poolAutoscale(t, "llm").Held == 0 })

	results := make(chan heldResult, 3)
	for i := 0; i < 2; i++ {
		go func() { results <- sendCompletion(context.Background(), fmt.Sprint("held-", i), i == 1) }()
		waitFor(t, 30*time.Second, "request held", func() bool { return poolAutoscale(t, "llm").Held == i+1 })
	}
	over := sendCompletion(context.Background(), "overflow", false)
	checkCapacityUnavailable(t, over, "max_pending")
	for i := 0; i < 2; i++ {
		checkCapacityUnavailable(t, <-results, "max_wait")
	}
	v := poolAutoscale(t, "llm")
	if v.Rejected["max_pending"] != 1 || v.Rejected["max_wait"] != 2 || v.Held != 0 {
		t.Errorf("autoscale view: %+v", v)
	}
	if len(ours(sim)) != 0 {
		t.Errorf("instances created over the budget: %+v", ours(sim))
	}
}

func checkCapacityUnavailable(t *testing.T, r heldResult, why string) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("%s: status %d, Retry-After %q, want 503 with Retry-After: %s", r.id, r.status, r.header.Get("Retry-After"), r.body)
		return
	}
	var e apiError
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error.Type != "capacity_unavailable" ||
		e.Error.Code == nil || *e.Error.Code != "capacity_unavailable" || !strings.Contains(e.Error.Message, why) {
		t.Errorf("%s: body %s, want an OpenAI error capacity_unavailable naming %s", r.id, r.body, why)
	}
}

// TestALoadRampIsFollowedWithoutFlappingOrFailedRequests: 1 → 30 → 1
// concurrent clients. The desired count rises to max, the instances stay
// within max and the pool budget (which fits two), scale-down goes one
// instance per scale_down_delay with no increase in between, and no
// request fails while instances drain and go.
func TestALoadRampIsFollowedWithoutFlappingOrFailedRequests(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 500 * time.Millisecond, TokenInterval: 20 * time.Millisecond})
	cfg := autoscaleConfig(t, sim, "				max_spend_per_hour 0.9\n				max_price_per_hour 0.5", "")
	cfg = strings.NewReplacer("min 0", "min 1", "scale_up_delay 5s", "scale_up_delay 1s", "scale_down_delay 2s", "scale_down_delay 3s",
		"idle_to_zero 3s", "idle_to_zero 10m").Replace(cfg)
	startCaddy(t, cfg)
	waitFor(t, 60*time.Second, "the pool at its min of 1, ready", func() bool {
		v := poolAutoscale(t, "llm")
		return v.Desired == 1 && v.Current == 1
	})
	peak, stopWatch := watchLive(sim)
	defer stopWatch()

	// Every change of the desired count, as the admin API shows it.
	type change struct {
		at      time.Time
		desired int
	}
	var changes []change
	var chMu sync.Mutex
	stopObs := make(chan struct{})
	obsDone := make(chan struct{})
	go func() {
		defer close(obsDone)
		for {
			select {
			case <-stopObs:
				return
			case <-time.After(50 * time.Millisecond):
			}
			v := poolAutoscale(t, "llm")
			chMu.Lock()
			if v.ChangedAt != nil && (len(changes) == 0 || !changes[len(changes)-1].at.Equal(*v.ChangedAt)) {
				changes = append(changes, change{*v.ChangedAt, v.Desired})
			}
			chMu.Unlock()
		}
	}()

	var failed, total sync.Map
	load := newLoad(t, func(i int) {
		r := sendCompletion(context.Background(), fmt.Sprint("ramp-", i), i%3 == 0)
		total.Store(r.id, true)
		if r.status != http.StatusOK || !r.complete {
			failed.Store(r.id, fmt.Sprintf("%d %.200s", r.status, r.body))
		}
	})
	sent := func() int {
		n := 0
		total.Range(func(any, any) bool { n++; return true })
		return n
	}
	load.set(1)
	waitFor(t, 30*time.Second, "a few requests from one client", func() bool { return sent() >= 3 })
	load.set(30)
	waitFor(t, 60*time.Second, "the desired count at max under 30 clients", func() bool { return poolAutoscale(t, "llm").Desired == 3 })
	waitFor(t, 60*time.Second, "two instances serving (the budget fits two)", func() bool { return poolAutoscale(t, "llm").Current == 2 })
	load.set(1)
	waitFor(t, 90*time.Second, "back to one instance under one client", func() bool {
		v := poolAutoscale(t, "llm")
		return v.Desired == 1 && len(ours(sim)) == 1
	})
	load.stop()
	close(stopObs)
	<-obsDone

	n := sent()
	failed.Range(func(k, v any) bool { t.Errorf("request %v failed: %v", k, v); return true })
	if n < 50 {
		t.Errorf("only %d requests were sent; the ramp tested little", n)
	}
	if p := peak(); p > 2 {
		t.Errorf("%d instances live at once; the pool budget fits 2", p)
	}
	if v := poolAutoscale(t, "llm"); v.Scale == nil || !strings.Contains(v.Scale.LastRefusal, "max_spend_per_hour") {
		t.Errorf("the refused third instance is not reported: %+v", v.Scale)
	}
	chMu.Lock()
	defer chMu.Unlock()
	var downs []change
	for i, c := range changes {
		if c.desired > 3 {
			t.Errorf("desired %d above max 3", c.desired)
		}
		if i > 0 && c.desired < changes[i-1].desired {
			downs = append(downs, c)
		} else if len(downs) > 0 && i > 0 && c.desired > changes[i-1].desired {
			t.Errorf("desired rose again (%v) after scaling down began: flapping", changes)
		}
	}
	for i := 1; i < len(downs); i++ {
		if gap := downs[i].at.Sub(downs[i-1].at); gap < 3*time.Second {
			t.Errorf("two scale-downs %v apart, want at least scale_down_delay 3s: %v", gap, changes)
		}
	}
	if len(downs) != 2 {
		t.Errorf("scale-downs %v, want 3→2→1 one at a time (changes %v)", downs, changes)
	}
}

// rampLoad runs n concurrent clients, each sending requests back to back.
type rampLoad struct {
	t    *testing.T
	fn   func(i int)
	mu   sync.Mutex
	stop func()
	quit []chan struct{}
	wg   sync.WaitGroup
	seq  atomic.Int64
}

func newLoad(t *testing.T, fn func(i int)) *rampLoad {
	l := &rampLoad{t: t, fn: fn}
	l.stop = func() {
		l.set(0)
		l.wg.Wait()
	}
	t.Cleanup(l.stop)
	return l
}

// set changes the number of clients to n.
func (l *rampLoad) set(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.quit) < n {
		q := make(chan struct{})
		l.quit = append(l.quit, q)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-q:
					return
				default:
				}
				l.fn(int(l.seq.Add(1)))
			}
		}()
	}
	for len(l.quit) > n {
		close(l.quit[len(l.quit)-1])
		l.quit = l.quit[:len(l.quit)-1]
	}
}

// TestAReloadKeepsTheAutoscalerWindowsAndRunsOneLoop: reloads that change
// an autoscale setting carry the pool's windows, desired count and idle
// clock over (no reset to empty averages), and never run a second loop.
func TestAReloadKeepsTheAutoscalerWindowsAndRunsOneLoop(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 300 * time.Millisecond, TokenInterval: 20 * time.Millisecond})
	base := strings.NewReplacer("stable_window 2s", "stable_window 30s", "idle_to_zero 3s", "idle_to_zero 10m").
		Replace(autoscaleConfig(t, sim, "", ""))
	tc := startCaddy(t, base)
	load := newLoad(t, func(i int) { sendCompletion(context.Background(), fmt.Sprint("r-", i), false) })
	load.set(3)
	waitFor(t, 60*time.Second, "an instance serving with load in the stable window", func() bool {
		v := poolAutoscale(t, "llm")
		return v.Current == 1 && v.StableLoad >= 1
	})
	load.stop()
	before := poolAutoscale(t, "llm")
	for i, target := range []string{"target_load 9", "target_load 10", "target_load 11"} {
		tc.InitServer(strings.Replace(base, "target_load 8", target, 1), "caddyfile")
		var after adminapi.Autoscale
		waitFor(t, 30*time.Second, "a decision of the reloaded config", func() bool {
			after = poolAutoscale(t, "llm")
			return after.TargetLoad != before.TargetLoad && after.DecidedAt != nil && after.DecidedAt.After(*before.DecidedAt)
		})
		// No sample with load since the stop: an emptied window would
		// read 0 here, a kept one still averages the load before.
		if after.StableLoad <= 0 || after.Desired != before.Desired {
			t.Fatalf("reload %d: stable load %.2f desired %d, before %.2f desired %d: the windows were reset",
				i, after.StableLoad, after.Desired, before.StableLoad, before.Desired)
		}
		loops := int32(-1)
		states.Range(func(_, v any) bool { loops = v.(*state).asLoops.Load(); return false })
		if loops != 1 {
			t.Fatalf("reload %d: %d autoscale loops running, want 1", i, loops)
		}
		before = after
	}
	if created := len(ours(sim)); created != 1 {
		t.Errorf("%d instances live after the reloads, want the 1 that served", created)
	}
}

// simInstance returns the simulator's view of one instance.
func simInstance(sim *vastsim.Sim, id int64) vastsim.InstanceInfo {
	for _, in := range sim.Instances() {
		if in.ID == id {
			return in
		}
	}
	return vastsim.InstanceInfo{}
}

// createdFor counts the instances ever created with the pool's label.
func createdFor(sim *vastsim.Sim) []int64 {
	var ids []int64
	for _, in := range sim.Instances() {
		if strings.HasPrefix(in.Label, "cv:default:llm:") {
			ids = append(ids, in.ID)
		}
	}
	return ids
}

// servedByOne sends one completion and returns the instance that served it.
func servedByOne(t *testing.T) int64 {
	t.Helper()
	r := sendCompletion(context.Background(), "warm", false)
	if r.status != http.StatusOK || !r.complete {
		t.Fatalf("request: %d %.300s", r.status, r.body)
	}
	var id int64
	fmt.Sscan(r.header.Get(InstanceHeader), &id)
	return id
}

// ledgerRow returns the cost ledger's row for one instance today.
func ledgerRow(t *testing.T, id int64) (dollars, hours float64) {
	t.Helper()
	var rep struct {
		Rows []struct {
			InstanceID int64   `json:"instance_id"`
			Dollars    float64 `json:"dollars"`
			Hours      float64 `json:"hours"`
		} `json:"rows"`
	}
	adminGET(t, "/vastai/costs?by=instance", &rep)
	for _, r := range rep.Rows {
		if r.InstanceID == id {
			dollars += r.Dollars
			hours += r.Hours
		}
	}
	return dollars, hours
}

// TestWarmPoolStopsStartsAndFallsBackWhenTheGPUIsTaken: with a warm pool,
// an idle pool stops its instance (storage billed, in the ledger) instead
// of destroying it; the next request starts that same instance, no
// create; and when someone else has rented its GPU, the start that sits
// in "scheduling" is given up after start_timeout, the instance stopped
// again, and a new instance created for the held request.
func TestWarmPoolStopsStartsAndFallsBackWhenTheGPUIsTaken(t *testing.T) {
	sim := newSim(t, vastsim.Options{LoadingDelay: 500 * time.Millisecond, TokenInterval: 5 * time.Millisecond})
	startCaddy(t, autoscaleConfig(t, sim, "", "				warm {\n					stopped 1\n					start_timeout 3s\n				}"))
	a := servedByOne(t)
	waitFor(t, 60*time.Second, "the idle instance stopped, not destroyed", func() bool {
		in := simInstance(sim, a)
		v := poolAutoscale(t, "llm")
		return in.ActualStatus == "stopped" && !in.Destroyed && v.Desired == 0 && v.Scale != nil && v.Scale.Stopped == 1
	})
	// Once the watcher lists it stopped, the warm pool bills storage only.
	waitFor(t, 30*time.Second, "the warm pool billed at its storage rate", func() bool {
		v := poolAutoscale(t, "llm")
		return v.Scale.StoppedRate > 0 && v.Scale.StoppedRate < 0.05
	})
	// The ledger goes on counting the stopped instance, at its storage
	// rate. It books each listing's interval at the rate it showed, so the
	// first interval may still be the running one: measure the next.
	ledgerAfter := func(d, h float64) (float64, float64) {
		var d1, h1 float64
		waitFor(t, 60*time.Second, "the ledger to count time stopped", func() bool {
			d1, h1 = ledgerRow(t, a)
			return h1 > h+1.0/3600
		})
		return d1, h1
	}
	d0, h0 := ledgerAfter(ledgerRow(t, a))
	d1, h1 := ledgerAfter(d0, h0)
	if rate := (d1 - d0) / (h1 - h0); rate <= 0 || rate > 0.05 {
		t.Errorf("the ledger bills the stopped instance at $%.4f/h; want storage only", rate)
	}

	// Warm start: the same instance serves, nothing is created.
	if got := servedByOne(t); got != a {
		t.Fatalf("the request after the stop was served by %d, want the warm instance %d", got, a)
	}
	if c := createdFor(sim); len(c) != 1 {
		t.Fatalf("instances created %v, want only %d", c, a)
	}
	waitFor(t, 60*time.Second, "the instance stopped again", func() bool { return simInstance(sim, a).ActualStatus == "stopped" })

	// Its GPU is taken: the start waits in scheduling, is given up, and a
	// new instance serves the request.
	sim.RentMachine(simInstance(sim, a).MachineID)
	b := servedByOne(t)
	if b == a {
		t.Fatalf("served by %d, whose GPU is rented by someone else", a)
	}
	if c := createdFor(sim); len(c) != 2 {
		t.Fatalf("instances created %v, want %d and one new", c, a)
	}
	waitFor(t, 30*time.Second, "the instance whose start failed stopped again", func() bool {
		in := simInstance(sim, a)
		return in.ActualStatus == "stopped" && !in.Destroyed
	})
	var ops []operation
	adminGET(t, "/vastai/operations", &ops)
	failedStart := false
	for _, op := range ops {
		if op.Kind == "start" && op.InstanceID == a && op.State == "failed" && strings.Contains(op.Error, "start_timeout") {
			failedStart = true
		}
	}
	if !failedStart {
		t.Errorf("no failed start of %d explaining start_timeout: %+v", a, ops)
	}
}

// TestDashboardShowsTheAutoscalerLive: the pool's card in headless
// Chromium shows the autoscaler's decision, and follows it: a held
// request wakes the pool (desired 1, 1 held), and the refused scale-up
// appears in the error style.
func TestDashboardShowsTheAutoscalerLive(t *testing.T) {
	ctx, _ := browser(t)
	sim := newSim(t, vastsim.Options{})
	cfg := autoscaleConfig(t, sim, "", "				max_wait 30s")
	startCaddy(t, allowNavigation(t, strings.Replace(cfg, "lease_ttl 3s", "lease_ttl 3s\n\t\tmin_credit 1000000", 1)))
	tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(testAdminURL+"/vastai/ui/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	line := func(want ...string) func() bool {
		return func() bool {
			text, err := chromedp.Run(tctx, chromedp.Evaluate[string](
				`(document.querySelector('[data-pool="llm"] [data-autoscale]') || {innerText: ""}).innerText`))
			if err != nil {
				return false
			}
			for _, w := range want {
				if !strings.Contains(text, w) {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, 30*time.Second, "the autoscale line at zero", line("desired 0", "min 0 max 3"))
	go sendCompletion(tctx, "held", false)
	waitFor(t, 30*time.Second, "the held request and the wake-up on the page", line("desired 1", "1 held", "from_zero"))
	waitFor(t, 30*time.Second, "the refused scale-up on the page", line("scale-up refused", "min_credit"))
}
