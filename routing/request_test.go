package routing

import (
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	long := strings.Repeat("x", 100)
	cases := []struct {
		name, body string
		max        int
		want       Request
	}{
		{"completion", `{"model":"m1","prompt":"hello world","max_tokens":4}`, 1000, Request{Model: "m1", Text: "hello world"}},
		{"chat", `{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"model":"m2"}`, 1000,
			Request{Model: "m2", Text: "system\x00be brief\x00user\x00hi\x00"}},
		{"chat with parts", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]}`, 1000,
			Request{Model: "m", Text: "user\x00ab\x00"}},
		{"prompt list", `{"model":"m","prompt":["one","two"]}`, 1000, Request{Model: "m", Text: "one\x00two\x00"}},
		{"token prompt", `{"model":"m","prompt":[1,2,3]}`, 1000, Request{Model: "m"}},
		{"text capped", `{"model":"m","prompt":"` + long + `"}`, 10, Request{Model: "m", Text: "xxxxxxxxxx"}},
		{"cut short after model", `{"model":"m3","prompt":"abc` /* truncated read */, 1000, Request{Model: "m3"}},
		{"cut short before model", `{"prompt":"ab`, 1000, Request{}},
		{"not an object", `["model","m"]`, 1000, Request{}},
		{"not json", `model=m`, 1000, Request{}},
		{"empty", ``, 1000, Request{}},
		{"model not a string", `{"model":5,"prompt":"p"}`, 1000, Request{Text: "p"}},
		{"nested model ignored", `{"metadata":{"model":"inner"},"model":"outer"}`, 1000, Request{Model: "outer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ParseRequest([]byte(c.body), c.max); got != c.want {
				t.Errorf("ParseRequest(%q) = %+q, want %+q", c.body, got, c.want)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`), 16)
	f.Add([]byte(`{"prompt":["a","b"]}`), 1)
	f.Fuzz(func(t *testing.T, body []byte, max int) {
		max = max%4096 + 1
		if max < 1 {
			max = -max + 1
		}
		if got := ParseRequest(body, max); len(got.Text) > max {
			t.Fatalf("text of %d bytes exceeds the cap %d", len(got.Text), max)
		}
	})
}
