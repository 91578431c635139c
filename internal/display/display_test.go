package display

import (
	"testing"
	"time"
)

func TestFormats(t *testing.T) {
	tests := []struct{ got, want string }{
		{Rate(0.4016666666666666), "$0.40/h"},
		{Rate(0), "$0.00/h"},
		{Rate(0.004), "$0.004/h"},
		{Dollars(12.345), "$12.35"},
		{Dollars(-1), "-$1.00"},
		{Duration(192 * time.Second), "3m12s"},
		{Duration(45 * time.Second), "45s"},
		{Duration(2*time.Hour + 5*time.Minute), "2h05m"},
		{Duration(99 * time.Hour), "4d03h"},
		{Percent(87.4), "87%"},
		{Since(time.Time{}, time.Now()), "-"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestTableAlignsColumns(t *testing.T) {
	got := Table([]string{"ID", "RATE"}, [][]string{{"1", "$0.40/h"}, {"12345", "$1.00/h"}})
	want := "ID     RATE\n1      $0.40/h\n12345  $1.00/h\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
