package transport

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
	"github.com/tidwall/redcon"
	bolt "go.etcd.io/bbolt"
)

// RESPOptions configure the Redis-protocol server.
type RESPOptions struct {
	// Dev serves clients without AUTH.
	Dev bool
	// Audit records authentication decisions (the WebSocket server's
	// RecordAuthEvent); nil records none.
	Audit func(fsm.AuthEventArgs)
	// MaxCommand bounds the bytes of one command as sent (default 1 MiB,
	// the WebSocket frame limit): a larger one is refused with a protocol
	// error and the connection is closed, before it is buffered whole.
	MaxCommand int
	Logger     *slog.Logger
}

// RESPServer serves the Redis protocol (RESP2 and RESP3) over the node's
// replicated keyspace (docs/redis.md). Writes go through the Raft log like
// every other command; reads run on this node's applied state after the
// connection's own earlier writes.
type RESPServer struct {
	node *cluster.Node
	opt  RESPOptions
	log  *slog.Logger

	pmu      sync.Mutex // guards chanSubs and patSubs
	chanSubs map[string]map[*respConn]struct{}
	patSubs  map[string]map[*respConn]struct{}

	wmu            sync.Mutex // guards waiters
	waiters        map[string]map[chan struct{}]struct{}
	blockedClients atomic.Int64

	mu      sync.Mutex
	lns     []net.Listener
	conns   map[*respConn]struct{}
	closed  bool
	closing chan struct{} // closed by Close
	nextID  atomic.Int64
	wg      sync.WaitGroup
}

// NewRESPServer returns a Redis-protocol server for node.
func NewRESPServer(node *cluster.Node, opt RESPOptions) *RESPServer {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.MaxCommand <= 0 {
		opt.MaxCommand = 1 << 20
	}
	s := &RESPServer{node: node, opt: opt, log: opt.Logger.With("component", "resp"), conns: map[*respConn]struct{}{}, closing: make(chan struct{}),
		chanSubs: map[string]map[*respConn]struct{}{}, patSubs: map[string]map[*respConn]struct{}{}}
	noteRESPServer(node, s)
	node.OnStall(s.closeStalled)
	return s
}

// closeStalled closes every connection of a node that stalled
// (cluster.Node.OnStall): its clients reconnect, to another node.
func (s *RESPServer) closeStalled(string) {
	s.mu.Lock()
	conns := make([]*respConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Outside the lock: closing a TLS connection may wait for its peer.
	for _, c := range conns {
		c.nc.Close()
	}
}

// Serve accepts connections on ln until Close.
func (s *RESPServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if why := s.node.Stalled(); why != "" {
			// The client reads this as the reply to its first command.
			go refuseRESP(nc, why)
			continue
		}
		c := s.newConn(nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		if why := s.node.Stalled(); why != "" {
			// Stalled while this one was accepted (see the check above).
			go s.closeStalled(why)
		}
		go c.run()
	}
}

// Close stops accepting and closes every connection.
func (s *RESPServer) Close() {
	s.mu.Lock()
	if !s.closed {
		close(s.closing)
	}
	s.closed = true
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// respConn is one client: a reader goroutine that parses and dispatches
// commands, and a writer goroutine that writes their replies in order.
type respConn struct {
	s      *RESPServer
	nc     net.Conn
	id     int64
	conn   string // the cluster connection id, for replies of writes
	proto  atomic.Int32
	name   atomic.Pointer[string] // CLIENT SETNAME; CLIENT LIST reads it from other connections
	authed bool
	agent  *auth.Agent // the identity AUTH proved; nil for a dev client
	// agentName mirrors agent.Name for Revoke, from another goroutine.
	agentName atomic.Pointer[string]

	out  chan *respFuture // replies in command order
	stop chan struct{}    // closed when the reader ends: blocked commands give up
	// blocked is a blocking command in progress; the connection's next
	// command waits for it (reader goroutine only).
	blocked *respFuture
	subs    respSubs
	// omu orders pushes from the apply path against the close of out.
	omu       sync.Mutex
	outClosed bool

	mu      sync.Mutex
	pending map[uint64]*respFuture // write commands awaiting their apply
	reqSeq  uint64
	last    *respFuture // the newest write, which reads wait for
	quit    bool

	// A transaction being queued (MULTI ... EXEC), reader goroutine only.
	multi *respMulti
	// The keys WATCH watches and their digests, reader goroutine only.
	watched []watchedKey
}

// respFuture is one command's reply, ready when done is closed.
type respFuture struct {
	done  chan struct{}
	value kv.Value
	close bool // close the connection after writing this reply
	push  bool // a pub/sub push: RESP3's '>' type
}

func (f *respFuture) resolve(v kv.Value) {
	f.value = v
	close(f.done)
}

func ready(v kv.Value) *respFuture {
	f := &respFuture{done: make(chan struct{}), value: v}
	close(f.done)
	return f
}

func (s *RESPServer) newConn(nc net.Conn) *respConn {
	c := &respConn{
		s: s, nc: nc, id: s.nextID.Add(1),
		out: make(chan *respFuture, 1024), stop: make(chan struct{}),
		pending: map[uint64]*respFuture{},
		authed:  s.opt.Dev,
		subs:    respSubs{channels: map[string]bool{}, patterns: map[string]bool{}},
	}
	c.proto.Store(2)
	return c
}

// Push implements cluster.Sink: the reply of a write this connection made.
func (c *respConn) Push(e queue.Effect) {
	r, ok := e.(*fsm.Reply)
	if !ok {
		return
	}
	c.mu.Lock()
	f := c.pending[r.Req]
	delete(c.pending, r.Req)
	c.mu.Unlock()
	if f == nil {
		return
	}
	switch {
	case r.Err != nil:
		f.resolve(kv.Err("ERR " + r.Err.Error()))
	default:
		if res, ok := r.Result.(*fsm.RedisResult); ok {
			f.resolve(res.Value)
		} else {
			f.resolve(kv.Err("ERR internal: no reply"))
		}
	}
}

func (c *respConn) run() {
	defer c.s.wg.Done()
	c.conn = c.s.node.NewConn(c)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writer()
	}()
	rd := newRESPReader(c.nc, c.s.opt.MaxCommand)
	for !c.quit {
		args, err := rd.next()
		if err != nil {
			// A malformed request gets Redis's protocol error, then the
			// connection closes, as Redis does.
			var pe *respProtoError
			if errors.As(err, &pe) {
				c.enqueue(ready(kv.Err("ERR " + pe.Error())))
			}
			break
		}
		c.dispatch(args)
	}
	close(c.stop)
	c.dropSubs()
	c.omu.Lock()
	c.outClosed = true
	close(c.out)
	c.omu.Unlock()
	<-writerDone
	c.nc.Close()
	c.s.node.DropConn(c.conn)
	c.mu.Lock()
	for _, f := range c.pending {
		f.resolve(kv.Err("ERR connection closed"))
	}
	c.pending = map[uint64]*respFuture{}
	c.mu.Unlock()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
}

func (c *respConn) enqueue(f *respFuture) { c.out <- f }

// writer writes replies in command order, one write per burst.
func (c *respConn) writer() {
	w := bufio.NewWriterSize(c.nc, 64<<10)
	broken := false
	var buf []byte
	for f := range c.out {
		<-f.done
		if broken {
			continue
		}
		buf = buf[:0]
		if f.push && c.proto.Load() == 3 && f.value.K == kv.Array {
			buf = append(buf, '>')
			buf = strconv.AppendInt(buf, int64(len(f.value.A)), 10)
			buf = append(buf, '\r', '\n')
			for _, e := range f.value.A {
				buf = appendValue(buf, e, 3)
			}
		} else {
			buf = appendValue(buf, f.value, int(c.proto.Load()))
		}
		if _, err := w.Write(buf); err != nil {
			broken = true
			continue
		}
		if len(c.out) == 0 || f.close {
			if err := w.Flush(); err != nil {
				broken = true
			}
		}
		if f.close {
			c.nc.Close()
			broken = true
		}
	}
	if !broken {
		_ = w.Flush()
	}
}

// dispatch runs one command: connection commands here, writes through
// the log, reads on the applied state after this connection's writes.
func (c *respConn) dispatch(args [][]byte) {
	name := strings.ToLower(string(args[0]))
	if c.blocked != nil {
		// Nothing runs while a blocking command of this connection waits.
		select {
		case <-c.blocked.done:
		case <-c.s.closing:
		}
		c.blocked = nil
	}
	if c.multi != nil && c.queueInMulti(name, args) {
		return
	}
	if c.subCount() > 0 && c.proto.Load() == 2 {
		// RESP2 subscribed mode: the connection only takes pub/sub
		// commands.
		switch name {
		case "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "quit", "reset":
		case "ping":
			c.enqueue(ready(kv.ArrayOf(kv.BulkStr("pong"), kv.BulkStr(""))))
			return
		default:
			c.enqueue(ready(kv.Err("ERR Can't execute '" + name + "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")))
			return
		}
	}
	if v, ok := c.connCommand(name, args); ok {
		c.enqueue(v)
		return
	}
	if !c.authed {
		c.enqueue(ready(kv.Err("NOAUTH Authentication required.")))
		return
	}
	switch name {
	case "watch":
		c.enqueue(ready(c.watch(args)))
		return
	case "unwatch":
		if len(args) != 1 {
			c.enqueue(ready(kv.ErrArity(name)))
			return
		}
		c.watched = nil
		c.enqueue(ready(kv.OK))
		return
	case "subscribe", "unsubscribe", "psubscribe", "punsubscribe":
		c.subscribe(name, args)
		return
	case "publish":
		c.enqueue(c.publish(args))
		return
	case "pubsub":
		c.enqueue(ready(c.pubsubCommand(args)))
		return
	}
	if isBlocking(name) {
		b, v, ok := parseBlocking(name, args)
		if ok {
			if v, ok = c.allowKeys(b.inner); ok {
				c.enqueue(c.block(b))
				return
			}
		}
		c.enqueue(ready(v))
		return
	}
	if v, ok := kv.Help(args); ok {
		c.enqueue(ready(v))
		return
	}
	known, write := kv.Lookup(name)
	if known {
		if v, ok := c.allowKeys(args); !ok {
			c.enqueue(ready(v))
			return
		}
	}
	inner, keys, ms, blocks := kv.ReadBlock(args)
	switch {
	case !known:
		c.enqueue(ready(kv.ErrUnknown(string(args[0]), args[1:])))
	case blocks && write:
		c.enqueue(c.blockRead(inner, keys, ms))
	case write && name == "xadd" && kv.NamesQueue(args):
		c.enqueue(c.enqueueXAdd(args))
	case write:
		c.enqueue(c.submitWrite(args))
	default:
		c.mu.Lock()
		last := c.last
		c.mu.Unlock()
		if last != nil {
			<-last.done
		}
		v := c.read(args)
		if blocks && kv.WantsBlock(v) {
			c.enqueue(c.blockRead(inner, keys, ms))
			return
		}
		c.enqueue(ready(v))
	}
}

// read runs a read command on this node's applied state; a node that
// cannot serve reads (it is rebuilding its data) answers TRYAGAIN.
func (c *respConn) read(args [][]byte) kv.Value {
	var v kv.Value
	if err := c.s.node.Read(func(tx *bolt.Tx) error {
		v = kv.ExecFace(tx, nil, c.s.node.Now(), args, false, nil)
		return nil
	}); err != nil {
		return kv.Err("TRYAGAIN " + err.Error())
	}
	return v
}

// enqueueXAdd proposes an XADD to a queue key with the envelope of the
// message it enqueues, made here as a PUBLISH's is: a fresh id, the
// agent as sender, this node's cluster time, and the fields as a JSON
// object for body.
func (c *respConn) enqueueXAdd(args [][]byte) *respFuture {
	fv, _, bad := kv.XAddQueue(args)
	if bad != nil {
		return ready(*bad)
	}
	body, _ := kv.QueueBody(fv)
	from := "redis"
	if c.agent != nil {
		from = c.agent.Name
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	env, _ := json.Marshal(map[string]any{"id": "redis-" + hex.EncodeToString(id), "from": from, "ts": c.s.node.Now(), "body": body})
	e, err := auth.ParseEnvelope(env)
	if err != nil {
		return ready(kv.Err("ERR " + err.Error()))
	}
	a := make([][]byte, len(args))
	for i, x := range args {
		a[i] = clone(x)
	}
	return c.submit(&fsm.RedisArgs{Args: a, Env: env, From: e.From, ID: e.ID, Hash: e.Hash})
}

// submitWrite proposes a write; its reply arrives when this node applies
// it (fsm.RepliedOnApply).
func (c *respConn) submitWrite(args [][]byte) *respFuture {
	return c.submit(&fsm.RedisArgs{Args: args})
}

func (c *respConn) submit(body *fsm.RedisArgs) *respFuture {
	f := &respFuture{done: make(chan struct{})}
	c.mu.Lock()
	c.reqSeq++
	req := c.reqSeq
	c.pending[req] = f
	c.last = f
	c.mu.Unlock()
	cmd, err := fsm.NewCommand(fsm.TypeRedis, c.conn, req, body)
	if err != nil {
		c.takePending(req)
		f.resolve(kv.Err("ERR " + err.Error()))
		return f
	}
	cmd.Actor = c.actor()
	start, op := time.Now(), redisOp(body.Args)
	c.s.node.SubmitAsync(cmd, func(err error) {
		observeSubmit(c.s.node, transportRedis, op, start, err)
		if err == nil {
			return
		}
		if f := c.takePending(req); f != nil {
			msg := "TRYAGAIN " + err.Error()
			if errors.Is(err, cluster.ErrUnknown) {
				msg = "TRYAGAIN the outcome is unknown (it may have been applied): " + err.Error()
			}
			f.resolve(kv.Err(msg))
		}
	})
	return f
}

func (c *respConn) takePending(req uint64) *respFuture {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.pending[req]
	delete(c.pending, req)
	return f
}

// actor names the client for the audit log: its agent, or the
// connection of a dev client.
func (c *respConn) actor() string {
	if c.agent != nil {
		return c.agent.Name
	}
	return "redis:" + strconv.FormatInt(c.id, 10)
}

// Revoke closes the connections of an agent an operator revoked.
func (s *RESPServer) Revoke(agent string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if a := c.agentName.Load(); a != nil && *a == agent {
			c.nc.Close()
		}
	}
}

// connCommand answers the commands about the connection itself.
func (c *respConn) connCommand(name string, args [][]byte) (*respFuture, bool) {
	switch name {
	case "ping":
		switch len(args) {
		case 1:
			return ready(kv.Str("PONG")), true
		case 2:
			return ready(kv.BulkOf(clone(args[1]))), true
		}
		return ready(kv.ErrArity(name)), true
	case "echo":
		if len(args) != 2 {
			return ready(kv.ErrArity(name)), true
		}
		return ready(kv.BulkOf(clone(args[1]))), true
	case "quit":
		c.quit = true
		return &respFuture{done: closedChan, value: kv.OK, close: true}, true
	case "select":
		if len(args) != 2 {
			return ready(kv.ErrArity(name)), true
		}
		n, err := strconv.ParseInt(string(args[1]), 10, 64)
		if err != nil {
			return ready(kv.Err("ERR value is not an integer or out of range")), true
		}
		if n != 0 {
			return ready(kv.Err("ERR DB index is out of range")), true
		}
		return ready(kv.OK), true
	case "hello":
		return ready(c.hello(args)), true
	case "auth":
		return ready(c.auth(args)), true
	case "multi", "exec", "discard":
		return c.transaction(name, args), true
	case "client":
		return ready(c.client(args)), true
	case "command":
		return ready(commandReply(args)), true
	case "info":
		return ready(c.info(args)), true
	case "reset":
		c.dropSubs()
		c.subs = respSubs{channels: map[string]bool{}, patterns: map[string]bool{}}
		c.multi = nil
		c.watched = nil
		c.name.Store(nil)
		c.proto.Store(2)
		c.authed = c.s.opt.Dev
		return ready(kv.Str("RESET")), true
	}
	return nil, false
}

var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// hello answers HELLO [protover [AUTH user pass] [SETNAME name]].
func (c *respConn) hello(args [][]byte) kv.Value {
	proto := int(c.proto.Load())
	if len(args) >= 2 {
		n, err := strconv.Atoi(string(args[1]))
		if err != nil {
			return kv.Err("ERR Protocol version is not an integer or out of range")
		}
		if n < 2 || n > 3 {
			return kv.Err("NOPROTO unsupported protocol version")
		}
		proto = n
		for i := 2; i < len(args); i++ {
			switch strings.ToUpper(string(args[i])) {
			case "AUTH":
				if i+2 >= len(args) {
					return kv.Err("ERR Syntax error in HELLO option 'auth'")
				}
				if v := c.authAs(args[i+1], args[i+2]); v.IsErr() {
					return v
				}
				i += 2
			case "SETNAME":
				if i+1 >= len(args) {
					return kv.Err("ERR Syntax error in HELLO option 'setname'")
				}
				name := string(args[i+1])
				c.name.Store(&name)
				i++
			default:
				return kv.Err("ERR Syntax error in HELLO option '" + string(args[i]) + "'")
			}
		}
	}
	if !c.authed {
		return kv.Err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
	}
	c.proto.Store(int32(proto))
	return kv.Value{K: kv.Map, A: []kv.Value{
		kv.BulkStr("server"), kv.BulkStr("mcpd"),
		kv.BulkStr("version"), kv.BulkStr("7.0.0"),
		kv.BulkStr("proto"), kv.Integer(int64(proto)),
		kv.BulkStr("id"), kv.Integer(c.id),
		kv.BulkStr("mode"), kv.BulkStr("standalone"),
		kv.BulkStr("role"), kv.BulkStr("master"),
		kv.BulkStr("modules"), kv.ArrayOf(),
	}}
}

// appendValue renders v in RESP2 or RESP3.
func appendValue(b []byte, v kv.Value, proto int) []byte {
	switch v.K {
	case kv.Null:
		if proto == 3 {
			return append(b, "_\r\n"...)
		}
		return append(b, "$-1\r\n"...)
	case kv.NullArray:
		if proto == 3 {
			return append(b, "_\r\n"...)
		}
		return append(b, "*-1\r\n"...)
	case kv.Simple:
		return redcon.AppendString(b, string(v.S))
	case kv.Error:
		return redcon.AppendError(b, string(v.S))
	case kv.Int:
		return redcon.AppendInt(b, v.I)
	case kv.Bulk:
		return redcon.AppendBulk(b, v.S)
	case kv.Array:
		b = redcon.AppendArray(b, len(v.A))
		for _, e := range v.A {
			b = appendValue(b, e, proto)
		}
		return b
	case kv.Map:
		if proto == 3 {
			b = append(b, '%')
			b = strconv.AppendInt(b, int64(len(v.A)/2), 10)
			b = append(b, '\r', '\n')
		} else {
			b = redcon.AppendArray(b, len(v.A))
		}
		for _, e := range v.A {
			b = appendValue(b, e, proto)
		}
		return b
	case kv.PairMap:
		if proto == 3 {
			return appendValue(b, kv.Value{K: kv.Map, A: v.A}, proto)
		}
		b = redcon.AppendArray(b, len(v.A)/2)
		for i := 0; i+1 < len(v.A); i += 2 {
			b = appendValue(b, kv.ArrayOf(v.A[i], v.A[i+1]), proto)
		}
		return b
	}
	return redcon.AppendError(b, fmt.Sprintf("ERR internal: reply kind %d", v.K))
}

// refuseRESP answers a connection to a stalled node with one TRYAGAIN
// error and closes it.
func refuseRESP(nc net.Conn, why string) {
	defer nc.Close()
	// A TLS handshake runs within the write, and reads too.
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = nc.Write([]byte("-TRYAGAIN " + strings.ReplaceAll(why, "\r\n", " ") + "\r\n"))
}
