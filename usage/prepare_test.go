package usage

import (
	"encoding/json"
	"strings"
	"testing"
)

// prepareCase is a body, what Prepare must make of it ("" unchanged)
// and what it must say.
type prepareCase struct {
	name, body, want string
	info             RequestInfo
}

func prepareCases() []prepareCase {
	longPrompt := strings.Repeat("abcd", 100)
	return []prepareCase{
		{"not streaming", `{"model":"m","prompt":"hello world!"}`, "",
			RequestInfo{PromptEstimate: 3}},
		{"stream false", `{"prompt":"hi","stream":false}`, "", RequestInfo{PromptEstimate: 1}},
		{"stream without options", `{"model":"m","prompt":"` + longPrompt + `","stream":true,"max_tokens":64}`,
			`{"model":"m","prompt":"` + longPrompt + `","stream":true,"max_tokens":64,"stream_options":{"include_usage":true}}`,
			RequestInfo{Stream: true, Injected: true, MaxTokens: 64, PromptEstimate: 100}},
		{"pretty-printed chat", "{\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"12345678\"}\n  ],\n  \"stream\": true\n}\n",
			"{\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"12345678\"}\n  ],\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n",
			RequestInfo{Stream: true, Injected: true, PromptEstimate: 2}},
		{"empty options", `{"messages":[],"stream":true,"stream_options":{ }}`,
			`{"messages":[],"stream":true,"stream_options":{"include_usage":true }}`,
			RequestInfo{Stream: true, Injected: true, PromptEstimate: 1}},
		{"other options kept", `{"prompt":"x","stream_options":{"continuous_usage_stats":false},"stream":true}`,
			`{"prompt":"x","stream_options":{"include_usage":true,"continuous_usage_stats":false},"stream":true}`,
			RequestInfo{Stream: true, Injected: true, PromptEstimate: 1}},
		{"include_usage false", `{"prompt":"x","stream":true,"stream_options":{"include_usage": false}}`,
			`{"prompt":"x","stream":true,"stream_options":{"include_usage": true}}`,
			RequestInfo{Stream: true, Injected: true, PromptEstimate: 1}},
		{"options null", `{"prompt":"x","stream":true,"stream_options":null}`,
			`{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}`,
			RequestInfo{Stream: true, Injected: true, PromptEstimate: 1}},
		{"client asked", `{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}`, "",
			RequestInfo{Stream: true, PromptEstimate: 1}},
		{"client asked, duplicate key last wins", `{"prompt":"x","stream":true,"stream_options":{"include_usage":false,"include_usage":true}}`, "",
			RequestInfo{Stream: true, PromptEstimate: 1}},
		{"options not an object", `{"prompt":"x","stream":true,"stream_options":"yes"}`, "",
			RequestInfo{Stream: true, PromptEstimate: 1}},
		{"stream as a string is not a stream", `{"prompt":"x","stream":"true"}`, "", RequestInfo{PromptEstimate: 1}},
		{"nested stream ignored", `{"messages":[{"role":"user","content":"x","stream":true}]}`, "", RequestInfo{PromptEstimate: 1}},
		{"no prompt nor messages (Responses API)", `{"input":"hello","stream":true}`, "", RequestInfo{Stream: true, PromptEstimate: 1}},
		{"max_completion_tokens wins", `{"messages":[],"max_tokens":5,"max_completion_tokens":9}`, "",
			RequestInfo{MaxTokens: 9, PromptEstimate: 1}},
		{"escaped keys are the engine's keys", `{"prompt":"x","str\u0065am":true,"max\u005ftokens":300}`,
			`{"prompt":"x","str\u0065am":true,"max\u005ftokens":300,"stream_options":{"include_usage":true}}`,
			RequestInfo{Stream: true, Injected: true, MaxTokens: 300, PromptEstimate: 1}},
		{"escaped include_usage", `{"prompt":"x","stream":true,"stream_options":{"include\u005Fusage":true}}`, "",
			RequestInfo{Stream: true, PromptEstimate: 1}},
		{"max_tokens as float and exponent", `{"prompt":"x","max_tokens":1e3,"max_completion_tokens":100.0}`, "",
			RequestInfo{MaxTokens: 100, PromptEstimate: 1}},
		{"max_tokens exponent", `{"prompt":"x","max_tokens":2.5E2}`, "", RequestInfo{MaxTokens: 250, PromptEstimate: 1}},
		{"huge max_tokens saturates", `{"prompt":"x","max_tokens":123456789012345678901234567890}`, "",
			RequestInfo{MaxTokens: maxCount, PromptEstimate: 1}},
		{"negative max_tokens", `{"prompt":"x","max_tokens":-3}`, "", RequestInfo{PromptEstimate: 1}},
		{"content parts, images left out", `{"messages":[{"role":"user","content":[{"type":"text","text":"` + longPrompt +
			`"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + strings.Repeat("A", 4000) + `"}}]}]}`, "",
			RequestInfo{PromptEstimate: 100}},
		{"token ids", `{"prompt":[1,2,3,4,5,6,7]}`, "", RequestInfo{PromptEstimate: 7}},
		{"prompt list", `{"prompt":["abcdabcd","abcd"]}`, "", RequestInfo{PromptEstimate: 3}},
		{"invalid JSON", `{"prompt":"x","stream":true`, "", RequestInfo{Stream: true, PromptEstimate: 1}},
		{"not an object", `[1,2]`, "", RequestInfo{PromptEstimate: 1}},
		{"empty", ``, "", RequestInfo{PromptEstimate: 1}},
	}
}

func TestPrepare(t *testing.T) {
	for _, tc := range prepareCases() {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			out, info := Prepare(body)
			want := tc.want
			if want == "" {
				want = tc.body
				if len(body) > 0 && &out[0] != &body[0] {
					t.Fatal("unchanged body was copied")
				}
			}
			if string(out) != want {
				t.Fatalf("body\n%s\nwant\n%s", out, want)
			}
			if info != tc.info {
				t.Fatalf("info %+v, want %+v", info, tc.info)
			}
			if info.Injected {
				checkInjected(t, out)
				if string(body) != tc.body {
					t.Fatal("input body modified")
				}
			}
		})
	}
}

// checkInjected decodes an injected body: valid JSON asking for usage.
func checkInjected(t *testing.T, out []byte) {
	t.Helper()
	var v struct {
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.Unmarshal(out, &v); err != nil || !v.StreamOptions.IncludeUsage {
		t.Fatalf("injected body %q: %v, include_usage %v", out, err, v.StreamOptions.IncludeUsage)
	}
}

func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"x","stream":true}`, `{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{}}`,
		`{"prompt":"x","stream":true,"stream_options":{"include_usage":false,"a":1}}`, `{"prompt":[1,2],"stream":true,"stream_options":null}`,
		`{"stream":true,"prompt":"\"}","max_tokens":12}`, `{}`, `[`, `{"a":`,
	} {
		f.Add([]byte(s))
	}
	for _, tc := range prepareCases() {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := string(body)
		out, info := Prepare(body)
		if string(body) != orig {
			t.Fatal("input modified")
		}
		if info.PromptEstimate < 1 || info.MaxTokens < 0 {
			t.Fatalf("info %+v", info)
		}
		if !info.Injected {
			if string(out) != orig {
				t.Fatal("not injected, but changed")
			}
			return
		}
		if !info.Stream {
			t.Fatal("injected into a non-stream")
		}
		if json.Valid(body) {
			checkInjected(t, out)
		}
	})
}
