package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func Test_Cluster_SingleNodeRoundTrip(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	cl := c.Dial("alice")
	res, err := cl.Enqueue(ctx(t), "jobs", map[string]any{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Seq != 1 || res.Dup {
		t.Fatalf("enqueue result %+v", res)
	}
	cons, err := cl.Consume(ctx(t), "jobs", client.ConsumeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Next(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if d.Seq != 1 || d.Attempt != 1 {
		t.Fatalf("delivery %+v", d)
	}
	if err := d.Ack(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx(t)); !client.IsCode(err, "not_found") {
		t.Fatalf("second ack: %v", err)
	}
}

func Test_Cluster_WritesThroughFollowers(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	f := c.Followers()
	producer := c.Dial("producer", f[0].URL)
	consumer := c.Dial("consumer", f[1].URL)
	cons, err := consumer.Consume(ctx(t), "work", client.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if _, err := producer.Enqueue(ctx(t), "work", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint64]bool{}
	for len(seen) < n {
		d, err := cons.Next(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		seen[d.Seq] = true
		// An election may lose the answer to an ack that was committed:
		// the client sends it again and, the delivery being settled,
		// gets not_found (docs/protocol.md, "Leases and failures"). A
		// stale ack is otherwise delivered again; either way every
		// message is seen.
		if err := d.Ack(ctx(t)); err != nil && !client.IsStale(err) {
			t.Fatal(err)
		}
	}
	// Ticks may still be in flight; the replicas must converge.
	c.WaitConverged()
}

func Test_Cluster_LeaderLossDuringEnqueue(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	producer := c.Dial("producer")
	const workers, per = 4, 100
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		count atomic.Int64
		wg    sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := producer.Enqueue(ctx(t), "failover", id, client.WithID(id)); err != nil {
					t.Errorf("enqueue %s: %v", id, err)
					return
				}
				mu.Lock()
				acked[id] = true
				mu.Unlock()
				count.Add(1)
			}
		}()
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool { return count.Load() >= workers*per/4 })
	c.KillNode(leader)
	wg.Wait()
	if t.Failed() {
		return
	}
	newLeader := c.WaitLeader()
	if newLeader == leader {
		t.Fatal("the killed node still leads")
	}
	c.RestartNode(leader)

	consumer := c.Dial("consumer")
	cons, err := consumer.Consume(ctx(t), "failover", client.ConsumeOptions{Prefetch: 50})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < len(acked) {
		d, err := cons.Next(ctx(t))
		if err != nil {
			t.Fatalf("after %d of %d: %v", len(seen), len(acked), err)
		}
		var env struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(d.Msg, &env); err != nil {
			t.Fatal(err)
		}
		if !acked[env.ID] {
			t.Fatalf("delivered %q, which was never acknowledged", env.ID)
		}
		seen[env.ID] = true
		if err := d.Ack(ctx(t)); err != nil && !client.IsStale(err) {
			t.Fatal(err)
		}
	}
	c.WaitConverged()
}

func Test_Cluster_LeaseExpiresAcrossFailover(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	c.WaitLeader()
	f := c.Followers()
	first := c.Dial("first", f[0].URL)
	if _, err := first.Enqueue(ctx(t), "leases", "x"); err != nil {
		t.Fatal(err)
	}
	cons, err := first.Consume(ctx(t), "leases", client.ConsumeOptions{Prefetch: 1, LeaseMs: 1500})
	if err != nil {
		t.Fatal(err)
	}
	// Its first delivery is attempt 1, unless an election lost the answer
	// to a consume: the consumer that the lost answer named is unknown to
	// the client, which nacks what it is sent (a failed attempt), and the
	// consume sent again gets the next attempt. So the attempts are
	// counted from the one the test holds.
	d, err := cons.Next(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// This delivery is never settled; the leader that granted the
	// lease fails, and the new leader must expire it. (An election may
	// have moved the leadership since the start: the node that leads now
	// is killed, and the second consumer uses any node still running.)
	c.KillNode(c.WaitLeader())
	c.WaitLeader()
	second := c.Dial("second")
	cons2, err := second.Consume(ctx(t), "leases", client.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	// The first consumer is still open and may get the redelivery itself;
	// either consumer proves the lease expired.
	var d2 *client.Delivery
	select {
	case d2 = <-cons2.C():
	case d2 = <-cons.C():
	case <-ctx(t).Done():
		t.Fatal("no redelivery after the lease expired")
	}
	if d2.Seq != d.Seq || d2.Attempt <= d.Attempt {
		t.Fatalf("redelivery seq %d attempt %d, want seq %d after attempt %d", d2.Seq, d2.Attempt, d.Seq, d.Attempt)
	}
	if d2.LeaseUntil <= d.LeaseUntil {
		t.Fatalf("redelivery lease %d not after the first %d", d2.LeaseUntil, d.LeaseUntil)
	}
}

func Test_Cluster_NodeDownReleasesLeases(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{NodeDownAfter: time.Second})
	c.WaitLeader()
	f := c.Followers()
	doomed := c.Dial("doomed", f[0].URL)
	if _, err := doomed.Enqueue(ctx(t), "held", "x"); err != nil {
		t.Fatal(err)
	}
	cons, err := doomed.Consume(ctx(t), "held", client.ConsumeOptions{Prefetch: 1, LeaseMs: 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Next(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// The node holding the lease fails without releasing it; the lease
	// would last an hour, but the leader ends that node's connections.
	c.KillNode(f[0])
	other := c.Dial("other", f[1].URL)
	cons2, err := other.Consume(ctx(t), "held", client.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := cons2.Next(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if d2.Seq != d.Seq || d2.Attempt != 2 {
		t.Fatalf("redelivery seq %d attempt %d, want seq %d attempt 2", d2.Seq, d2.Attempt, d.Seq)
	}
}

func Test_Cluster_LaggingFollowerInstallsSnapshot(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{TrailingLogs: 10})
	leader := c.WaitLeader()
	lagging := c.Followers()[0]
	c.StopNode(lagging)
	cl := c.Dial("producer", leader.URL)
	for i := range 300 {
		if _, err := cl.Enqueue(ctx(t), "snap", i); err != nil {
			t.Fatal(err)
		}
	}
	// Compact the leader's log past everything the stopped node has.
	if err := leader.Node.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if idx := leader.Node.Raft().Stats()["last_snapshot_index"]; idx == "" || idx == "0" {
		t.Fatalf("no snapshot taken (last_snapshot_index %q)", idx)
	}
	c.RestartNode(lagging)
	c.WaitConverged()
	// The restarted node serves the state it received.
	info, err := c.Dial("reader", lagging.URL).QueueInfo(ctx(t), "snap")
	if err != nil {
		t.Fatal(err)
	}
	if info.Ready != 300 {
		t.Fatalf("ready %d on the restarted node, want 300", info.Ready)
	}
}

// A leader that loses and regains leadership must not act on heartbeat
// failures it saw in its earlier term: the peer it once missed is healthy
// now, and its clients keep their consumers.
func Test_Cluster_ReelectedLeaderForgetsOldPeerFailures(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{NodeDownAfter: 2 * time.Second})
	leader := c.WaitLeader()
	f := c.Followers()
	missed, other := f[0], f[1]
	// lead moves the leadership to nd. Raft does not promise that the
	// leader of a moment still leads when asked to hand over (an election
	// can move it first), so whoever leads is asked, until nd does.
	lead := func(nd *testcluster.Node) {
		t.Helper()
		testcluster.WaitFor(t, 20*time.Second, func() bool {
			if nd.Node.IsLeader() {
				return true
			}
			from := c.WaitLeader()
			if from == nd {
				return true
			}
			err := from.Node.Raft().LeadershipTransferToServer(raft.ServerID(nd.ID), raft.ServerAddress(nd.RaftAddr())).Error()
			if err != nil {
				t.Logf("transfer %s -> %s: %v", from.ID, nd.ID, err)
				return false
			}
			deadline := time.Now().Add(2 * time.Second)
			for !nd.Node.IsLeader() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			return nd.Node.IsLeader()
		})
	}
	// The leader misses heartbeats to one follower for a moment
	c.StopNode(missed)
	// (while it leads: an election that moved the leadership first is
	// undone)...
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		if !leader.Node.IsLeader() {
			lead(leader)
		}
		return leader.Node.PeerUnreachable(missed.ID)
	})
	// ...leadership moves away, the follower returns, leadership comes back.
	lead(other)
	c.RestartNode(missed)
	cl := c.Dial("worker", missed.URL)
	if _, err := cl.Consume(ctx(t), "kept", client.ConsumeOptions{}); err != nil {
		t.Fatal(err)
	}
	lead(leader)
	// Wait past NodeDownAfter: a stale failure would end the consumer.
	time.Sleep(3 * time.Second)
	info, err := cl.QueueInfo(ctx(t), "kept")
	if err != nil {
		t.Fatal(err)
	}
	// The client would reconnect and consume again after a kick; it must
	// not have had to.
	if info.Consumers != 1 || cl.Reconnects() != 0 {
		t.Fatalf("consumers %d, reconnects %d after re-election: a healthy peer was declared down", info.Consumers, cl.Reconnects())
	}
}
