package tui_test

import (
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The README's picture of top is the tmux pane itself: capture-pane -e
// gives its text with colours as SGR sequences, turned here into HTML that
// headless Chromium photographs. Nothing is drawn that the pane did not
// show.

var sgr = regexp.MustCompile("\x1b\\[([0-9;]*)m")

// palette is xterm's first 16 colours.
var palette = []string{
	"#1e1e1e", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
	"#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
}

const defaultFG, defaultBG = "#d0d0d0", "#1e1e1e"

type pen struct {
	fg, bg                          string
	bold, faint, underline, reverse bool
}

func colour256(n int) string {
	switch {
	case n < 16:
		return palette[n]
	case n < 232:
		n -= 16
		level := func(v int) int {
			if v == 0 {
				return 0
			}
			return 55 + 40*v
		}
		return fmt.Sprintf("#%02x%02x%02x", level(n/36), level(n/6%6), level(n%6))
	default:
		g := 8 + 10*(n-232)
		return fmt.Sprintf("#%02x%02x%02x", g, g, g)
	}
}

func (p *pen) apply(params string) {
	codes := strings.Split(params, ";")
	for i := 0; i < len(codes); i++ {
		c, _ := strconv.Atoi(codes[i])
		switch {
		case c == 0:
			*p = pen{}
		case c == 1:
			p.bold = true
		case c == 2:
			p.faint = true
		case c == 22:
			p.bold, p.faint = false, false
		case c == 4:
			p.underline = true
		case c == 24:
			p.underline = false
		case c == 7:
			p.reverse = true
		case c == 27:
			p.reverse = false
		case c >= 30 && c <= 37:
			p.fg = palette[c-30]
		case c >= 90 && c <= 97:
			p.fg = palette[c-90+8]
		case c == 39:
			p.fg = ""
		case c >= 40 && c <= 47:
			p.bg = palette[c-40]
		case c >= 100 && c <= 107:
			p.bg = palette[c-100+8]
		case c == 49:
			p.bg = ""
		case (c == 38 || c == 48) && i+2 < len(codes) && codes[i+1] == "5":
			n, _ := strconv.Atoi(codes[i+2])
			if c == 38 {
				p.fg = colour256(n)
			} else {
				p.bg = colour256(n)
			}
			i += 2
		}
	}
}

func (p pen) style() string {
	fg, bg := p.fg, p.bg
	if fg == "" {
		fg = defaultFG
	}
	if bg == "" {
		bg = defaultBG
	}
	if p.reverse {
		fg, bg = bg, fg
	}
	s := "color:" + fg + ";background:" + bg
	if p.bold {
		s += ";font-weight:bold"
	}
	if p.faint {
		s += ";opacity:0.6"
	}
	if p.underline {
		s += ";text-decoration:underline"
	}
	return s
}

// ansiHTML renders capture-pane -e output as a page.
func ansiHTML(capture string) string {
	var b strings.Builder
	b.WriteString(`<!doctype html><meta charset="utf-8"><body style="margin:0;background:` + defaultBG + `">`)
	b.WriteString(`<pre style="margin:0;padding:12px;color:` + defaultFG + `;font:14px 'DejaVu Sans Mono',monospace;line-height:1.25">`)
	var p pen
	last := 0
	flush := func(text string) {
		if text != "" {
			fmt.Fprintf(&b, `<span style="%s">%s</span>`, p.style(), html.EscapeString(text))
		}
	}
	for _, m := range sgr.FindAllStringSubmatchIndex(capture, -1) {
		flush(capture[last:m[0]])
		p.apply(capture[m[2]:m[3]])
		last = m[1]
	}
	flush(capture[last:])
	b.WriteString("</pre>")
	return b.String()
}

func TestANSIHTML(t *testing.T) {
	got := ansiHTML("a\x1b[1;31mb\x1b[0m\x1b[7mc<\x1b[27m")
	for _, want := range []string{
		`<span style="color:#d0d0d0;background:#1e1e1e">a</span>`,
		`<span style="color:#cd3131;background:#1e1e1e;font-weight:bold">b</span>`,
		`<span style="color:#1e1e1e;background:#d0d0d0">c&lt;</span>`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s in\n%s", want, got)
		}
	}
}

// saveScreen writes the plain capture to testdata/top-screen.txt and, when
// Chromium is at hand, a PNG of the coloured capture to testdata/top.png;
// only with VASTAI_UPDATE_SCREENSHOTS set.
func saveScreen(t *testing.T, x *tmux, plain string) {
	t.Helper()
	if os.Getenv("VASTAI_UPDATE_SCREENSHOTS") == "" {
		return
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "top-screen.txt"), []byte(strings.TrimRight(plain, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Logf("no chromium, no PNG: %v", err)
		return
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "top.html")
	coloured := strings.TrimRight(x.run("capture-pane", "-e", "-p", "-t", "top"), "\n")
	if err := os.WriteFile(page, []byte(ansiHTML(coloured)), 0o644); err != nil {
		t.Fatal(err)
	}
	png, _ := filepath.Abs(filepath.Join("testdata", "top.png"))
	lines := strings.Count(coloured, "\n") + 1
	cmd := exec.Command(browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--screenshot="+png,
		fmt.Sprintf("--window-size=1360,%d", 24+18*lines), "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium screenshot: %v: %s", err, out)
	}
	t.Logf("wrote %s", png)
}
