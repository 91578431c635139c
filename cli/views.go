package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
)

// The admin API's JSON the tables show that adminapi does not hold yet.

type offerView struct {
	ID              int64   `json:"id"`
	MachineID       int64   `json:"machine_id"`
	NumGPUs         int     `json:"num_gpus"`
	GPUName         string  `json:"gpu_name"`
	GPURAM          float64 `json:"gpu_ram"`
	DPHTotal        float64 `json:"dph_total"`
	Reliability2    float64 `json:"reliability2"`
	Verification    string  `json:"verification"`
	Geolocation     string  `json:"geolocation"`
	CUDAMaxGood     float64 `json:"cuda_max_good"`
	DirectPortCount int     `json:"direct_port_count"`
}

type costsView struct {
	By           string  `json:"by"`
	Period       string  `json:"period"`
	Since        string  `json:"since"`
	SpendPerHour float64 `json:"spend_per_hour"`
	TotalDollars float64 `json:"total_dollars"`
	Rows         []struct {
		Period     string  `json:"period"`
		Pool       string  `json:"pool"`
		InstanceID int64   `json:"instance_id"`
		Dollars    float64 `json:"dollars"`
		Hours      float64 `json:"hours"`
		// The fields of a row by client key.
		Key       string  `json:"key"`
		Requests  int64   `json:"requests"`
		TokensIn  int64   `json:"tokens_in"`
		TokensOut int64   `json:"tokens_out"`
		Spend     float64 `json:"spend"`
	} `json:"rows"`
}

// Cell helpers: "-" for what is unknown, so columns never go blank.

func strOr(p *string) string {
	if p == nil || *p == "" {
		return "-"
	}
	return *p
}

func textOr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sinceOr(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return display.Since(*t, now)
}

func agoOr(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return display.Since(*t, now) + " ago"
}

func gpus(n int, name string) string {
	if name == "" {
		return "-"
	}
	return fmt.Sprintf("%dx %s", n, name)
}

func ids(list []int64) string {
	if len(list) == 0 {
		return "-"
	}
	s := make([]string, len(list))
	for i, id := range list {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, ",")
}

func opInstance(id int64) string {
	if id == 0 {
		return "-"
	}
	return strconv.FormatInt(id, 10)
}

func numOr(p *float64, format string) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf(format, *p)
}

// stateColors are ANSI colours of states (instances, operations, attempts).
var stateColors = map[string]string{
	"ready": "32", "succeeded": "32", "running": "32", "confirmed": "32",
	"provisioning": "36", "loading": "36", "starting": "36", "creating": "36", "waiting": "36", "pending": "36",
	"draining": "33", "destroying": "33", "cleaning_up": "33", "unhealthy": "33", "stopped": "33",
	"failed": "31", "destroy_failed": "31", "gone": "90", "not confirmed": "31",
}

// colour paints a state cell when stdout is a terminal.
func (e *env) colour(state string) string {
	c, ok := stateColors[state]
	if !e.io.Color || !ok {
		return state
	}
	return "\x1b[" + c + "m" + state + "\x1b[0m"
}

// table prints a table whose stateCol column (-1: none) is coloured.
func (e *env) table(header []string, rows [][]string, stateCol int) {
	out := display.TableStyled(header, rows, func(row, col int, cell string) string {
		if row >= 0 && col == stateCol {
			return e.colour(cell)
		}
		return cell
	})
	fmt.Fprint(e.io.Out, out)
}

// fields prints "Key  value" lines, aligned.
func (e *env) fields(kv [][2]string, stateKey string) {
	rows := make([][]string, len(kv))
	for i, p := range kv {
		rows[i] = []string{p[0] + ":", p[1]}
	}
	out := display.TableStyled([]string{"", ""}, rows, func(row, col int, cell string) string {
		if row >= 0 && col == 1 && kv[row][0] == stateKey {
			return e.colour(cell)
		}
		return cell
	})
	// The empty header line is dropped.
	fmt.Fprint(e.io.Out, strings.SplitN(out, "\n", 2)[1])
}
