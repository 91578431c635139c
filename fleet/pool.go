// Package fleet is the Caddy-free core of caddy-vastai's control plane: it
// turns what the vast.ai API says about an account into immutable snapshots
// that the request path reads without locks or network I/O.
package fleet

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Token source kinds: where the Bearer token of an instance comes from.
const (
	TokenJupyter = "jupyter_token"
	TokenEnv     = "env"
	TokenStatic  = "static"
)

// ErrUnknownTokenSource is returned for a token source kind that is not one
// of TokenJupyter, TokenEnv or TokenStatic.
var ErrUnknownTokenSource = errors.New("unknown token source")

// TokenSource says how to find an instance's Bearer token.
type TokenSource struct {
	Kind  string // TokenJupyter, TokenEnv or TokenStatic
	Value string // the variable name (env) or the token itself (static)
}

// Validate checks the kind and its value.
func (t TokenSource) Validate() error {
	switch t.Kind {
	case "", TokenJupyter:
		return nil
	case TokenEnv:
		if t.Value == "" {
			return errors.New("token source env needs a variable name")
		}
		return nil
	case TokenStatic:
		if t.Value == "" {
			return errors.New("token source static needs a value")
		}
		return nil
	default:
		return fmt.Errorf("%w %q (want jupyter_token, env NAME or static VALUE)", ErrUnknownTokenSource, t.Kind)
	}
}

// Resolve returns the token for an instance, or "" when it has none.
func (t TokenSource) Resolve(in *vastclient.Instance) string {
	switch t.Kind {
	case TokenEnv:
		return in.ExtraEnv[t.Value]
	case TokenStatic:
		return t.Value
	default:
		return in.JupyterToken
	}
}

// PoolSpec selects a set of instances and says how to reach them.
type PoolSpec struct {
	Name        string
	Label       string // exact label match
	LabelPrefix string // label prefix match
	Port        int    // the engine's container port
	Token       TokenSource
	Health      HealthSpec
	// ManagedPrefix selects the instances the plugin created for this pool
	// (label "cv:<gateway>:<pool>:"), in addition to Label/LabelPrefix.
	// Their token is always their generated WEB_PASSWORD.
	ManagedPrefix string
}

// ManagedTokenVar is the extra_env variable holding the token of an
// instance the plugin created.
const ManagedTokenVar = "WEB_PASSWORD"

// DefaultPort is the engine container port used when a pool sets none.
const DefaultPort = 8000

// Validate reports configuration mistakes, naming the field.
func (p PoolSpec) Validate() error {
	if p.Name == "" {
		return errors.New("pool name is empty")
	}
	if p.Label != "" && p.LabelPrefix != "" {
		return fmt.Errorf("pool %q: label and label_prefix are mutually exclusive", p.Name)
	}
	if p.Port < 0 || p.Port > 65535 {
		return fmt.Errorf("pool %q: port %d out of range 1-65535", p.Name, p.Port)
	}
	if err := p.Token.Validate(); err != nil {
		return fmt.Errorf("pool %q: token: %w", p.Name, err)
	}
	if err := p.Health.Validate(); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	return nil
}

func (p PoolSpec) port() int { return EnginePort(p.Port) }

// EnginePort is the engine container port of a pool configured with port:
// port itself, or DefaultPort when it is 0. Routing reaches this port and
// provisioning maps it, so both sides must agree.
func EnginePort(port int) int {
	if port == 0 {
		return DefaultPort
	}
	return port
}

// specificity ranks how precisely a pool selects an instance, so that each
// instance belongs to exactly one pool (the most specific match): exact label
// beats a longer prefix, which beats a shorter one, which beats catch-all.
// -1 means no match.
func (p PoolSpec) specificity(label string) int {
	if p.ManagedPrefix != "" && strings.HasPrefix(label, p.ManagedPrefix) {
		return 1 << 21 // the plugin's own label: nothing is more specific
	}
	switch {
	case p.Label == "" && p.LabelPrefix == "" && p.ManagedPrefix != "":
		// A pool that only provisions selects only its own instances,
		// not the whole account.
		return -1
	case p.Label != "":
		if label == p.Label {
			return 1 << 20
		}
		return -1
	case p.LabelPrefix != "":
		if strings.HasPrefix(label, p.LabelPrefix) {
			return 1 + len(p.LabelPrefix)
		}
		return -1
	default:
		return 0
	}
}

// assignPool returns the name of the most specific pool selecting the
// label, or "" when none does. Ties go to the alphabetically first pool so
// the choice is stable across polls and reloads.
func assignPool(pools []PoolSpec, label string) (string, int) {
	best, bestIdx, bestRank := "", -1, -1
	for i, p := range pools {
		r := p.specificity(label)
		if r > bestRank || (r == bestRank && r >= 0 && p.Name < best) {
			best, bestIdx, bestRank = p.Name, i, r
		}
	}
	if bestRank < 0 {
		return "", -1
	}
	return best, bestIdx
}

// SortPools orders pool specs by name; snapshots rely on a stable order.
func SortPools(pools []PoolSpec) {
	sort.Slice(pools, func(i, j int) bool { return pools[i].Name < pools[j].Name })
}

// upstreamAddr returns "ip:port" for the pool's engine port of a running
// instance, or a reason why there is none.
func upstreamAddr(in *vastclient.Instance, containerPort int) (string, string) {
	ip := net.ParseIP(in.PublicIPAddr)
	if ip == nil {
		return "", "no public_ipaddr"
	}
	hostPort, ok := in.Ports.HostPort(containerPort, "tcp")
	if !ok {
		return "", fmt.Sprintf("port %d/tcp not mapped", containerPort)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(hostPort)), ""
}
