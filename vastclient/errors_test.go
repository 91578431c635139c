package vastclient

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

var allSentinels = []error{ErrAuth, ErrNotFound, ErrRateLimited, ErrNoSuchAsk, ErrDeprecated, ErrCreateUncertain, ErrServer}

func TestParseAPIError(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		code   string
		msg    string
		askID  int64
		is     []error
		errStr string
	}{
		{
			name: "auth_error on 404", status: 404, body: string(fixture(t, "vast/docs_error_401_auth_error__openapi-show_instance.json")),
			code: "auth_error", msg: "Invalid user key", is: []error{ErrAuth},
			errStr: "vast.ai GET /api/v1/instances/: HTTP 404 auth_error: Invalid user key",
		},
		{name: "401 without body", status: 401, body: "", is: []error{ErrAuth}, errStr: "vast.ai GET /api/v1/instances/: HTTP 401"},
		{
			name: "generic shape", status: 400, body: string(fixture(t, "vast/docs_error_generic_shape__rate-limits-and-errors.json")),
			code: "invalid_args", msg: "Human-readable description of the problem.",
		},
		{
			name: "v1 invalid filter, no success", status: 400, body: string(fixture(t, "vast/docsassembled_error_400_v1_instances_invalid_filter__openapi-show_instances.json")),
			code: "invalid_request", msg: "Error in query parameters: dph_total is not a valid search key",
		},
		{
			name: "429 plain text", status: 429, body: "API requests too frequent: endpoint threshold=1.0\n",
			msg: "API requests too frequent: endpoint threshold=1.0", is: []error{ErrRateLimited},
			errStr: "vast.ai GET /api/v1/instances/: HTTP 429: API requests too frequent: endpoint threshold=1.0",
		},
		{
			name: "429 detail", status: 429, body: string(fixture(t, "vast/docs_error_429_detail__openapi-create_instance.json")),
			msg: "API requests too frequent endpoint threshold=4.5", is: []error{ErrRateLimited},
		},
		{
			name: "429 rate_limit_exceeded", status: 429, body: string(fixture(t, "vast/docsassembled_error_429_destroy__openapi-destroy_instance.json")),
			code: "rate_limit_exceeded", msg: "API requests too frequent endpoint threshold=3.0", is: []error{ErrRateLimited},
		},
		{
			name: "429 message and code", status: 429, body: string(fixture(t, "gpushopper/error-429-too-many-requests.json")),
			msg: "The action could not be performed because there were too many requests by the client. API requests too frequent: endpoint threshold=4.5*1.0",
			is:  []error{ErrRateLimited},
		},
		{name: "429 test literal", status: 429, body: string(fixture(t, "gpushopper/error-429-test-body.json")), msg: "rate limited", is: []error{ErrRateLimited}},
		{
			name: "no_such_ask 400", status: 400, body: string(fixture(t, "gpushopper/error-400-no_such_ask.json")),
			code: "invalid_args", msg: "error 404/3603: no_such_ask Instance type by id 29907796 is not available.", askID: 29907796, is: []error{ErrNoSuchAsk},
		},
		{
			name: "no_such_ask 404", status: 404, body: string(fixture(t, "vast/docsassembled_error_404_no_such_ask__openapi-create_instance.json")),
			code: "invalid_args", msg: "error 404/3603: no_such_ask Instance type by id 1234567 is not available.", askID: 1234567, is: []error{ErrNoSuchAsk},
		},
		{
			name: "no_such_ask 410", status: 410, body: string(fixture(t, "vast/docsassembled_error_410_no_such_ask__openapi-create_instance.json")),
			code: "no_such_ask", msg: "error 410/3907: no_such_ask Instance type 1234567 is no longer available.", askID: 1234567, is: []error{ErrNoSuchAsk},
		},
		{
			name: "deprecated", status: 410, body: `{"success":false,"error":"deprecated_endpoint","msg":"/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."}`,
			code: "deprecated_endpoint", msg: "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.", is: []error{ErrDeprecated},
		},
		{name: "not_found", status: 404, body: `{"success": false, "error": "not_found"}`, code: "not_found", is: []error{ErrNotFound}},
		{name: "502 html", status: 502, body: "<html><body>502 Bad Gateway</body></html>", is: []error{ErrServer}, errStr: "vast.ai GET /api/v1/instances/: HTTP 502"},
		{name: "500 text", status: 500, body: "Internal Server Error", msg: "Internal Server Error", is: []error{ErrServer}},
		{name: "identifier code", status: 400, body: `{"code": "bad_request", "message": "x"}`, code: "bad_request", msg: "x"},
		{name: "numeric ask_id as string", status: 404, body: `{"error": "no_such_ask", "ask_id": "77"}`, code: "no_such_ask", askID: 77, is: []error{ErrNoSuchAsk}},
		{name: "detail list", status: 422, body: `{"detail": [{"loc": ["body", "env"], "msg": "field required"}]}`, msg: `[{"loc":["body","env"],"msg":"field required"}]`},
		{name: "non-string error", status: 400, body: `{"error": true, "msg": "m"}`, msg: "m"},
		{name: "array body", status: 400, body: `["a"]`},
		{name: "empty body", status: 503, body: ``, is: []error{ErrServer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := parseAPIError("GET", "/api/v1/instances/", tt.status, []byte(tt.body), testKey)
			if e.Code != tt.code || e.Msg != tt.msg || e.AskID != tt.askID || e.Status != tt.status {
				t.Errorf("got code=%q msg=%q ask=%d status=%d\nwant code=%q msg=%q ask=%d", e.Code, e.Msg, e.AskID, e.Status, tt.code, tt.msg, tt.askID)
			}
			if tt.errStr != "" && e.Error() != tt.errStr {
				t.Errorf("Error() = %q, want %q", e.Error(), tt.errStr)
			}
			for _, s := range allSentinels {
				want := false
				for _, w := range tt.is {
					want = want || w == s
				}
				if got := errors.Is(e, s); got != want {
					t.Errorf("errors.Is(%v) = %v, want %v", s, got, want)
				}
			}
			// Wrapping keeps the match.
			wrapped := fmt.Errorf("outer: %w", e)
			for _, s := range tt.is {
				if !errors.Is(wrapped, s) {
					t.Errorf("wrapped error does not match %v", s)
				}
			}
		})
	}
}

func TestAPIErrorBodyExcerpt(t *testing.T) {
	body := strings.Repeat("é", 400) // 800 bytes
	e := parseAPIError("PUT", "/p", 500, []byte(body), testKey)
	if len(e.Body) > maxBodyExcerpt || !utf8.ValidString(e.Body) || len(e.Body) < maxBodyExcerpt-1 {
		t.Errorf("Body is %d bytes, valid=%v", len(e.Body), utf8.ValidString(e.Body))
	}
	if len(e.Msg) > maxMsgLen || !utf8.ValidString(e.Msg) {
		t.Errorf("Msg is %d bytes", len(e.Msg))
	}

	// A key at the 512-byte boundary must not survive in part or whole.
	body = strings.Repeat("x", 500) + testKey
	e = parseAPIError("PUT", "/p", 500, []byte(body), testKey)
	if strings.Contains(e.Body, testKey[:12]) {
		t.Errorf("Body keeps part of the key: %q", e.Body[480:])
	}
}

func TestUncertainAPIErrorText(t *testing.T) {
	e := parseAPIError("PUT", "/api/v0/asks/{offer_id}/", 502, []byte("Bad Gateway"), testKey)
	e.also = ErrCreateUncertain
	if !errors.Is(e, ErrCreateUncertain) || !errors.Is(e, ErrServer) {
		t.Errorf("uncertain 502 matches neither sentinel")
	}
	if !strings.Contains(e.Error(), "outcome unknown") {
		t.Errorf("Error() = %q", e.Error())
	}
}
