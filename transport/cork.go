package transport

import (
	"net"
	"sync"
	"time"
)

// corkConn lets a connection's writer gather a burst of frames into one
// write (one TLS record and one syscall where it fits) instead of one per
// frame. Outside a burst, writes pass straight through, so the HTTP
// handshake and control frames from other goroutines are not delayed.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// corkLimit flushes a burst early once this much is buffered.
const corkLimit = 256 << 10

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= corkLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if cap(c.buf) > 4*corkLimit {
		c.buf = nil
	}
	return err
}

// cork starts a burst.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork ends a burst and writes what it gathered.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

// Close writes what is buffered (briefly) before closing.
func (c *corkConn) Close() error {
	c.mu.Lock()
	if len(c.buf) > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.flushLocked()
	}
	c.corked = false
	c.mu.Unlock()
	return c.Conn.Close()
}

// corkListener wraps every accepted connection in a corkConn.
type corkListener struct{ net.Listener }

func (l corkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c}, nil
}
