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
	"github.com/mcpd/mcpd/task"
)

// conn is one client connection: a reader goroutine (run) that decodes and
// handles requests, and a writer goroutine that renders and writes frames
// from a bounded queue. Pushes from the node never block: a connection that
// falls SendQueue frames or SendQueueBytes bytes behind is closed (4008).
type conn struct {
	s     *Server
	ws    *websocket.Conn
	nonce string

	id    string // cluster connection id, set on auth
	agent string
	ident *identity // set on auth, read by the reader goroutine only
	// authFails counts refused auth attempts (reader goroutine only).
	authFails int
	authed    atomic.Bool

	// The send queue. Everything not yet written counts against the
	// limits: the items waiting here and the burst in the writer's hands.
	qmu    sync.Mutex
	queue  []any // *frame or queue.Effect
	held   int   // items queued or being written
	heldB  int64 // their estimated bytes
	wake   chan struct{}
	closeQ *frame // a close requested by closeWith, after the queue
	peak   int    // the most items and bytes ever held
	peakB  int64

	done          chan struct{} // closed when the connection starts closing
	writerStarted atomic.Bool
	writerDone    chan struct{}
	closed        chan struct{} // closed once the socket is closed
	closeOnce     sync.Once
	rdMu          sync.Mutex // orders read deadline changes against shutdown

	mu      sync.Mutex
	pending map[uint64]json.RawMessage // request seq -> rid
	reqSeq  uint64

	watchMu  sync.Mutex
	watching map[uint64]string // task.watch id -> the task or graph watched
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
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
		writerDone: make(chan struct{}),
		closed:     make(chan struct{}),
		pending:    map[uint64]json.RawMessage{},
	}
}

// Push implements cluster.Sink.
func (c *conn) Push(e queue.Effect) {
	if d, ok := e.(*queue.Delivery); ok {
		countDelivery(c.s.node, d)
	}
	c.queueOut(e)
}

func (c *conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// queueOut adds an item to the send queue, or closes the connection with
// CloseSlowConsumer when that would pass the queue's limits. It never
// blocks: it runs on the node's apply path.
func (c *conn) queueOut(v any) {
	if c.isDone() {
		return
	}
	size := queuedSize(v)
	c.qmu.Lock()
	if c.held >= c.s.opt.SendQueue || (c.held > 0 && c.heldB+size > c.s.opt.SendQueueBytes) {
		held, heldB := c.held, c.heldB
		c.qmu.Unlock()
		c.s.slowClosed.Add(1)
		c.s.log.Warn("closing slow connection", "agent", c.agent, "conn", c.id, "queued_frames", held, "queued_bytes", heldB)
		reason := "slow consumer: too many bytes waiting"
		if held >= c.s.opt.SendQueue {
			reason = "slow consumer: too many frames waiting"
		}
		c.shutdown(CloseSlowConsumer, reason)
		return
	}
	c.queue = append(c.queue, v)
	c.held++
	c.heldB += size
	c.peak = max(c.peak, c.held)
	c.peakB = max(c.peakB, c.heldB)
	c.qmu.Unlock()
	c.wakeWriter()
}

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
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
	case *task.Push:
		return int64(len(e.Task.Input)) + 512
	}
	return 64
}

// shutdown closes the connection from any goroutine without blocking it
// (it is called from the node's apply path for slow consumers). Nothing
// more is read or written after it, except the close frame: closeSocket
// does that on a goroutine of its own.
func (c *conn) shutdown(code int, reason string) {
	c.closeOnce.Do(func() {
		close(c.done)
		go c.closeSocket(code, reason)
	})
}

// closeSocket ends the reader at once (so the node releases the
// connection's consumers and leases without waiting for the client), lets
// the writer finish the write it is in, sends the close frame and closes
// the socket. A client that reads nothing for CloseGrace loses the close
// frame: the socket is closed without it.
func (c *conn) closeSocket(code int, reason string) {
	defer close(c.closed)
	nc := c.ws.UnderlyingConn()
	c.rdMu.Lock()
	_ = nc.SetReadDeadline(time.Now())
	c.rdMu.Unlock()
	deadline := time.Now().Add(c.s.opt.CloseGrace)
	_ = nc.SetWriteDeadline(deadline)
	if c.writerStarted.Load() {
		t := time.NewTimer(c.s.opt.CloseGrace)
		select {
		case <-c.writerDone:
		case <-t.C:
			// The writer may have set a later deadline of its own.
			_ = nc.SetWriteDeadline(time.Now())
			<-c.writerDone
		}
		t.Stop()
	}
	msg := websocket.FormatCloseMessage(code, reason)
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, deadline)
	c.ws.Close()
	peak, peakB := c.queuePeak()
	c.s.notePeak(peak, peakB)
}

// queuePeak reports the most frames and bytes the queue ever held.
func (c *conn) queuePeak() (int, int64) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.peak, c.peakB
}

// closeWith asks the writer to write what is queued, then close with code.
func (c *conn) closeWith(code int, reason string) {
	c.qmu.Lock()
	if c.closeQ == nil {
		c.closeQ = &frame{close: true, code: code, reason: reason}
	}
	c.qmu.Unlock()
	c.wakeWriter()
}

// extendRead moves the read deadline IdleTimeout ahead, unless the
// connection is closing (closeSocket has expired it).
func (c *conn) extendRead() error {
	c.rdMu.Lock()
	defer c.rdMu.Unlock()
	if c.isDone() {
		return nil
	}
	return c.ws.SetReadDeadline(time.Now().Add(c.s.opt.IdleTimeout))
}

func (c *conn) run() {
	c.writerStarted.Store(true)
	go c.writer()
	defer func() {
		c.shutdown(websocket.CloseNormalClosure, "")
		if c.authed.Load() {
			c.s.untrack(c)
			c.dropWatches()
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
	c.ws.SetPongHandler(func(string) error { return c.extendRead() })
	c.ws.SetPingHandler(func(data string) error {
		_ = c.extendRead()
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
		_ = c.extendRead()
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
	var batch []any
	for {
		select {
		case <-c.done:
			return
		case <-ping.C:
			if c.isDone() {
				return
			}
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second)); err != nil {
				c.shutdown(websocket.CloseGoingAway, "")
				return
			}
			continue
		case <-c.wake:
		}
		// Take everything waiting and write it as one burst (one TLS
		// write where it fits), then flush it.
		c.qmu.Lock()
		batch, c.queue = c.queue, batch[:0]
		closeQ := c.closeQ
		c.qmu.Unlock()
		if cork != nil {
			cork.cork()
		}
		ok := true
		var bytes int64
		for i, v := range batch {
			bytes += queuedSize(v)
			if ok {
				ok = c.write(v)
			}
			batch[i] = nil
		}
		if ok && closeQ != nil {
			c.flushCork()
			c.shutdown(closeQ.code, closeQ.reason)
			ok = false
		}
		if cork != nil {
			// Also when closing: the burst holds whole frames only, and
			// the close frame follows them.
			if err := cork.uncork(); err != nil && ok {
				c.shutdown(websocket.CloseGoingAway, "")
				ok = false
			}
		}
		c.qmu.Lock()
		c.held -= len(batch)
		c.heldB -= bytes
		c.qmu.Unlock()
		if !ok {
			return
		}
		if cap(batch) > 1024 {
			batch = nil // an idle connection keeps no large buffer
		}
	}
}

// write renders and writes one queued item; false when the connection
// is done.
func (c *conn) write(v any) bool {
	if c.isDone() {
		return false
	}
	if _, ok := v.(*queue.Kick); ok {
		c.flushCork()
		c.shutdown(CloseNodeDown, "this node lost contact with the cluster; reconnect")
		return false
	}
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
