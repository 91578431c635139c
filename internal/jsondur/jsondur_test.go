package jsondur

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestDurationMatchesCaddy: every input loads to the same value, or fails,
// as with caddy.Duration, and encodes to the same bytes.
func TestDurationMatchesCaddy(t *testing.T) {
	for _, in := range []string{`"30s"`, `30000000000`, `"1.5h"`, `"2d"`, `"1d12h"`, `0`, `"0s"`, `"-5m"`, `"bogus"`, `"3"`, `true`, `1.5`} {
		var got Duration
		var want caddy.Duration
		gotErr := json.Unmarshal([]byte(in), &got)
		wantErr := json.Unmarshal([]byte(in), &want)
		if (gotErr != nil) != (wantErr != nil) {
			t.Errorf("%s: error %v, caddy.Duration's %v", in, gotErr, wantErr)
			continue
		}
		if gotErr == nil && time.Duration(got) != time.Duration(want) {
			t.Errorf("%s = %v, caddy.Duration %v", in, got, time.Duration(want))
		}
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if string(gb) != string(wb) {
			t.Errorf("%s encodes as %s, caddy.Duration as %s", in, gb, wb)
		}
	}
}
