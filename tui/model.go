package tui

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// sortKeys are the orders `s` cycles through.
var sortKeys = []string{"id", "pool", "state", "age", "$/h", "gpu"}

// counter is a request counter reading, for requests/s.
type counter struct {
	total uint64
	at    time.Time
}

type model struct {
	ctx  context.Context
	api  API
	opts Options
	now  func() time.Time

	// What the admin API said, part by part; each part keeps its last good
	// value while errs says why it is not newer.
	status     *Status
	instances  []Instance
	pools      []adminapi.Pool
	operations []lifecycle.Operation
	keys       []adminapi.Key // while the keys panel is open; nil before its first answer
	errs       map[string]error
	loadedAt   time.Time // last refresh with status and instances
	fetching   bool
	fetchStart time.Time

	counters map[int64]counter
	rates    map[int64]float64 // requests/s by instance

	selected  int64 // instance id under the cursor, stable across refreshes
	offset    int   // first visible row
	filter    string
	filtering bool
	sortIdx   int
	details   bool
	showKeys  bool // the client keys panel (K)
	confirm   *action
	message   string
	width     int
	height    int
}

// tickMsg asks for a refresh.
type tickMsg time.Time

func newModel(ctx context.Context, api API, opts Options) *model {
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	return &model{
		ctx: ctx, api: api, opts: opts, now: time.Now,
		errs: map[string]error{}, counters: map[int64]counter{}, rates: map[int64]float64{},
		width: 160, height: 45,
	}
}

func (m *model) Init() tea.Cmd {
	return tea.Batch(m.startFetch(), m.tick())
}

func (m *model) tick() tea.Cmd {
	return tea.Tick(m.opts.Refresh, func(t time.Time) tea.Msg { return tickMsg(t) })
}

// startFetch starts a refresh unless one is still running: a slow admin
// API gets one request at a time, not a pile-up.
func (m *model) startFetch() tea.Cmd {
	if m.fetching {
		return nil
	}
	m.fetching, m.fetchStart = true, m.now()
	return fetch(m.ctx, m.api, m.now, m.showKeys)
}

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tickMsg:
		return m, tea.Batch(m.startFetch(), m.tick())
	case dataMsg:
		m.apply(snapshot(msg))
	case actionMsg:
		if msg.err != nil {
			m.message = fmt.Sprintf("%s failed: %v", msg.act.kind, msg.err)
		} else {
			m.message = msg.act.done()
		}
		// Show the effect now rather than at the next tick.
		return m, m.startFetch()
	case tea.KeyMsg:
		return m.key(msg)
	}
	return m, nil
}

func (a action) done() string {
	switch a.kind {
	case "drain":
		return fmt.Sprintf("draining instance %d", a.id)
	case "destroy":
		return fmt.Sprintf("destroying instance %d", a.id)
	default:
		return "provisioning one instance into pool " + a.pool
	}
}

// apply takes in a refresh. Parts that failed keep their previous value.
func (m *model) apply(s snapshot) {
	m.fetching = false
	m.errs = s.errs
	if s.status != nil {
		m.status = s.status
	}
	if s.errs["instances"] == nil {
		m.instances = s.instances
		m.updateRates(s.at)
	}
	if s.errs["pools"] == nil {
		m.pools = s.pools
	}
	if s.errs["operations"] == nil {
		m.operations = s.operations
	}
	if s.withKeys && s.errs["keys"] == nil {
		m.keys = s.keys
		if m.keys == nil {
			m.keys = []adminapi.Key{}
		}
	}
	if s.errs["status"] == nil && s.errs["instances"] == nil {
		m.loadedAt = s.at
	}
	m.clampCursor()
}

func (m *model) updateRates(at time.Time) {
	seen := make(map[int64]bool, len(m.instances))
	for _, in := range m.instances {
		seen[in.ID] = true
		if in.RequestsTotal == nil {
			continue
		}
		cur := counter{total: *in.RequestsTotal, at: at}
		if prev, ok := m.counters[in.ID]; ok && cur.at.After(prev.at) && cur.total >= prev.total {
			m.rates[in.ID] = float64(cur.total-prev.total) / cur.at.Sub(prev.at).Seconds()
		}
		m.counters[in.ID] = cur
	}
	for id := range m.counters {
		if !seen[id] {
			delete(m.counters, id)
			delete(m.rates, id)
		}
	}
}

func (m *model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if k.Type == tea.KeyCtrlC {
		return m, tea.Quit
	}
	if m.confirm != nil {
		switch k.String() {
		case "y", "Y":
			a := *m.confirm
			m.confirm = nil
			m.message = a.kind + " requested…"
			return m, run(m.ctx, m.api, a)
		case "n", "N", "esc", "q":
			m.confirm, m.message = nil, "cancelled"
		}
		return m, nil
	}
	if m.filtering {
		m.filterKey(k)
		return m, nil
	}
	switch k.String() {
	case "q":
		return m, tea.Quit
	case "up", "k":
		m.move(-1)
	case "down", "j":
		m.move(1)
	case "home", "g":
		m.move(-1 << 30)
	case "end", "G":
		m.move(1 << 30)
	case "/":
		m.filtering = true
	case "esc":
		m.details, m.filter = false, ""
		m.clampCursor()
	case "s":
		m.sortIdx = (m.sortIdx + 1) % len(sortKeys)
	case "enter":
		m.details = !m.details
	case "K":
		// The keys are fetched only while the panel is open: load them now.
		m.showKeys, m.keys = !m.showKeys, nil
		if m.showKeys {
			return m, m.startFetch()
		}
	case "r":
		return m, m.startFetch()
	case "d", "x":
		m.askInstance(map[string]string{"d": "drain", "x": "destroy"}[k.String()])
	case "p":
		m.askProvision()
	}
	return m, nil
}

func (m *model) filterKey(k tea.KeyMsg) {
	switch k.Type {
	case tea.KeyEnter:
		m.filtering = false
	case tea.KeyEsc:
		m.filtering, m.filter = false, ""
	case tea.KeyBackspace:
		if r := []rune(m.filter); len(r) > 0 {
			m.filter = string(r[:len(r)-1])
		}
	case tea.KeyRunes, tea.KeySpace:
		m.filter += string(k.Runes)
	}
	m.clampCursor()
}

func (m *model) askInstance(kind string) {
	in := m.current()
	if in == nil {
		m.message = "no instance selected"
		return
	}
	m.confirm = &action{kind: kind, id: in.ID, pool: in.PoolName()}
}

// askProvision provisions into the selected instance's pool, else the
// pool the view is limited to, else the only pool there is.
func (m *model) askProvision() {
	pool := m.opts.Pool
	if in := m.current(); in != nil && in.PoolName() != "" {
		pool = in.PoolName()
	}
	if pool == "" && len(m.pools) == 1 {
		pool = m.pools[0].Name
	}
	if pool == "" {
		m.message = "select an instance of the pool to provision into"
		return
	}
	m.confirm = &action{kind: "provision", pool: pool}
}

// visible is the instances shown, filtered and sorted.
func (m *model) visible() []Instance {
	out := make([]Instance, 0, len(m.instances))
	f := strings.ToLower(strings.TrimSpace(m.filter))
	for _, in := range m.instances {
		if m.opts.Pool != "" && in.PoolName() != m.opts.Pool {
			continue
		}
		if f != "" && !matches(&in, f) {
			continue
		}
		out = append(out, in)
	}
	key := sortKeys[m.sortIdx]
	sort.SliceStable(out, func(i, j int) bool { return less(&out[i], &out[j], key) })
	return out
}

func matches(in *Instance, f string) bool {
	for _, field := range []string{strconv.FormatInt(in.ID, 10), in.PoolName(), in.State, in.Label, in.GPUName} {
		if strings.Contains(strings.ToLower(field), f) {
			return true
		}
	}
	return false
}

func less(a, b *Instance, key string) bool {
	switch key {
	case "pool":
		if a.PoolName() != b.PoolName() {
			return a.PoolName() < b.PoolName()
		}
	case "state":
		if a.State != b.State {
			return a.State < b.State
		}
	case "age": // longest in its state first
		ta, tb := sinceOrNow(a.StateSince), sinceOrNow(b.StateSince)
		if !ta.Equal(tb) {
			return ta.Before(tb)
		}
	case "$/h": // most expensive first
		if a.DPHTotal != b.DPHTotal {
			return a.DPHTotal > b.DPHTotal
		}
	case "gpu": // busiest first
		if ua, ub := meanUtil(a), meanUtil(b); ua != ub {
			return ua > ub
		}
	}
	return a.ID < b.ID
}

func sinceOrNow(t *time.Time) time.Time {
	if t == nil {
		return time.Now()
	}
	return *t
}

func meanUtil(in *Instance) float64 {
	sum, n := 0.0, 0
	for _, g := range in.GPUs {
		if g.UtilizationGPU != nil {
			sum += *g.UtilizationGPU
			n++
		}
	}
	if n == 0 {
		return -1
	}
	return sum / float64(n)
}

// cursor is the index of the selected instance among the visible ones.
func (m *model) cursor(vis []Instance) int {
	for i := range vis {
		if vis[i].ID == m.selected {
			return i
		}
	}
	return 0
}

func (m *model) current() *Instance {
	vis := m.visible()
	if len(vis) == 0 {
		return nil
	}
	in := vis[m.cursor(vis)]
	return &in
}

func (m *model) move(delta int) {
	vis := m.visible()
	if len(vis) == 0 {
		return
	}
	i := max(0, min(len(vis)-1, m.cursor(vis)+delta))
	m.selected = vis[i].ID
}

// clampCursor keeps a selection on screen when the selected instance went
// away or was filtered out.
func (m *model) clampCursor() {
	vis := m.visible()
	if len(vis) == 0 {
		return
	}
	m.selected = vis[m.cursor(vis)].ID
}
