// Package enginestate reads inference engines' load from their Prometheus
// /metrics pages (vLLM, SGLang, TGI) and keeps a fresh, lock-free snapshot
// of it per instance for routing, and learns which models each engine
// serves from its GET /v1/models (models.go). It knows nothing of Caddy:
// the caller supplies the targets and the transport (token, tunnel) of each.
package enginestate

import (
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Engine names reported in State.Engine.
const (
	EngineVLLM   = "vllm"
	EngineSGLang = "sglang"
	EngineTGI    = "tgi"
)

// DefaultMaxBodyBytes bounds a /metrics page. A vLLM page with its
// histograms is some tens of KiB per data-parallel rank; 4 MiB leaves room
// for large DP fleets while keeping a hostile or broken engine from making
// the gateway buffer without limit.
const DefaultMaxBodyBytes = 4 << 20

// ErrBodyTooLarge is returned when a page exceeds the size bound.
var ErrBodyTooLarge = errors.New("enginestate: /metrics body exceeds the size limit")

// State is one engine's load as its /metrics page reported it.
type State struct {
	// Waiting is the number of requests queued in the engine, summed over
	// every series (vLLM's engine label, SGLang's tp_rank/pp_rank, models).
	Waiting float64 `json:"waiting"`
	// Running is the number of requests in the engine's running batch,
	// summed like Waiting; 0 when the engine reports waiting only.
	Running float64 `json:"running"`
	// KVCacheUse is the fraction (0-1) of the KV cache in use, the mean
	// over the engine's series (each data-parallel rank has its own
	// cache); NaN when the engine does not report it (TGI).
	KVCacheUse float64 `json:"-"`
	// GenerationTokens is the engine's counter of tokens generated since
	// it started (vLLM's and SGLang's generation_tokens_total); NaN when
	// the engine does not report it. Its rate measures the engine's speed.
	GenerationTokens float64 `json:"-"`
	// Engine is EngineVLLM, EngineSGLang, EngineTGI or "" (unknown).
	Engine string `json:"engine"`
	// At is when the figures were read.
	At time.Time `json:"at"`
}

// HasKVCacheUse reports whether KVCacheUse is known.
func (s State) HasKVCacheUse() bool { return !math.IsNaN(s.KVCacheUse) }

// dialect names one engine's metric families. The first family of kv that
// is present wins, so vLLM's deprecated name is only a fallback.
type dialect struct {
	engine, waiting, running, generated string
	kv                                  []string
}

// dialects are tried in order; a page is of the first engine whose waiting
// family it contains.
var dialects = []dialect{
	{EngineVLLM, "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:generation_tokens_total",
		[]string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"}},
	{EngineSGLang, "sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:generation_tokens_total",
		[]string{"sglang:token_usage"}},
	{EngineTGI, "tgi_queue_size", "tgi_batch_current_size", "", nil},
}

// Parse reads a Prometheus text page (at most DefaultMaxBodyBytes) and
// returns the engine's state with At zero. ok is false, with a nil error,
// when the page parses but holds no known engine's queue metric (an engine
// we cannot read: the caller falls back to its own counts).
func Parse(r io.Reader) (st State, ok bool, err error) {
	return ParseLimit(r, DefaultMaxBodyBytes)
}

// ParseLimit is Parse with an explicit size bound in bytes.
func ParseLimit(r io.Reader, limit int64) (State, bool, error) {
	lr := &io.LimitedReader{R: r, N: limit + 1}
	fams, err := textToFamilies(lr)
	if lr.N <= 0 {
		return State{}, false, ErrBodyTooLarge
	}
	if err != nil {
		return State{}, false, fmt.Errorf("enginestate: parse /metrics: %w", err)
	}
	st, ok := fromFamilies(fams)
	return st, ok, nil
}

// ErrParserPanic is returned when the text parser panics on a page.
var ErrParserPanic = errors.New("enginestate: the metrics text parser panicked on the page")

// textToFamilies runs expfmt's parser, turning its panics into an error:
// expfmt v0.71.0 dereferences nil on "# TYPE a counter\n{}" (found by
// FuzzParse), and a page comes from a rented machine we do not trust.
func textToFamilies(r io.Reader) (fams map[string]*dto.MetricFamily, err error) {
	defer func() {
		if v := recover(); v != nil {
			fams, err = nil, fmt.Errorf("%w: %v", ErrParserPanic, v)
		}
	}()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// fromFamilies picks the first dialect present and reads its figures.
func fromFamilies(fams map[string]*dto.MetricFamily) (State, bool) {
	for _, d := range dialects {
		w, ok := fams[d.waiting]
		if !ok {
			continue
		}
		waiting, n := sum(w)
		if n == 0 {
			continue // only NaN or infinite samples: unreadable
		}
		st := State{Engine: d.engine, Waiting: max(0, waiting), KVCacheUse: math.NaN(), GenerationTokens: math.NaN()}
		if f, ok := fams[d.running]; ok {
			running, _ := sum(f)
			st.Running = max(0, running)
		}
		if f, ok := fams[d.generated]; ok && d.generated != "" {
			if total, n := sum(f); n > 0 && total >= 0 {
				st.GenerationTokens = total
			}
		}
		for _, name := range d.kv {
			if f, ok := fams[name]; ok {
				if total, n := sum(f); n > 0 {
					st.KVCacheUse = min(1, max(0, total/float64(n)))
					break
				}
			}
		}
		return st, true
	}
	return State{KVCacheUse: math.NaN(), GenerationTokens: math.NaN()}, false
}

// sum adds the finite values of every series of f and counts them.
func sum(f *dto.MetricFamily) (total float64, n int) {
	for _, m := range f.GetMetric() {
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Untyped != nil:
			v = m.GetUntyped().GetValue()
		default:
			continue // histograms and summaries carry no queue length
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		total += v
		n++
	}
	if math.IsInf(total, 0) {
		return 0, 0 // finite samples that overflow: no usable figure
	}
	return total, n
}
