// Package sshpool keeps one long-lived SSH connection per vast.ai instance,
// shared by remote commands (Pool.Run, used for GPU metrics) and by HTTP
// tunnels to the inference engines (Pool.DialContext, direct-tcpip
// channels). A connection is dialled on the direct path first, then on the
// proxy path; host keys are trusted on first use per instance and path.
//
// Background goroutines, all started by the Pool and awaited by Pool.Close:
//   - a shared connect per instance (startDialLocked), bounded by
//     ConnectTimeout and cancelled by Forget or Close;
//   - a monitor per open connection (monitor): keepalives, the periodic
//     move from proxy to direct (tryDirect) and noticing the connection's
//     end; it exits when the connection closes;
//   - a reconnect loop per instance whose connection in use was lost
//     (reconnectLoop), until a connection is up or the instance is
//     forgotten;
//   - OnConnChange hook calls, one goroutine per call, chained per instance.
//
// The package has no Caddy dependency: the Caddy module owns the Pool.
package sshpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"

	"github.com/caddy-vastai/caddy-vastai/internal/backoff"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Paths reported in Status.Path.
const (
	PathDirect = "direct" // public_ipaddr + ports["22/tcp"]
	PathProxy  = "proxy"  // ssh_host:ssh_port (+1 for jupyter runtypes)
	PathDown   = "down"   // no usable connection
)

// Sentinel errors for the expected failure modes. Returned errors wrap them
// with context; match them with errors.Is.
var (
	// ErrHostKeyChanged means an instance presented a host key different
	// from the one trusted on first use for the same instance id and path.
	ErrHostKeyChanged = errors.New("sshpool: SSH host key changed")
	// ErrPoolClosed is returned by calls made after Pool.Close.
	ErrPoolClosed = errors.New("sshpool: SSH pool closed")
	// ErrForgotten is returned to calls racing Pool.Forget for their instance.
	ErrForgotten = errors.New("sshpool: instance forgotten")
	// ErrNoEndpoint means the Endpoint has neither a direct nor a proxy address.
	ErrNoEndpoint = errors.New("sshpool: endpoint has no SSH address")
	// ErrBackoff is returned while an instance waits before its next
	// connection attempt; the error also wraps the last connection error.
	ErrBackoff = errors.New("sshpool: SSH connection in backoff")
	// ErrOutputTooLarge is returned by Run when a command prints more than
	// MaxOutputBytes on stdout.
	ErrOutputTooLarge = errors.New("sshpool: command output too large")
)

// MaxOutputBytes bounds the stdout kept by Run: nvidia-smi prints a few
// hundred bytes per GPU, so anything beyond this is garbage from a broken or
// hostile host and must not grow memory without bound.
const MaxOutputBytes = 1 << 20

// Endpoint says how to reach one instance over SSH. Build it from the vast.ai
// instance object: Direct is public_ipaddr + ports["22/tcp"] HostPort; Proxy is
// ssh_host:ssh_port, plus one on the port when image_runtype contains
// "jupyter". Either may be empty.
type Endpoint struct {
	ID     int64
	Direct string // "host:port" or ""
	Proxy  string // "host:port" or ""
}

// HostKeyStore persists trusted host keys. A missing key must be reported
// as an error matching errors.Is(err, fs.ErrNotExist). Caddy's certmagic
// storage satisfies this interface, so trusted keys survive restarts.
type HostKeyStore interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
}

// PoolConfig configures a Pool. Zero durations and counts take the defaults
// given in the field comments.
type PoolConfig struct {
	// User is the SSH user; default "root" (vast.ai logs in as root).
	User string
	// KeyFiles are private key files (OpenSSH or PEM, no passphrase). All
	// of them are offered in one auth method, so a key the server refuses
	// does not stop the next one from being tried.
	KeyFiles []string
	// UseAgent adds the keys of the agent at $SSH_AUTH_SOCK.
	UseAgent bool
	// HostKeys stores host keys trusted on first use. Nil means an
	// in-memory store: trust then lasts only for the process lifetime.
	HostKeys HostKeyStore
	// InsecureIgnoreHostKeys disables host key checking entirely.
	InsecureIgnoreHostKeys bool
	// ConnectTimeout bounds one TCP dial plus SSH handshake; default 20s.
	ConnectTimeout time.Duration
	// KeepaliveInterval is the period of keepalive@openssh.com requests;
	// a request unanswered within the interval closes the connection and
	// schedules a reconnect. Default 15s.
	KeepaliveInterval time.Duration
	// MaxConcurrentDials bounds connection attempts in flight; default 8.
	MaxConcurrentDials int
	// BackoffMin and BackoffMax bound the wait between failed connection
	// attempts, doubling per consecutive failure; defaults 10s and 5m.
	BackoffMin, BackoffMax time.Duration
	// DirectRetryInterval is how often a connection on the proxy path
	// tries to move to the direct path; default 60s, negative disables.
	DirectRetryInterval time.Duration
	// Logger receives connection events; nil means no logging.
	Logger *zap.Logger
	// OnConnChange, if set, is called whenever new sessions and tunnels of
	// an instance start using another connection (path is its path: on
	// connect, reconnect, the move from proxy to direct) and with PathDown
	// when the connection in use is lost. Calls run on their own goroutine,
	// in order per instance, and must not block for long (Close waits for
	// them). An HTTP client pooling tunnel connections can close its idle
	// ones there: otherwise keep-alive reuse keeps a drained proxy
	// connection busy, and open, for as long as the client reuses them.
	OnConnChange func(id int64, path string)
}

// Status describes an instance's connection, for health and admin views.
type Status struct {
	// Path is PathDirect, PathProxy or PathDown.
	Path string `json:"path"`
	// LastError is the most recent connection error (a failed connect,
	// a lost connection, a failed direct retry); cleared by a successful
	// connect.
	LastError string `json:"last_error,omitempty"`
	// ConnectedSince is when the connection now in use was established.
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	// Reconnects counts connections established after the first one.
	Reconnects int `json:"reconnects"`
}

// Pool keeps one long-lived SSH connection per instance, shared by metric
// commands (Run) and HTTP tunnels (DialContext). It is safe for concurrent
// use.
type Pool struct {
	cfg       PoolConfig
	log       *zap.Logger
	signers   []ssh.Signer
	agentSock string
	sem       chan struct{}

	ctx    context.Context // cancelled by Close; parent of instance contexts
	cancel context.CancelFunc
	wg     sync.WaitGroup // background goroutines, awaited by Close

	mu     sync.Mutex
	insts  map[int64]*instance
	closed bool
}

// NewPool validates cfg, loads the key files and returns a Pool. Nothing is
// dialled until the first Run or DialContext.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 20 * time.Second
	}
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = 15 * time.Second
	}
	if cfg.MaxConcurrentDials <= 0 {
		cfg.MaxConcurrentDials = 8
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 10 * time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 5 * time.Minute
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = cfg.BackoffMin
	}
	if cfg.DirectRetryInterval == 0 {
		cfg.DirectRetryInterval = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}

	p := &Pool{cfg: cfg, log: log, insts: make(map[int64]*instance)}
	for _, file := range cfg.KeyFiles {
		s, err := loadSigner(file)
		if err != nil {
			return nil, err
		}
		p.signers = append(p.signers, s)
	}
	if cfg.UseAgent {
		p.agentSock = os.Getenv("SSH_AUTH_SOCK")
		if p.agentSock == "" && len(p.signers) == 0 {
			return nil, errors.New(`sshpool: SSH agent requested but SSH_AUTH_SOCK is not set, and no "key" file is configured`)
		}
	}
	if len(p.signers) == 0 && !cfg.UseAgent {
		return nil, errors.New(`sshpool: no SSH key source: configure at least one "key" file (PoolConfig.KeyFiles) or enable the SSH agent (UseAgent)`)
	}
	if cfg.HostKeys == nil && !cfg.InsecureIgnoreHostKeys {
		p.cfg.HostKeys = NewMemoryHostKeyStore()
		log.Info("no persistent SSH host key store configured; host keys are trusted on first use for this process only")
	}
	if cfg.InsecureIgnoreHostKeys {
		log.Warn("SSH host key checking disabled: connections to instances can be intercepted")
	}
	p.sem = make(chan struct{}, cfg.MaxConcurrentDials)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// loadSigner reads one private key file. Errors name the file but never
// include its content.
func loadSigner(file string) (ssh.Signer, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("sshpool: reading SSH key file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("sshpool: SSH key file %s is passphrase-protected; load it into an agent and set UseAgent", file)
		}
		return nil, fmt.Errorf("sshpool: parsing SSH key file %s: %w", file, err)
	}
	return s, nil
}

// Run runs cmd on the instance in a new session of the instance's shared
// connection and returns its stdout. A non-zero exit is an error that
// carries the start of stderr. The ctx deadline bounds the whole call: on
// expiry the session is closed but the connection, which tunnels may be
// using, is left alone.
func (p *Pool) Run(ctx context.Context, ep Endpoint, cmd string) ([]byte, error) {
	c, err := p.acquire(ctx, ep)
	if err != nil {
		return nil, err
	}
	type result struct {
		out []byte
		err error
	}
	res := make(chan result, 1)
	var (
		mu        sync.Mutex
		sess      *ssh.Session
		abandoned bool
	)
	go func() {
		// The reference is held until the session is really gone, so
		// a draining connection is not closed under it.
		defer c.release()
		s, err := c.client.NewSession()
		if err != nil {
			res <- result{err: fmt.Errorf("sshpool: instance %d: opening SSH session: %w", ep.ID, err)}
			return
		}
		defer s.Close()
		mu.Lock()
		if abandoned {
			mu.Unlock()
			return
		}
		sess = s
		mu.Unlock()
		var stdout, stderr limitedBuffer
		stdout.max, stderr.max = MaxOutputBytes, 4096
		s.Stdout, s.Stderr = &stdout, &stderr
		err = s.Run(cmd)
		switch {
		case err != nil:
			err = fmt.Errorf("sshpool: instance %d: running %q: %w (stderr: %q)", ep.ID, prefix(cmd, 40), err, prefix(stderr.String(), 200))
		case stdout.overflow:
			err = fmt.Errorf("sshpool: instance %d: running %q: %w", ep.ID, prefix(cmd, 40), ErrOutputTooLarge)
		}
		res <- result{out: stdout.Bytes(), err: err}
	}()
	select {
	case r := <-res:
		return r.out, r.err
	case <-ctx.Done():
		mu.Lock()
		abandoned = true
		if sess != nil {
			sess.Close()
		}
		mu.Unlock()
		return nil, fmt.Errorf("sshpool: instance %d: running %q: %w", ep.ID, prefix(cmd, 40), ctx.Err())
	}
}

// DialContext opens a direct-tcpip channel from the instance to addr (for
// example "127.0.0.1:8000" for an engine inside the container) over the
// instance's shared connection. Close the returned conn when done: the SSH
// connection it rides on is not closed while it is open.
func (p *Pool) DialContext(ctx context.Context, ep Endpoint, addr string) (net.Conn, error) {
	c, err := p.acquire(ctx, ep)
	if err != nil {
		return nil, err
	}
	ch, err := c.client.DialContext(ctx, "tcp", addr)
	if err != nil {
		c.release()
		return nil, fmt.Errorf("sshpool: instance %d: tunnel to %s via %s path: %w", ep.ID, addr, c.path, err)
	}
	return &tunnelConn{Conn: ch, c: c}, nil
}

// Status reports the connection state of instance id. An unknown id is
// PathDown.
func (p *Pool) Status(id int64) Status {
	p.mu.Lock()
	inst := p.insts[id]
	p.mu.Unlock()
	if inst == nil {
		return Status{Path: PathDown}
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	st := Status{Path: PathDown, Reconnects: inst.reconnects}
	if inst.lastErr != nil {
		st.LastError = inst.lastErr.Error()
	}
	if c := inst.cur; c != nil && c.alive() {
		st.Path = c.path
		st.ConnectedSince = inst.connectedSince
	}
	return st
}

// Forget drops instance id: pending connects are abandoned, background
// reconnects stop, and its connections are closed once their open sessions
// and tunnels have finished. A later call for the same id starts afresh.
func (p *Pool) Forget(id int64) {
	p.mu.Lock()
	inst := p.insts[id]
	delete(p.insts, id)
	p.mu.Unlock()
	if inst != nil {
		inst.shutdown(false)
	}
}

// Close shuts the pool down: every connection is closed at once, cutting
// open tunnels (use Forget to drain), and background work is awaited. Calls
// made afterwards fail with ErrPoolClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	insts := p.insts
	p.insts = make(map[int64]*instance)
	p.mu.Unlock()
	p.cancel()
	for _, inst := range insts {
		inst.shutdown(true)
	}
	p.wg.Wait()
}

// instance is the per-instance connection state. All fields after mu are
// guarded by it, including the refs and retired fields of its sshConns.
type instance struct {
	p      *Pool
	id     int64
	ctx    context.Context // cancelled by Forget/Close: aborts dials
	cancel context.CancelFunc

	mu             sync.Mutex
	ep             Endpoint
	cur            *sshConn              // connection handed to new callers
	conns          map[*sshConn]struct{} // every open connection, cur included
	dial           *dialCall             // the connect in flight, shared
	failures       int                   // consecutive failed connects
	retryAt        time.Time             // no connect before this
	lastErr        error
	connectedSince time.Time
	reconnects     int
	connectedOnce  bool
	reconnecting   bool // a reconnect loop is running
	upgrading      bool // a direct retry is in flight
	gone           bool
	notifyDone     chan struct{} // closed when the last hook call returned
}

// dialCall is one connect shared by every caller waiting for it; err is
// written before done is closed.
type dialCall struct {
	done chan struct{}
	err  error
}

// instanceFor returns the state for ep.ID, creating it if needed, and
// records ep as the instance's current endpoint.
func (p *Pool) instanceFor(ep Endpoint) (*instance, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	inst := p.insts[ep.ID]
	if inst == nil {
		inst = &instance{p: p, id: ep.ID, ep: ep, conns: make(map[*sshConn]struct{})}
		inst.ctx, inst.cancel = context.WithCancel(p.ctx)
		p.insts[ep.ID] = inst
	}
	p.mu.Unlock()

	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.ep != ep {
		inst.ep = ep
		// vast.ai can move an instance's public address; a connection to an
		// address the instance no longer has is retired (drained), and the
		// backoff earned by the old address does not apply to the new one.
		if c := inst.cur; c != nil && !c.matches(ep) {
			p.log.Info("SSH endpoint changed; draining old connection",
				zap.Int64("instance", ep.ID), zap.String("path", c.path), zap.String("old_addr", c.addr))
			inst.cur = nil
			inst.retireLocked(c)
			inst.failures = 0
			inst.retryAt = time.Time{}
		}
	}
	return inst, nil
}

// acquire returns a live connection for ep with a reference taken; the
// caller must release it. Callers for the same instance share one connect.
func (p *Pool) acquire(ctx context.Context, ep Endpoint) (*sshConn, error) {
	if ep.Direct == "" && ep.Proxy == "" {
		return nil, fmt.Errorf("%w (instance %d)", ErrNoEndpoint, ep.ID)
	}
	inst, err := p.instanceFor(ep)
	if err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sshpool: instance %d: waiting for SSH connection: %w", ep.ID, err)
		}
		inst.mu.Lock()
		if inst.gone {
			inst.mu.Unlock()
			return nil, fmt.Errorf("%w (instance %d)", ErrForgotten, ep.ID)
		}
		if c := inst.cur; c != nil && c.alive() {
			c.refs++
			inst.mu.Unlock()
			return c, nil
		}
		d := inst.dial
		if d == nil {
			if wait := time.Until(inst.retryAt); wait > 0 && inst.lastErr != nil {
				err := fmt.Errorf("%w (instance %d, next attempt in %s): %w", ErrBackoff, ep.ID, wait.Round(time.Millisecond), inst.lastErr)
				inst.mu.Unlock()
				return nil, err
			}
			d = inst.startDialLocked()
		}
		inst.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, d.err
			}
			// Loop to take a reference under the lock; if the new
			// connection already died, the loop dials again.
		case <-ctx.Done():
			return nil, fmt.Errorf("sshpool: instance %d: waiting for SSH connection: %w", ep.ID, ctx.Err())
		}
	}
}

// startDialLocked starts a shared connect. The connect runs on the
// instance's context, not a caller's, so one impatient caller cannot abort
// it for the others; ConnectTimeout bounds it.
func (inst *instance) startDialLocked() *dialCall {
	d := &dialCall{done: make(chan struct{})}
	inst.dial = d
	ep := inst.ep
	inst.p.wg.Add(1)
	go func() {
		defer inst.p.wg.Done()
		c, err := inst.p.connect(inst.ctx, ep)
		inst.mu.Lock()
		inst.dial = nil
		if err == nil && inst.gone {
			c.client.Close()
			err = fmt.Errorf("%w (instance %d)", ErrForgotten, inst.id)
		}
		if err != nil {
			inst.failures++
			wait := inst.p.backoff(inst.failures)
			inst.retryAt = time.Now().Add(wait)
			inst.lastErr = err
			d.err = err
			failures := inst.failures
			inst.mu.Unlock()
			level := zap.WarnLevel
			if inst.ctx.Err() != nil {
				level = zap.DebugLevel // abandoned by Forget or Close
			}
			inst.p.log.Log(level, "SSH connect failed",
				zap.Int64("instance", inst.id), zap.Int("consecutive_failures", failures),
				zap.Duration("backoff", wait), zap.Error(err))
			close(d.done)
			return
		}
		if old := inst.cur; old != nil {
			inst.retireLocked(old)
		}
		inst.installLocked(c)
		inst.failures = 0
		inst.retryAt = time.Time{}
		inst.lastErr = nil
		if inst.connectedOnce {
			inst.reconnects++
		}
		inst.connectedOnce = true
		inst.mu.Unlock()
		inst.p.log.Info("SSH connected",
			zap.Int64("instance", inst.id), zap.String("path", c.path), zap.String("addr", c.addr))
		close(d.done)
	}()
	return d
}

// installLocked makes c the connection handed to new callers and starts
// its monitor.
func (inst *instance) installLocked(c *sshConn) {
	inst.notifyLocked(c.path)
	c.inst = inst
	inst.cur = c
	inst.conns[c] = struct{}{}
	inst.connectedSince = time.Now()
	inst.p.wg.Add(1)
	go inst.monitor(c)
}

// notifyLocked reports a connection change to PoolConfig.OnConnChange. The
// hook runs on its own goroutine so that it can call back into the Pool;
// calls for one instance are kept in order by chaining them.
func (inst *instance) notifyLocked(path string) {
	hook := inst.p.cfg.OnConnChange
	if hook == nil {
		return
	}
	prev := inst.notifyDone
	done := make(chan struct{})
	inst.notifyDone = done
	id := inst.id
	inst.p.wg.Add(1)
	go func() {
		defer inst.p.wg.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		hook(id, path)
	}()
}

// retireLocked stops handing c out and closes it once its sessions and
// channels are done (draining, so that in-flight requests complete).
func (inst *instance) retireLocked(c *sshConn) {
	c.retired = true
	if c.refs == 0 {
		inst.closeLocked(c)
	}
}

// closeLocked closes c's client; its monitor then exits.
func (inst *instance) closeLocked(c *sshConn) {
	delete(inst.conns, c)
	c.client.Close()
}

// shutdown marks the instance gone and closes its connections: at once when
// now is set (Pool.Close), otherwise after draining (Pool.Forget).
func (inst *instance) shutdown(now bool) {
	// gone is set before the context is cancelled, so that loops woken by
	// the cancellation see it.
	defer inst.cancel()
	inst.mu.Lock()
	defer inst.mu.Unlock()
	inst.gone = true
	inst.cur = nil
	for c := range inst.conns {
		if now {
			inst.closeLocked(c)
		} else {
			inst.retireLocked(c)
		}
	}
}

// backoff returns the wait after the n-th consecutive failure: BackoffMin
// doubled n-1 times, capped at BackoffMax.
func (p *Pool) backoff(n int) time.Duration {
	return backoff.Exponential(p.cfg.BackoffMin, p.cfg.BackoffMax, n)
}

// monitor watches one connection: it sends keepalives, notices its death,
// and while it is on the proxy path periodically tries the direct path.
func (inst *instance) monitor(c *sshConn) {
	p := inst.p
	defer p.wg.Done()
	waitErr := make(chan error, 1)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		waitErr <- c.client.Wait()
	}()
	keepalive := time.NewTicker(p.cfg.KeepaliveInterval)
	defer keepalive.Stop()
	var directTick <-chan time.Time
	if c.path == PathProxy && p.cfg.DirectRetryInterval > 0 {
		t := time.NewTicker(p.cfg.DirectRetryInterval)
		defer t.Stop()
		directTick = t.C
	}
	var cause error // why the connection is being closed, if we close it
	for {
		select {
		case err := <-waitErr:
			if cause == nil {
				cause = err
			}
			close(c.dead)
			inst.connDied(c, cause)
			return
		case <-keepalive.C:
			if cause != nil {
				continue // already closing
			}
			if err := c.keepalive(p.cfg.KeepaliveInterval); err != nil {
				p.log.Warn("SSH keepalive failed; closing connection",
					zap.Int64("instance", inst.id), zap.String("path", c.path), zap.Error(err))
				cause = fmt.Errorf("keepalive: %w", err)
				// Closing makes Wait return, which schedules the reconnect.
				c.client.Close()
			}
		case <-directTick:
			inst.tryDirect(c)
		}
	}
}

// errKeepaliveTimeout is the keepalive failure for an unanswered request.
var errKeepaliveTimeout = errors.New("no keepalive reply")

// keepalive sends one keepalive@openssh.com request and waits at most
// timeout for any reply (OpenSSH answers with a failure, which is fine: the
// peer is alive).
func (c *sshConn) keepalive(timeout time.Duration) error {
	res := make(chan error, 1)
	go func() {
		// Returns at the latest when the connection is closed.
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		res <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-res:
		return err
	case <-t.C:
		return fmt.Errorf("%w within %s", errKeepaliveTimeout, timeout)
	}
}

// connDied handles the end of connection c: if it was the one in use, a
// background reconnect starts (dead connections are rebuilt, not left
// behind).
func (inst *instance) connDied(c *sshConn, err error) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	delete(inst.conns, c)
	if inst.cur != c {
		return // retired or replaced: nothing to rebuild
	}
	inst.cur = nil
	if err == nil {
		err = errors.New("connection closed")
	}
	inst.lastErr = fmt.Errorf("sshpool: instance %d: SSH connection on %s path lost: %w", inst.id, c.path, err)
	inst.notifyLocked(PathDown)
	inst.p.log.Warn("SSH connection lost; reconnecting",
		zap.Int64("instance", inst.id), zap.String("path", c.path), zap.Error(err))
	if !inst.gone && !inst.reconnecting {
		inst.reconnecting = true
		inst.p.wg.Add(1)
		go inst.reconnectLoop()
	}
}

// reconnectLoop reconnects until a connection is up or the instance is
// forgotten, honouring the backoff between attempts.
func (inst *instance) reconnectLoop() {
	defer inst.p.wg.Done()
	for {
		inst.mu.Lock()
		if inst.gone || (inst.cur != nil && inst.cur.alive()) {
			inst.reconnecting = false
			inst.mu.Unlock()
			return
		}
		d := inst.dial
		wait := time.Until(inst.retryAt)
		if d == nil && wait <= 0 {
			d = inst.startDialLocked()
		}
		inst.mu.Unlock()
		if d != nil {
			select {
			case <-d.done:
			case <-inst.ctx.Done():
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-inst.ctx.Done():
			t.Stop()
		}
	}
}

// tryDirect attempts, in the background, to replace proxy connection c by
// a direct one. On success new callers get the direct connection and c is
// drained, so requests in flight on it complete.
func (inst *instance) tryDirect(c *sshConn) {
	inst.mu.Lock()
	ep := inst.ep
	if inst.gone || inst.cur != c || inst.upgrading || ep.Direct == "" {
		inst.mu.Unlock()
		return
	}
	inst.upgrading = true
	inst.mu.Unlock()
	p := inst.p
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		nc, err := p.dialPath(inst.ctx, inst.id, PathDirect, ep.Direct)
		inst.mu.Lock()
		defer inst.mu.Unlock()
		inst.upgrading = false
		if err != nil {
			inst.lastErr = fmt.Errorf("sshpool: instance %d: direct retry: %w", inst.id, err)
			p.log.Debug("SSH direct retry failed; staying on proxy", zap.Int64("instance", inst.id), zap.Error(err))
			return
		}
		if inst.gone || inst.cur != c || inst.ep.Direct != ep.Direct {
			nc.client.Close()
			return
		}
		inst.retireLocked(c)
		inst.installLocked(nc)
		inst.lastErr = nil
		p.log.Info("SSH moved from proxy to direct path; draining proxy connection",
			zap.Int64("instance", inst.id), zap.String("addr", nc.addr))
	}()
}

// connect dials ep, direct path first, then proxy. The returned error joins
// the failures of every path tried.
func (p *Pool) connect(ctx context.Context, ep Endpoint) (*sshConn, error) {
	var errs []error
	for _, try := range []struct{ path, addr string }{{PathDirect, ep.Direct}, {PathProxy, ep.Proxy}} {
		if try.addr == "" {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		c, err := p.dialPath(ctx, ep.ID, try.path, try.addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("sshpool: instance %d: SSH connect failed: %w", ep.ID, errors.Join(errs...))
}

// dialPath opens one SSH connection to addr, bounded by ConnectTimeout and
// ctx, holding a dial slot for the duration: TCP dial, host key policy,
// then the handshake.
func (p *Pool) dialPath(ctx context.Context, id int64, path, addr string) (*sshConn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s path %s: waiting for a dial slot: %w", path, addr, ctx.Err())
	}
	defer func() { <-p.sem }()

	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s path %s: %w", path, addr, err)
	}
	cfg, trusted, err := p.clientConfig(ctx, id, path)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("%s path %s: %w", path, addr, err)
	}
	auth := &keyAuth{p: p, ctx: ctx}
	cfg.Auth = []ssh.AuthMethod{ssh.PublicKeysCallback(auth.signers)}
	client, err := handshake(ctx, nc, addr, cfg)
	auth.close()
	if err != nil {
		var neg *ssh.AlgorithmNegotiationError
		if trusted != nil && errors.As(err, &neg) && neg.What == "host key" {
			// The host no longer has a key of the trusted type: that is
			// a changed host key too.
			err = fmt.Errorf("%w: instance %d on %s path offers no %s host key: %w", ErrHostKeyChanged, id, path, trusted.Type(), err)
		}
		return nil, fmt.Errorf("%s path %s: SSH handshake: %w", path, addr, err)
	}
	return &sshConn{client: client, path: path, addr: addr, dead: make(chan struct{})}, nil
}

// clientConfig returns the SSH client configuration for instance id on
// path, without Auth, and the host key trusted for it (nil: none yet, or
// host keys are not checked).
func (p *Pool) clientConfig(ctx context.Context, id int64, path string) (*ssh.ClientConfig, ssh.PublicKey, error) {
	cfg := &ssh.ClientConfig{
		User:            p.cfg.User,
		Timeout:         p.cfg.ConnectTimeout,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	}
	if p.cfg.InsecureIgnoreHostKeys {
		return cfg, nil, nil
	}
	var trusted ssh.PublicKey // nil: trust on first use
	storeKey := hostKeyName(id, path)
	stored, err := p.cfg.HostKeys.Load(ctx, storeKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, nil, fmt.Errorf("loading trusted host key %s: %w", storeKey, err)
	default:
		if trusted, _, _, _, err = ssh.ParseAuthorizedKey(stored); err != nil {
			return nil, nil, fmt.Errorf("trusted host key %s is unreadable: %w", storeKey, err)
		}
		// Ask for the trusted key's type, so algorithm negotiation cannot
		// make an unchanged host look changed.
		cfg.HostKeyAlgorithms = hostKeyAlgorithms(trusted.Type())
	}
	cfg.HostKeyCallback = p.tofu(ctx, id, path, storeKey, trusted)
	return cfg, trusted, nil
}

// handshake runs the SSH client handshake on nc and closes nc on failure.
// ssh.ClientConfig.Timeout covers only the TCP dial; the deadline and the
// AfterFunc bound the handshake too (a black hole that accepts and never
// speaks would otherwise hang it forever).
func handshake(ctx context.Context, nc net.Conn, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	cc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if !stop() {
		// ctx ended (timeout, Forget or Close) and closed nc under the
		// handshake; report that rather than the resulting I/O error.
		if err == nil {
			cc.Close()
		}
		return nil, context.Cause(ctx)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return ssh.NewClient(cc, chans, reqs), nil
}

// keyAuth offers the key files' and the agent's keys in one auth method:
// x/crypto stops trying a method's keys after it fails, so separate methods
// would only ever try the first. The agent connection must stay open while
// the handshake signs; close drops it.
type keyAuth struct {
	p         *Pool
	ctx       context.Context
	agentConn net.Conn
}

// signers is the ssh.PublicKeysCallback: the key files, then the agent's
// keys when the agent is reachable.
func (a *keyAuth) signers() ([]ssh.Signer, error) {
	p := a.p
	signers := append([]ssh.Signer(nil), p.signers...)
	if p.agentSock == "" {
		return signers, nil
	}
	ac, err := (&net.Dialer{}).DialContext(a.ctx, "unix", p.agentSock)
	if err != nil {
		p.log.Warn("SSH agent unreachable; using key files only", zap.Error(err))
		return signers, nil
	}
	a.close() // a second auth round: drop the first agent conn
	a.agentConn = ac
	as, err := agent.NewClient(ac).Signers()
	if err != nil {
		p.log.Warn("SSH agent listing failed; using key files only", zap.Error(err))
		return signers, nil
	}
	return append(signers, as...), nil
}

// close closes the agent connection, if any.
func (a *keyAuth) close() {
	if a.agentConn != nil {
		a.agentConn.Close()
		a.agentConn = nil
	}
}

// hostKeyName is the HostKeyStore key for an instance and path. The path is
// part of it because the proxy and direct paths may present different keys.
func hostKeyName(id int64, path string) string {
	return fmt.Sprintf("ssh_known_hosts/%d-%s", id, path)
}

// hostKeyAlgorithms lists the negotiable algorithms for a host key type.
func hostKeyAlgorithms(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// tofu returns the host key callback: with no trusted key the presented one
// is stored and accepted; otherwise it must equal the trusted key.
func (p *Pool) tofu(ctx context.Context, id int64, path, storeKey string, trusted ssh.PublicKey) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		if trusted == nil {
			if err := p.cfg.HostKeys.Store(ctx, storeKey, ssh.MarshalAuthorizedKey(key)); err != nil {
				return fmt.Errorf("storing host key %s: %w", storeKey, err)
			}
			p.log.Info("trusting SSH host key on first use",
				zap.Int64("instance", id), zap.String("path", path), zap.String("fingerprint", ssh.FingerprintSHA256(key)))
			return nil
		}
		if bytes.Equal(trusted.Marshal(), key.Marshal()) {
			return nil
		}
		return fmt.Errorf("%w: instance %d on %s path presented %s, trusted %s", ErrHostKeyChanged, id, path, ssh.FingerprintSHA256(key), ssh.FingerprintSHA256(trusted))
	}
}

// sshConn is one SSH connection. path, addr, client and dead are fixed at
// creation; refs and retired are guarded by the owning instance's mu.
type sshConn struct {
	client *ssh.Client
	path   string
	addr   string
	dead   chan struct{} // closed when the connection has ended

	inst    *instance
	refs    int  // open sessions and channels
	retired bool // no new users; close when refs reaches 0
}

// alive reports whether the connection has not ended yet.
func (c *sshConn) alive() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// matches reports whether c still goes to one of ep's addresses.
func (c *sshConn) matches(ep Endpoint) bool {
	if c.path == PathDirect {
		return c.addr == ep.Direct
	}
	return c.addr == ep.Proxy
}

// release drops one reference, closing a retired connection when it was
// the last one.
func (c *sshConn) release() {
	inst := c.inst
	inst.mu.Lock()
	defer inst.mu.Unlock()
	c.refs--
	if c.retired && c.refs == 0 {
		inst.closeLocked(c)
	}
}

// tunnelConn is a direct-tcpip channel that releases its connection
// reference once on Close.
type tunnelConn struct {
	net.Conn
	c    *sshConn
	once sync.Once
}

// Close closes the channel and lets a draining connection finish.
func (t *tunnelConn) Close() error {
	err := t.Conn.Close()
	t.once.Do(t.c.release)
	return err
}

// limitedBuffer keeps at most max bytes and silently drops the rest, so the
// remote command is never blocked by a reader that stopped reading.
type limitedBuffer struct {
	bytes.Buffer
	max      int
	overflow bool
}

// Write implements io.Writer; it never fails.
func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.overflow = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// MemoryHostKeyStore is an in-memory HostKeyStore, for tests and for
// deployments without persistent storage.
type MemoryHostKeyStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

// NewMemoryHostKeyStore returns an empty MemoryHostKeyStore.
func NewMemoryHostKeyStore() *MemoryHostKeyStore {
	return &MemoryHostKeyStore{m: make(map[string][]byte)}
}

// Load implements HostKeyStore.
func (s *MemoryHostKeyStore) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, fmt.Errorf("sshpool: host key %s: %w", key, fs.ErrNotExist)
	}
	return bytes.Clone(v), nil
}

// Store implements HostKeyStore.
func (s *MemoryHostKeyStore) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = bytes.Clone(value)
	return nil
}

// prefix returns at most n bytes of s, for error messages.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
