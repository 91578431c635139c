package tui

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
)

var (
	styleTitle    = lipgloss.NewStyle().Bold(true)
	styleDim      = lipgloss.NewStyle().Faint(true)
	styleHead     = lipgloss.NewStyle().Bold(true).Underline(true)
	styleSelected = lipgloss.NewStyle().Reverse(true)
	styleWarn     = lipgloss.NewStyle().Foreground(lipgloss.Color("3")).Bold(true)
	styleBad      = lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true)
	styleConfirm  = lipgloss.NewStyle().Foreground(lipgloss.Color("0")).Background(lipgloss.Color("3")).Bold(true)
	stateColours  = map[string]lipgloss.Style{
		"ready":        lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
		"loading":      lipgloss.NewStyle().Foreground(lipgloss.Color("6")),
		"starting":     lipgloss.NewStyle().Foreground(lipgloss.Color("6")),
		"provisioning": lipgloss.NewStyle().Foreground(lipgloss.Color("4")),
		"unhealthy":    lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
		"draining":     lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
		"failed":       lipgloss.NewStyle().Foreground(lipgloss.Color("1")),
		"gone":         lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
		"stopped":      lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
	}
)

// column is one column of the instance table: its title, width and how a
// cell is drawn.
type column struct {
	title string
	width int
	cell  func(m *model, in *Instance, now time.Time) string
}

func (m *model) columns() []column {
	cols := []column{
		{"ID", 10, func(_ *model, in *Instance, _ time.Time) string { return strconv.FormatInt(in.ID, 10) }},
		{"POOL", 10, func(_ *model, in *Instance, _ time.Time) string { return orDash(in.PoolName()) }},
		{"STATE", 12, func(_ *model, in *Instance, _ time.Time) string { return in.State }},
		{"FOR", 6, func(_ *model, in *Instance, now time.Time) string { return sincePtr(in.StateSince, now) }},
		{"UPSTREAM", 21, func(_ *model, in *Instance, _ time.Time) string { return orDash(deref(in.Upstream)) }},
		{"SSH", 7, func(_ *model, in *Instance, _ time.Time) string { return sshPath(in) }},
		{"GPU UTIL", 13, func(_ *model, in *Instance, _ time.Time) string { return gpuUtil(in, 0) }},
		{"GPU MEM", 20, func(_ *model, in *Instance, _ time.Time) string { return gpuMem(in, 0) }},
		{"TEMP", 5, func(_ *model, in *Instance, _ time.Time) string { return gpuTemp(in, 0) }},
	}
	// Request figures need counters the gateway may not expose: the columns
	// appear once some instance has them.
	var inflight, total bool
	for _, in := range m.instances {
		inflight = inflight || in.InFlight != nil
		total = total || in.RequestsTotal != nil
	}
	if inflight {
		cols = append(cols, column{"INFL", 5, func(_ *model, in *Instance, _ time.Time) string {
			if in.InFlight == nil {
				return "-"
			}
			return strconv.FormatInt(*in.InFlight, 10)
		}})
	}
	if total {
		cols = append(cols, column{"REQ/S", 6, func(m *model, in *Instance, _ time.Time) string {
			if r, ok := m.rates[in.ID]; ok {
				return fmt.Sprintf("%.1f", r)
			}
			return "-"
		}})
	}
	return append(cols, column{"$/H", 9, func(_ *model, in *Instance, _ time.Time) string { return display.Rate(in.DPHTotal) }})
}

func (m *model) View() string {
	now := m.now()
	var b strings.Builder
	m.viewHeader(&b, now)
	vis := m.visible()
	ops := m.activeOperations()
	// Rows left for instances once the header, operations, details and
	// footer have their lines.
	reserved := 8 + min(len(ops), 6)
	if m.details {
		reserved += 9
	}
	reserved += m.keyLines()
	m.viewInstances(&b, vis, now, max(3, m.height-reserved))
	m.viewOperations(&b, ops, now)
	if m.showKeys {
		m.viewKeys(&b, now)
	}
	if m.details {
		m.viewDetails(&b, now)
	}
	m.viewFooter(&b)
	return b.String()
}

func (m *model) viewHeader(b *strings.Builder, now time.Time) {
	title := styleTitle.Render("caddy vastai top") + styleDim.Render(fmt.Sprintf("  %s  refresh %s", now.Format("15:04:05"), refreshText(m.opts.Refresh)))
	if m.opts.Pool != "" {
		title += styleDim.Render("  pool " + m.opts.Pool)
	}
	b.WriteString(title + "\n")
	if line := m.staleLine(now); line != "" {
		b.WriteString(styleBad.Render(line) + "\n")
	}
	b.WriteString(m.fleetLine() + "\n")
	b.WriteString(m.watcherLine(now) + "\n")
}

// staleLine says since when the figures on screen are old, and why.
func (m *model) staleLine(now time.Time) string {
	var errs []string
	for _, part := range []string{"status", "instances", "pools", "operations"} {
		if err := m.errs[part]; err != nil {
			errs = append(errs, part+": "+err.Error())
		}
	}
	slow := m.fetching && now.Sub(m.fetchStart) > 2*m.opts.Refresh
	if len(errs) == 0 && !slow && !m.loadedAt.IsZero() {
		return ""
	}
	since := "start"
	if !m.loadedAt.IsZero() {
		since = m.loadedAt.Format("15:04:05") + " (" + display.Since(m.loadedAt, now) + " ago)"
	}
	if len(errs) == 0 {
		if m.loadedAt.IsZero() && !slow {
			return "loading…"
		}
		errs = append(errs, "waiting for the admin API ("+display.Since(m.fetchStart, now)+")")
	}
	return "stale since " + since + ": " + display.Truncate(strings.Join(errs, "; "), max(20, m.width-40))
}

func (m *model) fleetLine() string {
	states := map[string]int{}
	routable, dph, accrued := 0, 0.0, 0.0
	for _, in := range m.instances {
		if m.opts.Pool != "" && in.PoolName() != m.opts.Pool {
			continue
		}
		states[in.State]++
		if in.Routable {
			routable++
		}
		if billing(&in) {
			dph += in.DPHTotal
		}
		accrued += in.Accrued
	}
	if m.status != nil && m.status.SpendPerHour != nil && m.opts.Pool == "" {
		dph = *m.status.SpendPerHour
	}
	names := make([]string, 0, len(states))
	for s := range states {
		names = append(names, s)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, s := range names {
		parts = append(parts, stateStyle(s).Render(fmt.Sprintf("%d %s", states[s], s)))
	}
	n := 0
	for _, c := range states {
		n += c
	}
	line := fmt.Sprintf("%s %d instances", styleTitle.Render("Fleet"), n)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	line += fmt.Sprintf("   routable %d   spend %s   accrued %s", routable, display.Rate(dph), display.Dollars(accrued))
	if budget := m.budgetLine(); budget != "" {
		line += "   " + budget
	}
	return line
}

// billing reports whether an instance is paid for at its GPU rate.
func billing(in *Instance) bool {
	switch deref(in.ActualStatus) {
	case "stopped", "exited", "offline":
		return false
	}
	return in.State != "gone"
}

// budgetLine shows how much of each spend budget is in use.
func (m *model) budgetLine() string {
	var parts []string
	if s := m.status; s != nil && s.MaxSpendPerHour != nil && *s.MaxSpendPerHour > 0 && s.SpendPerHour != nil {
		parts = append(parts, fmt.Sprintf("gateway %s of %s (%s)", display.Rate(*s.SpendPerHour), display.Rate(*s.MaxSpendPerHour), display.Percent(100**s.SpendPerHour / *s.MaxSpendPerHour)))
	}
	for _, p := range m.pools {
		pr := p.Provisioning
		if pr == nil || pr.MaxSpendPerHour <= 0 || (m.opts.Pool != "" && p.Name != m.opts.Pool) {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s of %s (%s)", p.Name, display.Rate(pr.SpendPerHour), display.Rate(pr.MaxSpendPerHour), display.Percent(100*pr.SpendPerHour/pr.MaxSpendPerHour)))
	}
	if len(parts) == 0 {
		return ""
	}
	return "budget " + strings.Join(parts, ", ")
}

func (m *model) watcherLine(now time.Time) string {
	s := m.status
	if s == nil {
		return styleDim.Render("Watcher  -")
	}
	line := fmt.Sprintf("Watcher  listing %s old, generation %d, %d watcher(s)", display.Duration(time.Duration(s.StaleSeconds*float64(time.Second))), s.Generation, s.WatchersRunning)
	if s.LastError != "" {
		line += "  " + styleWarn.Render(fmt.Sprintf("%d failure(s): %s", s.ConsecutiveFailures, display.Truncate(s.LastError, max(20, m.width-70))))
	}
	return line + styleDim.Render(fmt.Sprintf("   sort %s", sortKeys[m.sortIdx]))
}

func (m *model) viewInstances(b *strings.Builder, vis []Instance, now time.Time, rows int) {
	cols := m.columns()
	b.WriteString("\n")
	head := make([]string, len(cols))
	for i, c := range cols {
		head[i] = pad(c.title, c.width)
	}
	b.WriteString("  " + styleHead.Render(strings.Join(head, " ")) + "\n")
	if len(vis) == 0 {
		msg := "no instances"
		if m.filter != "" {
			msg = fmt.Sprintf("no instance matches %q (esc clears the filter)", m.filter)
		} else if m.loadedAt.IsZero() {
			msg = "waiting for the first answer of the admin API"
		}
		b.WriteString("  " + styleDim.Render(msg) + "\n")
		return
	}
	lines, starts := m.instanceLines(vis, cols, now)
	// Scroll so that the selected instance's first line is on screen.
	first := starts[m.cursor(vis)]
	if first < m.offset {
		m.offset = first
	}
	if first >= m.offset+rows {
		m.offset = first - rows + 1
	}
	m.offset = max(0, min(m.offset, len(lines)-1))
	end := min(len(lines), m.offset+rows)
	for _, l := range lines[m.offset:end] {
		b.WriteString(l + "\n")
	}
	if end < len(lines) {
		b.WriteString(styleDim.Render(fmt.Sprintf("  … %d more lines (j/k scroll)", len(lines)-end)) + "\n")
	}
}

// instanceLines draws one line per instance, plus one per further GPU;
// starts[i] is the line where the i-th instance begins.
func (m *model) instanceLines(vis []Instance, cols []column, now time.Time) (lines []string, starts []int) {
	cur := m.cursor(vis)
	for i := range vis {
		in := &vis[i]
		cells := make([]string, len(cols))
		for j, c := range cols {
			cells[j] = pad(display.Truncate(c.cell(m, in, now), c.width), c.width)
		}
		starts = append(starts, len(lines))
		if i == cur {
			lines = append(lines, "> "+styleSelected.Render(strings.Join(cells, " ")))
		} else {
			cells[2] = stateStyle(in.State).Render(cells[2])
			lines = append(lines, "  "+strings.Join(cells, " "))
		}
		for g := 1; g < len(in.GPUs); g++ {
			lines = append(lines, "  "+gpuLine(in, g, cols))
		}
	}
	return lines, starts
}

// refreshText shows the refresh interval; display.Duration would round a
// sub-second one to "0s".
func refreshText(d time.Duration) string {
	if d < time.Second {
		return d.String()
	}
	return display.Duration(d)
}
