package display

import "strings"

// TableStyled is Table with a style applied to cells after the columns are
// measured, so terminal colour codes do not break the alignment. style
// gets the row index (-1 for the header), the column and the plain cell,
// and returns what to print; nil prints cells as they are.
func TableStyled(header []string, rows [][]string, style func(row, col int, cell string) string) string {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = len([]rune(h))
	}
	for _, r := range rows {
		for i, c := range r {
			if i < len(widths) && len([]rune(c)) > widths[i] {
				widths[i] = len([]rune(c))
			}
		}
	}
	var b strings.Builder
	line := func(ri int, cells []string) {
		n := min(len(cells), len(widths))
		for i := 0; i < n; i++ {
			c := cells[i]
			out := c
			if style != nil {
				out = style(ri, i, c)
			}
			b.WriteString(out)
			if i < n-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-len([]rune(c))+2))
			}
		}
		b.WriteString("\n")
	}
	line(-1, header)
	for i, r := range rows {
		line(i, r)
	}
	return b.String()
}
