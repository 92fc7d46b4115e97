package systemtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// Timings of the fault clusters: short, so that a test sees several
// elections and lease expiries in seconds, yet long enough for five nodes
// sharing two loaded cores (300 ms timeouts let a five-node cluster, its
// processes starved for CPU, go through elections for half a minute
// without keeping a leader).
const (
	faultRaftTimeout   = 500 * time.Millisecond // heartbeat and election, three nodes
	faultRaftTimeout5  = time.Second            // five nodes
	faultNodeDownAfter = 3 * time.Second
)

// fnode is one member of a fault cluster.
type fnode struct {
	k      int // 1-based
	id     string
	ip     string
	proc   *proc
	data   string
	health string // ip:port of the health endpoints
	url    string // wss URL for clients
	paused bool
}

// faultCluster is n mcpd processes, each in its own network namespace.
type faultCluster struct {
	t     *testing.T
	dir   string
	ca    string
	lab   *netLab
	nodes []*fnode
	peers string // the --peers of every node
	// keyFile is the cluster key file of a secure cluster.
	keyFile string
}

// clusterOpts tunes a fault cluster.
type clusterOpts struct {
	// extra returns more serve flags for node k (for example a clock
	// offset); nil for none.
	extra func(k int) []string
	// dataDir returns node k's data dir; default DIR/nK.
	dataDir func(k int) string
	// noStart leaves the nodes stopped; the test starts them.
	noStart bool
	// spare adds namespaces after the nodes' (k = n+1...) for processes
	// that are not members, such as a rogue node.
	spare int
	// secure runs the nodes without --insecure-auth-none, with a shared
	// cluster key file (c.keyFile) and audit checkpoints every second:
	// agents need identities.
	secure bool
}

// newFaultCluster starts n nodes in their own namespaces and waits until all
// are ready.
func newFaultCluster(t *testing.T, n int, o clusterOpts) *faultCluster {
	t.Helper()
	bin := mcpdBinary(t)
	lab := newNetLab(t, n+o.spare)
	dir := t.TempDir()
	c := &faultCluster{t: t, dir: dir, lab: lab}
	// One CA and a certificate per node, as an operator makes them: the
	// nodes' Raft traffic is mutual TLS with that CA.
	tlsDir := filepath.Join(dir, "tls")
	var peers []string
	for k := 1; k <= n; k++ {
		runMcpd(t, "tls", "init", "--dir", tlsDir, "--node", fmt.Sprintf("n%d", k), "--host", lab.addr(k))
		peers = append(peers, fmt.Sprintf("n%d=%s:4438", k, lab.addr(k)))
	}
	c.peers = strings.Join(peers, ",")
	c.ca = filepath.Join(tlsDir, "ca.pem")
	if o.secure {
		c.keyFile = filepath.Join(dir, "cluster.key")
		runMcpd(t, "keygen", c.keyFile)
	}
	var procs []*proc
	for k := 1; k <= n; k++ {
		id := fmt.Sprintf("n%d", k)
		data := filepath.Join(dir, id)
		if o.dataDir != nil {
			data = o.dataDir(k)
		}
		timeout := faultRaftTimeout
		if n > 3 {
			timeout = faultRaftTimeout5
		}
		args := []string{bin, "serve",
			"--node-id", id,
			"--data-dir", data,
			"--bind", lab.addr(k),
			"--peers", c.peers,
			"--tls-dir", tlsDir,
			"--raft-heartbeat-timeout", timeout.String(),
			"--raft-election-timeout", timeout.String(),
			"--node-down-after", faultNodeDownAfter.String(),
			"--log-level", "info",
		}
		if o.secure {
			args = append(args, "--cluster-key-file", c.keyFile, "--audit-checkpoint-every", "1s")
		} else {
			args = append(args, "--insecure-auth-none")
		}
		if o.extra != nil {
			args = append(args, o.extra(k)...)
		}
		p := &proc{name: id, bin: "ip", args: lab.wrap(k, args...), logPath: filepath.Join(dir, id+".log")}
		procs = append(procs, p)
		c.nodes = append(c.nodes, &fnode{
			k: k, id: id, ip: lab.addr(k), proc: p, data: data,
			health: net.JoinHostPort(lab.addr(k), "4434"),
			url:    "wss://" + net.JoinHostPort(lab.addr(k), "4433") + "/v1",
		})
	}
	// Registered after the lab's cleanup, so it runs first: processes go
	// before their namespaces. SIGCONT first, so paused nodes can die.
	manage(t, procs...)
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.resume()
		}
	})
	if !o.noStart {
		c.startAll()
	}
	return c
}

func (c *faultCluster) node(k int) *fnode { return c.nodes[k-1] }

// startAll starts every stopped node and waits until all are ready.
func (c *faultCluster) startAll() {
	c.t.Helper()
	for _, nd := range c.nodes {
		if !nd.proc.running() {
			nd.proc.start(c.t)
		}
	}
	c.waitAllReady(60 * time.Second)
}

func (c *faultCluster) waitAllReady(timeout time.Duration) {
	c.t.Helper()
	for _, nd := range c.nodes {
		waitReady(c.t, nd.health, timeout)
	}
}

// urls is every node's client URL, starting with node first (when > 0).
func (c *faultCluster) urls(first int) []string {
	var out []string
	if first > 0 {
		out = append(out, c.node(first).url)
	}
	for _, nd := range c.nodes {
		if nd.k != first {
			out = append(out, nd.url)
		}
	}
	return out
}

// dial connects a client that may use every node.
func (c *faultCluster) dial(ctx context.Context, agent string, urls ...string) *client.Client {
	c.t.Helper()
	cl, err := client.Dial(ctx, client.Options{URLs: urls, Agent: agent, CAFile: c.ca})
	if err != nil {
		c.t.Fatalf("dial %v: %v", urls, err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// leader waits for a running, unpaused node that is a ready leader.
func (c *faultCluster) leader(timeout time.Duration) *fnode {
	c.t.Helper()
	var leader *fnode
	waitFor(c.t, timeout, "a ready leader", func() error {
		for _, nd := range c.nodes {
			if !nd.proc.running() || nd.paused {
				continue
			}
			s, err := readyz(nd.health)
			if err == nil && s.Ready && s.Role == "Leader" && s.Leader == nd.id {
				leader = nd
				return nil
			}
		}
		return errors.New("no running node is a ready leader")
	})
	return leader
}

// others returns the nodes other than nd.
func (c *faultCluster) others(nd *fnode) []*fnode {
	var out []*fnode
	for _, o := range c.nodes {
		if o != nd {
			out = append(out, o)
		}
	}
	return out
}

func (nd *fnode) kill() { nd.proc.kill(); nd.paused = false }

func (nd *fnode) start(t *testing.T) { nd.proc.start(t) }

// pause stops the process with SIGSTOP: it keeps its sockets and believes
// it is still whatever it was.
func (nd *fnode) pause() {
	if nd.proc.running() && !nd.paused {
		nd.proc.cmd.Process.Signal(syscall.SIGSTOP)
		nd.paused = true
	}
}

func (nd *fnode) resume() {
	if nd.proc.running() && nd.paused {
		nd.proc.cmd.Process.Signal(syscall.SIGCONT)
	}
	nd.paused = false
}

// digestOf fetches a node's /digest.
func digestOf(health string) (applied uint64, digest string, err error) {
	var d struct {
		Applied uint64 `json:"applied"`
		Digest  string `json:"digest"`
		Error   string `json:"error"`
	}
	if _, err := getJSON(health, "/digest", 5*time.Second, &d); err != nil {
		return 0, "", err
	}
	if d.Error != "" {
		return 0, "", errors.New(d.Error)
	}
	return d.Applied, d.Digest, nil
}

// converged waits until every node reports the same applied index and the
// same state digest, and returns them.
func (c *faultCluster) converged(timeout time.Duration) (uint64, string) {
	c.t.Helper()
	var (
		applied uint64
		digest  string
	)
	waitFor(c.t, timeout, "the same applied index and state digest on every node", func() error {
		var seen []string
		applied, digest = 0, ""
		same := true
		for i, nd := range c.nodes {
			a, d, err := digestOf(nd.health)
			if err != nil {
				return fmt.Errorf("%s: %w", nd.id, err)
			}
			seen = append(seen, nd.id+"="+strconv.FormatUint(a, 10)+"/"+d[:12])
			// The first node sets the mark, whatever its index: a node
			// that has applied nothing yet differs from the others.
			if i == 0 {
				applied, digest = a, d
			} else if a != applied || d != digest {
				same = false
			}
		}
		if !same {
			return fmt.Errorf("replicas differ: %s", strings.Join(seen, " "))
		}
		return nil
	})
	return applied, digest
}
