package cluster_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Two of three nodes are gone for good: Recover gives the survivor a
// configuration of its own, and it serves alone with every acknowledged
// message. Recover refuses the data directory of a running node.
func Test_Recover_FromOneSurvivor(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	cl := c.Dial("producer")
	for i := range 50 {
		if _, err := cl.Enqueue(ctx(t), "jobs", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitConverged()
	n1 := c.Nodes[0]
	peers := map[string]string{"n1": n1.RaftAddr()}
	if _, err := cluster.Recover(n1.DataDir, "n1", peers, nil); !errors.Is(err, cluster.ErrDataDirInUse) {
		t.Fatalf("recover of a running node: %v", err)
	}
	c.KillNode(c.Nodes[1])
	c.KillNode(c.Nodes[2])
	c.KillNode(n1)
	if _, err := cluster.Recover(n1.DataDir, "n9", peers, nil); err == nil {
		t.Fatal("recover accepted servers that do not list the node")
	}
	res, err := cluster.Recover(n1.DataDir, "n1", peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Servers) != 1 || res.LastIndex == 0 {
		t.Fatalf("result %+v", res)
	}

	ln, err := net.Listen("tcp", n1.RaftAddr())
	if err != nil {
		t.Fatal(err)
	}
	node, err := cluster.New(cluster.Config{
		NodeID: "n1", DataDir: n1.DataDir, RaftListener: ln, Peers: peers,
		HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		PeerTLS: &cluster.PeerTLS{Server: n1.TLS.PeerServerTLS(), Client: n1.TLS.PeerClientTLS()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown()
	testcluster.WaitFor(t, 20*time.Second, func() bool { return node.IsLeader() && node.Ready() })
	servers, err := node.Configuration()
	if err != nil || len(servers) != 1 || servers[0].ID != "n1" {
		t.Fatalf("configuration %v %v", servers, err)
	}
	var info queue.Info
	if err := node.Read(func(tx *bolt.Tx) (err error) {
		info, err = queue.ReadInfo(tx, "jobs")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if info.Ready != 50 {
		t.Fatalf("jobs after recovery: %+v, want 50 ready", info)
	}
}
