package transport_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

func startThree(t *testing.T) (*testcluster.Cluster, *testcluster.Node, []*testcluster.Node) {
	t.Helper()
	c := startCluster(t, 3, transport.Options{})
	// A follower learns the leader from its first heartbeat: wait until
	// every node names the same one.
	var leader *testcluster.Node
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		leader = c.WaitLeader()
		for _, nd := range c.Nodes {
			if nd.Node.Leader() != leader.ID {
				return false
			}
		}
		return true
	})
	followers := c.Followers()
	if len(followers) != 2 {
		t.Fatalf("%d followers", len(followers))
	}
	return c, leader, followers
}

func Test_Cluster_PubSubAcrossFollowers(t *testing.T) {
	c, _, f := startThree(t)
	s := login(t, c, f[0].URL, "alice")
	p := login(t, c, f[1].URL, "bob")
	if s.hello.str("node") != f[0].ID || p.hello.str("node") != f[1].ID {
		t.Fatalf("hello nodes %s %s, want %s %s", s.hello["node"], p.hello["node"], f[0].ID, f[1].ID)
	}
	sub := subscribe(t, s, "x.>")
	msg := env("bob", `{"across":true}`)
	if n := publish(t, p, "x.y", msg); n != 1 {
		t.Fatalf("receivers %d, want 1", n)
	}
	ev := s.next(isOp("event"))
	if ev.str("sub") != sub || ev.str("topic") != "x.y" || string(ev["msg"]) != msg {
		t.Fatalf("event %s", ev)
	}
}

func Test_Cluster_ConsumeOnLeader(t *testing.T) {
	c, leader, f := startThree(t)
	cons := login(t, c, leader.URL, "alice")
	prod := login(t, c, f[0].URL, "alice")
	q := qname(t, "q")
	cid := cons.consume(q, "")
	msg := fmt.Sprintf(`{"id":%q,"from":"alice","ts":%d,"body":{"big":123456789012345678901234567890}}`, newID(), time.Now().UnixMilli())
	seq := prod.enqueue(q, msg, "")
	d := cons.deliver(cid)
	if d.str("queue") != q || uint64(d.int("seq")) != seq || string(d["attempt"]) != "1" || string(d["msg"]) != msg {
		t.Fatalf("deliver %s", d)
	}
	if r := cons.settle("ack", d, ""); r.op() != "ok" {
		t.Fatalf("ack: %s", r)
	}
	// And the other way round: enqueued on the leader, consumed on a follower.
	fc := login(t, c, f[1].URL, "alice")
	q2 := qname(t, "q2")
	fcid := fc.consume(q2, "")
	msg2 := env("alice", `"back"`)
	cons.enqueue(q2, msg2, "")
	if d := fc.deliver(fcid); string(d["msg"]) != msg2 {
		t.Fatalf("deliver %s", d)
	}
}

func Test_Cluster_Ping(t *testing.T) {
	c, leader, _ := startThree(t)
	for _, nd := range c.Nodes {
		rc := login(t, c, nd.URL, "alice")
		if rc.hello.str("node") != nd.ID {
			t.Fatalf("hello node %s, want %s", rc.hello["node"], nd.ID)
		}
		before := time.Now().UnixMilli()
		f := rc.ping()
		after := time.Now().UnixMilli()
		if f.str("node") != nd.ID || f.str("leader") != leader.ID {
			t.Fatalf("ping on %s: %s, want node %s leader %s", nd.ID, f, nd.ID, leader.ID)
		}
		if tm := f.int("time"); tm < before-1000 || tm > after+1000 {
			t.Fatalf("ping time %d, want about %d", tm, before)
		}
		if len(f) != 5 {
			t.Fatalf("ping reply %s: want op, rid, node, leader, time", f)
		}
	}
}
