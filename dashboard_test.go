package vastai

// Tests of the web dashboard: the SSE feed, the history endpoint, the one
// sampler per state, and (dashboard_browser_test.go) the page itself in
// headless Chromium.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// sseEvent is one server-sent event.
type sseEvent struct {
	Name, ID, Data string
}

// sseStream reads events from GET path on the admin endpoint.
type sseStream struct {
	resp   *http.Response
	events chan sseEvent
	ended  chan error // receives the read error (io.EOF at a clean end)
	cancel context.CancelFunc
}

func openEvents(t testing.TB, headers map[string]string) (*sseStream, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, testAdminURL+"/vastai/events", nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /vastai/events: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		return nil, resp
	}
	s := &sseStream{resp: resp, events: make(chan sseEvent, 256), ended: make(chan error, 1), cancel: cancel}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Data != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.Name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				ev.ID = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				ev.Data += strings.TrimPrefix(line, "data: ")
			}
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		s.ended <- err
	}()
	t.Cleanup(s.close)
	return s, resp
}

func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event, failing the test after within.
func (s *sseStream) next(t testing.TB, within time.Duration) sseEvent {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case err := <-s.ended:
		t.Fatalf("event stream ended: %v", err)
	case <-time.After(within):
		t.Fatalf("no event within %s", within)
	}
	return sseEvent{}
}

type dashSnapshot struct {
	Status struct {
		Generation uint64 `json:"generation"`
		Instances  int    `json:"instances"`
	} `json:"status"`
	Instances []struct {
		ID    int64  `json:"id"`
		State string `json:"state"`
	} `json:"instances"`
	Pools []struct {
		Name    string  `json:"name"`
		Members []int64 `json:"members"`
	} `json:"pools"`
	Operations json.RawMessage   `json:"operations"`
	Keys       json.RawMessage   `json:"keys"`
	InFlight   map[string]int64  `json:"in_flight"`
	Errors     map[string]string `json:"errors"`
}

func decodeSnapshot(t testing.TB, ev sseEvent) dashSnapshot {
	t.Helper()
	if ev.Name != "snapshot" {
		t.Fatalf("event %q, want snapshot", ev.Name)
	}
	var s dashSnapshot
	if err := json.Unmarshal([]byte(ev.Data), &s); err != nil {
		t.Fatalf("snapshot data %s: %v", ev.Data, err)
	}
	return s
}

func (s dashSnapshot) ids() []int64 {
	out := []int64{}
	for _, in := range s.Instances {
		out = append(out, in.ID)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sortedIDs(ids []int64) []int64 {
	out := append([]int64{}, ids...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func TestEventsStreamASnapshotOnConnectThenOnChange(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, lifecycleConfig(t, sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 30*time.Second, ids)

	s, resp := openEvents(t, nil)
	if s == nil {
		t.Fatalf("GET /vastai/events: status %d", resp.StatusCode)
	}
	if ct := s.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	firstEv := s.next(t, 10*time.Second)
	first := decodeSnapshot(t, firstEv)
	if fmt.Sprint(first.ids()) != fmt.Sprint(sortedIDs(ids)) {
		t.Fatalf("first snapshot lists %v, want %v", first.ids(), sortedIDs(ids))
	}
	if first.Status.Instances != 3 || len(first.Pools) != 1 || first.Pools[0].Name != "llm" || len(first.Pools[0].Members) != 3 {
		t.Errorf("first snapshot status/pools wrong: %+v %+v", first.Status, first.Pools)
	}
	if string(first.Operations) != "[]" || string(first.Keys) != "[]" || first.Errors != nil {
		t.Errorf("operations %s keys %s errors %v, want [], [] (no keys block) and none", first.Operations, first.Keys, first.Errors)
	}
	if len(first.InFlight) != 3 {
		t.Errorf("in_flight %v, want an entry per instance", first.InFlight)
	}
	// The parts are the GET endpoints' own bodies.
	var viaGET []adminInstance
	adminGET(t, "/vastai/instances", &viaGET)
	var viaSSE []adminInstance
	var raw struct {
		Instances json.RawMessage `json:"instances"`
	}
	_ = json.Unmarshal([]byte(firstEv.Data), &raw)
	if err := json.Unmarshal(raw.Instances, &viaSSE); err != nil {
		t.Fatal(err)
	}
	g, _ := json.Marshal(viaGET)
	e, _ := json.Marshal(viaSSE)
	if string(g) != string(e) {
		t.Errorf("instances differ:\nGET %s\nSSE %s", g, e)
	}

	// At least one event a second while nothing changes.
	start := time.Now()
	for i := 0; i < 3; i++ {
		decodeSnapshot(t, s.next(t, 5*time.Second))
	}
	t.Logf("3 idle events in %s", time.Since(start).Round(time.Millisecond))

	sim.Remove(ids[0])
	deadline := time.Now().Add(30 * time.Second)
	for {
		snap := decodeSnapshot(t, s.next(t, 5*time.Second))
		if len(snap.Instances) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %d still in the stream: %v", ids[0], snap.ids())
		}
	}
}

func TestEventsStreamOutlivesTheAdminReadTimeout(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	launch(t, sim, 1, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))

	s, resp := openEvents(t, nil)
	if s == nil {
		t.Fatalf("GET /vastai/events: status %d", resp.StatusCode)
	}
	// Caddy's admin server has a 10s ReadTimeout; a stream must go on
	// past it.
	start := time.Now()
	n := 0
	for time.Since(start) < 13*time.Second {
		decodeSnapshot(t, s.next(t, 5*time.Second))
		n++
	}
	if n < 10 {
		t.Errorf("%d events in 13s, want at least one a second", n)
	}
}

func TestEventsStreamsAreBoundedAndEndOnReload(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	launch(t, sim, 1, "llm-")
	tc := startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))

	streams := make([]*sseStream, 0, maxEventStreams)
	for i := 0; i < maxEventStreams; i++ {
		s, resp := openEvents(t, nil)
		if s == nil {
			t.Fatalf("stream %d refused: %d", i+1, resp.StatusCode)
		}
		decodeSnapshot(t, s.next(t, 10*time.Second))
		streams = append(streams, s)
	}
	if s, resp := openEvents(t, nil); s != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream %d accepted (status %d), want 503", maxEventStreams+1, resp.StatusCode)
	}
	streams[0].close()
	waitFor(t, 10*time.Second, "a stream slot freed", func() bool {
		s, _ := openEvents(t, nil)
		if s == nil {
			return false
		}
		streams[0] = s
		return true
	})

	// A reload ends every stream of the old admin server (the browser
	// reconnects to the new one) and counts them out.
	tc.InitServer(testConfig(sim.URL(), llmPool, "\tvastai_proxy llm {\n\t\theader_down X-Reload 1\n\t}"), "caddyfile")
	for i, s := range streams {
		select {
		case <-s.ended:
		case <-time.After(30 * time.Second):
			t.Fatalf("stream %d still open 30s after the reload", i+1)
		}
	}
	s, resp := openEvents(t, nil)
	if s == nil {
		t.Fatalf("no stream after the reload: %d", resp.StatusCode)
	}
	decodeSnapshot(t, s.next(t, 10*time.Second))
}

func TestHistoryHasAPointPerInstanceAndPoolAndOneSamplerAcrossReloads(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 2, "llm-")
	tc := startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 30*time.Second, ids)

	for i := 0; i < 3; i++ {
		tc.InitServer(testConfig(sim.URL(), llmPool, fmt.Sprintf("\tvastai_proxy llm {\n\t\theader_down X-Reload %d\n\t}", i)), "caddyfile")
		st, _, _ := states.LoadOrNew(stateKey, nil)
		n := st.(*state).dash.running.Load()
		_, _ = states.Delete(stateKey)
		if n != 1 {
			t.Fatalf("reload %d: %d sampler loops running, want exactly 1", i, n)
		}
	}

	type series struct {
		GPU     []*float64 `json:"gpu_utilization"`
		RPS     []*float64 `json:"requests_per_second"`
		Latency []*float64 `json:"latency_ms"`
		Spend   []*float64 `json:"spend_per_hour"`
	}
	var h struct {
		Resolution float64           `json:"resolution_seconds"`
		Length     int               `json:"length"`
		End        *time.Time        `json:"end"`
		Instances  map[string]series `json:"instances"`
		Pools      map[string]series `json:"pools"`
	}
	last := func(c []*float64) *float64 {
		for i := len(c) - 1; i >= 0; i-- {
			if c[i] != nil {
				return c[i]
			}
		}
		return nil
	}
	// Traffic shows up as requests/s at the next sample (every 10s).
	waitFor(t, 45*time.Second, "a requests/s point above 0", func() bool {
		resp, _ := completion(t, http.DefaultClient)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("completion: %d", resp.StatusCode)
		}
		code, body := adminGET(t, "/vastai/history", &h)
		if code != http.StatusOK {
			t.Fatalf("GET /vastai/history: %d %s", code, body)
		}
		for _, id := range ids {
			if s := h.Instances[fmt.Sprint(id)]; s.RPS != nil {
				if v := last(s.RPS); v != nil && *v > 0 {
					return true
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	if h.Resolution != 10 || h.Length != 360 || h.End == nil {
		t.Errorf("resolution %v length %d end %v, want 10s, 360 points, an end time", h.Resolution, h.Length, h.End)
	}
	// Spend is each instance's dph_total (kept as float32), the pool's
	// their sum.
	var list []adminInstance
	adminGET(t, "/vastai/instances", &list)
	dph, total := map[int64]float64{}, 0.0
	for _, in := range list {
		dph[in.ID] = in.DPHTotal
		total += in.DPHTotal
	}
	near := func(v *float64, want float64) bool {
		return v != nil && want > 0 && (*v-want)/want < 1e-6 && (want-*v)/want < 1e-6
	}
	for _, id := range ids {
		s, ok := h.Instances[fmt.Sprint(id)]
		if !ok || len(s.Spend) != 360 || !near(last(s.Spend), dph[id]) {
			t.Errorf("instance %d: spend series ends %v, want %v ($/h of the instance)", id, fmtLast(s.Spend), dph[id])
		}
		if last(s.Latency) == nil {
			t.Errorf("instance %d: no probe latency point", id)
		}
	}
	if p, ok := h.Pools["llm"]; !ok || !near(last(p.Spend), total) {
		t.Errorf("pool llm spend series ends %v, want %v", fmtLast(p.Spend), total)
	}

	// One instance, one pool, and errors naming the field.
	for _, c := range []struct {
		query string
		code  int
		want  string
	}{
		{fmt.Sprintf("?instance=%d", ids[0]), http.StatusOK, fmt.Sprintf(`"%d":`, ids[0])},
		{"?pool=llm", http.StatusOK, `"llm":`},
		{"?instance=abc", http.StatusBadRequest, "instance:"},
		{"?instance=999999", http.StatusNotFound, "instance 999999"},
		{"?pool=nope", http.StatusNotFound, `pool \"nope\"`},
		{"?bogus=1", http.StatusBadRequest, "bogus:"},
	} {
		code, body := adminGET(t, "/vastai/history"+c.query, nil)
		if code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("GET /vastai/history%s = %d %s, want %d containing %s", c.query, code, body, c.code, c.want)
		}
	}
}

func TestDashboardRoutesTakePrecedenceOverTheAPISubtree(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	for _, c := range []struct {
		method, path string
		code         int
		want         string
	}{
		{http.MethodGet, "/vastai/ui/", http.StatusOK, `<script src="app.js" defer crossorigin="anonymous">`},
		{http.MethodGet, "/vastai/ui/app.js", http.StatusOK, "EventSource"},
		{http.MethodGet, "/vastai/ui/style.css", http.StatusOK, "--accent"},
		{http.MethodGet, "/vastai/ui/nope.js", http.StatusNotFound, ""},
		{http.MethodPost, "/vastai/ui/", http.StatusMethodNotAllowed, "use GET"},
		{http.MethodPost, "/vastai/events", http.StatusMethodNotAllowed, "use GET"},
		{http.MethodGet, "/vastai/status", http.StatusOK, `"generation"`},
	} {
		code, body := adminDo(t, c.method, c.path, "")
		if code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s = %d %.120s, want %d containing %q", c.method, c.path, code, body, c.code, c.want)
		}
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(testAdminURL + "/vastai/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/vastai/ui/" {
		t.Errorf("GET /vastai/ui = %d Location %q, want a redirect to /vastai/ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = http.Get(testAdminURL + "/vastai/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, v := range map[string]string{"X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"} {
		if resp.Header.Get(k) != v {
			t.Errorf("%s: %q, want %q", k, resp.Header.Get(k), v)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("CSP %q does not forbid framing", resp.Header.Get("Content-Security-Policy"))
	}
}

// fmtLast renders the last points of a series for failure messages.
func fmtLast(c []*float64) string {
	var b strings.Builder
	for _, v := range c[max(0, len(c)-4):] {
		if v == nil {
			b.WriteString("null ")
		} else {
			fmt.Fprintf(&b, "%g ", *v)
		}
	}
	return fmt.Sprintf("%d points: ...%s", len(c), b.String())
}

// dashPools is a routing pool of launched instances and a provisioning pool
// for the page's Provision button.
const dashPools = `		lease_ttl 3s
		provision_poll_interval 300ms
		pool llm {
			label_prefix llm-
			port 8000
			token jupyter_token
		}
		pool gen {
			health {
				interval 200ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 2
				max_price_per_hour 2
				ready_timeout 20s
			}
		}`

const chromiumPath = "/usr/bin/chromium"

// browser starts headless Chromium and returns a tab context; console
// errors, uncaught exceptions and error entries of the browser log are
// collected by problems. JavaScript dialogs (confirm) are accepted.
func browser(t *testing.T) (ctx context.Context, problems func() []string) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("VASTAI_REQUIRE_CHROMIUM") != "" {
			t.Fatalf("VASTAI_REQUIRE_CHROMIUM is set but %s is missing: %v", chromiumPath, err)
		}
		t.Skipf("%s not installed (set VASTAI_REQUIRE_CHROMIUM=1 to fail instead)", chromiumPath)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.Headless,
		chromedp.DisableGPU, chromedp.WindowSize(1500, 1000), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}

	var mu sync.Mutex
	var found []string
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type != chromedp.ConsoleError && m.Type != chromedp.ConsoleException {
				continue
			}
			mu.Lock()
			found = append(found, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
			mu.Unlock()
		}
	}()
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			if _, err := chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil {
				t.Logf("accepting the %s dialog: %v", ev.Type, err)
			}
		}
	}()
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), found...)
	}
}

// pageHas evaluates a boolean expression in the page.
func pageHas(t *testing.T, ctx context.Context, expr string) bool {
	t.Helper()
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return ok
}

func TestDashboardInHeadlessChromium(t *testing.T) {
	ctx, problems := browser(t)
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	ids := launch(t, sim, 3, "llm-")
	startCaddy(t, allowNavigation(t, sshConfig(sim.URL(), keyFile, dir, dashPools, `	vastai_proxy llm`)))
	waitRoutable(t, 30*time.Second, ids)

	tctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	// A typed-in URL, as an operator opens it (allowed by the admin
	// block of allowNavigation; see TestBrowserNavigationNeedsAnAllowedOrigin).
	if err := chromedp.Do(tctx, chromedp.Navigate(testAdminURL+"/vastai/ui/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.location.href + "\n" + document.body.innerText`))
			t.Logf("page at failure:\n%s\nproblems: %v", text, problems())
		}
	})
	for _, id := range ids {
		waitFor(t, 30*time.Second, fmt.Sprintf("instance %d listed", id), func() bool {
			return pageHas(t, tctx, fmt.Sprintf(`document.querySelector('tr[data-id="%d"]') !== null`, id))
		})
	}
	waitFor(t, 10*time.Second, "the live badge", func() bool {
		return pageHas(t, tctx, `document.querySelector("#live").textContent === "live"`)
	})
	noKeysPanel(t, tctx)

	// Destroy through the page's button (confirm accepted); once the API no
	// longer lists the instance, the page must follow within 3 s.
	gone := ids[0]
	if err := chromedp.Do(tctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`button[data-destroy="%d"]`, gone)))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("instance %d gone from the API", gone), func() bool {
		var list []adminInstance
		adminGET(t, "/vastai/instances", &list)
		for _, in := range list {
			if in.ID == gone {
				return false
			}
		}
		return true
	})
	apiGone := time.Now()
	waitFor(t, 3*time.Second, fmt.Sprintf("instance %d gone from the page within 3s", gone), func() bool {
		return pageHas(t, tctx, fmt.Sprintf(`document.querySelector('tr[data-id="%d"]') === null`, gone))
	})
	t.Logf("page dropped instance %d %s after the API did", gone, time.Since(apiGone).Round(time.Millisecond))

	// Provision through the page: an operation appears in the API.
	if err := chromedp.Do(tctx, chromedp.Click(chromedp.CSS(`button[data-provision="gen"]`))); err != nil {
		t.Fatal(err)
	}
	var ops []operation
	waitFor(t, 30*time.Second, "a provisioning operation for pool gen", func() bool {
		adminGET(t, "/vastai/operations", &ops)
		for _, op := range ops {
			if op.Pool == "gen" && op.Kind == "provision" {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the operation listed on the page", func() bool {
		return pageHas(t, tctx, fmt.Sprintf(`document.querySelector('tr[data-op="%s"]') !== null`, ops[0].ID))
	})
	// Wait for a chart point and the new instance, for a screenshot that
	// shows a working fleet.
	waitFor(t, 60*time.Second, "the provisioned instance ready on the page", func() bool {
		return pageHas(t, tctx, `[...document.querySelectorAll('#instances tr[data-state="ready"]')].length >= 3`)
	})
	waitFor(t, 30*time.Second, "GPU figures on the page", func() bool {
		return pageHas(t, tctx, `[...document.querySelectorAll('#instances td')].some(td => /^\d+%/.test(td.textContent))`)
	})
	// The engines' own figures, scraped from their /metrics.
	waitFor(t, 30*time.Second, "engine figures on the page", func() bool {
		return pageHas(t, tctx, `[...document.querySelectorAll('#instances td[data-engine]')].some(td => /^q \d+ · run \d+/.test(td.textContent))`)
	})
	// The charts fill in as the sampler records a point every 10s and the
	// page reloads /vastai/history.
	waitFor(t, 60*time.Second, "a latency chart with data", func() bool {
		return pageHas(t, tctx, `[...document.querySelectorAll('#instances svg.spark path:not(.area)')].some(p => /L/.test(p.getAttribute('d')))`)
	})
	// The cost ledger panel keeps the destroyed instance's spend.
	waitFor(t, 60*time.Second, "the cost ledger listing the destroyed instance", func() bool {
		return pageHas(t, tctx, fmt.Sprintf(`!document.querySelector("#costs").hidden && [...document.querySelectorAll('#costs-table tbody tr')].some(tr => tr.textContent.includes("%d"))`, gone))
	})
	saveScreenshot(t, tctx, "dashboard.png")

	if p := problems(); len(p) > 0 {
		t.Errorf("the page logged %d problems:\n%s", len(p), strings.Join(p, "\n"))
	}
}

// noKeysPanel checks a page without a keys block: no keys panel, and no
// error about keys either.
func noKeysPanel(t *testing.T, ctx context.Context) {
	t.Helper()
	if !pageHas(t, ctx, `document.querySelector("#keys").hidden && !document.querySelector("#summary").textContent.includes("keys")`) {
		t.Error("the keys panel shows, or keys are an error, without a keys block")
	}
}

// TestDashboardKeysPanelIsLive: with a keys block the page lists every
// key with its status, limits and budget, and one request with a key
// moves its requests, tokens and spend on the page without a reload.
func TestDashboardKeysPanelIsLive(t *testing.T) {
	ctx, problems := browser(t)
	setKeyEnv(t)
	const paid = "cvk_paid-secret-0123456789abcdefgh"
	t.Setenv("TEST_KEY_PAID", paid)
	if err := os.RemoveAll(filepath.Join(e2eStorage, "vastai", "keys")); err != nil {
		t.Fatal(err)
	}
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	// $0.01 a completion token in pool llm, so one request costs cents.
	extra := `			pool_price llm 0 10000
			key paid {
				secret {env.TEST_KEY_PAID}
				rpm 60
				tpm 10000
				max_parallel 4
				budget 10 day
			}`
	startCaddy(t, allowNavigation(t, testConfig(sim.URL(), llmPool+"\n"+otherPool+"\n"+keysBlock(extra), keysSite)))
	waitRoutable(t, 30*time.Second, ids)

	tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(testAdminURL+"/vastai/ui/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Logf("page at failure:\n%s\nproblems: %v", text, problems())
		}
	})
	cell := func(key, field string) string {
		return fmt.Sprintf(`(document.querySelector('#keys tr[data-key="%s"] td[data-%s]') || {}).textContent`, key, field)
	}
	waitFor(t, 30*time.Second, "the keys panel listing every key", func() bool {
		return pageHas(t, tctx, `!document.querySelector("#keys").hidden && document.querySelectorAll("#keys tbody tr").length === 5`)
	})
	for _, c := range []struct{ expr, what string }{
		{`document.querySelector('#keys tr[data-key="old"] .badge').textContent === "expired"`, "key old expired"},
		{`document.querySelector('#keys tr[data-key="paid"] .badge').textContent === "active"`, "key paid active"},
		{cell("paid", "budget") + ` === "$10.00/day"`, "budget $10.00/day"},
		{cell("paid", "spent") + ` === "$0.00"`, "nothing spent yet"},
		{cell("paid", "requests") + ` === "0"`, "no requests yet"},
		{`document.querySelector('#keys tr[data-key="paid"]').textContent.includes("60")`, "the rpm limit"},
		{`document.querySelector('#keys tr[data-key="paid"] svg.meter') !== null`, "a spend bar"},
	} {
		if !pageHas(t, tctx, c.expr) {
			t.Errorf("keys panel: want %s", c.what)
		}
	}
	// A mark in the page: it survives only if the page is not reloaded.
	if _, err := chromedp.Run(tctx, chromedp.Evaluate[bool](`window.keysMark = true`)); err != nil {
		t.Fatal(err)
	}
	if st, _, b := keyedRequest(t, "/v1/completions", paid, tinyCompletion); st != http.StatusOK {
		t.Fatalf("request with key paid: %d %s", st, b)
	}
	u := keyUsage(t, "paid", "day")
	if u.Requests != 1 || u.Spend <= 0 {
		t.Fatalf("usage after one request: %+v", u)
	}
	want := display.Dollars(u.Spend)
	waitFor(t, 10*time.Second, "the request and its spend "+want+" on the page", func() bool {
		return pageHas(t, tctx, cell("paid", "requests")+` === "1" && `+cell("paid", "spent")+fmt.Sprintf(` === %q`, want))
	})
	if !pageHas(t, tctx, `window.keysMark === true`) {
		t.Error("the page was reloaded; the figures must come from the live feed")
	}
	saveScreenshot(t, tctx, "dashboard-keys.png")
	if p := problems(); len(p) > 0 {
		t.Errorf("the page logged %d problems:\n%s", len(p), strings.Join(p, "\n"))
	}
}

// saveScreenshot writes the page to the test's folder, or to docs/<name>
// (used by the README) with VASTAI_UPDATE_SCREENSHOT=1.
func saveScreenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), name)
	if os.Getenv("VASTAI_UPDATE_SCREENSHOT") != "" {
		path = filepath.Join("docs", name)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// browserRequests are the header sets a browser sends to the dashboard.
var browserRequests = []struct {
	name    string
	headers map[string]string
}{
	{"curl (no browser headers)", nil},
	{"typed-in navigation", map[string]string{"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}},
	{"page fetch with Referer", map[string]string{"Sec-Fetch-Mode": "cors", "Referer": testAdminURL + "/vastai/ui/"}},
	{"page POST with Origin", map[string]string{"Sec-Fetch-Mode": "cors", "Origin": testAdminURL}},
	{"127.0.0.1 origin", map[string]string{"Origin": "http://127.0.0.1:2999"}},
	{"foreign origin", map[string]string{"Origin": "http://evil.example"}},
	{"foreign navigation", map[string]string{"Sec-Fetch-Mode": "navigate", "Referer": "http://evil.example/"}},
	{"no-cors subresource", map[string]string{"Sec-Fetch-Mode": "no-cors"}},
	{"DNS rebinding", map[string]string{"Host": "evil.example:2999"}},
}

// TestBrowserNavigationNeedsAnAllowedOrigin records what Caddy's admin
// endpoint does with a browser. By default a typed-in URL (no Origin, no
// Referer, but Sec-Fetch-Mode: navigate, which browsers send to localhost)
// is refused by the origin check, while the page's own requests (Referer or
// Origin of the admin address) pass. With the empty origin allowed (the
// README's admin block), the navigation passes too, and foreign origins,
// no-cors requests and foreign Host headers are still refused.
func TestBrowserNavigationNeedsAnAllowedOrigin(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	cfg := testConfig(sim.URL(), llmPool, `	vastai_proxy llm`)
	tc := startCaddy(t, cfg)
	check := func(phase string, want []int) {
		for i, c := range browserRequests {
			req, _ := http.NewRequest(http.MethodGet, testAdminURL+"/vastai/ui/", nil)
			for k, v := range c.headers {
				if k == "Host" {
					req.Host = v
				} else {
					req.Header.Set(k, v)
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want[i] {
				t.Errorf("%s: %s: %d %.100s, want %d", phase, c.name, resp.StatusCode, body, want[i])
			}
		}
	}
	const ok, forbidden, bad = http.StatusOK, http.StatusForbidden, http.StatusBadRequest
	check("default origins", []int{ok, forbidden, ok, ok, ok, forbidden, forbidden, bad, forbidden})

	tc.InitServer(allowNavigation(t, cfg), "caddyfile")
	check("empty origin allowed", []int{ok, ok, ok, ok, ok, forbidden, forbidden, bad, forbidden})
}

// allowNavigation gives a test config the README's admin block: Caddy's
// default loopback origins plus the empty origin of a typed-in URL.
func allowNavigation(t testing.TB, cfg string) string {
	t.Helper()
	out := strings.Replace(cfg, "\tadmin localhost:2999\n",
		"\tadmin localhost:2999 {\n\t\torigins localhost:2999 127.0.0.1:2999 [::1]:2999 \"\"\n\t}\n", 1)
	if out == cfg {
		t.Fatal("admin line not found in the test config")
	}
	return out
}
