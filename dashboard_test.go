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
	"sort"
	"strings"
	"testing"
	"time"

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
	waitRoutable(t, ids, 30*time.Second)

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
	if string(first.Operations) != "[]" || first.Errors != nil {
		t.Errorf("operations %s errors %v, want [] and none", first.Operations, first.Errors)
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
	waitRoutable(t, ids, 30*time.Second)

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
	near := func(v *float64, want float64) bool { return v != nil && want > 0 && (*v-want)/want < 1e-6 && (want-*v)/want < 1e-6 }
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
		{http.MethodGet, "/vastai/ui/", http.StatusOK, `<script src="app.js"`},
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
