package vastsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/enginestate"
)

// genResult is the outcome of one generation request sent from a goroutine.
type genResult struct {
	status int
	header http.Header
	ttft   time.Duration // until the first content chunk (streams) or the answer
	err    error
}

// generate sends a chat completion to an instance's engine. With stream it
// reads the stream to the end; started, if set, is closed once the first
// content chunk arrived.
func generate(ctx context.Context, info InstanceInfo, body map[string]any, started chan<- struct{}) genResult {
	j, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+info.EngineAddr+"/v1/chat/completions", bytes.NewReader(j))
	if err != nil {
		return genResult{err: err}
	}
	req.Header.Set("Authorization", "Bearer "+info.JupyterToken)
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return genResult{err: err}
	}
	defer resp.Body.Close()
	res := genResult{status: resp.StatusCode, header: resp.Header}
	if stream, _ := body["stream"].(bool); !stream {
		_, res.err = io.ReadAll(resp.Body)
		res.ttft = time.Since(t0)
		return res
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if res.ttft == 0 && strings.Contains(sc.Text(), `"content":"`) && !strings.Contains(sc.Text(), `"content":""`) {
			res.ttft = time.Since(t0)
			if started != nil {
				close(started)
			}
		}
	}
	res.err = sc.Err()
	return res
}

func chat(system, user string, maxTokens int, stream bool) map[string]any {
	return map[string]any{
		"messages":   []any{map[string]any{"role": "system", "content": system}, map[string]any{"role": "user", "content": user}},
		"max_tokens": maxTokens, "stream": stream,
	}
}

// scrape reads the engine's /metrics with the gateway's parser.
func scrape(t *testing.T, info InstanceInfo) (enginestate.State, bool) {
	t.Helper()
	r := engineReq(t, info.EngineAddr, "GET", "/metrics", info.JupyterToken, nil)
	if r.status != http.StatusOK {
		return enginestate.State{}, false
	}
	st, ok, err := enginestate.Parse(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, r.body)
	}
	return st, ok
}

func TestQueueSlotsMakeRequestsWait(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{Slots: 1, TokensPerSecond: 100}})
	info := s.info(t, id)

	// A holds the only slot: a long stream, cancelled by the test.
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	startedA := make(chan struct{})
	doneA := make(chan genResult, 1)
	go func() { doneA <- generate(ctxA, info, chat("s", "a", 512, true), startedA) }()
	<-startedA

	doneB := make(chan genResult, 1)
	go func() { doneB <- generate(context.Background(), info, chat("s", "b", 2, false), nil) }()
	waitFor(t, 30*time.Second, "B waiting on /metrics", func() bool {
		st, ok := scrape(t, info)
		return ok && st.Waiting == 1 && st.Running == 1
	})
	// C queues behind B and gives up: it must leave the queue without
	// taking or leaking a slot.
	ctxC, cancelC := context.WithCancel(context.Background())
	doneC := make(chan genResult, 1)
	go func() { doneC <- generate(ctxC, info, chat("s", "c", 2, false), nil) }()
	waitFor(t, 30*time.Second, "C waiting", func() bool { l, _ := s.EngineLoad(id); return l.Waiting == 2 })
	cancelC()
	if r := <-doneC; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("C: %+v", r)
	}
	waitFor(t, 30*time.Second, "C out of the queue", func() bool { l, _ := s.EngineLoad(id); return l.Waiting == 1 })
	select {
	case r := <-doneB:
		t.Fatalf("B finished while A held the only slot: %+v", r)
	default:
	}
	cancelA()
	<-doneA
	if r := <-doneB; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("B after A left: %+v", r)
	}
	waitFor(t, 30*time.Second, "an idle engine", func() bool {
		st, ok := scrape(t, info)
		return ok && st.Waiting == 0 && st.Running == 0
	})
	if l, _ := s.EngineLoad(id); l.Running != 0 || l.Waiting != 0 || l.KVCacheUse != 0 {
		t.Fatalf("leaked load: %+v", l)
	}
}

func TestQueueIsFIFO(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{Slots: 1, TokensPerSecond: 200}})
	info := s.info(t, id)
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	started := make(chan struct{})
	go func() { generate(ctxA, info, chat("s", "a", 512, true), started) }()
	<-started
	order := make(chan string, 4)
	for i, name := range []string{"b", "c", "d"} {
		go func() {
			if r := generate(context.Background(), info, chat("s", name, 3, false), nil); r.err == nil {
				order <- name
			}
		}()
		waitFor(t, 30*time.Second, name+" queued", func() bool { l, _ := s.EngineLoad(id); return l.Waiting == i+1 })
	}
	cancelA()
	var got []string
	for range 3 {
		select {
		case n := <-order:
			got = append(got, n)
		case <-time.After(30 * time.Second):
			t.Fatalf("queue stalled after %v", got)
		}
	}
	if strings.Join(got, "") != "bcd" {
		t.Fatalf("completion order %v, want FIFO b c d", got)
	}
}

func TestPrefixCacheShortensTTFT(t *testing.T) {
	const perBlock = 40 * time.Millisecond
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{PrefillPerBlock: perBlock, PrefixBlockChars: 64}})
	info := s.info(t, id)
	system := strings.Repeat("You are a careful assistant for GPU fleets. ", 45) // ~31 blocks
	ttft := func(sys, user string) (time.Duration, int, int) {
		t.Helper()
		r := generate(context.Background(), info, chat(sys, user, 4, true), nil)
		if r.err != nil || r.status != http.StatusOK || r.ttft == 0 {
			t.Fatalf("request: %+v", r)
		}
		var total, cached int
		fmt.Sscan(r.header.Get("X-Vastsim-Prefix-Blocks"), &total)
		fmt.Sscan(r.header.Get("X-Vastsim-Cached-Blocks"), &cached)
		return r.ttft, total, cached
	}
	fresh, total, cached := ttft(system, "first question")
	if cached != 0 || total < 30 {
		t.Fatalf("fresh prompt: %d of %d blocks cached", cached, total)
	}
	if floor := time.Duration(total) * perBlock; fresh < floor {
		t.Fatalf("fresh TTFT %v is below the configured prefill %v", fresh, floor)
	}
	repeat, total2, cached2 := ttft(system, "second question")
	if cached2 < total2-2 {
		t.Fatalf("repeated system prompt: only %d of %d blocks cached", cached2, total2)
	}
	if repeat >= fresh {
		t.Fatalf("repeated prefix TTFT %v is not shorter than fresh %v", repeat, fresh)
	}
	other, _, cached3 := ttft(strings.Repeat("Another system prompt entirely, for a new session. ", 40), "q")
	if cached3 != 0 || other <= repeat {
		t.Fatalf("a different prefix hit the cache (%d blocks) or was as fast as a hit (%v vs %v)", cached3, other, repeat)
	}
	l, _ := s.EngineLoad(id)
	if l.PrefixHit != int64(cached2) || l.CachedBlocks == 0 {
		t.Fatalf("load %+v", l)
	}
}

func TestMetricsFormatsParseToTrueLoad(t *testing.T) {
	tests := []struct {
		format string
		engine string // "" for no /metrics
		kv     bool
	}{
		{MetricsDefault, enginestate.EngineVLLM, true},
		{MetricsVLLM, enginestate.EngineVLLM, true},
		{MetricsVLLMLegacy, enginestate.EngineVLLM, true},
		{MetricsSGLang, enginestate.EngineSGLang, true},
		{MetricsTGI, enginestate.EngineTGI, false},
		{MetricsNone, "", false},
	}
	s, _ := startSim(t, fastOpts())
	for _, tc := range tests {
		t.Run("format="+tc.format, func(t *testing.T) {
			id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{Slots: 2, KVBlocks: 100, TokensPerSecond: 100, Metrics: tc.format}})
			info := s.info(t, id)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for i := range 3 { // two run, one waits
				go generate(ctx, info, chat("sys", fmt.Sprint("q", i), 512, true), nil)
			}
			waitFor(t, 30*time.Second, "2 running, 1 waiting", func() bool {
				l, _ := s.EngineLoad(id)
				return l.Running == 2 && l.Waiting == 1
			})
			truth, _ := s.EngineLoad(id)
			st, ok := scrape(t, info)
			if tc.engine == "" {
				if ok {
					t.Fatalf("format none served metrics: %+v", st)
				}
				return
			}
			if !ok || st.Engine != tc.engine || st.Waiting != 1 || st.Running != 2 {
				t.Fatalf("parsed %+v, true load %+v", st, truth)
			}
			// Each request holds 1 prompt block + 32 output blocks.
			if want := float64(2*(1+32)) / 100; truth.KVCacheUse != want {
				t.Fatalf("true KV use %v, want %v", truth.KVCacheUse, want)
			}
			if tc.kv != st.HasKVCacheUse() || (tc.kv && math.Abs(st.KVCacheUse-truth.KVCacheUse) > 1e-9) {
				t.Fatalf("parsed KV %v, true %v", st.KVCacheUse, truth.KVCacheUse)
			}
		})
	}
}

func TestTokensPerSecondPacesGeneration(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{TokensPerSecond: 20}})
	info := s.info(t, id)
	t0 := time.Now()
	if r := generate(context.Background(), info, chat("s", "u", 10, true), nil); r.err != nil || r.status != 200 {
		t.Fatalf("%+v", r)
	}
	// 10 tokens at 20/s: 9 pauses of 50ms at least (sleeps never end early).
	if d := time.Since(t0); d < 450*time.Millisecond {
		t.Fatalf("10 tokens at 20 tok/s took %v", d)
	}
}

func TestEngineSpecValidation(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	for field, spec := range map[string]EngineSpec{
		"Slots":           {Slots: -1},
		"TokensPerSecond": {TokensPerSecond: math.NaN()},
		"PrefillPerBlock": {PrefillPerBlock: -time.Second},
		"KVBlocks":        {KVBlocks: -3},
		"Metrics":         {Metrics: "prometheus"},
	} {
		err := s.SetEngine(id, spec)
		if !errors.Is(err, ErrBadEngineSpec) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
		if _, err := s.Launch(LaunchSpec{Engine: spec}); !errors.Is(err, ErrBadEngineSpec) {
			t.Errorf("Launch with bad %s: %v", field, err)
		}
	}
	if err := s.SetEngine(999999, EngineSpec{}); err == nil {
		t.Error("SetEngine on an unknown instance succeeded")
	}
}

func TestSetEngineMoreSlotsAdmitsWaiters(t *testing.T) {
	s, _ := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true, Engine: EngineSpec{Slots: 1, TokensPerSecond: 100}})
	info := s.info(t, id)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 3 {
		go generate(ctx, info, chat("s", fmt.Sprint(i), 512, true), nil)
	}
	waitFor(t, 30*time.Second, "1 running, 2 waiting", func() bool { l, _ := s.EngineLoad(id); return l.Running == 1 && l.Waiting == 2 })
	if err := s.SetEngine(id, EngineSpec{Slots: 3, TokensPerSecond: 100}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "all running", func() bool { l, _ := s.EngineLoad(id); return l.Running == 3 && l.Waiting == 0 })
}

func TestPrefixLRUStaysBounded(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var c prefixLRU
	c.init()
	for i := range 2000 {
		blocks := make([]uint64, rng.IntN(40))
		for j := range blocks {
			blocks[j] = rng.Uint64N(500)
		}
		c.insert(blocks, 64)
		if c.ll.Len() > 64 || len(c.idx) != c.ll.Len() {
			t.Fatalf("step %d: list %d, index %d, cap 64", i, c.ll.Len(), len(c.idx))
		}
	}
	c.insert([]uint64{1, 2, 3}, 3)
	c.insert([]uint64{1}, 3) // 1 is now most recent
	c.insert([]uint64{4}, 3) // evicts 2, the least recently used
	if c.match([]uint64{1}) != 1 || c.match([]uint64{2}) != 0 || c.match([]uint64{3, 4}) != 2 {
		t.Fatal("LRU evicted the wrong block")
	}
}

func TestPrefixBlocksChain(t *testing.T) {
	a, ta := prefixBlocks("AAAABBBBCC", 4)
	b, tb := prefixBlocks("BBBBAAAA", 4)
	if ta != 3 || len(a) != 2 || tb != 2 || len(b) != 2 {
		t.Fatalf("counts: %d/%d %d/%d", len(a), ta, len(b), tb)
	}
	// The same block text after a different prefix must not match.
	if a[1] == b[0] || a[0] == b[1] {
		t.Fatal("block hashes are not chained to their prefix")
	}
	c, _ := prefixBlocks("AAAABBBBDDDD", 4)
	if c[0] != a[0] || c[1] != a[1] {
		t.Fatal("a shared prefix hashes differently")
	}
}
