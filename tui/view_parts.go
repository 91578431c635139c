package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// activeOperations are the operations not finished yet, oldest first, in
// the view's pool.
func (m *model) activeOperations() []lifecycle.Operation {
	var out []lifecycle.Operation
	for _, op := range m.operations {
		if op.Final() || (m.opts.Pool != "" && op.Pool != m.opts.Pool) {
			continue
		}
		out = append(out, op)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i] // the API lists newest first
	}
	return out
}

func (m *model) viewOperations(b *strings.Builder, ops []lifecycle.Operation, now time.Time) {
	b.WriteString("\n")
	title := fmt.Sprintf("Operations in progress (%d)", len(ops))
	if err := m.errs["operations"]; err != nil {
		title += "  " + styleWarn.Render(display.Truncate(err.Error(), max(20, m.width-40)))
	}
	b.WriteString(styleTitle.Render(title) + "\n")
	for i, op := range ops {
		if i == 6 {
			b.WriteString(styleDim.Render(fmt.Sprintf("  … %d more", len(ops)-i)) + "\n")
			break
		}
		inst := "-"
		if op.InstanceID != 0 {
			inst = fmt.Sprint(op.InstanceID)
		}
		cells := []string{pad(display.Truncate(op.ID, 14), 14), pad(op.Kind, 10), pad(display.Truncate(orDash(op.Pool), 10), 10),
			pad(op.State, 11), pad(inst, 10), pad(display.Since(op.Created, now), 7), currentAttempt(&op)}
		b.WriteString("  " + display.Truncate(strings.Join(cells, " "), max(40, m.width-3)) + "\n")
	}
}

// currentAttempt describes where an operation is now.
func currentAttempt(op *lifecycle.Operation) string {
	if n := len(op.Attempts); n > 0 {
		a := op.Attempts[n-1]
		s := fmt.Sprintf("attempt %d: offer %d", n, a.OfferID)
		if a.MachineID != 0 {
			s += fmt.Sprintf(" machine %d", a.MachineID)
		}
		if a.InstanceID != 0 {
			s += fmt.Sprintf(" instance %d", a.InstanceID)
		}
		s += fmt.Sprintf(" %s %s", display.Rate(a.Price), a.State)
		if a.Error != "" {
			s += ": " + a.Error
		}
		return s
	}
	if op.DestroyAttempts > 0 {
		return fmt.Sprintf("destroy attempt %d", op.DestroyAttempts)
	}
	if op.Drain && op.State == "draining" {
		return "waiting for requests in flight"
	}
	return orDash(op.Reason)
}

func (m *model) viewDetails(b *strings.Builder, now time.Time) {
	in := m.current()
	b.WriteString("\n")
	if in == nil {
		b.WriteString(styleDim.Render("no instance selected") + "\n")
		return
	}
	kv := func(k, v string) { fmt.Fprintf(b, "  %-12s %s\n", k, v) }
	b.WriteString(styleTitle.Render(fmt.Sprintf("Instance %d", in.ID)) + "  " + styleDim.Render(in.Label) + "\n")
	kv("state", fmt.Sprintf("%s for %s, routable %t %s", in.State, sincePtr(in.StateSince, now), in.Routable, in.Reason))
	kv("vast.ai", fmt.Sprintf("%s %s  %dx %s  machine %d  %s", orDash(deref(in.ActualStatus)), in.StatusMsg, in.NumGPUs, in.GPUName, in.MachineID, in.PublicIPAddr))
	kv("cost", fmt.Sprintf("%s, accrued %s since %s", display.Rate(in.DPHTotal), display.Dollars(in.Accrued), timeOrDash(in.StartDate)))
	if p := in.LastProbe; p != nil {
		kv("last probe", fmt.Sprintf("ok=%t status %d in %.1fms, %s ago %s", p.OK, p.Status, p.LatencyMS, display.Since(p.Time, now), p.Error))
	}
	if s := in.SSH; s != nil {
		kv("ssh", fmt.Sprintf("%s, %d reconnect(s) %s", s.Path, s.Reconnects, s.LastError))
	}
	for g := range in.GPUs {
		gpu := in.GPUs[g]
		kv(fmt.Sprintf("gpu %d", gpu.Index), fmt.Sprintf("%s  util %s  mem %s  %s  %s", gpu.Name, gpuUtil(in, g), gpuMem(in, g), gpuTemp(in, g), watts(gpu.PowerDrawW)))
	}
	if in.GPUError != "" {
		kv("gpu error", in.GPUError)
	}
	for _, op := range m.operations {
		if op.InstanceID == in.ID && !op.Final() {
			kv("operation", fmt.Sprintf("%s %s %s: %s", op.ID, op.Kind, op.State, currentAttempt(&op)))
		}
	}
}

func (m *model) viewFooter(b *strings.Builder) {
	b.WriteString("\n")
	switch {
	case m.confirm != nil:
		b.WriteString(styleConfirm.Render(m.confirm.prompt()) + "\n")
	case m.filtering:
		b.WriteString("filter: " + m.filter + "█  (enter keeps it, esc clears it)\n")
	default:
		if m.filter != "" {
			b.WriteString(fmt.Sprintf("filter: %q  ", m.filter))
		}
		if m.message != "" {
			b.WriteString(styleWarn.Render(m.message))
		}
		b.WriteString("\n")
	}
	b.WriteString(styleDim.Render("↑↓/jk move  / filter  s sort  enter details  d drain  x destroy  p provision  K keys  r refresh  q quit") + "\n")
}

func stateStyle(s string) lipgloss.Style {
	if st, ok := stateColours[s]; ok {
		return st
	}
	return lipgloss.NewStyle()
}

// pad fills s with spaces to w cells.
func pad(s string, w int) string {
	if n := lipgloss.Width(s); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func sincePtr(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return display.Since(*t, now)
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func sshPath(in *Instance) string {
	if in.SSH == nil {
		return "-"
	}
	return orDash(in.SSH.Path)
}

func gpuUtil(in *Instance, g int) string {
	if g >= len(in.GPUs) || in.GPUs[g].UtilizationGPU == nil {
		return "-"
	}
	u := *in.GPUs[g].UtilizationGPU
	return display.Bar(u/100, 8) + " " + pad(display.Percent(u), 4)
}

func gpuMem(in *Instance, g int) string {
	if g >= len(in.GPUs) {
		return "-"
	}
	used, total := in.GPUs[g].MemoryUsedMiB, in.GPUs[g].MemoryTotalMiB
	if used == nil || total == nil || *total <= 0 {
		return "-"
	}
	return display.Bar(*used / *total, 6) + fmt.Sprintf(" %.1f/%.0fG", *used/1024, *total/1024)
}

func gpuTemp(in *Instance, g int) string {
	if g >= len(in.GPUs) || in.GPUs[g].TemperatureC == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f°C", *in.GPUs[g].TemperatureC)
}

func watts(w *float64) string {
	if w == nil {
		return ""
	}
	return fmt.Sprintf("%.0fW", *w)
}

// gpuLine draws a further GPU of an instance under the first one's
// columns.
func gpuLine(in *Instance, g int, cols []column) string {
	indent := 0
	for _, c := range cols[:6] {
		indent += c.width + 1
	}
	return strings.Repeat(" ", indent) + pad(gpuUtil(in, g), cols[6].width) + " " + pad(gpuMem(in, g), cols[7].width) + " " + gpuTemp(in, g)
}
