package tui

// The client keys panel (K): every key of GET /vastai/keys with its
// limits, budget, spend and usage in the key's budget period.

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/internal/display"
)

// maxKeyRows bounds the panel, so the instances keep most of the screen.
const maxKeyRows = 8

var keyStatusColours = map[string]lipgloss.Style{
	"active":  lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
	"expired": lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
	"revoked": lipgloss.NewStyle().Foreground(lipgloss.Color("1")),
}

// keyColumn is one column of the keys table; numeric ones align right.
type keyColumn struct {
	title string
	right bool
	cell  func(k *adminapi.Key, t *adminapi.KeyUsage, now time.Time) string
}

var keyColumns = []keyColumn{
	{"KEY", false, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string {
		return display.Truncate(keyName(k), 20)
	}},
	{"STATUS", false, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return k.Status }},
	{"RPM", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return limitText(k.RPM) }},
	{"TPM", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return limitText(k.TPM) }},
	{"PAR", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return limitText(k.MaxParallel) }},
	{"BUDGET", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return budgetText(k.Budget, k.Period) }},
	{"SPENT", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return display.Dollars(k.Spent) }},
	{"USE", false, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return budgetBar(k) }},
	{"RESERVED", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return display.Dollars(k.Reserved) }},
	{"INFL", true, func(k *adminapi.Key, _ *adminapi.KeyUsage, _ time.Time) string { return strconv.Itoa(k.InFlight) }},
	{"REQS", true, func(_ *adminapi.Key, t *adminapi.KeyUsage, _ time.Time) string {
		return strconv.FormatInt(t.Requests, 10)
	}},
	{"TOK IN", true, func(_ *adminapi.Key, t *adminapi.KeyUsage, _ time.Time) string {
		return strconv.FormatInt(t.TokensIn, 10)
	}},
	{"TOK OUT", true, func(_ *adminapi.Key, t *adminapi.KeyUsage, _ time.Time) string {
		return strconv.FormatInt(t.TokensOut, 10)
	}},
	{"EXPIRES", false, func(k *adminapi.Key, _ *adminapi.KeyUsage, now time.Time) string { return expiresText(k.Expires, now) }},
}

func keyName(k *adminapi.Key) string {
	if k.Source == "api" {
		return k.Name + "*"
	}
	return k.Name
}

func limitText(n int) string {
	if n <= 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

// budgetText reads "$10.00/day"; a budget over the key's whole life
// "$10.00 total".
func budgetText(v float64, period string) string {
	switch {
	case v <= 0:
		return "-"
	case period == "total":
		return display.Dollars(v) + " total"
	}
	return display.Dollars(v) + "/" + period
}

func budgetBar(k *adminapi.Key) string {
	if k.Budget <= 0 {
		return "-"
	}
	f := k.Spent / k.Budget
	return display.Bar(f, 8) + " " + display.Percent(100*f)
}

// expiresText is the expiry date, with the time when it is not midnight
// UTC, and how far off it is.
func expiresText(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	u := t.UTC()
	s := u.Format("2006-01-02")
	if u.Hour() != 0 || u.Minute() != 0 {
		s = u.Format("2006-01-02 15:04") + " UTC"
	}
	if t.After(now) {
		return s + " (in " + display.Duration(t.Sub(now)) + ")"
	}
	return s + " (" + display.Duration(now.Sub(*t)) + " ago)"
}

// keyTally is the key's usage in its budget period, the period its spend
// is shown for.
func keyTally(k *adminapi.Key) *adminapi.KeyUsage {
	switch k.Period {
	case "day":
		return &k.Day
	case "total":
		return &k.Total
	}
	return &k.Month
}

// keyLines is how many lines the panel takes.
func (m *model) keyLines() int {
	if !m.showKeys {
		return 0
	}
	return 3 + max(1, min(len(m.keys), maxKeyRows))
}

func (m *model) viewKeys(b *strings.Builder, now time.Time) {
	b.WriteString("\n")
	title := "Client keys"
	if m.keys != nil {
		title += fmt.Sprintf(" (%d)", len(m.keys))
	}
	title = styleTitle.Render(title) + styleDim.Render("  figures for each key's budget period; * created through the API")
	if err := m.errs["keys"]; err != nil {
		title += "  " + styleWarn.Render(display.Truncate(err.Error(), max(20, m.width-90)))
	}
	b.WriteString(title + "\n")
	switch {
	case m.keys == nil:
		b.WriteString("  " + styleDim.Render("loading…") + "\n")
		return
	case len(m.keys) == 0:
		b.WriteString("  " + styleDim.Render("no client keys (a keys block in the vastai option, or `caddy vastai keys create`)") + "\n")
		return
	}
	rows := make([][]string, len(m.keys))
	for i := range m.keys {
		k := &m.keys[i]
		rows[i] = make([]string, len(keyColumns))
		for j, c := range keyColumns {
			rows[i][j] = c.cell(k, keyTally(k), now)
		}
	}
	b.WriteString(keyTable(rows, min(len(rows), maxKeyRows)))
	if len(rows) > maxKeyRows {
		b.WriteString(styleDim.Render(fmt.Sprintf("  … %d more keys (caddy vastai keys ls)", len(rows)-maxKeyRows)) + "\n")
	}
}

// keyTable aligns the columns over every row, numbers to the right, and
// prints the header and the first n rows.
func keyTable(rows [][]string, n int) string {
	widths := make([]int, len(keyColumns))
	for j, c := range keyColumns {
		widths[j] = lipgloss.Width(c.title)
		for _, r := range rows {
			widths[j] = max(widths[j], lipgloss.Width(r[j]))
		}
	}
	align := func(j int, s string) string {
		if keyColumns[j].right {
			return strings.Repeat(" ", widths[j]-lipgloss.Width(s)) + s
		}
		return pad(s, widths[j])
	}
	var b strings.Builder
	head := make([]string, len(keyColumns))
	for j, c := range keyColumns {
		head[j] = align(j, c.title)
	}
	b.WriteString("  " + styleHead.Render(strings.Join(head, "  ")) + "\n")
	for _, r := range rows[:n] {
		cells := make([]string, len(r))
		for j := range r {
			cells[j] = align(j, r[j])
		}
		if st, ok := keyStatusColours[r[1]]; ok {
			cells[1] = st.Render(cells[1])
		}
		b.WriteString("  " + strings.TrimRight(strings.Join(cells, "  "), " ") + "\n")
	}
	return b.String()
}
