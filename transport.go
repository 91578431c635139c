package vastai

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/fleet"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// InstanceHeader is the response header that names the instance which
// served a request (useful for debugging and for KV-cache affinity).
const InstanceHeader = "X-Vastai-Instance"

// Keep-alive pool defaults of the vastai transport, used unless the config
// sets keepalive_idle_conns_per_host / keepalive_idle_conns (JSON
// keep_alive.max_idle_conns_per_host / max_idle_conns). One instance serves
// many concurrent streams; with Caddy's default of 32 idle connections per
// host, 256 concurrent clients kept opening new upstream connections (see
// BenchmarkKeepAlivePool).
const (
	DefaultIdleConnsPerHost = 512
	DefaultMaxIdleConns     = 4096
)

// errNoRoute means the selected upstream left the fleet between selection
// and dialing; it is reported as a dial error so reverse_proxy retries on
// another instance instead of sending a request without credentials.
var errNoRoute = errors.New("upstream is no longer routable")

// Transport is Caddy's HTTP transport plus per-instance credentials: on each
// attempt it sets "Authorization: Bearer <that instance's token>", replacing
// whatever the client sent, and adds an X-Vastai-Instance response header.
// Every option of the http transport (timeouts, TLS, versions...) works.
// Its keep-alive pool defaults to 512 idle connections per instance and
// 4096 in all (DefaultIdleConnsPerHost, DefaultMaxIdleConns), sized for
// many concurrent streams per instance; keepalive_idle_conns_per_host and
// keepalive_idle_conns override them.
//
// It also feeds passive health: connection failures, 5xx responses and
// portal placeholders count toward an instance becoming unhealthy; requests
// the client cancelled never do.
//
// The token is looked up in the reload-surviving snapshot by the selected
// upstream's address, so a stream that started under an old config keeps
// working after a reload. Tokens never pass through placeholders or logs.
type Transport struct {
	*reverseproxy.HTTPTransport

	// "ssh" sends every request through the instance's SSH connection (a
	// direct-tcpip channel to 127.0.0.1:<port> inside the instance)
	// instead of public_ipaddr:HostPort, so engine ports need not be
	// public and tokens never cross the internet in clear. Needs the
	// vastai app's ssh block. Health probes then take the tunnel too.
	Tunnel string `json:"tunnel,omitempty"`

	st         *state
	log        *zap.Logger
	registered bool
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.vastai",
		New: func() caddy.Module { return &Transport{HTTPTransport: new(reverseproxy.HTTPTransport)} },
	}
}

// Provision finds the vastai app and provisions the embedded transport.
func (t *Transport) Provision(ctx caddy.Context) error {
	app, err := lookupApp(ctx)
	if err != nil {
		return err
	}
	t.st = app.state
	t.log = ctx.Logger()
	switch t.Tunnel {
	case "":
	case "ssh":
		if app.SSH == nil {
			return errors.New("tunnel ssh needs SSH access: add ssh { key <file> } to the vastai app")
		}
		// Counted so the app turns tunnel mode on when it starts, and off
		// when the last tunnelling config is unloaded.
		t.st.tunnels.Add(1)
		t.registered = true
	default:
		return fmt.Errorf("tunnel: %q is not supported (use ssh)", t.Tunnel)
	}
	if t.HTTPTransport == nil {
		t.HTTPTransport = new(reverseproxy.HTTPTransport)
	}
	t.keepAliveDefaults()
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	// Every vastai transport can reach tunnel addresses, whatever its own
	// tunnel setting: during a reload an old transport may still receive
	// them from the shared snapshot.
	if rt := t.HTTPTransport.Transport; rt != nil {
		base := rt.DialContext
		rt.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if id, port, ok := fleet.ParseTunnelAddr(addr); ok {
				conn, err := t.st.dialTunnel(ctx, id, port)
				if err != nil {
					return nil, reverseproxy.NewDialError(err)
				}
				return conn, nil
			}
			return base(ctx, network, addr)
		}
	}
	t.st.transports.Store(t, struct{}{})
	return nil
}

// keepAliveDefaults sizes the idle pool for inference traffic where the
// config leaves it to the default.
func (t *Transport) keepAliveDefaults() {
	if t.KeepAlive == nil {
		t.KeepAlive = new(reverseproxy.KeepAlive)
	}
	if t.KeepAlive.MaxIdleConnsPerHost == 0 {
		t.KeepAlive.MaxIdleConnsPerHost = DefaultIdleConnsPerHost
	}
	if t.KeepAlive.MaxIdleConns == 0 {
		t.KeepAlive.MaxIdleConns = DefaultMaxIdleConns
	}
}

// Cleanup releases this transport's claim on tunnel mode and closes its
// idle upstream connections. It must call the embedded transport's
// Cleanup: defining this method shadows it, and without the call every
// reload left the old transport's keep-alive connections open.
func (t *Transport) Cleanup() error {
	if t.st != nil {
		t.st.transports.Delete(t)
	}
	if t.registered {
		t.registered = false
		if t.st.tunnels.Add(-1) == 0 {
			t.st.watcher.SetTunnel(false)
		}
	}
	if t.HTTPTransport == nil {
		return nil
	}
	return t.HTTPTransport.Cleanup()
}

// RoundTrip sends one attempt to the upstream chosen by reverse_proxy.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	di, ok := reverseproxy.GetDialInfo(req.Context())
	if !ok || di.Upstream == nil {
		return nil, errors.New("vastai transport: no upstream in the request context (use it inside reverse_proxy)")
	}
	if di.Upstream.Dial == holdRejectDial {
		return holdResponse(req), nil // hold.go: no instance in time
	}
	route, ok := t.st.watcher.Snapshot().Route(di.Upstream.Dial)
	if !ok {
		return nil, reverseproxy.NewDialError(fmt.Errorf("vastai transport: %s: %w", di.Upstream.Dial, errNoRoute))
	}
	if resp := keyPoolRefusal(req, route.Pool); resp != nil { // keys.go
		return resp, nil
	}
	// A RoundTripper must not modify the request it is given; the header
	// map is shared with reverse_proxy's retry logic.
	out := req.WithContext(req.Context())
	out.Header = req.Header.Clone()
	out.Header.Set("Authorization", "Bearer "+route.Token)

	out, passed := passOnWrite(out) // hold.go: the next held request goes once this one is sent
	defer passed()
	done := t.st.inflight.begin(req, route.ID, t.st.forgotten)
	// Tunnel routes use a pool per instance (wire_ssh.go), so that one
	// instance's SSH change flushes only its own idle connections.
	resp, err := t.st.roundTrip(t.HTTPTransport, route, out)
	if err != nil || resp == nil {
		done()
	} else {
		// The request is in flight until its body (maybe a long stream)
		// is finished: that is what a drain waits for.
		tb := &trackedBody{ReadCloser: resp.Body, done: done, abort: t.watchAbort(route, out, resp)}
		if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
			// A 101 Switching Protocols body must stay writable, or
			// reverse_proxy cannot carry the upgraded connection.
			resp.Body = &trackedRWBody{trackedBody: tb, w: rwc}
		} else {
			resp.Body = tb
		}
	}
	switch {
	case err != nil:
		// A client that gave up is not the instance's fault (vastproxy
		// bug B1); anything else (refused, reset, response header
		// timeout) is.
		if req.Context().Err() == nil && !errors.Is(err, context.Canceled) {
			t.st.watcher.ReportTraffic(route.ID, false)
		}
	case resp.StatusCode >= 500 || resp.Header.Get(fleet.PlaceholderHeader) != "":
		t.st.watcher.ReportTraffic(route.ID, false)
	default:
		t.st.watcher.ReportTraffic(route.ID, true)
	}
	if resp != nil {
		resp.Header.Set(InstanceHeader, strconv.FormatInt(route.ID, 10))
	}
	return resp, err
}

// trackedBody ends an instance's in-flight count when the response body is
// closed, exactly once; for SGLang it also aborts a generation whose body
// was closed before its end (abort.go).
type trackedBody struct {
	io.ReadCloser
	once  sync.Once
	done  func()
	abort *abortWatch // nil unless the engine needs an abort
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.abort != nil {
		b.abort.observe(p[:n], err)
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.done()
		if b.abort != nil {
			b.abort.closed()
		}
	})
	return err
}

// trackedRWBody is a trackedBody for upgraded connections (WebSockets).
type trackedRWBody struct {
	*trackedBody
	w io.Writer
}

func (b *trackedRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// Interface guards
var (
	_ caddy.Provisioner         = (*Transport)(nil)
	_ http.RoundTripper         = (*Transport)(nil)
	_ reverseproxy.TLSTransport = (*Transport)(nil)
	_ caddy.CleanerUpper        = (*Transport)(nil)
)
