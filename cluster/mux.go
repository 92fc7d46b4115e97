package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft port carries two protocols; the first byte a dialer writes says
// which one the connection speaks.
const (
	protoRaft    byte = 'R'
	protoForward byte = 'F'
)

// mux accepts connections on the Raft port and routes each by its first
// byte: Raft RPCs to the stream layer, forwarded commands to the forward
// server.
type mux struct {
	ln      net.Listener
	advert  net.Addr
	log     *slog.Logger
	raftCh  chan net.Conn
	forward func(net.Conn)
	clock   func(net.Conn) // clock probes (clock.go)
	member  func(net.Conn) // membership requests (rejoin.go)
	// raftClosed turns raft connections away, while a node that lost its
	// raft data waits to be demoted (rejoin.go).
	raftClosed atomic.Bool

	closeOnce sync.Once
	closed    chan struct{}
}

func newMux(ln net.Listener, advert net.Addr, log *slog.Logger) *mux {
	return &mux{ln: ln, advert: advert, log: log, raftCh: make(chan net.Conn, 16), closed: make(chan struct{})}
}

func (m *mux) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			// Transient failures (a timeout, too many open files) must not
			// cut the node off for good: back off and accept again.
			m.log.Warn("raft port accept failed; retrying", "err", err)
			select {
			case <-m.closed:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		go m.route(c)
	}
}

func (m *mux) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch b[0] {
	case protoRaft:
		if m.raftClosed.Load() {
			c.Close()
			return
		}
		select {
		case m.raftCh <- c:
		case <-m.closed:
			c.Close()
		}
	case protoClock:
		if m.clock != nil {
			m.clock(c)
			return
		}
		c.Close()
	case protoForward:
		if m.forward != nil {
			m.forward(c)
			return
		}
		c.Close()
	case protoMember:
		if m.member != nil {
			m.member(c)
			return
		}
		c.Close()
	default:
		m.log.Warn("unknown protocol on raft port", "remote", c.RemoteAddr(), "byte", b[0])
		c.Close()
	}
}

func (m *mux) close() {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.ln.Close()
	})
}

// dial opens a connection to a peer's Raft port speaking proto.
func dial(addr string, proto byte, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{proto}); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// streamLayer is the raft.StreamLayer view of the mux.
type streamLayer struct{ m *mux }

var _ raft.StreamLayer = streamLayer{}

func (s streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.m.raftCh:
		return c, nil
	case <-s.m.closed:
		return nil, errors.New("raft listener closed")
	}
}

func (s streamLayer) Close() error { s.m.close(); return nil }

func (s streamLayer) Addr() net.Addr { return s.m.advert }

func (s streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dial(string(addr), protoRaft, timeout)
}
