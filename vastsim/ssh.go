package vastsim

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// The simulated SSH service (§11.3). Every instance whose container runs
// has one in-process SSH server with its own ed25519 host key, reachable by
// two paths:
//
//   - direct: the host port mapped to container port 22, reported as
//     ports["22/tcp"] once the instance runs. Only instances whose runtype
//     opens port 22 (image_runtype contains "ssh_direc", or the env asks
//     for "-p 22:22") have it, as on vast.ai; Launch uses ssh_direct by
//     default.
//   - proxy: reported as ssh_host "127.0.0.1" and ssh_port, minus one when
//     image_runtype contains "jupyter" (clients add 1 on that path).
//
// The listeners open with the container (together with the engine) and
// close with it (stop, destroy, KillEngine, exited/offline, Close). Until
// the container has booted (the instance is still loading), a connection is
// accepted and closed before the SSH banner.

// sshPath identifies one way into an instance's SSH server.
type sshPath int

const (
	pathDirect sshPath = iota
	pathProxy
	numPaths
)

func (p sshPath) String() string {
	if p == pathDirect {
		return "direct"
	}
	return "proxy"
}

const (
	sshHandshakeTimeout = 10 * time.Second
	sshDialTimeout      = 5 * time.Second
	// sshServerVersion is what a vast.ai Ubuntu 22.04 image announces.
	sshServerVersion = "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10"
)

// SSHPathStats counts what one SSH path (direct or proxy) of an instance
// received. Counts survive container restarts for the life of the instance.
type SSHPathStats struct {
	// Connections counts TCP connections accepted on the path.
	Connections int64
	// Logins counts connections that completed the handshake and
	// authentication.
	Logins int64
	// FailedHandshakes counts connections that did not: refused user or
	// key, a host key rejected by the client, a container not booted yet,
	// a client that gave up.
	FailedHandshakes int64
	// Active is the number of authenticated connections open now.
	Active int64
	// Sessions counts accepted "session" channels.
	Sessions int64
	// Execs counts "exec" requests (one per command run).
	Execs int64
	// DirectTCPIP counts accepted "direct-tcpip" channels (tunnels).
	DirectTCPIP int64
	// DirectTCPIPRejected counts refused "direct-tcpip" channels.
	DirectTCPIPRejected int64
	// Keepalives counts keepalive@openssh.com global requests.
	Keepalives int64
}

// SSHStats counts what an instance's SSH server received, by path.
type SSHStats struct {
	Direct SSHPathStats
	Proxy  SSHPathStats
	// LastCommand is the most recent exec command, on either path.
	LastCommand string
}

func (st *SSHStats) path(p sshPath) *SSHPathStats {
	if p == pathDirect {
		return &st.Direct
	}
	return &st.Proxy
}

// sshState is an instance's SSH record, kept for the instance's life so
// that the host key and the proxy port stay stable across restarts.
// Guarded by Sim.mu.
type sshState struct {
	signer ssh.Signer
	ports  [numPaths]int  // host port last used by each path; 0 if never
	off    [numPaths]bool // path closed by SetSSHPath
	srv    *sshServer     // the running server, nil while the container is down
	stats  SSHStats

	smiForced bool
	smiOut    string
	smiExit   int
	gpus      []gpuSim
}

func newHostKey() ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic("vastsim: ed25519 key generation: " + err.Error())
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic("vastsim: ssh signer: " + err.Error())
	}
	return signer
}

// sshStateLocked returns the instance's SSH record, creating it (and its
// host key) on first use. s.mu must be held.
func (s *Sim) sshStateLocked(in *instance) *sshState {
	if in.ssh == nil {
		in.ssh = &sshState{signer: newHostKey()}
	}
	return in.ssh
}

// sshDirectWanted reports whether the instance maps container port 22: an
// SSH-direct runtype (ssh_direct, jupyter_direct) or an explicit "-p 22:22".
func (in *instance) sshDirectWanted() bool {
	if strings.Contains(in.runtype, "ssh_direc") {
		return true
	}
	for _, p := range in.ports {
		if p.port == 22 && p.proto == "tcp" {
			return true
		}
	}
	return false
}

// sshOwnsPort reports whether container port p is served by the SSH server
// rather than the engine.
func (s *Sim) sshOwnsPort(p portSpec) bool {
	return !s.opts.SSHDisabled && p.port == 22 && p.proto == "tcp"
}

// sshDirectPortLocked is the host port reported for "22/tcp", or 0. It
// stays reported while a path is closed by SetSSHPath (the point is to test
// a client that finds it unreachable). s.mu must be held.
func (s *Sim) sshDirectPortLocked(in *instance) int {
	if in.extSSH != 0 {
		return in.extSSH
	}
	if s.opts.SSHDisabled || in.ssh == nil || !in.sshDirectWanted() {
		return 0
	}
	return in.ssh.ports[pathDirect]
}

// sshProxyEndpointLocked is the (ssh_host, ssh_port) pair of the instance
// object. With SSH disabled it is the fictitious vast.ai proxy. s.mu must
// be held.
func (s *Sim) sshProxyEndpointLocked(in *instance) (string, int) {
	if in.extSSH != 0 {
		return "127.0.0.1", in.extSSH
	}
	if s.opts.SSHDisabled {
		return "ssh5.vast.ai", in.sshPort
	}
	port := in.sshPort
	if in.ssh != nil && in.ssh.ports[pathProxy] != 0 {
		port = in.ssh.ports[pathProxy]
		if strings.Contains(in.runtype, "jupyter") {
			// Clients add 1 to ssh_port for Jupyter runtypes (§11.3).
			port--
		}
	}
	return "127.0.0.1", port
}

// UseExternalSSH makes the API report an SSH server running outside the
// simulator (for example a real OpenSSH sshd on 127.0.0.1:port) as the
// instance's direct and proxy SSH endpoints, so clients test against it;
// 0 restores the simulated server. Through such a server, tunnels reach the
// host's 127.0.0.1, where the engine listens on its host port.
func (s *Sim) UseExternalSSH(id int64, port int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil {
		in.extSSH = port
	}
}

// freePort finds a loopback port that is free now, for a path that is
// advertised but kept closed.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startSSHLocked opens the instance's SSH paths. The proxy path keeps its
// port when it can (ssh_port is stable on vast.ai); the direct path keeps
// its port only with reuse (a container restarted in place), like the
// engine's ports. s.mu must be held.
func (s *Sim) startSSHLocked(in *instance, reuse bool) {
	if s.opts.SSHDisabled || s.closed || in.destroyed() {
		return
	}
	st := s.sshStateLocked(in)
	if st.srv != nil {
		return
	}
	srv := &sshServer{sim: s, in: in, conns: map[net.Conn]sshPath{}}
	for p := sshPath(0); p < numPaths; p++ {
		if p == pathDirect && !in.sshDirectWanted() {
			continue
		}
		prefer := st.ports[p]
		if p == pathDirect && !reuse {
			prefer = 0
		}
		if st.off[p] {
			if prefer == 0 {
				prefer = freePort()
			}
			st.ports[p] = prefer
			continue
		}
		port, err := srv.open(p, prefer)
		if err != nil {
			s.logf("vastsim: instance %d: ssh %s listen: %v", in.id, p, err)
			continue
		}
		st.ports[p] = port
	}
	st.srv = srv
	s.logf("vastsim: instance %d ssh direct=%d proxy=%d", in.id, st.ports[pathDirect], st.ports[pathProxy])
}

// stopSSHLocked closes the instance's SSH server, its listeners and every
// connection and tunnel through it. It does not wait for the connection
// goroutines, which may be waiting for s.mu. s.mu must be held.
func (s *Sim) stopSSHLocked(in *instance) {
	if in.ssh == nil || in.ssh.srv == nil {
		return
	}
	in.ssh.srv.close()
	in.ssh.srv = nil
}

// sshServer is one running incarnation of an instance's SSH daemon.
type sshServer struct {
	sim *Sim
	in  *instance

	mu     sync.Mutex
	lns    [numPaths]net.Listener
	conns  map[net.Conn]sshPath
	closed bool
	wg     sync.WaitGroup // every goroutine of this server
}

// open listens for path p, on prefer when it is free, else on a fresh
// port, and returns the port.
func (srv *sshServer) open(p sshPath, prefer int) (int, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return 0, errors.New("ssh server closed")
	}
	if ln := srv.lns[p]; ln != nil {
		return ln.Addr().(*net.TCPAddr).Port, nil
	}
	var ln net.Listener
	var err error
	if prefer != 0 {
		ln, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(prefer))
	}
	if ln == nil {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return 0, err
	}
	srv.lns[p] = ln
	srv.wg.Add(1)
	go srv.acceptLoop(ln, p)
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// closePath closes path p's listener and drops the connections made
// through it, as when that network path fails.
func (srv *sshServer) closePath(p sshPath) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if ln := srv.lns[p]; ln != nil {
		_ = ln.Close()
		srv.lns[p] = nil
	}
	for c, cp := range srv.conns {
		if cp == p {
			_ = c.Close()
		}
	}
}

// addr returns path p's listening address, or "".
func (srv *sshServer) addr(p sshPath) string {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if ln := srv.lns[p]; ln != nil {
		return ln.Addr().String()
	}
	return ""
}

func (srv *sshServer) close() {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.closed = true
	for i, ln := range srv.lns {
		if ln != nil {
			_ = ln.Close()
			srv.lns[i] = nil
		}
	}
	for c := range srv.conns {
		_ = c.Close()
	}
}

// wait waits for every goroutine of the server to end, up to d.
func (srv *sshServer) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { srv.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (srv *sshServer) acceptLoop(ln net.Listener, p sshPath) {
	defer srv.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		srv.mu.Lock()
		if srv.closed || srv.lns[p] != ln {
			srv.mu.Unlock()
			_ = c.Close()
			continue
		}
		srv.conns[c] = p
		srv.wg.Add(1)
		srv.mu.Unlock()
		go srv.serveConn(c, p)
	}
}

func (srv *sshServer) forget(c net.Conn) {
	srv.mu.Lock()
	delete(srv.conns, c)
	srv.mu.Unlock()
	_ = c.Close()
}

// stats applies f to the path's counters under s.mu.
func (srv *sshServer) stats(p sshPath, f func(*SSHPathStats)) {
	s := srv.sim
	s.mu.Lock()
	f(s.sshStateLocked(srv.in).stats.path(p))
	s.mu.Unlock()
}

// keyAllowed applies authorized_keys: Options.SSHAuthorizedKeys plus the
// keys attached to the instance through the API; nil Options keys accept
// any key.
func (srv *sshServer) keyAllowed(key ssh.PublicKey) bool {
	s := srv.sim
	if s.opts.SSHAuthorizedKeys == nil {
		return true
	}
	kb := key.Marshal()
	for _, k := range s.opts.SSHAuthorizedKeys {
		if k != nil && bytes.Equal(k.Marshal(), kb) {
			return true
		}
	}
	s.mu.Lock()
	attached := make([]string, 0, len(srv.in.sshKeys))
	for _, k := range srv.in.sshKeys {
		attached = append(attached, k.PublicKey)
	}
	s.mu.Unlock()
	for _, a := range attached {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(a))
		if err == nil && bytes.Equal(pk.Marshal(), kb) {
			return true
		}
	}
	return false
}

func (srv *sshServer) serveConn(c net.Conn, p sshPath) {
	defer srv.wg.Done()
	defer srv.forget(c)
	s, in := srv.sim, srv.in

	s.mu.Lock()
	st := s.sshStateLocked(in)
	st.stats.path(p).Connections++
	booted := !in.destroyed() && !in.stopped && !time.Now().Before(in.runningAt)
	signer := st.signer
	if !booted {
		st.stats.path(p).FailedHandshakes++
	}
	s.mu.Unlock()
	if !booted {
		return // the container's sshd is not up yet
	}

	cfg := &ssh.ServerConfig{
		ServerVersion: sshServerVersion,
		MaxAuthTries:  6,
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if md.User() != "root" {
				return nil, errors.New("vastsim: only root may log in")
			}
			if !srv.keyAllowed(key) {
				return nil, errors.New("vastsim: key not in authorized_keys")
			}
			return &ssh.Permissions{}, nil
		},
	}
	cfg.AddHostKey(signer)
	_ = c.SetDeadline(time.Now().Add(sshHandshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		srv.stats(p, func(ps *SSHPathStats) { ps.FailedHandshakes++ })
		return
	}
	_ = c.SetDeadline(time.Time{})
	defer sconn.Close()
	srv.stats(p, func(ps *SSHPathStats) { ps.Logins++; ps.Active++ })
	defer srv.stats(p, func(ps *SSHPathStats) { ps.Active-- })

	srv.wg.Add(1)
	go srv.globalRequests(reqs, p)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			srv.wg.Add(1)
			go srv.session(nc, p)
		case "direct-tcpip":
			srv.wg.Add(1)
			go srv.directTCPIP(nc, p)
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unknown channel type")
		}
	}
}

// globalRequests answers keepalives, as OpenSSH clients and Go clients
// send them, and refuses everything else (remote forwarding included).
func (srv *sshServer) globalRequests(reqs <-chan *ssh.Request, p sshPath) {
	defer srv.wg.Done()
	for req := range reqs {
		if req.Type == "keepalive@openssh.com" {
			srv.stats(p, func(ps *SSHPathStats) { ps.Keepalives++ })
			_ = req.Reply(true, nil)
			continue
		}
		_ = req.Reply(false, nil)
	}
}

// session serves one session channel: exec requests run a simulated
// command; env and pty requests are accepted and ignored; interactive
// shells and subsystems (sftp) are refused.
func (srv *sshServer) session(nc ssh.NewChannel, p sshPath) {
	defer srv.wg.Done()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	srv.stats(p, func(ps *SSHPathStats) { ps.Sessions++ })
	ran := false
	for req := range reqs {
		switch req.Type {
		case "exec":
			var payload struct{ Command string }
			if ran || ssh.Unmarshal(req.Payload, &payload) != nil {
				_ = req.Reply(false, nil)
				continue
			}
			ran = true
			_ = req.Reply(true, nil)
			stdout, stderr, status := srv.sim.runCommand(srv.in, p, payload.Command)
			_, _ = io.WriteString(ch, stdout)
			_, _ = io.WriteString(ch.Stderr(), stderr)
			_ = ch.CloseWrite()
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
			_ = ch.Close()
		case "env", "pty-req", "window-change":
			_ = req.Reply(true, nil)
		default:
			_ = req.Reply(false, nil)
		}
	}
}

// isLocalHost reports whether a direct-tcpip destination is the container
// itself.
func isLocalHost(h string) bool {
	switch strings.ToLower(strings.Trim(h, "[]")) {
	case "127.0.0.1", "localhost", "::1", "0.0.0.0":
		return true
	}
	return false
}

// directTCPIP serves a tunnel ("ssh -L"): a destination inside the
// container (localhost or 127.0.0.1) on a port the engine serves is
// connected to that engine listener, so the engine sees the bytes exactly
// as a direct client would send them. A local port nothing listens on is
// refused as sshd does (connect failed); other hosts are prohibited.
func (srv *sshServer) directTCPIP(nc ssh.NewChannel, p sshPath) {
	defer srv.wg.Done()
	s, in := srv.sim, srv.in
	reject := func(reason ssh.RejectionReason, msg string) {
		srv.stats(p, func(ps *SSHPathStats) { ps.DirectTCPIPRejected++ })
		_ = nc.Reject(reason, msg)
	}
	var d struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &d); err != nil {
		reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	if !isLocalHost(d.Host) {
		reject(ssh.Prohibited, "administratively prohibited: open failed")
		return
	}
	key := strconv.FormatUint(uint64(d.Port), 10) + "/tcp"
	s.mu.Lock()
	hp := 0
	if in.eng != nil && !s.sshOwnsPort(portSpec{port: int(d.Port), proto: "tcp"}) {
		hp = in.hostPorts[key]
	}
	s.mu.Unlock()
	if hp == 0 {
		reject(ssh.ConnectionFailed, "connect failed: Connection refused")
		return
	}
	ec, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hp), sshDialTimeout)
	if err != nil {
		reject(ssh.ConnectionFailed, "connect failed: "+err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		_ = ec.Close()
		return
	}
	srv.stats(p, func(ps *SSHPathStats) { ps.DirectTCPIP++ })
	// The request channel closes when the client closes the channel or the
	// connection dies: then the engine connection goes too, even if the
	// engine is hung and would never answer.
	srv.wg.Add(2)
	go func() {
		defer srv.wg.Done()
		ssh.DiscardRequests(reqs)
		_ = ec.Close()
	}()
	go func() {
		defer srv.wg.Done()
		_, _ = io.Copy(ec, ch)
		if tc, ok := ec.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(ch, ec)
	_ = ch.CloseWrite()
	_ = ch.Close()
}

// HostKey returns the public host key of an instance's SSH server, or nil
// for an unknown instance or with Options.SSHDisabled. The key is created
// with the instance's first use of SSH and kept for its whole life
// (restarts included), so trust-on-first-use works; RotateHostKey changes
// it.
func (s *Sim) HostKey(id int64) ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || s.opts.SSHDisabled {
		return nil
	}
	return s.sshStateLocked(in).signer.PublicKey()
}

// RotateHostKey gives an instance a new host key, as if its container had
// been recreated or the host were an impostor, and returns it (nil for an
// unknown instance). Open connections are unaffected; new ones present the
// new key, which a trust-on-first-use client must refuse.
func (s *Sim) RotateHostKey(id int64) ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || s.opts.SSHDisabled {
		return nil
	}
	st := s.sshStateLocked(in)
	st.signer = newHostKey()
	return st.signer.PublicKey()
}

// SetSSHPath opens or closes each SSH path of an instance. Closing a path
// closes its listener and drops the connections made through it, while the
// API keeps reporting it (a client must fall back to the other path);
// opening it listens again on the same port when possible. The setting
// persists across restarts. Paths an instance does not have (direct on an
// "args" runtype) are ignored.
func (s *Sim) SetSSHPath(id int64, direct, proxy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || s.opts.SSHDisabled {
		return
	}
	st := s.sshStateLocked(in)
	want := [numPaths]bool{pathDirect: direct, pathProxy: proxy}
	for p := sshPath(0); p < numPaths; p++ {
		st.off[p] = !want[p]
		if st.srv == nil || (p == pathDirect && !in.sshDirectWanted()) {
			continue
		}
		if !want[p] {
			st.srv.closePath(p)
			continue
		}
		port, err := st.srv.open(p, st.ports[p])
		if err != nil {
			s.logf("vastsim: instance %d: ssh %s listen: %v", id, p, err)
			continue
		}
		st.ports[p] = port
	}
}

// SSHAddrs returns the "127.0.0.1:port" addresses on which an instance's
// SSH paths listen now; a path that is closed, absent or not started is "".
// The API reports the same ports (ports["22/tcp"] and ssh_port).
func (s *Sim) SSHAddrs(id int64) (direct, proxy string) {
	s.mu.Lock()
	in := s.instances[id]
	var srv *sshServer
	if in != nil && in.ssh != nil {
		srv = in.ssh.srv
	}
	s.mu.Unlock()
	if srv == nil {
		return "", ""
	}
	return srv.addr(pathDirect), srv.addr(pathProxy)
}

// SSHStats returns an instance's SSH counters (zero if unknown).
func (s *Sim) SSHStats(id int64) SSHStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil && in.ssh != nil {
		return in.ssh.stats
	}
	return SSHStats{}
}

// SetNvidiaSMIOutput forces what every nvidia-smi command on the instance
// prints (stdout) and its exit status, e.g. "[N/A]" fields, garbage, or a
// driver failure. out "" with exitStatus 0 restores the simulated GPUs;
// "" with another status forces an empty, failing answer.
func (s *Sim) SetNvidiaSMIOutput(id int64, out string, exitStatus int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil {
		return
	}
	st := s.sshStateLocked(in)
	st.smiForced = out != "" || exitStatus != 0
	st.smiOut, st.smiExit = out, exitStatus
}
