package fleet

import (
	"testing"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

func TestTunnelAddrRoundTrip(t *testing.T) {
	addr := TunnelAddr(31000019, 8000)
	id, port, ok := ParseTunnelAddr(addr)
	if !ok || id != 31000019 || port != 8000 {
		t.Fatalf("ParseTunnelAddr(%q) = %d %d %v", addr, id, port, ok)
	}
	for _, bad := range []string{"127.0.0.1:8000", "i12.example.com:80", "ix.vastai-tunnel:80", "i12.vastai-tunnel:0", "i-1.vastai-tunnel:80", "i12.vastai-tunnel"} {
		if _, _, ok := ParseTunnelAddr(bad); ok {
			t.Errorf("ParseTunnelAddr(%q) accepted", bad)
		}
	}
}

func TestSSHEndpoints(t *testing.T) {
	ports22 := vastclient.Ports{"22/tcp": {{HostIP: "::", HostPort: "41019"}, {HostIP: "0.0.0.0", HostPort: "41019"}}}
	cases := []struct {
		name          string
		in            vastclient.Instance
		direct, proxy string
	}{
		{"both", vastclient.Instance{PublicIPAddr: "203.0.113.7", Ports: ports22, SSHHost: "ssh5.vast.ai", SSHPort: 12345, ImageRuntype: "ssh ssh_direc ssh_proxy"}, "203.0.113.7:41019", "ssh5.vast.ai:12345"},
		{"jupyter adds one to the proxy port", vastclient.Instance{SSHHost: "ssh5.vast.ai", SSHPort: 12345, ImageRuntype: "jupyter_direc ssh_direc"}, "", "ssh5.vast.ai:12346"},
		{"no 22 mapping", vastclient.Instance{PublicIPAddr: "203.0.113.7", SSHHost: "ssh5.vast.ai", SSHPort: 1}, "", "ssh5.vast.ai:1"},
		{"nothing", vastclient.Instance{}, "", ""},
	}
	for _, c := range cases {
		d, p := SSHEndpoints(&c.in)
		if d != c.direct || p != c.proxy {
			t.Errorf("%s: got %q %q, want %q %q", c.name, d, p, c.direct, c.proxy)
		}
	}
}
