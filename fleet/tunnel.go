package fleet

import (
	"net"
	"strconv"
	"strings"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// tunnelHostSuffix names upstream addresses that exist only through an SSH
// tunnel. They never resolve in DNS, so a transport that does not know
// about tunnels fails to dial them instead of sending traffic elsewhere.
const tunnelHostSuffix = ".vastai-tunnel"

// TunnelAddr is the upstream address of an instance reached through its SSH
// connection: "i<id>.vastai-tunnel:<container port>".
func TunnelAddr(id int64, containerPort int) string {
	return net.JoinHostPort("i"+strconv.FormatInt(id, 10)+tunnelHostSuffix, strconv.Itoa(containerPort))
}

// ParseTunnelAddr is the inverse of TunnelAddr.
func ParseTunnelAddr(addr string) (id int64, containerPort int, ok bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !strings.HasPrefix(host, "i") || !strings.HasSuffix(host, tunnelHostSuffix) {
		return 0, 0, false
	}
	id, err = strconv.ParseInt(strings.TrimSuffix(host[1:], tunnelHostSuffix), 10, 64)
	if err != nil || id <= 0 {
		return 0, 0, false
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return 0, 0, false
	}
	return id, p, true
}

// SSHEndpoints returns the instance's SSH addresses: direct is
// public_ipaddr with the host port mapped to 22/tcp, proxy is vast.ai's
// ssh_host:ssh_port (plus one for Jupyter runtypes, as the official CLI
// does). Either may be "".
func SSHEndpoints(in *vastclient.Instance) (direct, proxy string) {
	if ip := net.ParseIP(in.PublicIPAddr); ip != nil {
		if p, ok := in.Ports.HostPort(22, "tcp"); ok {
			direct = net.JoinHostPort(ip.String(), strconv.Itoa(p))
		}
	}
	if in.SSHHost != "" && in.SSHPort > 0 {
		port := in.SSHPort
		if strings.Contains(in.ImageRuntype, "jupyter") {
			port++
		}
		if port <= 65535 {
			proxy = net.JoinHostPort(in.SSHHost, strconv.Itoa(port))
		}
	}
	return direct, proxy
}

// tunnelUpstream is upstreamAddr for tunnel mode: the engine port need not
// be public, but the instance must be reachable over SSH.
func tunnelUpstream(in *vastclient.Instance, containerPort int) (string, string) {
	if d, p := SSHEndpoints(in); d == "" && p == "" {
		return "", "no SSH endpoint for the tunnel (no 22/tcp mapping and no ssh_host)"
	}
	return TunnelAddr(in.ID, containerPort), ""
}
