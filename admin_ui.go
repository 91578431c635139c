package vastai

// The web dashboard on Caddy's admin endpoint: the embedded page at
// /vastai/ui/, its live feed /vastai/events (server-sent events) and the
// chart data /vastai/history. A module of its own (admin.api.vastai_ui), so
// admin.go stays as it is: Caddy registers every admin.api module's patterns
// on one net/http ServeMux, where the longest pattern wins, so these routes
// take precedence over admin.go's "/vastai/" subtree.

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/history"
)

func init() {
	caddy.RegisterModule(dashboardAPI{})
}

//go:embed ui/index.html ui/app.js ui/style.css
var uiFiles embed.FS

// Errors of the dashboard endpoints.
var (
	ErrTooManyStreams = errors.New("too many /vastai/events streams open")
	ErrNoHistory      = errors.New("no history")
)

// Timing of /vastai/events: how often the snapshot generation is checked,
// and the longest time between two events.
const (
	eventsCheckInterval = 250 * time.Millisecond
	eventsMaxInterval   = time.Second
	// eventsWriteTimeout cuts a client that stopped reading, so its stream
	// does not hold a slot forever.
	eventsWriteTimeout = 10 * time.Second
)

// dashboardAPI serves the dashboard routes. Like every admin module it is
// created anew for each config load.
type dashboardAPI struct {
	// api is the /vastai/ module of the same config: the event stream's
	// snapshot is what its GET endpoints answer, not a second rendering.
	api adminAPI
	// done closes when this config is unloaded: streams then end, so the
	// browser reconnects to the new admin server instead of keeping the old
	// one from shutting down.
	done <-chan struct{}
}

// CaddyModule returns the Caddy module information.
func (dashboardAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.vastai_ui",
		New: func() caddy.Module { return new(dashboardAPI) },
	}
}

// Provision finds the vastai app, if one is configured.
func (d *dashboardAPI) Provision(ctx caddy.Context) error {
	d.api.app, _ = lookupApp(ctx)
	d.done = ctx.Done()
	return nil
}

// Routes returns the dashboard's routes.
func (d *dashboardAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/vastai/ui", Handler: adminHandler(redirectUI)},
		{Pattern: "/vastai/ui/", Handler: adminHandler(serveUI)},
		{Pattern: "/vastai/events", Handler: adminHandler(d.serveEvents)},
		{Pattern: "/vastai/history", Handler: adminHandler(d.serveHistory)},
	}
}

func redirectUI(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGETorHEAD(r); err != nil {
		return err
	}
	http.Redirect(w, r, "/vastai/ui/", http.StatusMovedPermanently)
	return nil
}

// serveUI serves the embedded page. The headers keep it from being framed
// (its buttons destroy instances) and from loading anything foreign; the
// referrer policy makes sure its API calls carry the Referer that Caddy's
// origin check reads for same-origin GETs.
func serveUI(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGETorHEAD(r); err != nil {
		return err
	}
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		return classify(errInternal, err)
	}
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-cache")
	http.StripPrefix("/vastai/ui/", http.FileServerFS(sub)).ServeHTTP(w, r)
	return nil
}

// onlyGET refuses every method but GET.
func onlyGET(r *http.Request) error {
	if r.Method == http.MethodGet {
		return nil
	}
	return &methodNotAllowedError{method: r.Method, path: r.URL.Path, allow: []string{http.MethodGet}}
}

func onlyGETorHEAD(r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return classify(errMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET", r.Method))
	}
	return nil
}

func (d *dashboardAPI) ready() (*state, error) {
	if d.api.app == nil || d.api.app.state == nil {
		return nil, ErrNotConfigured
	}
	return d.api.app.state, nil
}

// fleetEvent is the data of an "event: snapshot": each part is exactly the
// body of the GET endpoint of the same name; a part that endpoint refused
// is null, with the endpoint's message under errors.
type fleetEvent struct {
	Status     json.RawMessage `json:"status"`
	Instances  json.RawMessage `json:"instances"`
	Pools      json.RawMessage `json:"pools"`
	Operations json.RawMessage `json:"operations"`
	// Keys is GET /vastai/keys: the client keys with their spend, so the
	// keys panel stays as live as the rest ([] without a keys block).
	Keys json.RawMessage `json:"keys"`
	// InFlight is the number of proxied requests in flight per instance
	// id, which no GET endpoint reports.
	InFlight map[string]int64  `json:"in_flight"`
	Errors   map[string]string `json:"errors,omitempty"`
}

// snapshotEvent renders one snapshot through the admin module's own
// handlers.
func (d *dashboardAPI) snapshotEvent(r *http.Request, st *state) ([]byte, error) {
	ev := fleetEvent{InFlight: map[string]int64{}}
	for _, m := range st.watcher.Snapshot().Members {
		ev.InFlight[strconv.FormatInt(m.Instance.ID, 10)] = st.inflight.count(m.Instance.ID)
	}
	parts := []struct {
		name string
		dst  *json.RawMessage
	}{{"status", &ev.Status}, {"instances", &ev.Instances}, {"pools", &ev.Pools}, {"operations", &ev.Operations}, {"keys", &ev.Keys}}
	for _, p := range parts {
		body, err := d.get(r, "/vastai/"+p.name)
		if err != nil {
			if ev.Errors == nil {
				ev.Errors = map[string]string{}
			}
			ev.Errors[p.name] = err.Error()
			*p.dst = json.RawMessage("null")
			continue
		}
		*p.dst = body
	}
	return json.Marshal(ev)
}

// get answers a GET of the /vastai/ API in-process.
func (d *dashboardAPI) get(r *http.Request, path string) (json.RawMessage, error) {
	req := (&http.Request{Method: http.MethodGet, URL: &url.URL{Path: path}, Header: http.Header{}}).WithContext(r.Context())
	rec := &bufferWriter{header: http.Header{}}
	if err := d.api.handleAPIEndpoints(rec, req); err != nil {
		return nil, err
	}
	if rec.status != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(rec.buf.Bytes(), &e)
		return nil, fmt.Errorf("%s: status %d: %s", path, rec.status, e.Error)
	}
	return json.RawMessage(bytes.TrimSpace(rec.buf.Bytes())), nil
}

// bufferWriter collects a response in memory.
type bufferWriter struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferWriter) Header() http.Header { return b.header }
func (b *bufferWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.buf.Write(p)
}

// serveEvents streams "event: snapshot" messages: one on connect, then one
// whenever the fleet snapshot changes, and at least one per second (so
// staleness and accrued figures stay current). It ends when the client
// goes, when this config is unloaded, or when a write stalls.
func (d *dashboardAPI) serveEvents(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGET(r); err != nil {
		return err
	}
	st, err := d.ready()
	if err != nil {
		return err
	}
	if st.dash.streams.Add(1) > maxEventStreams {
		st.dash.streams.Add(-1)
		return fmt.Errorf("%w (at most %d)", ErrTooManyStreams, maxEventStreams)
	}
	defer st.dash.streams.Add(-1)

	// The admin server's 10s ReadTimeout does not cut the stream: net/http
	// clears the read deadline once the request is read (checked by
	// TestEventsStreamOutlivesTheAdminReadTimeout). It has no write
	// timeout, hence the deadline per event below.
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(gen uint64) bool {
		data, err := d.snapshotEvent(r, st)
		if err != nil {
			return false
		}
		_ = rc.SetWriteDeadline(time.Now().Add(eventsWriteTimeout))
		_, err = fmt.Fprintf(w, "retry: 2000\nid: %d\nevent: snapshot\ndata: %s\n\n", gen, data)
		return err == nil && rc.Flush() == nil
	}
	gen := st.watcher.Snapshot().Generation
	if !send(gen) {
		return nil
	}
	last := time.Now()
	tick := time.NewTicker(eventsCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-d.done:
			return nil
		case now := <-tick.C:
			g := st.watcher.Snapshot().Generation
			if g == gen && now.Sub(last) < eventsMaxInterval {
				continue
			}
			if !send(g) {
				return nil
			}
			gen, last = g, now
		}
	}
}

// historyView is the answer of /vastai/history: every series ends at End
// and has Length points, Resolution apart, oldest first.
type historyView struct {
	ResolutionSeconds float64                   `json:"resolution_seconds"`
	Length            int                       `json:"length"`
	End               *time.Time                `json:"end"`
	Instances         map[string]history.Series `json:"instances"`
	Pools             map[string]history.Series `json:"pools"`
}

// serveHistory answers GET /vastai/history[?instance=ID[,ID..]|all][&pool=NAME[,NAME..]|all].
// Without a parameter it returns every series.
func (d *dashboardAPI) serveHistory(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGET(r); err != nil {
		return err
	}
	st, err := d.ready()
	if err != nil {
		return err
	}
	h := st.dash.hist.Load()
	if h == nil {
		return errSamplerNotStarted
	}
	q := r.URL.Query()
	for k := range q {
		if k != "instance" && k != "pool" {
			return invalidf("%s: unknown parameter (use instance or pool)", k)
		}
	}
	instArg, poolArg := q.Get("instance"), q.Get("pool")
	if !q.Has("instance") && !q.Has("pool") {
		instArg, poolArg = "all", "all"
	}
	out := historyView{ResolutionSeconds: h.Resolution().Seconds(), Length: h.Length(), End: timePtr(h.End()),
		Instances: map[string]history.Series{}, Pools: map[string]history.Series{}}
	if err := historyInstances(h, instArg, out.Instances); err != nil {
		return err
	}
	if err := historyPools(h, poolArg, out.Pools); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func historyInstances(h *history.Store, arg string, out map[string]history.Series) error {
	var ids []int64
	switch arg {
	case "":
		return nil
	case "all":
		ids = h.InstanceIDs()
	default:
		for _, f := range strings.Split(arg, ",") {
			id, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil || id <= 0 {
				return invalidf("instance: %q is not a positive integer", f)
			}
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		s, ok := h.Instance(id)
		if !ok {
			if arg == "all" {
				continue // left between listing and reading
			}
			return fmt.Errorf("instance %d: %w (not known, or not sampled yet)", id, ErrNoHistory)
		}
		out[strconv.FormatInt(id, 10)] = s
	}
	return nil
}

func historyPools(h *history.Store, arg string, out map[string]history.Series) error {
	var names []string
	switch arg {
	case "":
		return nil
	case "all":
		names = h.PoolNames()
	default:
		names = strings.Split(arg, ",")
	}
	for _, n := range names {
		s, ok := h.Pool(n)
		if !ok {
			if arg == "all" {
				continue
			}
			return fmt.Errorf("pool %q: %w (not configured, or not sampled yet)", n, ErrNoHistory)
		}
		out[n] = s
	}
	return nil
}

// Interface guards
var (
	_ caddy.AdminRouter = (*dashboardAPI)(nil)
	_ caddy.Provisioner = (*dashboardAPI)(nil)
)
