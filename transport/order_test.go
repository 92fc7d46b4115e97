package transport_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"testing"
)

// Commands pipelined on one connection commit in the order sent, also when
// the leader fails in the middle: commands that were not applied are
// retried before anything sent after them.
//
// A command whose outcome is unknown (leadership was lost while it
// committed: the killed leader, or under load a stalled node that lost
// its lease, can take all of them) is sent again with the same envelope,
// as docs/protocol.md says. A duplicate answer gives the seq of the first
// attempt, which then must be in order with the others; one that is not
// a duplicate takes the position of the new attempt and is only counted
// (as is a duplicate after a second unknown outcome: it may be one of
// the second attempt).
func Test_Cluster_PipelinedOrderAcrossFailover(t *testing.T) {
	c, leader, f := startThree(t)
	p := login(t, c, f[0].URL, "producer")
	const n = 400
	msgs := make([]string, n)
	send := func(i int) {
		msgs[i] = env("producer", strconv.Itoa(i))
		p.sendText(fmt.Sprintf(`{"op":"enqueue","rid":%d,"queue":"ordered","msg":%s}`, 10000+i, msgs[i]))
	}
	for i := range n / 8 {
		send(i)
	}
	c.KillNode(leader)
	for i := n / 8; i < n; i++ {
		send(i)
	}
	seqs := map[int]uint64{}
	var unknown []int
	errs := map[string]int{}
	for range n {
		fr := p.next(func(fr frame) bool { return fr.has("rid") })
		var rid int
		if err := json.Unmarshal(fr["rid"], &rid); err != nil {
			t.Fatal(err)
		}
		switch {
		case fr.op() == "ok":
			seqs[rid-10000] = uint64(fr.int("seq"))
		case fr.str("code") != "unavailable":
			t.Fatalf("enqueue %d: %s", rid-10000, fr)
		case string(fr["unknown"]) == "true":
			unknown = append(unknown, rid-10000)
			errs[fr.str("msg")]++
		default:
			errs[fr.str("msg")]++
		}
	}
	first := len(seqs)
	sort.Ints(unknown)
	dups, later := 0, 0
	for _, i := range unknown {
		f, again := p.sure("enqueue", `"queue":"ordered","msg":`+msgs[i])
		// A duplicate after another unknown outcome may be one of that
		// attempt: its seq is not the first attempt's.
		ambiguous := again
		for try := 0; again && try < 20; try++ {
			f, again = p.sure("enqueue", `"queue":"ordered","msg":`+msgs[i])
		}
		if f.op() != "ok" {
			t.Fatalf("enqueue %d again: %s", i, f)
		}
		if string(f["dup"]) == "true" && !ambiguous {
			seqs[i] = uint64(f.int("seq"))
			dups++
		} else {
			later++
		}
	}
	if len(seqs) < n/2 {
		t.Fatalf("only %d of %d enqueues acknowledged (%d of them as duplicates of an attempt of unknown outcome); unavailable: %v", len(seqs), n, dups, errs)
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
	t.Logf("%d of %d acknowledged in order (%d at once, %d sent again as duplicates); %d applied when sent again; unavailable: %v",
		len(seqs), n, first, dups, later, errs)
}
