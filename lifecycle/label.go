package lifecycle

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/fleet"
)

// Label format and limits.
const (
	// LabelPrefix starts every label this package writes.
	LabelPrefix = "cv"
	// MaxLabelLen is the longest label this package writes. vast.ai accepts
	// 256 characters at creation but advises staying under 128.
	MaxLabelLen = 128
	// EnvToken is the environment variable that carries an instance's
	// per-instance secret. The Instance Portal in vast.ai images accepts it
	// as the Bearer token, and it is readable back from extra_env, so the
	// routing side recovers it after a restart without any stored secret.
	// The routing side reads it, so its home is there.
	EnvToken = fleet.ManagedTokenVar
	// TokenLen is the length of generated tokens.
	TokenLen = 32
	// opIDLen is the length of operation ids (hex characters).
	opIDLen = 10
)

// ErrBadLabel means a label is not of the form cv:<gateway>:<pool>:<op>.
var ErrBadLabel = errors.New("not a caddy-vastai label")

// Label is a parsed instance label.
type Label struct {
	// Gateway is the gateway id that created the instance.
	Gateway string `json:"gateway"`
	// Pool is the pool the instance was provisioned for.
	Pool string `json:"pool"`
	// OpID is the operation that created it.
	OpID string `json:"op_id"`
}

// String formats the label.
func (l Label) String() string { return FormatLabel(l.Gateway, l.Pool, l.OpID) }

// FormatLabel returns "cv:<gateway>:<pool>:<op id>".
func FormatLabel(gateway, pool, opID string) string {
	return LabelPrefix + ":" + gateway + ":" + pool + ":" + opID
}

// PoolLabelPrefix returns "cv:<gateway>:<pool>:", the prefix every label
// of the pool's instances starts with. The routing side selects a pool's
// instances with it (and reads their token from EnvToken in extra_env).
func PoolLabelPrefix(gateway, pool string) string {
	return LabelPrefix + ":" + gateway + ":" + pool + ":"
}

// GatewayLabelPrefix returns "cv:<gateway>:", the prefix of every label the
// gateway writes.
func GatewayLabelPrefix(gateway string) string {
	return LabelPrefix + ":" + gateway + ":"
}

// ParseLabel parses a label written by FormatLabel. Any other label,
// including one that merely starts with "cv:", is an error wrapping
// ErrBadLabel: only labels that parse completely are ever treated as owned.
func ParseLabel(s string) (Label, error) {
	if len(s) > MaxLabelLen {
		return Label{}, fmt.Errorf("%w: longer than %d characters", ErrBadLabel, MaxLabelLen)
	}
	parts := strings.Split(s, ":")
	if len(parts) != 4 || parts[0] != LabelPrefix {
		return Label{}, fmt.Errorf("%w: %q", ErrBadLabel, s)
	}
	l := Label{Gateway: parts[1], Pool: parts[2], OpID: parts[3]}
	switch {
	case !gatewayIDRe.MatchString(l.Gateway):
		return Label{}, fmt.Errorf("%w: bad gateway id in %q", ErrBadLabel, s)
	case !poolNameRe.MatchString(l.Pool):
		return Label{}, fmt.Errorf("%w: bad pool name in %q", ErrBadLabel, s)
	case !validOpID(l.OpID):
		return Label{}, fmt.Errorf("%w: bad operation id in %q", ErrBadLabel, s)
	}
	return l, nil
}

// ownedLabel reports whether label belongs to gateway, and parses it.
func ownedLabel(gateway, label string) (Label, bool) {
	if !strings.HasPrefix(label, GatewayLabelPrefix(gateway)) {
		return Label{}, false
	}
	l, err := ParseLabel(label)
	if err != nil || l.Gateway != gateway {
		return Label{}, false
	}
	return l, true
}

func validOpID(s string) bool {
	if len(s) < 4 || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// newOpID returns a random operation id of opIDLen hex characters.
func newOpID() string {
	b := make([]byte, opIDLen/2)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b)
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newToken returns a TokenLen-character secret from [A-Za-z0-9]. The portal
// strips CR, LF and ';' from tokens, so only this alphabet round-trips.
// Rejection sampling keeps every character equally likely.
func newToken() string {
	out := make([]byte, 0, TokenLen)
	buf := make([]byte, 64)
	const limit = 256 - 256%len(tokenAlphabet) // 248
	for len(out) < TokenLen {
		_, _ = rand.Read(buf)
		for _, b := range buf {
			if int(b) < limit && len(out) < TokenLen {
				out = append(out, tokenAlphabet[int(b)%len(tokenAlphabet)])
			}
		}
	}
	return string(out)
}
