package adminapi

import "time"

// Key is one entry of GET /vastai/keys: a client key's metadata and
// spend. It never carries the secret or its hash.
type Key struct {
	// Name identifies the key.
	Name string `json:"name"`
	// Source is "config" (defined in the config) or "api" (created
	// through POST /vastai/keys).
	Source string `json:"source"`
	// Status is "active", "revoked" or "expired".
	Status string `json:"status"`
	// Pools and Models the key may use; empty: all.
	Pools  []string `json:"pools,omitempty"`
	Models []string `json:"models,omitempty"`
	// RPM, TPM and MaxParallel are the key's limits (0: none).
	RPM         int `json:"rpm,omitempty"`
	TPM         int `json:"tpm,omitempty"`
	MaxParallel int `json:"max_parallel,omitempty"`
	// Budget is the dollars allowed per Period (0: no budget).
	Budget float64 `json:"budget,omitempty"`
	// Period is the budget's period: day, month or total.
	Period string `json:"period"`
	// Spent is the dollars spent in the current budget period, over every
	// gateway sharing the storage (the others' as of the last poll).
	Spent float64 `json:"spent"`
	// Reserved is the dollars reserved by this gateway's requests in
	// flight.
	Reserved float64 `json:"reserved"`
	// InFlight counts this gateway's requests of the key in flight.
	InFlight int `json:"in_flight"`
	// Expires, Created and Revoked are null when not set.
	Expires *time.Time `json:"expires"`
	Created *time.Time `json:"created"`
	Revoked *time.Time `json:"revoked"`
	// Day, Month and Total are the key's usage in the current day and
	// month (UTC) and overall.
	Day   KeyUsage `json:"day"`
	Month KeyUsage `json:"month"`
	Total KeyUsage `json:"total"`
}

// KeyCreated answers POST /vastai/keys: the key and its secret, which is
// shown this once and never again.
type KeyCreated struct {
	Key
	// Secret is the key to give the client.
	Secret string `json:"secret"`
}

// KeyUsage is a key's usage over one period, the answer of
// GET /vastai/keys/{name}/usage?period=day|month|total.
type KeyUsage struct {
	// Name is the key's; set in the usage endpoint's answer.
	Name string `json:"name,omitempty"`
	// Period is day, month or total; PeriodID names it ("2026-12-03",
	// "2026-12", "" for total).
	Period   string `json:"period"`
	PeriodID string `json:"period_id"`
	// Requests and Errors count finished requests (errors: status >= 400
	// or no response).
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	// TokensIn and TokensOut are prompt and completion tokens;
	// Estimated counts the requests whose tokens were estimated.
	TokensIn  int64 `json:"tokens_in"`
	TokensOut int64 `json:"tokens_out"`
	Estimated int64 `json:"estimated"`
	// Spend is the dollars charged; Seconds the requests' time, summed.
	Spend   float64 `json:"spend"`
	Seconds float64 `json:"seconds"`
}
