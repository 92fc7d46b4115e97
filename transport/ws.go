// Package transport owns mcpd's network edges: the MCP WebSocket protocol
// (port 4433) and HTTP health (4434); the Redis protocol, metrics and the
// admin API join it later. It decodes and size-checks every frame, refuses
// bad input with a protocol error before anything else happens, and maps
// internal errors to stable protocol codes.
package transport

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/task"
)

// WebSocket close codes used by mcpd beyond the standard ones.
const (
	CloseAuthTimeout  = 4001 // no auth within AuthTimeout of hello
	CloseIdle         = 4002 // nothing received for IdleTimeout
	CloseSlowConsumer = 4008 // the connection could not keep up with its pushes
	CloseNodeDown     = 4009 // the cluster declared this node down and ended its connections
)

// Options configure the WebSocket server.
type Options struct {
	// Dev accepts alg "none" authentication and unsigned envelopes.
	Dev          bool
	MaxFrame     int
	PingInterval time.Duration
	IdleTimeout  time.Duration
	AuthTimeout  time.Duration
	SkewMs       int64
	// SendQueue is how many frames, and SendQueueBytes how many bytes of
	// them, may wait for a slow connection before it is closed with
	// CloseSlowConsumer.
	SendQueue      int
	SendQueueBytes int64
	// CloseGrace bounds how long a closing connection waits for the
	// client to take the frames in flight and the close frame.
	CloseGrace time.Duration
	// MaxConns is how many WebSocket connections may be open at once
	// (default DefaultMaxConns); a handshake beyond it is refused with
	// HTTP 503 before the upgrade.
	MaxConns int
	// ClusterKey opens the sealed secrets of hmac-sha256 agents; without
	// it only ed25519 agents (and dev connections) can authenticate.
	ClusterKey *auth.ClusterKey
	// TaskLimits is the delegation budget this node applies to the task
	// graphs its agents submit (task.DefaultLimits when zero).
	TaskLimits task.Limits
	Logger     *slog.Logger
}

// DefaultMaxConns is the connection limit when Options.MaxConns is 0.
const DefaultMaxConns = 20000

func (o *Options) defaults() {
	if o.MaxFrame == 0 {
		o.MaxFrame = 1 << 20
	}
	if o.TaskLimits == (task.Limits{}) {
		o.TaskLimits = task.DefaultLimits
	}
	if o.PingInterval == 0 {
		o.PingInterval = 15 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 45 * time.Second
	}
	if o.AuthTimeout == 0 {
		o.AuthTimeout = 10 * time.Second
	}
	if o.SkewMs == 0 {
		o.SkewMs = 5 * 60 * 1000
	}
	if o.SendQueueBytes == 0 {
		o.SendQueueBytes = 64 << 20
	}
	if o.SendQueue == 0 {
		o.SendQueue = 16384
	}
	if o.CloseGrace == 0 {
		o.CloseGrace = 5 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Server serves the MCP protocol over WebSocket for one node.
type Server struct {
	node *cluster.Node
	opt  Options
	log  *slog.Logger
	up   websocket.Upgrader

	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool
	wg       sync.WaitGroup

	open       atomic.Int64 // connections counted against MaxConns
	refused    atomic.Int64 // handshakes refused at MaxConns
	slowClosed atomic.Int64 // connections closed as slow consumers
	lastWarn   atomic.Int64 // unix ms of the last "at the limit" warning

	trust   trust
	audit   auditor
	watches taskWatches

	peakMu sync.Mutex // the largest send queue of a closed connection
	peak   int
	peakB  int64
}

func (s *Server) notePeak(n int, b int64) {
	s.peakMu.Lock()
	s.peak = max(s.peak, n)
	s.peakB = max(s.peakB, b)
	s.peakMu.Unlock()
}

// NewServer returns a WebSocket server for node.
func NewServer(node *cluster.Node, opt Options) *Server {
	opt.defaults()
	s := &Server{
		node:  node,
		opt:   opt,
		log:   opt.Logger.With("component", "ws"),
		conns: map[*conn]struct{}{},
		up: websocket.Upgrader{
			Subprotocols: []string{"mcp.v1"},
			// Memory per idle connection: reads reuse the HTTP server's
			// 4 KiB buffer (a frame larger than it is read straight into
			// its own buffer), and the 64 KiB write buffer is taken from
			// a pool only while a frame is being written.
			ReadBufferSize:  0,
			WriteBufferSize: 64 << 10,
			WriteBufferPool: &sync.Pool{},
			CheckOrigin:     func(*http.Request) bool { return true },
		},
	}
	s.audit = auditor{s: s, window: time.Second, perWindow: 20}
	node.SetNodeSink(nodeSink{s})
	node.OnStall(s.closeStalled)
	return s
}

// closeStalled closes every connection of a node that stalled
// (cluster.Node.OnStall) with 1013 (try again later): its clients
// reconnect to another node, and their consumers' leases are released
// for consumers elsewhere.
func (s *Server) closeStalled(string) {
	s.closeAll(false, websocket.CloseTryAgainLater, "this node cannot apply (state.db); connect to another node")
}

// closeAll sends every connection a close frame, after what is queued
// for it; with drain, no connection is accepted afterwards.
func (s *Server) closeAll(drain bool, code int, reason string) {
	s.mu.Lock()
	s.draining = s.draining || drain
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWith(code, reason)
	}
}

// Handler serves /v1.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1", s.serveWS)
	return mux
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	// A connection counts from before its upgrade until its socket is
	// closed, whichever way it ends.
	if n := s.open.Add(1); n > int64(s.opt.MaxConns) {
		s.open.Add(-1)
		s.refused.Add(1)
		now := time.Now().UnixMilli()
		if last := s.lastWarn.Load(); now-last >= 10_000 && s.lastWarn.CompareAndSwap(last, now) {
			s.log.Warn("refusing connections: at the connection limit", "max_conns", s.opt.MaxConns, "refused_total", s.refused.Load())
		}
		refuse(w, fmt.Sprintf("connection limit reached: this node serves at most %d connections; retry later or on another node", s.opt.MaxConns))
		return
	}
	if why := s.node.Stalled(); why != "" {
		s.open.Add(-1)
		refuse(w, why)
		return
	}
	ws, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		s.open.Add(-1)
		return // the upgrader has answered
	}
	c := newConn(s, ws)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		c.shutdown(websocket.CloseGoingAway, "server shutting down")
		<-c.closed
		s.open.Add(-1)
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	if why := s.node.Stalled(); why != "" {
		// The node stalled while this one was accepted, after
		// closeStalled went through the connections.
		s.closeStalled(why)
	}
	// The connection gets a goroutine of its own, and this handler
	// returns: the HTTP server's request and buffers of the handshake are
	// not kept for the life of the connection.
	go func() {
		defer func() {
			<-c.closed
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			s.open.Add(-1)
			s.wg.Done()
		}()
		c.run()
	}()
}

// refuse answers a handshake this node cannot serve (beyond MaxConns, or
// stalled): HTTP 503 with Retry-After and an unavailable err frame as the
// body, before any upgrade.
func refuse(w http.ResponseWriter, msg string) {
	body, _ := json.Marshal(map[string]any{"op": "err", "code": "unavailable", "msg": msg})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Retry-After", "1")
	h.Set("Connection", "close")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(append(body, '\n'))
}

// Stats are figures of the server for health reports.
type Stats struct {
	Conns      int64 // WebSocket connections open now
	MaxConns   int   // the limit on Conns
	Refused    int64 // handshakes refused at the limit since start
	SlowClosed int64 // connections closed as slow consumers since start
}

// Stats returns the server's current figures.
func (s *Server) Stats() Stats {
	return Stats{Conns: s.open.Load(), MaxConns: s.opt.MaxConns, Refused: s.refused.Load(), SlowClosed: s.slowClosed.Load()}
}

// Shutdown sends every connection a close frame (1001) and waits for them
// to end, or for ctx.
func (s *Server) Shutdown(ctx context.Context) {
	s.closeAll(true, websocket.CloseGoingAway, "server shutting down")
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Serve accepts TLS (or plain, when tlsLn is not TLS) connections on ln.
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	err := hs.Serve(corkListener{ln})
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func newNonce() string {
	var b [32]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(b[:])
}
