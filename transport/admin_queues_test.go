package transport_test

import (
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/mcpd/mcpd/transport"
)

// The operator reads queues and their messages: counts, states, a
// lease's holder, a dead letter's origin and reason, the envelope.
func TestAdminQueues(t *testing.T) {
	c, rc := one(t, "alice")
	admin := serveAdmin(t, transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	q := qname(t, "q")
	rc.ok("queue.declare", `"queue":"`+q+`","max_attempts":1`)
	for _, body := range []string{`"one"`, `"two"`, `"three"`} {
		rc.enqueue(q, env("alice", body), "")
	}
	cons := rc.consume(q, `"prefetch":2,"lease_ms":60000`)
	first := rc.deliver(cons)
	rc.deliver(cons)
	// The rejected message goes to the dead-letter queue; the third takes
	// its place in the consumer's prefetch.
	if f := rc.settle("reject", first, `"reason":"unparseable"`); f.op() != "ok" {
		t.Fatalf("reject: %s", f)
	}
	rc.barrier()

	var queues []transport.AdminQueue
	raw, _ := json.Marshal(admin.wantList(t, "/v1/queues"))
	if err := json.Unmarshal(raw, &queues); err != nil {
		t.Fatal(err)
	}
	byName := map[string]transport.AdminQueue{}
	for _, x := range queues {
		byName[x.Name] = x
	}
	if got := byName[q]; got.Ready != 0 || got.Inflight != 2 || got.Dead != 1 || got.Enqueued != 3 || got.Consumers != 1 {
		t.Fatalf("%s: %+v", q, got)
	}
	var msgs []transport.AdminMessage
	raw, _ = json.Marshal(admin.wantList(t, "/v1/queues/"+q+"/messages"))
	if err := json.Unmarshal(raw, &msgs); err != nil || len(msgs) != 2 || msgs[0].State != "inflight" || msgs[0].Holder == "" || msgs[1].Seq != 3 || msgs[1].Attempts != 1 {
		t.Fatalf("messages: %+v %v", msgs, err)
	}
	raw, _ = json.Marshal(admin.wantList(t, "/v1/queues/"+q+".dlq/messages?limit=1"))
	if err := json.Unmarshal(raw, &msgs); err != nil || len(msgs) != 1 || msgs[0].Dead == nil || msgs[0].Dead.Reason != "rejected: unparseable" || msgs[0].Dead.Queue != q {
		t.Fatalf("dead letters: %+v %v", msgs, err)
	}
	admin.want(404, "GET", "/v1/queues/no.such.queue/messages", "", "")
	admin.want(400, "GET", "/v1/queues/"+q+"/messages?limit=0", "", "")
}
