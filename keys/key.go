// Package keys holds the gateway's client API keys: their records (only a
// SHA-256 of each secret is ever kept), an immutable snapshot of every key
// by hash that the request path reads without locks or I/O, the per-key
// limits (requests and tokens per minute, requests in parallel), budget
// reservation, and the spend each gateway persists to shared storage. It
// does not import Caddy.
package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sync/atomic"
	"time"
)

// SecretPrefix starts every generated secret, so that a leaked one is
// recognisable (and greppable) as a caddy-vastai key.
const SecretPrefix = "cvk_"

// Period is the span a budget covers.
type Period string

// Budget periods. Day and month are calendar periods in UTC.
const (
	PeriodDay   Period = "day"
	PeriodMonth Period = "month"
	PeriodTotal Period = "total"
)

// Sources of a key.
const (
	SourceConfig = "config"
	SourceAPI    = "api"
)

// Sentinel errors of the key check and the registry.
var (
	ErrMissingKey      = errors.New("missing API key")
	ErrUnknownKey      = errors.New("unknown API key")
	ErrRevoked         = errors.New("revoked API key")
	ErrExpired         = errors.New("expired API key")
	ErrPoolNotAllowed  = errors.New("pool not allowed for this key")
	ErrModelNotAllowed = errors.New("model not allowed for this key")
	ErrRateLimited     = errors.New("rate limit exceeded")
	ErrBudgetExceeded  = errors.New("budget exceeded")
	ErrInvalid         = errors.New("invalid key")
	ErrExists          = errors.New("key exists")
	ErrNotFound        = errors.New("no such key")
	ErrConfigKey       = errors.New("defined in the config")
)

// Key is one client key's record. Hash is the hex SHA-256 of the secret;
// the secret itself is never stored.
type Key struct {
	// Name identifies the key in metrics, logs and the admin API.
	Name string `json:"name"`
	// Hash is the hex SHA-256 of the secret.
	Hash string `json:"hash"`
	Limits
	// Created is when the key was created.
	Created time.Time `json:"created,omitzero"`
	// Revoked is when the key was revoked (zero: it is not).
	Revoked time.Time `json:"revoked,omitzero"`
	// Source is "config" or "api".
	Source string `json:"source,omitempty"`
}

// Limits are what a key may do: the part of a key its creator chooses,
// shared by the record and the admin API's request (Spec).
type Limits struct {
	// Pools the key may use; empty: every pool.
	Pools []string `json:"pools,omitempty"`
	// Models the key may request; empty: every model.
	Models []string `json:"models,omitempty"`
	// RPM bounds requests per minute (0: no limit).
	RPM int `json:"rpm,omitempty"`
	// TPM bounds tokens (prompt and completion) per minute (0: no limit).
	TPM int `json:"tpm,omitempty"`
	// MaxParallel bounds requests in flight at once (0: no limit).
	MaxParallel int `json:"max_parallel,omitempty"`
	// Budget in dollars per Period (0: no budget).
	Budget float64 `json:"budget,omitempty"`
	// Period of the budget: day, month or total. Default: month.
	Period Period `json:"period,omitempty"`
	// Expires is when the key stops working (zero: never).
	Expires time.Time `json:"expires,omitzero"`
}

// namePattern bounds key names: they are metric labels and storage keys.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate names the first faulty field.
func (k *Key) Validate() error {
	switch {
	case !namePattern.MatchString(k.Name):
		return fmt.Errorf("%w: name %q: 1-64 of [A-Za-z0-9._-], starting with a letter or digit", ErrInvalid, k.Name)
	case len(k.Hash) != sha256.Size*2:
		return fmt.Errorf("%w: key %s: no secret", ErrInvalid, k.Name)
	case k.RPM < 0 || k.TPM < 0 || k.MaxParallel < 0:
		return fmt.Errorf("%w: key %s: rpm, tpm and max_parallel must not be negative", ErrInvalid, k.Name)
	case k.Budget < 0:
		return fmt.Errorf("%w: key %s: budget must not be negative", ErrInvalid, k.Name)
	}
	switch k.Period {
	case "", PeriodDay, PeriodMonth, PeriodTotal:
	default:
		return fmt.Errorf("%w: key %s: period %q is not day, month or total", ErrInvalid, k.Name, k.Period)
	}
	return nil
}

// BudgetPeriod is the key's period, month when unset.
func (k *Key) BudgetPeriod() Period {
	if k.Period == "" {
		return PeriodMonth
	}
	return k.Period
}

// Hash returns the hex SHA-256 of a secret, the only form stored.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// digest is a hash as the snapshot's map key: no allocation per lookup.
type digest [sha256.Size]byte

func digestOf(hexHash string) (digest, bool) {
	var d digest
	n, err := hex.Decode(d[:], []byte(hexHash))
	return d, err == nil && n == len(d)
}

// Generate returns a new secret: SecretPrefix and 32 random bytes in
// unpadded base64url.
func Generate() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating a key: %w", err)
	}
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// ParseExpires reads an expiry: a date (2027-01-01, midnight UTC) or an
// RFC 3339 time.
func ParseExpires(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: expires %q is neither a date (2027-01-01) nor an RFC 3339 time", ErrInvalid, s)
	}
	return t.UTC(), nil
}

// periodID names the calendar period containing now: "2026-12-03" for a
// day, "2026-12" for a month, "" for total.
// The request path asks this for every admission, so the current day's
// names are cached: formatting a date costs an allocation.
func periodID(p Period, now time.Time) string {
	if p != PeriodDay && p != PeriodMonth {
		return ""
	}
	day := now.Unix() / 86400
	c := periodCache.Load()
	if c == nil || c.day != day {
		u := now.UTC()
		c = &periodNames{day: day, dayID: u.Format(time.DateOnly), monthID: u.Format("2006-01")}
		periodCache.Store(c)
	}
	if p == PeriodDay {
		return c.dayID
	}
	return c.monthID
}

type periodNames struct {
	day            int64
	dayID, monthID string
}

var periodCache atomic.Pointer[periodNames]
