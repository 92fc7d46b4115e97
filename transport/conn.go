package transport

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/queue"
)

// conn is one client connection: a reader goroutine (run) that decodes and
// handles requests, and a writer goroutine that renders and writes frames
// from a bounded queue. Pushes from the node never block: a connection that
// falls SendQueue frames or SendQueueBytes bytes behind is closed.
type conn struct {
	s     *Server
	ws    *websocket.Conn
	nonce string

	id     string // cluster connection id, set on auth
	agent  string
	authed atomic.Bool

	out        chan any // *frame or queue.Effect
	outBytes   atomic.Int64
	done       chan struct{}
	writerDone chan struct{}
	closeOnce  sync.Once

	mu      sync.Mutex
	pending map[uint64]json.RawMessage // request seq -> rid
	reqSeq  uint64
}

// frame is a rendered frame, or a close request when close is set.
type frame struct {
	data   []byte
	close  bool
	code   int
	reason string
}

func newConn(s *Server, ws *websocket.Conn) *conn {
	return &conn{
		s:          s,
		ws:         ws,
		nonce:      newNonce(),
		out:        make(chan any, s.opt.SendQueue),
		done:       make(chan struct{}),
		writerDone: make(chan struct{}),
		pending:    map[uint64]json.RawMessage{},
	}
}

// Push implements cluster.Sink.
func (c *conn) Push(e queue.Effect) { c.queueOut(e) }

func (c *conn) queueOut(v any) {
	select {
	case <-c.done:
		return
	default:
	}
	size := queuedSize(v)
	if c.outBytes.Add(size) > c.s.opt.SendQueueBytes {
		c.s.log.Warn("closing slow connection", "agent", c.agent, "conn", c.id, "queued_bytes", c.outBytes.Load())
		c.shutdown(CloseSlowConsumer, "slow consumer: too many bytes waiting")
		return
	}
	select {
	case c.out <- v:
	default:
		c.s.log.Warn("closing slow connection", "agent", c.agent, "conn", c.id)
		c.shutdown(CloseSlowConsumer, "slow consumer: too many frames waiting")
	}
}

// queuedSize estimates the bytes a queued item will write.
func queuedSize(v any) int64 {
	switch e := v.(type) {
	case *frame:
		return int64(len(e.data))
	case *queue.Delivery:
		return int64(len(e.Msg)) + 160
	case *queue.Event:
		return int64(len(e.Msg)) + 64
	}
	return 64
}

// shutdown closes the connection from any goroutine without blocking it
// (it is called from the node's apply path for slow consumers): the close
// frame and the socket close happen on a goroutine of their own, which
// ends the reader and the writer.
func (c *conn) shutdown(code int, reason string) {
	c.closeOnce.Do(func() {
		close(c.done)
		go func() {
			msg := websocket.FormatCloseMessage(code, reason)
			_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			c.ws.Close()
		}()
	})
}

// closeWith asks the writer to flush what is queued, then close with code.
func (c *conn) closeWith(code int, reason string) {
	select {
	case c.out <- &frame{close: true, code: code, reason: reason}:
	default:
		c.shutdown(code, reason)
	}
}

func (c *conn) run() {
	go c.writer()
	defer func() {
		c.shutdown(websocket.CloseNormalClosure, "")
		if c.authed.Load() {
			c.s.node.DropConn(c.id)
		}
	}()
	hello, _ := json.Marshal(map[string]any{
		"op": "hello", "v": 1, "node": c.s.node.ID(), "nonce": c.nonce, "max_frame": c.s.opt.MaxFrame,
	})
	c.send(hello)
	authTimer := time.AfterFunc(c.s.opt.AuthTimeout, func() {
		if !c.authed.Load() {
			c.closeWith(CloseAuthTimeout, "authentication timeout")
		}
	})
	defer authTimer.Stop()
	// Anything from the client counts as activity: frames, pongs, pings.
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(c.s.opt.IdleTimeout))
	})
	c.ws.SetPingHandler(func(data string) error {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.s.opt.IdleTimeout))
		err := c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
		}
		return nil
	})
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.s.opt.IdleTimeout))
		mt, r, err := c.ws.NextReader()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.shutdown(CloseIdle, "idle timeout")
			}
			return
		}
		// Each frame gets its own buffer: the request keeps slices of it
		// (the msg bytes) after this loop moves on.
		data, tooLarge, err := readLimited(r, make([]byte, 0, 4096), c.s.opt.MaxFrame)
		if err != nil {
			return
		}
		if tooLarge {
			// The error goes out before the close; the rest of the frame
			// is never read.
			c.sendErr(nil, "too_large", "frame exceeds max_frame", false)
			c.closeWith(websocket.CloseMessageTooBig, "frame exceeds max_frame")
			select {
			case <-c.writerDone:
			case <-time.After(5 * time.Second):
			}
			return
		}
		if mt != websocket.TextMessage {
			c.sendErr(nil, "bad_request", "binary frames are not accepted; send one JSON object per text frame", false)
			continue
		}
		c.handle(data)
	}
}

// readLimited reads a frame of at most max bytes into buf.
func readLimited(r io.Reader, buf []byte, max int) ([]byte, bool, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > max {
			return nil, true, nil
		}
		if err == io.EOF {
			return buf, false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
}

func (c *conn) writer() {
	defer close(c.writerDone)
	cork, _ := c.ws.UnderlyingConn().(*corkConn)
	ping := time.NewTicker(c.s.opt.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second)); err != nil {
				c.shutdown(websocket.CloseGoingAway, "")
				return
			}
		case v := <-c.out:
			// Write this item and whatever else is already waiting as one
			// burst, then flush it.
			if cork != nil {
				cork.cork()
			}
			ok := c.write(v)
			for more := 0; ok && more < 256; more++ {
				select {
				case v = <-c.out:
					ok = c.write(v)
					continue
				default:
				}
				break
			}
			if cork != nil && ok {
				if err := cork.uncork(); err != nil {
					c.shutdown(websocket.CloseGoingAway, "")
					ok = false
				}
			}
			if !ok {
				return
			}
		}
	}
}

// write renders and writes one queued item; false when the connection
// is done.
func (c *conn) write(v any) bool {
	if f, ok := v.(*frame); ok && f.close {
		c.flushCork()
		c.shutdown(f.code, f.reason)
		return false
	}
	if _, ok := v.(*queue.Kick); ok {
		c.flushCork()
		c.shutdown(CloseNodeDown, "this node lost contact with the cluster; reconnect")
		return false
	}
	c.outBytes.Add(-queuedSize(v))
	data := c.render(v)
	if data == nil {
		return true
	}
	_ = c.ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.shutdown(websocket.CloseGoingAway, "")
		return false
	}
	return true
}

// flushCork writes a burst gathered so far (before a close frame).
func (c *conn) flushCork() {
	if cork, ok := c.ws.UnderlyingConn().(*corkConn); ok {
		_ = cork.uncork()
	}
}

// send queues a rendered frame.
func (c *conn) send(data []byte) { c.queueOut(&frame{data: data}) }

// addPending remembers a request's rid until its reply is sent.
func (c *conn) addPending(rid json.RawMessage) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqSeq++
	c.pending[c.reqSeq] = rid
	return c.reqSeq
}

// takePending returns and forgets a request's rid; false when its reply
// was already sent.
func (c *conn) takePending(req uint64) (json.RawMessage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rid, ok := c.pending[req]
	delete(c.pending, req)
	return rid, ok
}
