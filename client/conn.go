package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Subprotocol is the WebSocket subprotocol of MCP version 1.
const Subprotocol = "mcp.v1"

const defaultMaxFrame = 1 << 20

// conn is one authenticated WebSocket connection with its reader and writer
// goroutines. It never reconnects: when it dies, the Client replaces it.
type conn struct {
	cl       *Client
	ws       *websocket.Conn
	url      string
	node     string
	maxFrame int
	log      *slog.Logger

	out  chan []byte   // frames for the writer
	done chan struct{} // closed once the connection is dead
	wg   sync.WaitGroup

	mu      sync.Mutex
	dead    bool
	err     error
	pending map[int64]*call
	routes  map[routeKey]*stream // server consumer/sub id -> stream
}

type routeKey struct {
	kind streamKind
	id   string
}

// call is one request waiting for its reply. Exactly one reply is sent on
// ch unless the caller abandoned it.
type call struct {
	ch        chan reply
	onOK      func(*inFrame) // run by the reader before ch receives the reply
	onAbandon func(*inFrame) // run by the reader for an ok nobody waits for
	abandoned bool
}

type reply struct {
	f   *inFrame
	err error
}

type hello struct {
	Op       string `json:"op"`
	V        int    `json:"v"`
	Node     string `json:"node"`
	Nonce    string `json:"nonce"`
	MaxFrame int    `json:"max_frame"`
}

// dialConn connects to url, reads hello and authenticates.
func (c *Client) dialConn(ctx context.Context, url string) (*conn, error) {
	o := &c.opts
	d := websocket.Dialer{
		TLSClientConfig:  c.tls,
		Subprotocols:     []string{Subprotocol},
		HandshakeTimeout: o.HandshakeTimeout,
		Proxy:            http.ProxyFromEnvironment,
	}
	hctx, cancel := context.WithTimeout(ctx, o.HandshakeTimeout)
	defer cancel()
	ws, resp, err := d.DialContext(hctx, url, nil)
	if err != nil {
		if e := refusal(resp); e != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %s)", url, e, resp.Status)
		}
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %s)", url, err, resp.Status)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	cn, err := c.handshake(hctx, ws, url)
	if err != nil {
		ws.Close()
		return nil, err
	}
	return cn, nil
}

// refusal reads the err frame a server sends as the body of a refused
// handshake (HTTP 503 at its connection limit); nil if there is none.
func refusal(resp *http.Response) *Error {
	if resp == nil || resp.Body == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return nil
	}
	var f struct{ Op, Code, Msg string }
	if json.Unmarshal(b, &f) != nil || f.Op != "err" || f.Code == "" {
		return nil
	}
	return &Error{Code: f.Code, Msg: f.Msg}
}

func (c *Client) handshake(ctx context.Context, ws *websocket.Conn, url string) (*conn, error) {
	deadline, _ := ctx.Deadline()
	ws.SetReadDeadline(deadline)
	ws.SetWriteDeadline(deadline)
	_, b, err := ws.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("%s: reading hello: %w", url, err)
	}
	var h hello
	if err := json.Unmarshal(b, &h); err != nil || h.Op != "hello" {
		return nil, fmt.Errorf("%s: expected hello, got %.200q", url, b)
	}
	if h.MaxFrame <= 0 {
		h.MaxFrame = defaultMaxFrame
	}
	f := newFrame("auth").str("agent", c.opts.Agent).str("alg", c.signer.Alg())
	if c.signer.Alg() != "none" {
		sig, err := c.signer.SignChallenge(authChallenge(h.Nonce, c.opts.Agent))
		if err != nil {
			return nil, fmt.Errorf("signing auth challenge: %w", err)
		}
		f.str("sig", sig)
	}
	rid := c.rid.Add(1)
	req, err := f.finish(rid)
	if err != nil {
		return nil, err
	}
	if err := ws.WriteMessage(websocket.TextMessage, req); err != nil {
		return nil, fmt.Errorf("%s: sending auth: %w", url, err)
	}
	_, b, err = ws.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("%s: reading auth reply: %w", url, err)
	}
	r, err := decodeFrame(b)
	if err != nil {
		return nil, fmt.Errorf("%s: bad auth reply: %w", url, err)
	}
	if r.Op == "err" {
		return nil, fmt.Errorf("%s: auth as %q: %w", url, c.opts.Agent, r.asError())
	}
	if r.Op != "ok" {
		return nil, fmt.Errorf("%s: unexpected %q before auth reply", url, r.Op)
	}
	cn := &conn{
		cl:       c,
		ws:       ws,
		url:      url,
		node:     h.Node,
		maxFrame: h.MaxFrame,
		log:      c.log.With("node", h.Node, "url", url),
		out:      make(chan []byte, 256),
		done:     make(chan struct{}),
		pending:  make(map[int64]*call),
		routes:   make(map[routeKey]*stream),
	}
	// Pushes may exceed max_frame by their metadata only.
	ws.SetReadLimit(int64(2*h.MaxFrame + 64<<10))
	ws.SetWriteDeadline(time.Time{})
	ws.SetReadDeadline(time.Now().Add(c.opts.IdleTimeout))
	ws.SetPongHandler(func(string) error {
		return ws.SetReadDeadline(time.Now().Add(c.opts.IdleTimeout))
	})
	ws.SetPingHandler(func(data string) error {
		ws.SetReadDeadline(time.Now().Add(c.opts.IdleTimeout))
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(c.opts.WriteTimeout))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			return err
		}
		return nil
	})
	cn.wg.Add(2)
	go cn.readLoop()
	go cn.writeLoop()
	return cn, nil
}

func (cn *conn) isDead() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.dead
}

// fail marks the connection dead, closes the socket and answers every
// pending call with ErrDisconnected.
func (cn *conn) fail(cause error) {
	cn.mu.Lock()
	if cn.dead {
		cn.mu.Unlock()
		return
	}
	cn.dead = true
	cn.err = cause
	pend := cn.pending
	cn.pending = nil
	cn.mu.Unlock()
	close(cn.done)
	cn.ws.Close()
	for _, cl := range pend {
		if !cl.abandoned {
			cl.ch <- reply{err: fmt.Errorf("%w: %v", ErrDisconnected, cause)}
		}
	}
}

// close ends the connection politely and waits for its goroutines.
func (cn *conn) close() {
	cn.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
		time.Now().Add(time.Second))
	cn.fail(ErrClosed)
	cn.wg.Wait()
}

func (cn *conn) writeLoop() {
	defer cn.wg.Done()
	tick := time.NewTicker(cn.cl.opts.PingInterval)
	defer tick.Stop()
	for {
		select {
		case b := <-cn.out:
			cn.ws.SetWriteDeadline(time.Now().Add(cn.cl.opts.WriteTimeout))
			if err := cn.ws.WriteMessage(websocket.TextMessage, b); err != nil {
				cn.fail(fmt.Errorf("write: %w", err))
				return
			}
		case <-tick.C:
			err := cn.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(cn.cl.opts.WriteTimeout))
			if err != nil {
				cn.fail(fmt.Errorf("ping: %w", err))
				return
			}
		case <-cn.done:
			return
		}
	}
}

func (cn *conn) readLoop() {
	defer cn.wg.Done()
	for {
		typ, b, err := cn.ws.ReadMessage()
		if err != nil {
			cn.fail(fmt.Errorf("read: %w", err))
			return
		}
		cn.ws.SetReadDeadline(time.Now().Add(cn.cl.opts.IdleTimeout))
		if typ != websocket.TextMessage {
			cn.log.Warn("ignoring non-text frame from server", "type", typ)
			continue
		}
		f, err := decodeFrame(b)
		if err != nil {
			cn.log.Warn("ignoring malformed frame from server", "err", err)
			continue
		}
		cn.dispatch(f)
	}
}

func (cn *conn) dispatch(f *inFrame) {
	switch f.Op {
	case "ok", "err":
		rid, ok := f.rid()
		if !ok {
			cn.log.Warn("server error without rid", "code", f.Code, "msg", string(f.Msg))
			return
		}
		cn.mu.Lock()
		cl := cn.pending[rid]
		delete(cn.pending, rid)
		cn.mu.Unlock()
		if cl == nil {
			if f.Op == "err" {
				cn.log.Debug("error reply for a request nobody waits for", "rid", rid, "err", f.asError())
			}
			return
		}
		if cl.abandoned {
			if f.Op == "ok" && cl.onAbandon != nil {
				cl.onAbandon(f)
			}
			return
		}
		if f.Op == "err" {
			cl.ch <- reply{err: f.asError()}
			return
		}
		if cl.onOK != nil {
			cl.onOK(f)
		}
		cl.ch <- reply{f: f}
	case "deliver":
		if st := cn.route(kindConsumer, f.Consumer); st != nil {
			st.push(cn, f)
			return
		}
		// A consumer we no longer know (cancelled, or its consume call was
		// abandoned): hand the message back at once.
		cn.log.Debug("delivery for unknown consumer; nacking", "consumer", f.Consumer, "queue", f.Queue, "seq", f.Seq)
		cn.post(newFrame("nack").str("queue", f.Queue).uint("seq", f.Seq).int("attempt", int64(f.Attempt)).int("delay_ms", 0))
	case "event":
		if st := cn.route(kindSub, f.Sub); st != nil {
			st.push(cn, f)
		}
	case "task.update":
		if st := cn.route(kindWatch, f.Watch); st != nil {
			st.push(cn, f)
		}
		cn.onPush(f)
	case "task", "task.revoked":
		cn.cl.taskPush(cn, f)
		cn.onPush(f)
	default:
		cn.onPush(f)
	}
}

// onPush hands a push to Options.OnPush.
func (cn *conn) onPush(f *inFrame) {
	if h := cn.cl.opts.OnPush; h != nil {
		h(f.Op, json.RawMessage(f.raw))
	}
}

func (cn *conn) route(kind streamKind, id string) *stream {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.routes[routeKey{kind, id}]
}

func (cn *conn) setRoute(kind streamKind, id string, st *stream) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if st == nil {
		delete(cn.routes, routeKey{kind, id})
	} else if !cn.dead {
		cn.routes[routeKey{kind, id}] = st
	}
}

// post sends a request whose reply nobody waits for, without blocking.
func (cn *conn) post(f *frame) {
	b, err := f.finish(cn.cl.rid.Add(1))
	if err != nil {
		return
	}
	select {
	case cn.out <- b:
	case <-cn.done:
	default:
		cn.log.Debug("send queue full; dropping fire-and-forget request")
	}
}

// do sends the frame on this connection and waits for its reply. The
// returned error is *Error for an err reply, ErrDisconnected (wrapped) when
// the connection died first, or ctx's error.
func (cn *conn) do(ctx context.Context, f *frame, onOK, onAbandon func(*inFrame)) (*inFrame, error) {
	rid := cn.cl.rid.Add(1)
	b, err := f.finish(rid)
	if err != nil {
		return nil, err
	}
	if len(b) > cn.maxFrame {
		return nil, &Error{Code: "too_large", Msg: fmt.Sprintf("request of %d bytes exceeds the server's max_frame of %d", len(b), cn.maxFrame)}
	}
	cl := &call{ch: make(chan reply, 1), onOK: onOK, onAbandon: onAbandon}
	cn.mu.Lock()
	if cn.dead {
		err := cn.err
		cn.mu.Unlock()
		return nil, fmt.Errorf("%w: %v", ErrDisconnected, err)
	}
	cn.pending[rid] = cl
	cn.mu.Unlock()

	select {
	case cn.out <- b:
	case <-cn.done:
		r := <-cl.ch
		return r.f, r.err
	case <-ctx.Done():
		if cn.abandon(rid, cl) {
			return nil, ctx.Err()
		}
		r := <-cl.ch
		return r.f, r.err
	}
	select {
	case r := <-cl.ch:
		return r.f, r.err
	case <-ctx.Done():
		if cn.abandon(rid, cl) {
			return nil, ctx.Err()
		}
		r := <-cl.ch
		return r.f, r.err
	}
}

// abandon marks a pending call as no longer awaited. It returns false when
// the reply is already being dispatched, in which case it will arrive on
// the call's channel.
func (cn *conn) abandon(rid int64, cl *call) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.pending[rid] != cl {
		return false
	}
	cl.abandoned = true
	return true
}
