package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft port carries five protocols; the first byte a dialer writes
// says which one the connection speaks: these two, protoClock (clock.go),
// protoMember (rejoin.go) and protoRestore (restore.go).
const (
	protoRaft    byte = 'R'
	protoForward byte = 'F'
)

// handshakeTimeout bounds the TLS handshake and the protocol byte of an
// accepted connection.
const handshakeTimeout = 10 * time.Second

// mux accepts connections on the Raft port and routes each by its first
// byte: Raft RPCs to the stream layer, forwarded commands to the forward
// server, clock probes, membership requests and restores to theirs. With
// auth set (peertls.go), every connection in either direction is mutual
// TLS.
type mux struct {
	ln      net.Listener
	advert  net.Addr
	log     *slog.Logger
	raftCh  chan net.Conn
	forward func(net.Conn)
	clock   func(net.Conn) // clock probes (clock.go)
	member  func(net.Conn) // membership requests (rejoin.go)
	restore func(net.Conn) // snapshot restores sent to the leader (restore.go)
	// raftClosed turns raft connections away, while a node that lost its
	// raft data waits to be demoted (rejoin.go).
	raftClosed atomic.Bool

	auth             *peerAuth // nil: plaintext
	handshakeTimeout time.Duration
	refusals         refusals

	closeOnce sync.Once
	closed    chan struct{}
	// stop ends the handshakes under way when the mux closes.
	stop       context.Context
	cancelStop context.CancelFunc
}

func newMux(ln net.Listener, advert net.Addr, log *slog.Logger) *mux {
	stop, cancel := context.WithCancel(context.Background())
	return &mux{
		ln: ln, advert: advert, log: log,
		raftCh:           make(chan net.Conn, 16),
		closed:           make(chan struct{}),
		stop:             stop,
		cancelStop:       cancel,
		handshakeTimeout: handshakeTimeout,
		refusals:         refusals{every: refusalLogEvery},
	}
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

// route runs in a goroutine of its own per connection, so that a dialer
// that stays silent or sends garbage holds nothing but that goroutine, and
// only until the deadline.
func (m *mux) route(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(m.handshakeTimeout))
	if m.auth != nil {
		tc := tls.Server(c, m.auth.server)
		if err := tc.HandshakeContext(m.stop); err != nil {
			c.Close()
			if m.stop.Err() == nil {
				m.refused(c.RemoteAddr(), err)
			}
			return
		}
		c = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	var serve func(net.Conn)
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
		return
	case protoClock:
		serve = m.clock
	case protoForward:
		serve = m.forward
	case protoMember:
		serve = m.member
	case protoRestore:
		serve = m.restore
	default:
		m.log.Warn("unknown protocol on raft port", "remote", c.RemoteAddr(), "byte", b[0])
	}
	if serve == nil {
		c.Close()
		return
	}
	serve(c)
}

func (m *mux) close() {
	m.closeOnce.Do(func() {
		m.cancelStop()
		close(m.closed)
		m.ln.Close()
	})
}

// refused logs a refused handshake on the Raft port, at most once per
// remote host per interval. A dialer that closed without sending anything
// is not worth a line.
func (m *mux) refused(remote net.Addr, err error) {
	if errors.Is(err, io.EOF) {
		return
	}
	host := remote.String()
	if h, _, e := net.SplitHostPort(host); e == nil {
		host = h
	}
	if ok, skipped := m.refusals.note("from "+host, time.Now()); ok {
		m.log.Warn("raft port: refused a connection without a valid peer certificate",
			"remote", remote.String(), "reason", err.Error(), "refused_unlogged", skipped)
	}
}

// dial opens a connection to a peer's Raft port speaking proto: the TCP
// connection, the TLS handshake (when the mux has auth) and the protocol
// byte, all within timeout.
func (m *mux) dial(addr string, proto byte, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(deadline)
	if m.auth != nil {
		cfg, err := m.auth.clientFor(addr)
		if err != nil {
			c.Close()
			return nil, err
		}
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			c.Close()
			if ok, skipped := m.refusals.note("to "+addr, time.Now()); ok {
				m.log.Warn("raft port: TLS handshake with a peer failed", "peer", addr, "reason", err.Error(), "failed_unlogged", skipped)
			}
			return nil, fmt.Errorf("TLS handshake with peer %s: %w", addr, err)
		}
		c = tc
	}
	if _, err := c.Write([]byte{proto}); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
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
	return s.m.dial(string(addr), protoRaft, timeout)
}
