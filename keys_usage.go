package vastai

// The seam between the keys handler and package usage: request
// preparation (stream_options.include_usage for streams that did not ask)
// and the response writer that captures usage and strips the chunk the
// gateway asked for.

import (
	"net/http"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/usage"
)

type (
	usageInfo  = usage.RequestInfo
	tokenUsage = usage.Usage
)

// usageCapture is what the handler needs of *usage.Writer.
type usageCapture interface {
	http.ResponseWriter
	Status() int
	Finish(promptEstimate int) tokenUsage
}

// prepareUsage prepares a body of the OpenAI completion endpoints; other
// paths (embeddings, an engine's own API) are only looked at, since a
// strict server may refuse stream_options.
func prepareUsage(path string, body []byte, inject bool) ([]byte, usageInfo) {
	out, info := usage.Prepare(body)
	if !inject || !strings.HasSuffix(path, "/completions") {
		out, info.Injected = body, false
	}
	return out, info
}

func newUsageWriter(w http.ResponseWriter, strip bool) usageCapture { return usage.NewWriter(w, strip) }
