package fleet

import (
	"sort"
	"strings"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// Snapshot is an immutable view of the fleet. The watcher builds a new one
// after every poll or configuration change and publishes it atomically;
// readers (the request path, the admin API) never lock and never wait on
// the network. Nothing in a published Snapshot may be modified.
type Snapshot struct {
	// Generation increases with every published snapshot.
	Generation uint64
	// Members are all known instances, sorted by id.
	Members []Member
	// Pools maps a pool name to its view; every configured pool has one.
	Pools map[string]*PoolView
	// Poll describes the health of the vast.ai watcher itself.
	Poll PollStatus

	byID   map[int64]int
	routes map[string]Route
}

// PollStatus tells how fresh the snapshot is.
type PollStatus struct {
	// LastSuccess is when the last successful listing finished (zero if none).
	LastSuccess time.Time
	// LastAttempt is when the last listing, successful or not, finished.
	LastAttempt time.Time
	// LastError is the last listing's error, "" after a success.
	LastError string
	// ConsecutiveFailures counts failed listings since the last success.
	ConsecutiveFailures int
	// Skipped counts rows of the last successful listing that had no usable id.
	Skipped int
	// AuthError is true while listings fail because vast.ai rejected the
	// API key: no retry will help until the key is fixed.
	AuthError bool
	// FirstAttempt is when the watcher's first listing started: until a
	// listing succeeds, the data has been missing since then.
	FirstAttempt time.Time
	// ListingDuration is how long the last successful listing took (all
	// its pages, paced by vast.ai's rate limit).
	ListingDuration time.Duration
	// DataTime is when the last successful listing started: its oldest
	// rows are that old.
	DataTime time.Time
	// Pages is the number of pages of the last successful listing.
	Pages int
	// LabelFilter holds the exact labels the last successful listing asked
	// for; nil means the whole account was listed. Never modified.
	LabelFilter []string
}

// Stale reports how long the data has not been refreshed while listings
// fail: since the last success, or since the first attempt when none ever
// succeeded. It is 0 while listings succeed.
func (p PollStatus) Stale(now time.Time) time.Duration {
	switch {
	case p.ConsecutiveFailures == 0:
		return 0
	case p.LastSuccess.IsZero():
		if p.FirstAttempt.IsZero() {
			return 0
		}
		return now.Sub(p.FirstAttempt)
	}
	return now.Sub(p.LastSuccess)
}

// NeverSucceeded reports whether no listing has succeeded yet.
func (p PollStatus) NeverSucceeded() bool { return p.LastSuccess.IsZero() }

// DataAge is how old the oldest routing data is: the time since the last
// successful listing started. ok is false when there is none.
func (p PollStatus) DataAge(now time.Time) (age time.Duration, ok bool) {
	if p.DataTime.IsZero() {
		return 0, false
	}
	return now.Sub(p.DataTime), true
}

// Member is one known instance with what the control plane derived from it.
type Member struct {
	// Instance is the latest row from vast.ai. Its JupyterToken is secret.
	Instance vastclient.Instance
	// Pool is the pool the instance belongs to, "" if none selects it.
	Pool string
	// Upstream is "ip:port" of the pool's engine port, "" if not mapped.
	Upstream string
	// Routable is true when traffic may be sent to the instance: it is
	// ready and has an address and a token.
	Routable bool
	// Reason explains why the instance is not routable.
	Reason string
	// State is the health state (StateReady etc.) and StateSince when it
	// was entered.
	State      string
	StateSince time.Time
	// FirstSeen and LastSeen are when the watcher first and last listed it.
	FirstSeen time.Time
	LastSeen  time.Time
	// Misses counts consecutive successful listings that omitted it.
	Misses int
	// Draining is true when the instance was taken out of routing on
	// purpose (before a destroy or a replacement).
	Draining bool

	token string
	probe *probeCell
}

// LastProbe returns the latest active probe result, or nil if none ran.
func (m *Member) LastProbe() *ProbeResult {
	if m.probe == nil {
		return nil
	}
	return m.probe.p.Load()
}

// PoolView is the routable part of one pool.
type PoolView struct {
	Spec PoolSpec
	// Targets are the routable members, sorted by instance id.
	Targets []Target
	// Members counts all instances assigned to the pool, routable or not.
	Members int
}

// Target is one routable upstream.
type Target struct {
	ID   int64
	Dial string
}

// Route is what the transport needs to send a request to an upstream.
type Route struct {
	ID    int64
	Pool  string
	Token string
	// Tunnel is true when the upstream is reached through the instance's
	// SSH connection, to 127.0.0.1:Port inside the instance.
	Tunnel bool
	Port   int
}

// Member returns the member with the given id.
func (s *Snapshot) Member(id int64) (Member, bool) {
	i, ok := s.byID[id]
	if !ok {
		return Member{}, false
	}
	return s.Members[i], true
}

// Route returns the route of a routable upstream address ("ip:port").
func (s *Snapshot) Route(dial string) (Route, bool) {
	r, ok := s.routes[dial]
	return r, ok
}

// emptySnapshot is what readers see before the first poll.
func emptySnapshot(pools []PoolSpec) *Snapshot {
	s := &Snapshot{Pools: make(map[string]*PoolView, len(pools)), byID: map[int64]int{}, routes: map[string]Route{}}
	for _, p := range pools {
		s.Pools[p.Name] = &PoolView{Spec: p}
	}
	return s
}

// tracked is the watcher's mutable record of an instance.
type tracked struct {
	inst      vastclient.Instance
	firstSeen time.Time
	lastSeen  time.Time
	misses    int
	health    healthRec
}

// buildSnapshot derives an immutable snapshot from the watcher's records.
func buildSnapshot(gen uint64, pools []PoolSpec, known map[int64]*tracked, drain map[int64]bool, excluded map[int64]string, tunnel bool, poll PollStatus) *Snapshot {
	s := emptySnapshot(pools)
	s.Generation = gen
	s.Poll = poll
	s.Members = make([]Member, 0, len(known))
	for id, t := range known {
		m := deriveMember(pools, t, tunnel)
		if drain[id] {
			m.Draining = true
			if m.Routable {
				m.Routable, m.Reason = false, "draining"
			}
		}
		if why, ok := excluded[id]; ok {
			m.Routable, m.Reason = false, why
		}
		s.Members = append(s.Members, m)
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].Instance.ID < s.Members[j].Instance.ID })
	for i := range s.Members {
		m := &s.Members[i]
		s.byID[m.Instance.ID] = i
		pv := s.Pools[m.Pool]
		if pv == nil {
			continue
		}
		pv.Members++
		if !m.Routable {
			continue
		}
		if prev, dup := s.routes[m.Upstream]; dup {
			// Two instances claiming one address means the listing is
			// inconsistent; keep the older instance, never both.
			m.Routable, m.Reason = false, "upstream address also used by instance "+itoa(prev.ID)
			continue
		}
		s.routes[m.Upstream] = Route{ID: m.Instance.ID, Pool: m.Pool, Token: m.token, Tunnel: tunnel, Port: pv.Spec.port()}
		pv.Targets = append(pv.Targets, Target{ID: m.Instance.ID, Dial: m.Upstream})
	}
	return s
}

func deriveMember(pools []PoolSpec, t *tracked, tunnel bool) Member {
	m := Member{
		Instance: t.inst, FirstSeen: t.firstSeen, LastSeen: t.lastSeen, Misses: t.misses,
		State: t.health.state, StateSince: t.health.since, probe: t.health.cell,
	}
	name, idx := assignPool(pools, t.inst.Label)
	m.Pool = name
	if idx < 0 {
		m.Reason = "no pool selects this instance"
		return m
	}
	spec := pools[idx]
	upstream := upstreamAddr
	if tunnel {
		upstream = tunnelUpstream
	}
	addr, why := upstream(&t.inst, spec.port())
	m.Upstream = addr
	m.token = spec.Token.Resolve(&t.inst)
	if spec.ManagedPrefix != "" && strings.HasPrefix(t.inst.Label, spec.ManagedPrefix) {
		m.token = t.inst.ExtraEnv[ManagedTokenVar]
	}
	// A ready instance is running, so only the first case can see a
	// missing address; it comes first because it is the most useful reason.
	switch {
	case addr == "" && t.health.state != StateGone && t.inst.ActualStatus == "running":
		m.Reason = why
	case m.token == "":
		m.Reason = "no token for this instance"
	case t.health.state != StateReady:
		m.Reason = t.health.reason
		if m.Reason == "" {
			m.Reason = "state is " + t.health.state
		}
	default:
		m.Routable = true
	}
	return m
}

func quoteStatus(s string) string {
	if s == "" {
		return "null"
	}
	return `"` + s + `"`
}
