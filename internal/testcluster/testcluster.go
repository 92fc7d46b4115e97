// Package testcluster runs in-process mcpd clusters for tests: N nodes on
// loopback with ports from :0, fast Raft timeouts, dev authentication,
// mutual TLS between the nodes with a CA of the test's own, and a
// WebSocket server per node that the client package can dial.
package testcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/pki"
	"github.com/mcpd/mcpd/transport"
)

// Node is one member of a test cluster.
type Node struct {
	ID      string
	DataDir string
	Node    *cluster.Node
	WS      *transport.Server
	URL     string
	// TLS is the node's own certificate (ID.pem in the cluster's TLSDir),
	// which it presents to its peers.
	TLS *pki.Material

	raftAddr string
	wsLn     net.Listener
	stopped  bool
	join     bool                            // started by StartJoiner (join.go)
	admin    atomic.Pointer[transport.Admin] // Secure clusters
	adminSrv *httptest.Server
}

// Cluster is a running test cluster.
type Cluster struct {
	t     testing.TB
	Nodes []*Node
	// TLS is the client-port material; its CA is the cluster CA, whose
	// key stays in TLSDir (tests issue more certificates from it).
	TLS    *pki.Material
	TLSDir string
	// Key is the cluster key of a Secure cluster.
	Key   *auth.ClusterKey
	peers map[string]string
	opt   Options
}

// Options tune a test cluster.
type Options struct {
	// TransportOptions apply to every node's WebSocket server.
	Transport transport.Options
	// Secure turns dev authentication off: agents must authenticate with
	// an identity (alg "none" is refused) and sign their envelopes. The
	// nodes share a cluster key (Cluster.Key; Transport.ClusterKey if set)
	// and serve their admin API (Node.AdminURL, Cluster.AddAgent).
	Secure bool
	// NodeDownAfter and TrailingLogs are passed to every node (0: the
	// defaults).
	NodeDownAfter time.Duration
	TrailingLogs  uint64
	// Logger defaults to a quiet logger (warnings and errors only, to stderr
	// when MCPD_TEST_LOG is set).
	Logger *slog.Logger
}

// Start runs n nodes and waits until they elect a leader.
func Start(t testing.TB, n int, opt Options) *Cluster {
	t.Helper()
	if opt.Logger == nil {
		level := slog.LevelError + 4
		if os.Getenv("MCPD_TEST_LOG") != "" {
			level = slog.LevelDebug
		}
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	root := t.TempDir()
	tlsDir := filepath.Join(root, "tls")
	m, err := pki.EnsureDevCA(tlsDir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if opt.Secure && opt.Transport.ClusterKey == nil {
		opt.Transport.ClusterKey = newClusterKey(t)
	}
	c := &Cluster{t: t, TLS: m, TLSDir: tlsDir, Key: opt.Transport.ClusterKey, peers: map[string]string{}, opt: opt}
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		id := fmt.Sprintf("n%d", i+1)
		c.peers[id] = ln.Addr().String()
		nm, err := pki.EnsureNodeCert(tlsDir, id, []string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, &Node{ID: id, DataDir: filepath.Join(root, id), TLS: nm, raftAddr: ln.Addr().String()})
	}
	for i, nd := range c.Nodes {
		c.startNode(nd, lns[i])
	}
	t.Cleanup(c.Stop)
	c.WaitLeader()
	return c
}

func (c *Cluster) startNode(nd *Node, raftLn net.Listener) {
	c.t.Helper()
	if raftLn == nil {
		var err error
		// The port was ours before; it is free again after the stop.
		if raftLn, err = net.Listen("tcp", nd.raftAddr); err != nil {
			c.t.Fatalf("relisten %s: %v", nd.raftAddr, err)
		}
	}
	peers := c.peers
	if nd.join {
		peers = c.joinPeers(nd)
	}
	node, err := cluster.New(cluster.Config{
		NodeID:           nd.ID,
		DataDir:          nd.DataDir,
		RaftListener:     raftLn,
		Peers:            peers,
		Join:             nd.join,
		HeartbeatTimeout: 300 * time.Millisecond,
		ElectionTimeout:  300 * time.Millisecond,
		SubmitTimeout:    5 * time.Second,
		NodeDownAfter:    c.opt.NodeDownAfter,
		TrailingLogs:     c.opt.TrailingLogs,
		PeerTLS:          &cluster.PeerTLS{Server: nd.TLS.PeerServerTLS(), Client: nd.TLS.PeerClientTLS()},
		Logger:           c.opt.Logger.With("node", nd.ID),
	})
	if err != nil {
		c.t.Fatalf("start %s: %v", nd.ID, err)
	}
	to := c.opt.Transport
	to.Dev = !c.opt.Secure
	to.Logger = c.opt.Logger.With("node", nd.ID)
	ws := transport.NewServer(node, to)
	addr := "127.0.0.1:0"
	if nd.URL != "" {
		addr = nd.wsLn.Addr().String()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatalf("listen ws: %v", err)
	}
	go ws.Serve(tls.NewListener(ln, c.TLS.ServerTLS()))
	nd.Node, nd.WS, nd.wsLn, nd.stopped = node, ws, ln, false
	if c.opt.Secure {
		c.startAdmin(nd)
	}
	nd.URL = fmt.Sprintf("wss://%s/v1", ln.Addr())
}

// RaftAddr is the node's Raft address.
func (nd *Node) RaftAddr() string { return nd.raftAddr }

// Stopped reports whether the node was stopped or killed (and not
// restarted since).
func (nd *Node) Stopped() bool { return nd.stopped }

// Stop shuts every running node down.
func (c *Cluster) Stop() {
	for _, nd := range c.Nodes {
		c.StopNode(nd)
	}
}

// StopNode shuts one node down gracefully (a leader hands over first).
func (c *Cluster) StopNode(nd *Node) { c.stop(nd, true) }

// KillNode stops a node without a hand-over: its peers see it fail.
func (c *Cluster) KillNode(nd *Node) { c.stop(nd, false) }

func (c *Cluster) stop(nd *Node, graceful bool) {
	if nd.stopped {
		return
	}
	nd.stopped = true
	nd.wsLn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if graceful {
		nd.WS.Shutdown(ctx)
		nd.Node.Shutdown()
		return
	}
	nd.Node.Abort()
	nd.WS.Shutdown(ctx)
}

// RestartNode starts a stopped node again on the same ports and data.
func (c *Cluster) RestartNode(nd *Node) {
	c.t.Helper()
	c.startNode(nd, nil)
}

// Leader waits for a leader among the running nodes and returns it.
func (c *Cluster) WaitLeader() *Node {
	c.t.Helper()
	var leader *Node
	WaitFor(c.t, 20*time.Second, func() bool {
		for _, nd := range c.Nodes {
			if !nd.stopped && nd.Node.IsLeader() {
				leader = nd
				return true
			}
		}
		return false
	})
	return leader
}

// Followers returns the running nodes that do not lead.
func (c *Cluster) Followers() []*Node {
	var out []*Node
	for _, nd := range c.Nodes {
		if !nd.stopped && !nd.Node.IsLeader() {
			out = append(out, nd)
		}
	}
	return out
}

// URLs lists the WebSocket URLs of the running nodes.
func (c *Cluster) URLs() []string {
	var out []string
	for _, nd := range c.Nodes {
		if !nd.stopped {
			out = append(out, nd.URL)
		}
	}
	return out
}

// Dial connects a dev-authenticated client to the given URLs.
func (c *Cluster) Dial(agent string, urls ...string) *client.Client {
	c.t.Helper()
	if len(urls) == 0 {
		urls = c.URLs()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Options{URLs: urls, Agent: agent, TLSConfig: c.TLS.ClientTLS()})
	if err != nil {
		c.t.Fatalf("dial %v: %v", urls, err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// WaitApplied waits until every running node has applied every command
// committed before the call. The target is the leader's state machine's
// applied index after a barrier, not a Raft log index: a new leader's
// no-op and a barrier never reach the state machines, so after an
// election the last log index may be one no node's FSM ever reports.
func (c *Cluster) WaitApplied() {
	c.t.Helper()
	var want uint64
	WaitFor(c.t, 20*time.Second, func() bool {
		if want == 0 {
			for _, nd := range c.Nodes {
				if !nd.stopped && nd.Node.IsLeader() && nd.Node.Raft().Barrier(time.Second).Error() == nil {
					want = nd.Node.FSM().AppliedIndex()
				}
			}
			if want == 0 {
				return false // no leader, or it lost leadership meanwhile
			}
		}
		for _, nd := range c.Nodes {
			if !nd.stopped && nd.Node.FSM().AppliedIndex() < want {
				return false
			}
		}
		return true
	})
}

// WaitFor polls cond every 10ms until it holds or the timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Digests returns each running node's state digest and applied index.
func (c *Cluster) Digests() ([]string, []uint64) {
	var ds []string
	var idx []uint64
	for _, nd := range c.Nodes {
		if nd.stopped {
			continue
		}
		d, applied, err := nd.Node.FSM().Digest()
		if err != nil {
			c.t.Fatal(err)
		}
		ds = append(ds, fmt.Sprintf("%x", d))
		idx = append(idx, applied)
	}
	return ds, idx
}

// WaitConverged waits until every running node has the same applied index
// and the same state digest.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	c.WaitApplied()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ds, idx := c.Digests()
		same := true
		for i := range ds {
			same = same && ds[i] == ds[0] && idx[i] == idx[0]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replicas did not converge: digests %v, applied %v", ds, idx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
