// Package gpumetrics reads GPU metrics from rented vast.ai instances by
// running nvidia-smi on them: parse.go turns its CSV output into GPUs, and
// the Collector polls a changing set of instances through a Runner (the
// sshpool.Pool that also carries the HTTP tunnels).
//
// Background work: Collector.Run, started and stopped (by its context) by
// the Caddy module's SSH runtime, runs one goroutine per poll in flight.
// The package has no Caddy dependency.
package gpumetrics

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Query is the nvidia-smi command the Collector runs on every instance. Its
// columns are QueryFields, in that order. "nounits" keeps the values bare
// numbers; "noheader" drops the column titles.
const Query = "nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,temperature.gpu,power.draw,power.limit --format=csv,noheader,nounits"

// QueryFields lists the --query-gpu fields of Query, in output order.
var QueryFields = []string{"index", "uuid", "name", "utilization.gpu", "utilization.memory", "memory.used", "memory.total", "temperature.gpu", "power.draw", "power.limit"}

// GPU is one GPU as reported by nvidia-smi. Numeric readings are pointers
// because nvidia-smi reports some of them as "[N/A]" or "[Not Supported]"
// (MIG mode, some datacenter boards): nil means unknown, which is not the
// same as zero. Nil values encode as JSON null.
type GPU struct {
	// Index is nvidia-smi's GPU index. When the query has no usable index
	// column it is the GPU's position in the output (nvidia-smi prints GPUs
	// in index order).
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	Name  string `json:"name"`

	UtilizationGPU    *float64 `json:"utilization_gpu"`    // percent
	UtilizationMemory *float64 `json:"utilization_memory"` // percent
	MemoryUsedMiB     *float64 `json:"memory_used_mib"`
	MemoryTotalMiB    *float64 `json:"memory_total_mib"`
	TemperatureC      *float64 `json:"temperature_c"`
	PowerDrawW        *float64 `json:"power_draw_w"`
	PowerLimitW       *float64 `json:"power_limit_w"`
}

// ErrNoGPUs is returned (possibly joined with line errors) when the output
// holds no parsable GPU line: empty output, only whitespace, or only
// malformed lines.
var ErrNoGPUs = errors.New("gpumetrics: no GPU lines in nvidia-smi output")

// ErrMalformedLine is matched (errors.Is) by the error for a line whose
// field count differs from the query's.
var ErrMalformedLine = errors.New("gpumetrics: malformed nvidia-smi line")

// LineError reports one output line that could not be parsed.
type LineError struct {
	Line   int // 1-based line number in the output
	Got    int // number of comma-separated fields found
	Want   int // number of fields queried
	Prefix string
}

// Error implements error. The line text is cut short so that a garbage
// output cannot produce a huge error message.
func (e *LineError) Error() string {
	return fmt.Sprintf("gpumetrics: malformed nvidia-smi output line %d: got %d fields, want %d (%q)", e.Line, e.Got, e.Want, e.Prefix)
}

// Unwrap lets errors.Is(err, ErrMalformedLine) match.
func (e *LineError) Unwrap() error { return ErrMalformedLine }

// maxLineErrors bounds the errors kept for one output so that a huge garbage
// output cannot make a huge joined error.
const maxLineErrors = 8

// Parse parses the output of Query. See ParseFields.
func Parse(out []byte) ([]GPU, error) {
	return ParseFields(out, QueryFields)
}

// ParseFields parses the output of
// "nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits", one GPU
// per line, for any list of fields. Blank lines and the whitespace around
// values are ignored. A value that is not a finite number in a numeric
// field ("[N/A]", "[Not Supported]", "[Unknown Error]", ...) leaves that
// field nil rather than failing the line, because one unsupported sensor
// must not hide the others. Fields the GPU type does not hold are skipped.
//
// A line with the wrong number of fields is reported as a *LineError, but
// the other lines are still parsed: the result holds every good GPU and a
// non-nil error. Output without any good GPU line yields ErrNoGPUs.
func ParseFields(out []byte, fields []string) ([]GPU, error) {
	if len(fields) == 0 {
		return nil, errors.New("gpumetrics: no query fields given")
	}
	var (
		gpus    []GPU
		errs    []error
		dropped int
	)
	lineNo := 0
	for len(out) > 0 {
		var line []byte
		line, out, _ = bytes.Cut(out, []byte{'\n'})
		lineNo++
		text := strings.TrimSpace(string(line))
		if text == "" {
			continue
		}
		values := strings.Split(text, ",")
		if len(values) != len(fields) {
			if len(errs) < maxLineErrors {
				errs = append(errs, &LineError{Line: lineNo, Got: len(values), Want: len(fields), Prefix: prefix(text, 60)})
			} else {
				dropped++
			}
			continue
		}
		gpus = append(gpus, parseLine(values, fields, len(gpus)))
	}
	if dropped > 0 {
		errs = append(errs, fmt.Errorf("gpumetrics: %d more malformed lines", dropped))
	}
	if len(gpus) == 0 {
		errs = append([]error{ErrNoGPUs}, errs...)
	}
	return gpus, errors.Join(errs...)
}

// parseLine fills a GPU from one line's values; ordinal is the GPU's
// position among the good lines, used when there is no index column.
func parseLine(values, fields []string, ordinal int) GPU {
	g := GPU{Index: ordinal}
	for i, f := range fields {
		v := strings.TrimSpace(values[i])
		switch strings.TrimSpace(f) {
		case "index":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				g.Index = n
			}
		case "uuid", "gpu_uuid":
			g.UUID = v
		case "name", "gpu_name":
			g.Name = v
		case "utilization.gpu":
			g.UtilizationGPU = number(v)
		case "utilization.memory":
			g.UtilizationMemory = number(v)
		case "memory.used":
			g.MemoryUsedMiB = number(v)
		case "memory.total":
			g.MemoryTotalMiB = number(v)
		case "temperature.gpu":
			g.TemperatureC = number(v)
		case "power.draw":
			g.PowerDrawW = number(v)
		case "power.limit", "enforced.power.limit":
			g.PowerLimitW = number(v)
		}
	}
	return g
}

// unitSuffixes are the units nvidia-smi appends when "nounits" is missing
// from --format; accepting them costs nothing and tolerates that mistake.
var unitSuffixes = []string{" %", " MiB", " W", " C"}

// number parses a numeric reading, returning nil for anything that is not a
// finite number. NaN and infinities are refused because they cannot be
// encoded as JSON and mean "unknown" anyway.
func number(v string) *float64 {
	for _, s := range unitSuffixes {
		if strings.HasSuffix(v, s) {
			v = strings.TrimSpace(strings.TrimSuffix(v, s))
			break
		}
	}
	if v == "" || !isDecimal(v) {
		return nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

// isDecimal reports whether v looks like a plain decimal number. It keeps
// strconv's extra syntaxes (hex floats, underscores, "inf") out, since
// nvidia-smi never prints them and they would only come from garbage.
func isDecimal(v string) bool {
	digits := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' || c == 'e' || c == 'E':
		case (c == '-' || c == '+') && (i == 0 || v[i-1] == 'e' || v[i-1] == 'E'):
		default:
			return false
		}
	}
	return digits > 0
}

// prefix returns at most n bytes of s, for error messages.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
