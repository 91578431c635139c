package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// sample is one request's measurements.
type sample struct {
	instance string        // X-Vastai-Instance: who served it
	ttft     time.Duration // until the first chunk with content
	e2e      time.Duration // until the stream ended
	answer   string
	err      error
}

// errNoContent means a stream ended without a token.
var errNoContent = errors.New("stream carried no content")

// client sends streaming chat completions through the gateway.
type client struct {
	http          *http.Client
	url           string
	maxTokens     int
	sessionHeader string // "" sends no session id
}

func newClient(proxyURL string, conns int, o options) *client {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	return &client{
		http: &http.Client{Transport: tr}, url: proxyURL + "/v1/chat/completions",
		maxTokens: o.MaxTokens, sessionHeader: o.SessionHeader,
	}
}

func (c *client) close() { c.http.CloseIdleConnections() }

// chat sends one request and reads its stream to the end.
func (c *client) chat(ctx context.Context, sessionID string, msgs []message) sample {
	body, err := json.Marshal(map[string]any{
		"model": "vastsim/tiny-llm", "messages": msgs, "max_tokens": c.maxTokens, "stream": true,
	})
	if err != nil {
		return sample{err: err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return sample{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	if c.sessionHeader != "" {
		req.Header.Set(c.sessionHeader, sessionID)
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return sample{err: err}
	}
	defer resp.Body.Close()
	s := sample{instance: resp.Header.Get("X-Vastai-Instance")}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		s.err = fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
		return s
	}
	s.answer, s.ttft, s.err = readStream(resp.Body, start)
	s.e2e = time.Since(start)
	return s
}

// readStream collects the content of an SSE chat stream and the time of
// its first non-empty content delta (the role chunk carries none).
func readStream(body io.Reader, start time.Time) (string, time.Duration, error) {
	var answer strings.Builder
	var ttft time.Duration
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return "", 0, fmt.Errorf("bad chunk %q: %w", data, err)
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != "" && ttft == 0 {
				ttft = time.Since(start)
			}
			answer.WriteString(ch.Delta.Content)
		}
	}
	if err := sc.Err(); err != nil {
		return "", 0, fmt.Errorf("reading the stream: %w", err)
	}
	if ttft == 0 {
		return "", 0, errNoContent
	}
	return answer.String(), ttft, nil
}

// runWorkload sends w through c: o.Concurrency workers each run whole
// sessions, and the burst goes out at once when half of the session
// requests are done (or all sessions ended, if some failed early). It
// returns every sample and the wall time.
func runWorkload(ctx context.Context, c *client, w *workload, o options) ([]sample, time.Duration) {
	half := int64((w.requests() - len(w.burst)) / 2)
	fire := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(fire) }) }
	var done atomic.Int64
	var mu sync.Mutex
	samples := make([]sample, 0, w.requests())
	record := func(s sample) {
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}
	start := time.Now()
	var burst, sessions sync.WaitGroup
	burst.Go(func() { runBurst(ctx, c, w.burst, fire, record) })
	queue := make(chan session)
	for range o.Concurrency {
		sessions.Go(func() {
			for s := range queue {
				runSession(ctx, c, s, func(sm sample) {
					record(sm)
					if done.Add(1) >= half {
						release()
					}
				})
			}
		})
	}
	for _, s := range w.sessions {
		queue <- s
	}
	close(queue)
	sessions.Wait()
	release()
	burst.Wait()
	return samples, time.Since(start)
}

// runSession sends a session's turns in order, each with the answers so
// far; a failed turn ends the session (its history would be wrong).
func runSession(ctx context.Context, c *client, s session, record func(sample)) {
	answers := make([]string, 0, len(s.users))
	for i := range s.users {
		sm := c.chat(ctx, s.id, s.turn(i, answers))
		record(sm)
		if sm.err != nil {
			return
		}
		answers = append(answers, sm.answer)
	}
}

// runBurst sends every burst request at once after start closes.
func runBurst(ctx context.Context, c *client, burst []session, start <-chan struct{}, record func(sample)) {
	select {
	case <-start:
	case <-ctx.Done():
		return
	}
	var wg sync.WaitGroup
	for _, s := range burst {
		wg.Go(func() { record(c.chat(ctx, s.id, s.turn(0, nil))) })
	}
	wg.Wait()
}
