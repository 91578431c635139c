// Package usage measures the tokens of each OpenAI-style request passing
// through the gateway, for per-key accounting and budgets, without Caddy.
//
// Prepare reads a request body: whether it streams, its max_tokens and a
// prompt estimate, and for a stream whose client did not ask for usage it
// splices "stream_options":{"include_usage":true} in (vLLM and SGLang then
// end the stream with a usage-only chunk). Writer wraps the client's
// ResponseWriter: it takes usage from a JSON answer or from the stream's
// usage chunk, drops the chunk Prepare asked for so the client sees the
// stream it asked for, and counts the generated text so that Finish can
// estimate (bytes/4, flagged Estimated) when no usage came back.
//
// Both work on the bytes in place, with an allocation-free JSON scanner
// (scan.go): the request path never decodes a body into maps, and a
// stream costs no allocation per chunk once its buffers have grown.
package usage
