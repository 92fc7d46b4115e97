// Package client is the Go client of the MCP WebSocket protocol spoken by
// mcpd. It owns the connection to a cluster (dial, hello, auth, reconnect
// with backoff across nodes), request/reply correlation by rid, envelope
// construction with safe retries, checks of the senders of received
// envelopes, and consumers and subscriptions that survive reconnects. The
// mcpd CLI and the tests use it.
//
// All methods are safe for concurrent use, and any number of requests may be
// outstanding on one connection at once.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Client. URLs and Agent are required.
type Options struct {
	// URLs of cluster nodes, like wss://127.0.0.1:4433/v1. The client dials
	// them in turn, moving to the next on failure.
	URLs []string
	// Agent is the authenticated agent name and the envelopes' "from".
	Agent string
	// CAFile is a PEM file of CA certificates to trust for wss URLs. Ignored
	// when TLSConfig is set. With neither, the system roots are used.
	CAFile    string
	TLSConfig *tls.Config
	// Signer authenticates the agent and seals envelopes; nil means
	// NoneSigner (accepted by servers in --dev mode only).
	Signer Signer
	Logger *slog.Logger

	HandshakeTimeout time.Duration // dial + hello + auth; default 10s
	PingInterval     time.Duration // client pings; default 15s
	IdleTimeout      time.Duration // no frame for this long kills the connection; default 45s
	WriteTimeout     time.Duration // default 10s
	MinBackoff       time.Duration // first reconnect/retry wait; default 100ms
	MaxBackoff       time.Duration // longest reconnect/retry wait; default 5s
	// EventBuffer bounds the events buffered per subscription; events
	// beyond it are dropped (pub/sub is at-most-once). Default 4096.
	EventBuffer int
	// VerifySenders says whether consumers and subscriptions check the
	// sender of every envelope (Client.VerifyEnvelope) before handing it
	// over, on C and Next alike. A delivery whose sender does not verify
	// is rejected to the dead-letter queue with reason "bad signature:
	// ..."; one whose sender's key cannot be fetched is nacked to the
	// queue's backoff. An event that fails either way is dropped and
	// counted (Subscription.Unverified). hmac-sha256 senders pass as
	// checked by the server (Verified.ByServer). The default, VerifyAuto,
	// checks when the client itself authenticates with an identity (a
	// Signer other than NoneSigner): then the server has identities and
	// every envelope it accepts is signed. Unsigned envelopes never pass,
	// so VerifyAlways does not suit a --dev server.
	VerifySenders Verification
	// OnPush receives pushes other than deliver and event (task,
	// task.revoked, task.update), as the whole frame, after the client
	// handled them itself (Register, WatchTasks). It runs on the reader
	// goroutine and must not block.
	OnPush func(op string, frame []byte)
	// OnConnect, if set, is called after every successful (re)connect with
	// the node id from hello. It must not block.
	OnConnect func(node string)
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.HandshakeTimeout, 10*time.Second)
	def(&o.PingInterval, 15*time.Second)
	def(&o.IdleTimeout, 45*time.Second)
	def(&o.WriteTimeout, 10*time.Second)
	def(&o.MinBackoff, 100*time.Millisecond)
	def(&o.MaxBackoff, 5*time.Second)
	if o.EventBuffer <= 0 {
		o.EventBuffer = 4096
	}
}

// Client is a connection to an mcpd cluster that reconnects by itself.
type Client struct {
	opts   Options
	tls    *tls.Config
	signer Signer
	log    *slog.Logger
	rid    atomic.Int64
	keys   *keyCache // senders' keys, for VerifyEnvelope

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the client starts

	mu         sync.Mutex
	closed     bool
	cur        *conn         // nil while reconnecting
	ready      chan struct{} // closed while cur != nil
	next       int           // index of the URL to dial next
	streams    map[*stream]struct{}
	reconnects int
	tk         taskState // registration and assigned tasks (tasks.go)
}

// Dial connects to the first reachable URL, authenticates, and returns a
// Client that keeps reconnecting in the background until Close. Dial makes
// one pass over the URLs and returns the errors if none of them works.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("mcpd client: no server URL given")
	}
	if opts.Agent == "" {
		return nil, errors.New("mcpd client: no agent name given")
	}
	opts.setDefaults()
	tlsConf, err := tlsConfig(&opts)
	if err != nil {
		return nil, err
	}
	c := &Client{
		opts:    opts,
		tls:     tlsConf,
		signer:  opts.Signer,
		log:     opts.Logger,
		ready:   make(chan struct{}),
		streams: make(map[*stream]struct{}),
	}
	if c.signer == nil {
		c.signer = NoneSigner{}
	}
	c.keys = newKeyCache(c.fetchKey)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "client", "agent", opts.Agent)
	c.ctx, c.cancel = context.WithCancel(context.Background())

	var errs []error
	for range opts.URLs {
		url := c.nextURL()
		cn, err := c.dialConn(ctx, url)
		if err == nil {
			c.install(cn)
			c.wg.Add(1)
			go c.run(cn)
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	c.cancel()
	return nil, errors.Join(errs...)
}

func tlsConfig(o *Options) (*tls.Config, error) {
	if o.TLSConfig != nil {
		return o.TLSConfig.Clone(), nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mcpd client: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mcpd client: %s holds no PEM certificate", o.CAFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

func (c *Client) nextURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.opts.URLs[c.next%len(c.opts.URLs)]
	c.next++
	return strings.TrimSpace(u)
}

// Agent returns the agent name the client authenticated as.
func (c *Client) Agent() string { return c.opts.Agent }

// Node returns the id of the node the client is connected to, or "" while
// it is reconnecting.
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.node
}

// Reconnects counts the connections made after the first one.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// Close ends the connection, every consumer and subscription (their
// channels close) and every goroutine of the client. Calls in progress
// return ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	streams := make([]*stream, 0, len(c.streams))
	for st := range c.streams {
		streams = append(streams, st)
	}
	c.streams = map[*stream]struct{}{}
	c.mu.Unlock()
	c.cancel()
	for _, st := range streams {
		st.stop(ErrClosed)
	}
	c.closeTasks()
	c.wg.Wait()
	return nil
}

// run keeps a connection installed until Close.
func (c *Client) run(cn *conn) {
	defer c.wg.Done()
	var b backoff
	b.min, b.max = c.opts.MinBackoff, c.opts.MaxBackoff
	for {
		select {
		case <-cn.done:
		case <-c.ctx.Done():
			c.uninstall(cn)
			cn.close()
			return
		}
		c.log.Warn("connection lost; reconnecting", "node", cn.node, "err", cn.err)
		c.uninstall(cn)
		cn.wg.Wait()
		c.dropStale(cn)
		started := time.Now()
		for {
			url := c.nextURL()
			next, err := c.dialConn(c.ctx, url)
			if err == nil {
				cn = next
				break
			}
			if c.ctx.Err() != nil {
				return
			}
			wait := b.next()
			c.log.Warn("reconnect failed", "url", url, "err", err, "retry_in", wait)
			if !sleepCtx(c.ctx, nil, wait) {
				return
			}
		}
		c.mu.Lock()
		c.reconnects++
		c.mu.Unlock()
		c.log.Info("reconnected", "node", cn.node, "url", cn.url, "after", time.Since(started).Round(time.Millisecond))
		if !c.install(cn) {
			cn.close()
			return
		}
		b.reset()
	}
}

// install makes cn the current connection and re-opens every consumer and
// subscription on it. It returns false if the client is closed.
func (c *Client) install(cn *conn) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.cur = cn
	close(c.ready)
	for st := range c.streams {
		c.reattachLocked(st, cn)
	}
	c.reregisterLocked(cn)
	c.mu.Unlock()
	if c.opts.OnConnect != nil {
		c.opts.OnConnect(cn.node)
	}
	return true
}

// uninstall forgets cn as the current connection.
func (c *Client) uninstall(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == cn {
		c.cur = nil
		c.ready = make(chan struct{})
	}
}

// dropStale discards buffered deliveries that came through the dead
// connection cn: their leases ended with it.
func (c *Client) dropStale(cn *conn) {
	c.mu.Lock()
	streams := make([]*stream, 0, len(c.streams))
	for st := range c.streams {
		streams = append(streams, st)
	}
	c.mu.Unlock()
	for _, st := range streams {
		st.dropFrom(cn)
	}
}

// conn waits for a current connection. The connection returned may already
// be dead; requests on it then fail with ErrDisconnected.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		cn, ready, closed := c.cur, c.ready, c.closed
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if cn != nil {
			return cn, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a connection: %w", ctx.Err())
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// request sends f on the current connection and returns the ok frame. With
// retry, requests that changed nothing (unavailable, rate_limited) or whose
// connection dropped are sent again with backoff until ctx ends; only
// requests that are safe to repeat (reads, idempotent ops, envelopes with
// a fixed id) may use it.
func (c *Client) request(ctx context.Context, f *frame, retry bool) (*inFrame, error) {
	var b backoff
	b.min, b.max = c.opts.MinBackoff/2, c.opts.MaxBackoff
	var last error
	for attempt := 1; ; attempt++ {
		cn, err := c.conn(ctx)
		if err != nil {
			return nil, withLast(err, last)
		}
		r, err := cn.do(ctx, f, nil, nil)
		if err == nil {
			return r, nil
		}
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		if ctx.Err() != nil {
			return nil, withLast(err, last)
		}
		if !retry || !retryable(err) {
			return nil, err
		}
		last = err
		wait := b.next()
		c.log.Debug("retrying request", "attempt", attempt, "err", err, "in", wait)
		if !sleepCtx(ctx, c.ctx.Done(), wait) {
			if c.ctx.Err() != nil {
				return nil, ErrClosed
			}
			return nil, withLast(ctx.Err(), last)
		}
	}
}

// withLast adds the last retryable failure to the error that ended retries.
func withLast(err, last error) error {
	if last == nil || errors.Is(err, last) {
		return err
	}
	return fmt.Errorf("%w (last error: %w)", err, last)
}
