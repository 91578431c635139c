package vastai

// The seam between the keys handler and package usage (request
// preparation and usage capture). Until usage/ is merged this is a
// stand-in with the same shape: it injects nothing and estimates tokens
// from byte counts; the switch to usage.Prepare and usage.NewWriter is
// this file only.

import (
	"encoding/json"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// usageInfo is usage.RequestInfo.
type usageInfo struct {
	Stream, Injected          bool
	MaxTokens, PromptEstimate int
}

// tokenUsage is usage.Usage.
type tokenUsage struct {
	PromptTokens, CompletionTokens int
	Estimated                      bool
}

// usageCapture is *usage.Writer.
type usageCapture interface {
	http.ResponseWriter
	Finish(promptEstimate int) tokenUsage
}

// prepareUsage is usage.Prepare.
func prepareUsage(body []byte) ([]byte, usageInfo) {
	var req struct {
		Stream    bool `json:"stream"`
		MaxTokens int  `json:"max_tokens"`
	}
	_ = json.Unmarshal(body, &req)
	return body, usageInfo{Stream: req.Stream, MaxTokens: req.MaxTokens, PromptEstimate: len(body) / 4}
}

// newUsageWriter is usage.NewWriter.
func newUsageWriter(w http.ResponseWriter, _ bool) usageCapture {
	return &stubUsageWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
}

type stubUsageWriter struct {
	*caddyhttp.ResponseWriterWrapper
	n int
}

func (s *stubUsageWriter) Write(p []byte) (int, error) {
	s.n += len(p)
	return s.ResponseWriterWrapper.Write(p)
}

func (s *stubUsageWriter) Finish(promptEstimate int) tokenUsage {
	return tokenUsage{PromptTokens: promptEstimate, CompletionTokens: s.n / 4, Estimated: true}
}

// poolFromContext is models.go's chosenPool once vastai_models is merged.
func poolFromContext(*http.Request) (string, bool) { return "", false }
