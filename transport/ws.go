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
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/cluster"
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
	Logger         *slog.Logger
}

func (o *Options) defaults() {
	if o.MaxFrame == 0 {
		o.MaxFrame = 1 << 20
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
}

// NewServer returns a WebSocket server for node.
func NewServer(node *cluster.Node, opt Options) *Server {
	opt.defaults()
	return &Server{
		node:  node,
		opt:   opt,
		log:   opt.Logger.With("component", "ws"),
		conns: map[*conn]struct{}{},
		up: websocket.Upgrader{
			Subprotocols:    []string{"mcp.v1"},
			ReadBufferSize:  64 << 10,
			WriteBufferSize: 64 << 10,
			CheckOrigin:     func(*http.Request) bool { return true },
		},
	}
}

// Handler serves /v1.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1", s.serveWS)
	return mux
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := newConn(s, ws)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		c.shutdown(websocket.CloseGoingAway, "server shutting down")
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	c.run()
}

// Shutdown sends every connection a close frame (1001) and waits for them
// to end, or for ctx.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWith(websocket.CloseGoingAway, "server shutting down")
	}
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
