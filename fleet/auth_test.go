package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// authErr is what the client returns for a rejected key.
var authErr = fmt.Errorf("list: %w", &vastclient.APIError{Method: "GET", Path: "/api/v1/instances/", Status: 404, Code: "auth_error", Msg: "Invalid user key"})

// TestRejectedAPIKeyIsAnErrorLoggedOncePerChange checks that a wrong key
// is reported as such: one error-level line per change, never the
// "keeping the last known fleet" warning when there is no fleet, and a
// poll status that says the listing never succeeded and why.
func TestRejectedAPIKeyIsAnErrorLoggedOncePerChange(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := &scriptedLister{}
	l.push(nil, authErr)
	w := NewWatcher(zap.New(core))
	clock := time.Unix(1000, 0)
	w.now = func() time.Time { return clock }
	w.Configure(l, Config{Pools: []PoolSpec{{Name: "p", LabelPrefix: "llm-"}}, PollInterval: time.Hour})
	for i := 0; i < 3; i++ {
		clock = clock.Add(10 * time.Second)
		if err := w.Poll(context.Background()); err == nil {
			t.Fatal("poll succeeded")
		}
	}
	count := func(level zapcore.Level, msg string) int {
		n := 0
		for _, e := range logs.All() {
			if e.Level == level && e.Message == msg {
				n++
			}
		}
		return n
	}
	if n := count(zapcore.ErrorLevel, "the vast.ai API key was rejected"); n != 1 {
		t.Errorf("%d error lines about the rejected key, want 1; logs: %v", n, logs.All())
	}
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel && e.Message != "the vast.ai API key was rejected" {
			t.Errorf("unexpected %s line: %s", e.Level, e.Message)
		}
	}
	p := w.Snapshot().Poll
	if !p.AuthError || !p.LastSuccess.IsZero() || p.ConsecutiveFailures != 3 {
		t.Errorf("poll status %+v, want auth_error, never succeeded, 3 failures", p)
	}
	if s := p.Stale(clock); s != 20*time.Second {
		t.Errorf("stale %v, want 20s (since the first attempt: the data was never fresh)", s)
	}

	// Accepted again, then rejected again: one more error line.
	l.push(result(running(1, "llm-1", 9000)), nil)
	_ = w.Poll(context.Background())
	if w.Snapshot().Poll.AuthError {
		t.Error("auth error still set after a successful listing")
	}
	l.push(nil, authErr)
	_ = w.Poll(context.Background())
	_ = w.Poll(context.Background())
	if n := count(zapcore.ErrorLevel, "the vast.ai API key was rejected"); n != 2 {
		t.Errorf("%d error lines after a second change, want 2", n)
	}
}
