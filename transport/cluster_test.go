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
	// The leader can change while the publish commits (a stalled
	// process): sent again with the same envelope, it is a duplicate if
	// the first one went out, which delivered it once.
	if n, dup := publishSure(p, "x.y", msg); !dup && n != 1 {
		t.Fatalf("receivers %d, want 1", n)
	}
	ev := s.next(isOp("event"))
	if ev.str("sub") != sub || ev.str("topic") != "x.y" || string(ev["msg"]) != msg {
		t.Fatalf("event %s", ev)
	}
	s.decide() // a command after the publish: a second event would be here by now
	noFrame(t, s, "second event", isOp("event"))
}

// publishSure publishes msg, sent again with the same envelope while the
// answer is unavailable: the envelope id makes that safe
// (docs/protocol.md). dup reports an answer that names the message a
// duplicate, which only an attempt of unknown outcome before it allows:
// that attempt published it (a duplicate tells no receivers).
func publishSure(rc *rawConn, topic, msg string) (receivers int64, dup bool) {
	rc.t.Helper()
	unknown := false
	for range 20 {
		f := rc.call("publish", fmt.Sprintf(`"topic":%q,"msg":%s`, topic, msg))
		if f.op() == "err" && f.str("code") == "unavailable" {
			rc.t.Logf("publish: %s; again", f)
			unknown = unknown || string(f["unknown"]) == "true"
			continue
		}
		if f.op() != "ok" || (string(f["dup"]) != "false" && !(unknown && string(f["dup"]) == "true")) {
			rc.t.Fatalf("publish %s: %s", topic, f)
		}
		return f.int("receivers"), string(f["dup"]) == "true"
	}
	rc.t.Fatalf("publish %s: unavailable 20 times", topic)
	return 0, false
}

func Test_Cluster_ConsumeOnLeader(t *testing.T) {
	c, leader, f := startThree(t)
	cons := login(t, c, leader.URL, "alice")
	prod := login(t, c, f[0].URL, "alice")
	q := qname(t, "q")
	// The leader can change at any command (a stalled process): the
	// commands are sent again on unavailable, after a look at the state
	// when the outcome was unknown (the *Sure helpers).
	cid := cons.consumeSure(q, "")
	msg := fmt.Sprintf(`{"id":%q,"from":"alice","ts":%d,"body":{"big":123456789012345678901234567890}}`, newID(), time.Now().UnixMilli())
	seq := prod.enqueueSure(q, msg)
	d := cons.deliver(cid)
	if d.str("queue") != q || uint64(d.int("seq")) != seq || string(d["attempt"]) != "1" || string(d["msg"]) != msg {
		t.Fatalf("deliver %s", d)
	}
	cons.ackSure(d)
	// And the other way round: enqueued on the leader, consumed on a follower.
	fc := login(t, c, f[1].URL, "alice")
	q2 := qname(t, "q2")
	fcid := fc.consumeSure(q2, "")
	msg2 := env("alice", `"back"`)
	cons.enqueueSure(q2, msg2)
	if d := fc.deliver(fcid); string(d["msg"]) != msg2 {
		t.Fatalf("deliver %s", d)
	}
}

// Each node's ping names it and the leader. The leader can change (a
// stalled process), and a node learns the new one from its first
// heartbeat: a ping is sent again until it names the node that leads.
func Test_Cluster_Ping(t *testing.T) {
	c, _, _ := startThree(t)
	for _, nd := range c.Nodes {
		rc := login(t, c, nd.URL, "alice")
		if rc.hello.str("node") != nd.ID {
			t.Fatalf("hello node %s, want %s", rc.hello["node"], nd.ID)
		}
		var f frame
		var before, after int64
		testcluster.WaitFor(t, 20*time.Second, func() bool {
			before = time.Now().UnixMilli()
			f = rc.ping()
			after = time.Now().UnixMilli()
			if f.str("node") != nd.ID {
				t.Fatalf("ping on %s: %s, want node %s", nd.ID, f, nd.ID)
			}
			return f.str("leader") == c.WaitLeader().ID
		})
		if tm := f.int("time"); tm < before-1000 || tm > after+1000 {
			t.Fatalf("ping time %d, want about %d", tm, before)
		}
		if len(f) != 5 {
			t.Fatalf("ping reply %s: want op, rid, node, leader, time", f)
		}
	}
}
