package transport_test

import (
	"strings"
	"testing"
)

func Test_Inbox_DeadLetterChainsStayReachable(t *testing.T) {
	c, alice := one(t, "alice")
	bob := login(t, c, c.Nodes[0].URL, "bob")
	// Alice's inbox, its DLQ, and the DLQ of that DLQ are hers alone.
	for _, q := range []string{"@alice", "@alice.dlq", "@alice.dlq.dlq"} {
		alice.ok("queue.info", `"queue":"`+q+`"`)
		bob.callErr("forbidden", "queue.info", `"queue":"`+q+`"`)
	}
	// A queue at the 200-byte limit keeps a reachable dead-letter queue.
	long := strings.Repeat("q", 200)
	alice.ok("queue.declare", `"queue":"`+long+`"`)
	f := alice.ok("queue.info", `"queue":"`+long+`.dlq"`)
	if f.int("ready") != 0 {
		t.Fatalf("info %s", f)
	}
	alice.callErr("bad_request", "queue.info", `"queue":"`+long+`q"`)
}

func Test_Auth_AgentNameEndingInDLQRefused(t *testing.T) {
	c, _ := one(t, "alice")
	rc := dialRaw(t, c, c.Nodes[0].URL)
	rc.callErr("bad_request", "auth", `"agent":"alice.dlq","alg":"none"`)
}
