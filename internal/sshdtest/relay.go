package sshdtest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Forwarder is a TCP relay standing between a client and sshd, so tests
// can take a path down, bring it up, point it at another server, cut its
// connections or freeze them, and count connections.
type Forwarder struct {
	// Addr is the loopback "host:port" clients dial.
	Addr string
	// Accepted counts the connections accepted.
	Accepted atomic.Int64
	// Active counts the relayed connections still open.
	Active atomic.Int64

	ln     net.Listener
	mu     sync.Mutex
	target string // "" refuses: accept and close at once
	conns  map[*relay]struct{}
	wg     sync.WaitGroup
}

type relay struct {
	a, b   net.Conn
	frozen atomic.Bool
	once   sync.Once
}

func (r *relay) close() {
	r.once.Do(func() {
		r.a.Close()
		r.b.Close()
	})
}

// NewForwarder relays to target ("" refuses) until the test ends.
func NewForwarder(t testing.TB, target string) *Forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Forwarder{ln: ln, Addr: ln.Addr().String(), target: target, conns: make(map[*relay]struct{})}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.Accepted.Add(1)
		f.mu.Lock()
		target := f.target
		f.mu.Unlock()
		if target == "" {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		r := &relay{a: c, b: up}
		f.mu.Lock()
		f.conns[r] = struct{}{}
		f.mu.Unlock()
		f.Active.Add(1)
		f.wg.Add(1)
		go f.pipePair(r)
	}
}

// pipePair copies both ways until either side ends, then forgets r.
func (f *Forwarder) pipePair(r *relay) {
	defer f.wg.Done()
	var pipes sync.WaitGroup
	pipes.Add(2)
	pipe := func(dst, src net.Conn) {
		defer pipes.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !r.frozen.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		r.close()
	}
	go pipe(r.b, r.a)
	go pipe(r.a, r.b)
	pipes.Wait()
	f.mu.Lock()
	delete(f.conns, r)
	f.mu.Unlock()
	f.Active.Add(-1)
}

// SetTarget changes where new connections go; "" refuses them.
func (f *Forwarder) SetTarget(target string) {
	f.mu.Lock()
	f.target = target
	f.mu.Unlock()
}

// Cut closes every relayed connection, like a network reset.
func (f *Forwarder) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r := range f.conns {
		r.close()
	}
}

// Freeze makes the open connections silently drop all traffic, like a
// network path that died without a reset.
func (f *Forwarder) Freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r := range f.conns {
		r.frozen.Store(true)
	}
}

func (f *Forwarder) close() {
	f.ln.Close()
	f.Cut()
	f.wg.Wait()
}

// BlackHole accepts TCP connections and never says anything.
type BlackHole struct {
	// Addr is the loopback "host:port" clients dial.
	Addr string
	// Accepted counts the connections accepted; Open those still open.
	Accepted, Open atomic.Int64
}

// NewBlackHole listens until the test ends.
func NewBlackHole(t testing.TB) *BlackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &BlackHole{Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.Accepted.Add(1)
			b.Open.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c) // until the client gives up
				c.Close()
				b.Open.Add(-1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return b
}
