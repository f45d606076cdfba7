// Package tcpproxy is a loopback TCP proxy for fault tests: it passes bytes
// between clients and one backend, and on command stalls them (held, then
// delivered when passing resumes: a slow or paused store whose commands
// still run later) or black-holes them (read and dropped, nothing ever
// answers: a partitioned store). Connections stay open in every mode, as
// they do across a network fault, until Close or CloseConns.
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Mode is what the proxy does with bytes.
type Mode int

const (
	// Pass forwards bytes both ways.
	Pass Mode = iota
	// Stall holds bytes (both ways) until the mode is Pass again; new
	// connections are accepted and held too.
	Stall
	// BlackHole reads and drops bytes both ways; nothing is ever delivered.
	BlackHole
)

// Proxy is one listening proxy.
type Proxy struct {
	lis     net.Listener
	backend string

	mu    sync.Mutex
	cond  *sync.Cond
	mode  Mode
	conns map[net.Conn]bool
	done  bool
}

// Start listens on a free loopback port and forwards to backend; Close is
// registered with t.Cleanup.
func Start(t testing.TB, backend string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{lis: lis, backend: backend, conns: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Set changes the mode; held bytes flow again when it becomes Pass.
func (p *Proxy) Set(m Mode) {
	p.mu.Lock()
	p.mode = m
	p.mu.Unlock()
	p.cond.Broadcast()
}

// CloseConns cuts every open connection (clients see a reset), as a store
// restart does; the proxy keeps listening.
func (p *Proxy) CloseConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Close stops listening and cuts every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
	p.cond.Broadcast()
	p.lis.Close()
	p.CloseConns()
}

func (p *Proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		go p.serve(c)
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	// A stalled or black-holed backend cannot even be dialled.
	if p.wait() == BlackHole {
		_, _ = io.Copy(io.Discard, client)
		client.Close()
		return
	}
	backend, err := net.Dial("tcp", p.backend)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(backend) {
		client.Close()
		return
	}
	go p.pipe(backend, client)
	p.pipe(client, backend)
}

// wait blocks while the proxy stalls and returns the mode it may act in.
func (p *Proxy) wait() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.mode == Stall && !p.done {
		p.cond.Wait()
	}
	return p.mode
}

// pipe copies src to dst chunk by chunk, consulting the mode before each
// write: a chunk read while stalled is held until Pass, one read while
// black-holed is dropped.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.wait() != BlackHole {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}
