package testcluster

import (
	"fmt"
	"maps"
	"net"
	"path/filepath"

	"github.com/mcpd/mcpd/pki"
)

// StartJoiner starts a new node, id, that joins the running cluster: it
// gets a certificate of the cluster CA, runs with cluster.Config.Join (no
// bootstrap) and waits until an operator adds it (Node.Join on a member,
// at the returned node's RaftAddr). It is appended to c.Nodes.
func (c *Cluster) StartJoiner(id string) *Node {
	c.t.Helper()
	for _, nd := range c.Nodes {
		if nd.ID == id {
			c.t.Fatalf("node %s exists", id)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	nm, err := pki.EnsureNodeCert(c.TLSDir, id, []string{"127.0.0.1"})
	if err != nil {
		c.t.Fatal(err)
	}
	root := filepath.Dir(c.TLSDir)
	nd := &Node{ID: id, DataDir: filepath.Join(root, id), TLS: nm, raftAddr: ln.Addr().String(), join: true}
	c.Nodes = append(c.Nodes, nd)
	c.startNode(nd, ln)
	return nd
}

// joinPeers is what a joining node is given as its peers: the cluster's
// initial servers and itself (a copy: the running nodes share c.peers).
func (c *Cluster) joinPeers(nd *Node) map[string]string {
	p := maps.Clone(c.peers)
	if _, ok := p[nd.ID]; ok {
		panic(fmt.Sprintf("joiner %s is an initial peer", nd.ID))
	}
	p[nd.ID] = nd.raftAddr
	return p
}
