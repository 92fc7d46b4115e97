package cluster_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	bolt "go.etcd.io/bbolt"
)

// checkpointer runs a node's audit checkpoint proposer until stopped.
type checkpointer struct {
	stop chan struct{}
	done chan struct{}
}

func startCheckpoints(nd *testcluster.Node, key ed25519.PrivateKey) *checkpointer {
	cp := &checkpointer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(cp.done)
		nd.Node.RunAuditCheckpoints(key, 50*time.Millisecond, cp.stop)
	}()
	return cp
}

// latestCheckpoint is the newest checkpoint a node has applied (0 if none).
func latestCheckpoint(t *testing.T, nd *testcluster.Node) uint64 {
	t.Helper()
	var seq uint64
	err := nd.Node.FSM().View(func(tx *bolt.Tx) error {
		c, ok, err := audit.LatestCheckpoint(tx)
		if ok {
			seq = c.Seq
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// The leader checkpoints the audit chain; after a failover the new leader
// goes on; once the old leader is back, the three nodes hold the same
// chain, which verifies under the cluster's key.
func Test_Cluster_AuditChain_SameHeadAfterFailover(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{42}, ed25519.SeedSize))
	pub := key.Public().(ed25519.PublicKey)
	cps := map[string]*checkpointer{}
	for _, nd := range c.Nodes {
		cps[nd.ID] = startCheckpoints(nd, key)
	}
	stopAll := func() {
		for id, cp := range cps {
			close(cp.stop)
			<-cp.done
			delete(cps, id)
		}
	}
	t.Cleanup(stopAll)
	leader := c.WaitLeader()
	cl := c.Dial("alice")
	enqueue := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			id := fmt.Sprintf("m%d", i)
			if _, err := cl.Enqueue(ctx(t), "audited", id, client.WithID(id)); err != nil {
				t.Fatalf("enqueue %s: %v", id, err)
			}
		}
	}
	enqueue(0, 20)
	testcluster.WaitFor(t, 10*time.Second, func() bool { return latestCheckpoint(t, leader) > 0 })

	c.KillNode(leader)
	// The killed node's proposer ends with it.
	select {
	case <-cps[leader.ID].done:
	case <-time.After(10 * time.Second):
		t.Fatal("the proposer of a stopped node still runs")
	}
	next := c.WaitLeader()
	if next == leader {
		t.Fatal("the killed node still leads")
	}
	enqueue(20, 40)
	// The new leader checkpoints what happened after the failover: the
	// head, or the entry before it when the head is itself the entry of
	// a checkpoint (one landed between the enqueues and this read; it
	// signs what came before it and is never signed itself).
	var want uint64
	if err := next.Node.FSM().View(func(tx *bolt.Tx) error {
		head, due, err := audit.CheckpointDue(tx)
		want = head.Seq
		if err == nil && !due {
			want = head.Seq - 1
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool { return latestCheckpoint(t, next) >= want })

	c.RestartNode(leader)
	cps[leader.ID] = startCheckpoints(leader, key)
	enqueue(40, 50)
	testcluster.WaitFor(t, 10*time.Second, func() bool { return latestCheckpoint(t, leader) >= 50 })
	// No more checkpoints: the heads are compared at rest.
	stopAll()
	c.WaitConverged()

	// Every chain verifies; the heads agree once the nodes have applied
	// the same entries (a node's own commands, such as the restarted
	// node's announcements, may still be landing after the digests
	// matched, so they are read until they agree).
	var heads []audit.Head
	defer func() {
		if t.Failed() {
			t.Logf("audit heads: %+v", heads)
		}
	}()
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		heads = heads[:0]
		for _, nd := range c.Nodes {
			var r audit.Report
			err := nd.Node.FSM().View(func(tx *bolt.Tx) error {
				var err error
				r, err = audit.Verify(tx, pub)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK || r.Checkpoints < 2 || r.Entries < 50 {
				t.Fatalf("%s: %s", nd.ID, r)
			}
			heads = append(heads, r.Head)
		}
		return heads[0] == heads[1] && heads[1] == heads[2]
	})
	t.Logf("head %d %x", heads[0].Seq, heads[0].Hash)
}
