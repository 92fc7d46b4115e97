package transport_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
)

// Commands pipelined on one connection commit in the order sent, also when
// the leader fails in the middle: commands that were not applied are
// retried before anything sent after them.
func Test_Cluster_PipelinedOrderAcrossFailover(t *testing.T) {
	c, leader, f := startThree(t)
	p := login(t, c, f[0].URL, "producer")
	const n = 400
	send := func(i int) {
		p.sendText(fmt.Sprintf(`{"op":"enqueue","rid":%d,"queue":"ordered","msg":%s}`, 10000+i, env("producer", strconv.Itoa(i))))
	}
	for i := range n / 8 {
		send(i)
	}
	c.KillNode(leader)
	for i := n / 8; i < n; i++ {
		send(i)
	}
	seqs := map[int]uint64{}
	for range n {
		fr := p.next(func(fr frame) bool { return fr.has("rid") })
		var rid int
		if err := json.Unmarshal(fr["rid"], &rid); err != nil {
			t.Fatal(err)
		}
		if fr.op() == "ok" {
			seqs[rid-10000] = uint64(fr.int("seq"))
		} else if fr.str("code") != "unavailable" {
			t.Fatalf("enqueue %d: %s", rid-10000, fr)
		}
	}
	if len(seqs) < n/2 {
		t.Fatalf("only %d of %d enqueues acknowledged", len(seqs), n)
	}
	last, lastI := uint64(0), -1
	for i := range n {
		s, ok := seqs[i]
		if !ok {
			continue
		}
		if s <= last {
			t.Fatalf("message %d got seq %d, not after message %d's seq %d", i, s, lastI, last)
		}
		last, lastI = s, i
	}
	t.Logf("%d of %d acknowledged in order", len(seqs), n)
}
