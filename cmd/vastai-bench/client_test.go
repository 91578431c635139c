package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestClientChat checks one request against a fake engine: the body the
// engine gets, the session header, who served it, and a refused request.
func TestClientChat(t *testing.T) {
	cases := []struct {
		name, header, wantSession string
		status                    int
		wantErr                   string
	}{
		{"session header sent", "X-Session-ID", "session-3", http.StatusOK, ""},
		{"no session header", "", "", http.StatusOK, ""},
		{"refused", "", "", http.StatusBadGateway, "status 502"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got struct {
				Stream    bool      `json:"stream"`
				MaxTokens int       `json:"max_tokens"`
				Messages  []message `json:"messages"`
			}
			var gotSession string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotSession = r.Header.Get("X-Session-ID")
				_ = json.NewDecoder(r.Body).Decode(&got)
				w.Header().Set("X-Vastai-Instance", "42")
				if c.status != http.StatusOK {
					http.Error(w, "no upstream", c.status)
					return
				}
				fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\" hi\"}}]}\n\ndata: [DONE]\n\n")
			}))
			defer srv.Close()
			cl := newClient(srv.URL, 1, options{MaxTokens: 5, SessionHeader: c.header})
			defer cl.close()
			s := cl.chat(context.Background(), "session-3", []message{{"user", "q"}})
			if c.wantErr != "" {
				if s.err == nil || !strings.Contains(s.err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", s.err, c.wantErr)
				}
				return
			}
			if s.err != nil || s.answer != " hi" || s.instance != "42" || s.ttft <= 0 || s.e2e < s.ttft {
				t.Fatalf("sample = %+v", s)
			}
			if !got.Stream || got.MaxTokens != 5 || len(got.Messages) != 1 || gotSession != c.wantSession {
				t.Errorf("engine got %+v with session %q, want a 5-token stream with session %q", got, gotSession, c.wantSession)
			}
		})
	}
}

func TestSelectionPolicy(t *testing.T) {
	cases := []struct {
		name, policy, header string
		want                 map[string]any
	}{
		{"caddy policy ignores the header", "least_conn", "X-Session-ID", map[string]any{"policy": "least_conn"}},
		{"vastai policy gets it", "vastai_cache_aware", "X-Session-ID",
			map[string]any{"policy": "vastai_cache_aware", "session_header": "X-Session-ID"}},
		{"no header", "vastai_least_load", "", map[string]any{"policy": "vastai_least_load"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := selectionPolicy(c.policy, c.header)
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("selectionPolicy = %v, want %v", got, c.want)
			}
		})
	}
}
