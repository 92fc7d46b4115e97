package transport_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"
)

func Test_Enqueue_Dedup(t *testing.T) {
	_, rc := one(t, "alice")
	q1, q2 := qname(t, "one"), qname(t, "two")
	id := newID()
	ts := time.Now().UnixMilli()
	msg := fmt.Sprintf(`{"id":%q,"from":"alice","ts":%d,"body":{"a":1,"b":[1,2]}}`, id, ts)
	f := rc.ok("enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q1, msg))
	if string(f["seq"]) != "1" || string(f["dup"]) != "false" {
		t.Fatalf("enqueue: %s", f)
	}
	f = rc.ok("enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q1, msg))
	if string(f["seq"]) != "1" || string(f["dup"]) != "true" {
		t.Fatalf("repeat: %s, want seq 1 dup true", f)
	}
	// The same content in another form (key order, whitespace) is the
	// same envelope (JCS).
	same := fmt.Sprintf(`{ "body" : {"b":[1, 2], "a":1.0}, "ts":%d, "from":"alice", "id":%q }`, ts, id)
	f = rc.ok("enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q1, same))
	if string(f["seq"]) != "1" || string(f["dup"]) != "true" {
		t.Fatalf("repeat in another form: %s, want seq 1 dup true", f)
	}
	other := fmt.Sprintf(`{"id":%q,"from":"alice","ts":%d,"body":{"a":2,"b":[1,2]}}`, id, ts)
	rc.callErr("conflict", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q1, other))
	rc.callErr("conflict", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q2, msg))
	rc.callErr("conflict", "send", fmt.Sprintf(`"to":"bob","msg":%s`, msg))
	rc.callErr("conflict", "publish", fmt.Sprintf(`"topic":"dedup.t","msg":%s`, msg))
	if got := rc.info(q1); got != [5]int64{1, 0, 0, 0, 0} {
		t.Fatalf("%s info %v", q1, got)
	}
	if got := rc.info(q2); got != [5]int64{} {
		t.Fatalf("%s info %v", q2, got)
	}
	// A second message gets the next seq.
	if seq := rc.enqueue(q1, env("alice", "2"), ""); seq != 2 {
		t.Fatalf("second seq %d", seq)
	}
}

func Test_Consume_OkBeforeDeliver(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	ts := time.Now().UnixMilli()
	// Odd whitespace, key order, escapes, an integer beyond 2^53 and a
	// float with trailing zeros: delivered byte for byte.
	msg := fmt.Sprintf("{ \"ts\" :%d,\n\t\"body\": {\"z\":1, \"big\": 123456789012345678901234567890, \"f\": 1.50, \"s\": \"\\u00e9\\n\\\"\"},"+
		"  \"intent\":\"test\",\"from\" : \"alice\",\"id\":%q }", ts, newID())
	seq := rc.enqueue(q, msg, "")
	rid := rc.nextRid()
	rc.sendText(fmt.Sprintf(`{"op":"consume","rid":%s,"queue":%q,"lease_ms":20000}`, rid, q))
	sent := time.Now().UnixMilli()
	// The very next frame must be the ok.
	f := rc.read()
	if f.op() != "ok" || string(f["rid"]) != string(rid) {
		t.Fatalf("first frame after consume: %s, want its ok", f)
	}
	cons := f.str("consumer")
	d := rc.read()
	if d.op() != "deliver" {
		t.Fatalf("frame %s, want deliver", d)
	}
	if d.str("consumer") != cons || d.str("queue") != q || uint64(d.int("seq")) != seq || string(d["attempt"]) != "1" {
		t.Fatalf("deliver %s: want consumer %s queue %s seq %d attempt 1", d, cons, q, seq)
	}
	if lu := d.int("lease_until"); lu < sent+20000-2000 || lu > time.Now().UnixMilli()+20000+2000 {
		t.Fatalf("lease_until %d, want about %d", lu, sent+20000)
	}
	if d.has("dead") || d.has("rid") {
		t.Fatalf("deliver with dead or rid: %s", d)
	}
	if string(d["msg"]) != msg {
		t.Fatalf("msg not byte for byte:\n got %s\nwant %s", d["msg"], msg)
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	if len(d) != 7 {
		t.Fatalf("deliver keys %v, want op consumer queue seq attempt lease_until msg", keys)
	}
}

func Test_Consume_PriorityOrder(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	pris := []int{0, 5, 9, 5, 0, 9, 1}
	for _, p := range pris {
		rc.enqueue(q, env("alice", strconv.Itoa(p)), fmt.Sprintf(`"priority":%d`, p))
	}
	// seq: 1:p0 2:p5 3:p9 4:p5 5:p0 6:p9 7:p1
	want := []int64{3, 6, 2, 4, 7, 1, 5}
	cons := rc.consume(q, "")
	for i, seq := range want {
		d := rc.deliver(cons)
		if d.int("seq") != seq {
			t.Fatalf("delivery %d: seq %d, want %d", i, d.int("seq"), seq)
		}
		if f := rc.settle("ack", d, ""); f.op() != "ok" {
			t.Fatalf("ack: %s", f)
		}
	}
	// With a wide prefetch the order is the same.
	rc.ok("cancel", `"consumer":`+strconv.Quote(cons))
	for _, p := range pris {
		rc.enqueue(q, env("alice", strconv.Itoa(p)), fmt.Sprintf(`"priority":%d`, p))
	}
	cons = rc.consume(q, `"prefetch":10`)
	for i, seq := range want {
		if d := rc.deliver(cons); d.int("seq") != seq+7 {
			t.Fatalf("prefetch delivery %d: seq %d, want %d", i, d.int("seq"), seq+7)
		}
	}
}

func Test_Consume_PrefetchBound(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	for i := range 5 {
		rc.enqueue(q, env("alice", strconv.Itoa(i)), "")
	}
	cons := rc.consume(q, `"prefetch":2`)
	d1, d2 := rc.deliver(cons), rc.deliver(cons)
	rc.barrier()
	noFrame(t, rc, "third delivery before an ack", isOp("deliver"))
	if got := rc.info(q); got != [5]int64{3, 2, 0, 0, 1} {
		t.Fatalf("info %v", got)
	}
	if d1.int("seq") != 1 || d2.int("seq") != 2 {
		t.Fatalf("deliveries %s %s", d1, d2)
	}
	rc.settle("ack", d1, "")
	d3 := rc.deliver(cons)
	if d3.int("seq") != 3 {
		t.Fatalf("third delivery %s", d3)
	}
	rc.barrier()
	noFrame(t, rc, "fourth delivery", isOp("deliver"))
	if got := rc.info(q); got != [5]int64{2, 2, 0, 0, 1} {
		t.Fatalf("info %v", got)
	}
}

func Test_Nack_DelayRedelivers(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	msg := env("alice", `"n"`)
	rc.enqueue(q, msg, "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons)
	if f := rc.settle("nack", d, `"delay_ms":300`); f.op() != "ok" {
		t.Fatalf("nack: %s", f)
	}
	nacked := time.Now()
	if got := rc.info(q); got != [5]int64{0, 0, 1, 0, 1} {
		t.Fatalf("info after nack %v, want delayed 1", got)
	}
	wantErr(t, rc.settle("ack", d, ""), "not_found") // the nacked delivery is unknown now
	d2 := rc.deliver(cons)
	if el := time.Since(nacked); el < 250*time.Millisecond {
		t.Fatalf("redelivered after %v, want >= 300ms", el)
	}
	if d2.int("seq") != d.int("seq") || string(d2["attempt"]) != "2" || string(d2["msg"]) != msg {
		t.Fatalf("redelivery %s", d2)
	}
}

func Test_Nack_ZeroDelay(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	// A long backoff: a nack with delay_ms 0 must not use it.
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[60000]`, q))
	rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons)
	rc.settle("nack", d, `"delay_ms":0`)
	if d2 := rc.deliver(cons); string(d2["attempt"]) != "2" {
		t.Fatalf("redelivery %s", d2)
	}
}

func Test_Nack_Backoff(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[200,60000]`, q))
	rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons)
	rc.settle("nack", d, "")
	start := time.Now()
	if got := rc.info(q); got != [5]int64{0, 0, 1, 0, 1} {
		t.Fatalf("info after nack %v, want delayed 1", got)
	}
	d = rc.deliver(cons)
	if el := time.Since(start); el < 150*time.Millisecond || string(d["attempt"]) != "2" {
		t.Fatalf("redelivery %s after %v, want attempt 2 after the 200ms backoff", d, el)
	}
	// The second failure uses the second backoff: still delayed.
	rc.settle("nack", d, "")
	rc.barrier()
	noFrame(t, rc, "redelivery before the 60s backoff", isOp("deliver"))
	if got := rc.info(q); got != [5]int64{0, 0, 1, 0, 1} {
		t.Fatalf("info after second nack %v, want delayed 1", got)
	}
}

func Test_Lease_ExpiryRedelivers(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[0]`, q))
	msg := env("alice", `"lease"`)
	rc.enqueue(q, msg, "")
	cons := rc.consume(q, `"lease_ms":200`)
	d := rc.deliver(cons)
	lu := d.int("lease_until")
	d2 := rc.deliver(cons)
	if now := time.Now().UnixMilli(); now < lu-50 {
		t.Fatalf("redelivered at %d, before lease_until %d", now, lu)
	}
	if d2.int("seq") != d.int("seq") || string(d2["attempt"]) != "2" || string(d2["msg"]) != msg {
		t.Fatalf("redelivery %s", d2)
	}
	// A late settle of the lapsed attempt is refused.
	wantErr(t, rc.settle("ack", d, ""), "not_found")
	wantErr(t, rc.settle("extend", d, `"lease_ms":60000`), "not_found")
}

// deadField decodes a deliver frame's dead member, requiring exactly its
// four keys.
func deadField(t *testing.T, d frame) (q string, seq int64, reason string, attempts int64) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(d["dead"], &m); err != nil || len(m) != 4 {
		t.Fatalf("dead %s: want an object with queue, seq, reason, attempts", d["dead"])
	}
	f := frame(m)
	return f.str("queue"), f.int("seq"), f.str("reason"), f.int("attempts")
}

func Test_Reject_DeadLetters(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	msg := fmt.Sprintf(`{"id":%q, "from":"alice","ts":%d, "body":{"n":98765432109876543210}}`, newID(), time.Now().UnixMilli())
	seq := rc.enqueue(q, msg, "")
	msg2 := env("alice", "2")
	seq2 := rc.enqueue(q, msg2, "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons)
	if f := rc.settle("reject", d, `"reason":"why"`); f.op() != "ok" {
		t.Fatalf("reject: %s", f)
	}
	wantErr(t, rc.settle("ack", d, ""), "not_found")
	d2 := rc.deliver(cons)
	if f := rc.settle("reject", d2, ""); f.op() != "ok" {
		t.Fatalf("reject: %s", f)
	}
	if got := rc.info(q); got != [5]int64{0, 0, 0, 2, 1} {
		t.Fatalf("info %v, want dead 2", got)
	}
	dlq := q + ".dlq"
	if got := rc.info(dlq); got != [5]int64{2, 0, 0, 0, 0} {
		t.Fatalf("dlq info %v, want ready 2", got)
	}
	dc := rc.consume(dlq, `"prefetch":2`)
	for i, want := range []struct {
		seq    uint64
		msg    string
		reason string
	}{{seq, msg, "rejected: why"}, {seq2, msg2, "rejected"}} {
		x := rc.deliver(dc)
		if x.str("queue") != dlq || x.int("seq") != int64(i+1) || string(x["attempt"]) != "1" {
			t.Fatalf("dlq deliver %s", x)
		}
		if string(x["msg"]) != want.msg {
			t.Fatalf("dlq msg\n got %s\nwant %s", x["msg"], want.msg)
		}
		dq, ds, reason, attempts := deadField(t, x)
		if dq != q || ds != int64(want.seq) || reason != want.reason || attempts != 1 {
			t.Fatalf("dead %s, want queue %s seq %d reason %q attempts 1", x["dead"], q, want.seq, want.reason)
		}
	}
}

func Test_MaxAttempts_DeadLetters(t *testing.T) {
	c, rc := one(t, "alice")
	q := qname(t, "q")
	f := rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"max_attempts":2,"backoff_ms":[0]`, q))
	if string(f["max_attempts"]) != "2" || string(f["backoff_ms"]) != "[0]" {
		t.Fatalf("declare: %s", f)
	}
	msg := env("alice", `"poison"`)
	seq := rc.enqueue(q, msg, "")
	// Failure 1 by nack, failure 2 by closing the connection.
	worker := login(t, c, c.Nodes[0].URL, "alice")
	cons := worker.consume(q, "")
	d := worker.deliver(cons)
	worker.settle("nack", d, "")
	d = worker.deliver(cons)
	if string(d["attempt"]) != "2" {
		t.Fatalf("second delivery %s", d)
	}
	worker.closeNow()
	dc := rc.consume(q+".dlq", "")
	x := rc.deliver(dc)
	if string(x["msg"]) != msg {
		t.Fatalf("dlq msg %s", x["msg"])
	}
	dq, ds, reason, attempts := deadField(t, x)
	if dq != q || ds != int64(seq) || reason != "max_attempts" || attempts != 2 {
		t.Fatalf("dead %s, want queue %s seq %d reason max_attempts attempts 2", x["dead"], q, seq)
	}
	if got := rc.info(q); got != [5]int64{0, 0, 0, 1, 0} {
		t.Fatalf("info %v", got)
	}
}

func Test_MaxAttempts_LeaseExpiry(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"max_attempts":2,"backoff_ms":[0]`, q))
	seq := rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, `"lease_ms":100`)
	dc := rc.consume(q+".dlq", "")
	x := rc.deliver(dc)
	ds := rc.take(func(f frame) bool { return f.op() == "deliver" && f.str("consumer") == cons })
	if len(ds) != 2 || string(ds[0]["attempt"]) != "1" || string(ds[1]["attempt"]) != "2" {
		t.Fatalf("deliveries before dead-lettering: %v", ds)
	}
	dq, dseq, reason, attempts := deadField(t, x)
	if dq != q || dseq != int64(seq) || reason != "max_attempts" || attempts != 2 {
		t.Fatalf("dead %s", x["dead"])
	}
}

// A nack's reason stays with the message: the dead letter its last
// attempt makes names it.
func Test_MaxAttempts_NackReason(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"max_attempts":1`, q))
	seq := rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons)
	if f := rc.settle("nack", d, `"reason":"upstream 503"`); f.op() != "ok" {
		t.Fatalf("nack: %s", f)
	}
	x := rc.deliver(rc.consume(q+".dlq", ""))
	if dq, ds, reason, attempts := deadField(t, x); dq != q || ds != int64(seq) || reason != "max_attempts: upstream 503" || attempts != 1 {
		t.Fatalf("dead %s", x["dead"])
	}
}

func Test_Extend_LeaseUntil(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, `"lease_ms":5000`)
	d := rc.deliver(cons)
	lu := d.int("lease_until")
	// A shorter extension never moves the lease earlier.
	f := rc.settle("extend", d, `"lease_ms":100`)
	if f.op() != "ok" || f.int("lease_until") != lu {
		t.Fatalf("extend 100: %s, want lease_until %d", f, lu)
	}
	before := time.Now().UnixMilli()
	f = rc.settle("extend", d, `"lease_ms":60000`)
	after := time.Now().UnixMilli()
	got := f.int("lease_until")
	if f.op() != "ok" || got < lu || got < before+60000-1000 || got > after+60000+1000 {
		t.Fatalf("extend 60000: %s, want about now+60000 and >= %d", f, lu)
	}
	wantErr(t, rc.settle("extend", frame{"queue": d["queue"], "seq": d["seq"], "attempt": json.RawMessage("2")}, `"lease_ms":1000`), "not_found")
	if f := rc.settle("ack", d, ""); f.op() != "ok" {
		t.Fatalf("ack after extend: %s", f)
	}
	wantErr(t, rc.settle("extend", d, `"lease_ms":1000`), "not_found")
}

func declared(t *testing.T, f frame) (string, string, string, string) {
	t.Helper()
	if len(f) != 6 {
		t.Fatalf("declare reply %s: want exactly op, rid, max_attempts, backoff_ms, dlq, max_len", f)
	}
	return string(f["max_attempts"]), string(f["backoff_ms"]), string(f["dlq"]), string(f["max_len"])
}

func Test_Declare_Settings(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	Q := strconv.Quote(q)
	check := func(f frame, ma, bo, dlq, ml string) {
		t.Helper()
		a, b, c, d := declared(t, f)
		if a != ma || b != bo || c != dlq || d != ml {
			t.Fatalf("declare: %s, want max_attempts %s backoff_ms %s dlq %s max_len %s", f, ma, bo, dlq, ml)
		}
	}
	defDLQ := strconv.Quote(q + ".dlq")
	check(rc.ok("queue.declare", `"queue":`+Q), "5", "[1000,5000,30000]", defDLQ, "null")
	check(rc.ok("queue.declare", `"queue":`+Q), "5", "[1000,5000,30000]", defDLQ, "null")
	check(rc.ok("queue.declare", `"queue":`+Q+`,"max_attempts":3`), "3", "[1000,5000,30000]", defDLQ, "null")
	check(rc.ok("queue.declare", `"queue":`+Q+`,"max_len":2`), "3", "[1000,5000,30000]", defDLQ, "2")
	check(rc.ok("queue.declare", `"queue":`+Q+`,"backoff_ms":[10,20]`), "3", "[10,20]", defDLQ, "2")
	check(rc.ok("queue.declare", `"queue":`+Q+`,"dlq":"graveyard"`), "3", "[10,20]", `"graveyard"`, "2")
	check(rc.ok("queue.declare", `"queue":`+Q), "3", "[10,20]", `"graveyard"`, "2")
	// A queue created by enqueue has the defaults.
	q2 := qname(t, "implicit")
	rc.enqueue(q2, env("alice", "1"), "")
	check(rc.ok("queue.declare", `"queue":`+strconv.Quote(q2)), "5", "[1000,5000,30000]", strconv.Quote(q2+".dlq"), "null")
}

func Test_Declare_EmptyBackoff(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[60000]`, q))
	// backoff_ms [] names the setting: retry at once.
	f := rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[]`, q))
	if _, bo, _, _ := declared(t, f); bo != "[]" {
		t.Fatalf("declare backoff_ms []: %s, want backoff_ms []", f)
	}
	rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, "")
	rc.settle("nack", rc.deliver(cons), "")
	if d := rc.deliver(cons); string(d["attempt"]) != "2" {
		t.Fatalf("redelivery %s", d)
	}
}

func Test_Declare_CustomDLQ(t *testing.T) {
	_, rc := one(t, "alice")
	q, dlq := qname(t, "q"), qname(t, "graveyard")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"dlq":%q`, q, dlq))
	seq := rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, "")
	rc.settle("reject", rc.deliver(cons), `"reason":"no"`)
	x := rc.deliver(rc.consume(dlq, ""))
	if dq, ds, reason, _ := deadField(t, x); x.str("queue") != dlq || dq != q || ds != int64(seq) || reason != "rejected: no" {
		t.Fatalf("dlq deliver %s", x)
	}
}

func Test_Declare_MaxLenFull(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"max_len":3`, q))
	first := env("alice", "1")
	rc.enqueue(q, first, "")
	rc.enqueue(q, env("alice", "2"), `"delay_ms":60000`) // delayed counts
	rc.enqueue(q, env("alice", "3"), "")
	cons := rc.consume(q, "")
	d := rc.deliver(cons) // inflight counts
	if got := rc.info(q); got != [5]int64{1, 1, 1, 0, 1} {
		t.Fatalf("info %v", got)
	}
	id := newID()
	rc.callErr("full", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, envID("alice", id, "4")))
	if got := rc.info(q); got != [5]int64{1, 1, 1, 0, 1} {
		t.Fatalf("info after full %v", got)
	}
	// A duplicate is answered before max_len.
	if f := rc.ok("enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, first)); string(f["dup"]) != "true" || string(f["seq"]) != "1" {
		t.Fatalf("duplicate at max_len: %s", f)
	}
	rc.settle("ack", d, "")
	rc.deliver(cons)
	// Room again; the refused id was not remembered.
	if seq := rc.enqueue(q, envID("alice", id, "4"), ""); seq != 4 {
		t.Fatalf("seq %d, want 4", seq)
	}
	rc.callErr("full", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, env("alice", "5")))
}

func Test_QueueInfo_Counters(t *testing.T) {
	c, a := one(t, "alice")
	b := login(t, c, c.Nodes[0].URL, "alice")
	q := qname(t, "q")
	if got := a.info(q); got != [5]int64{} {
		t.Fatalf("unknown queue: %v", got)
	}
	f := a.ok("queue.info", fmt.Sprintf(`"queue":%q`, q))
	if len(f) != 7 {
		t.Fatalf("queue.info reply %s: want op, rid, ready, inflight, delayed, dead, consumers", f)
	}
	for _, k := range []string{"ready", "inflight", "delayed", "dead", "consumers"} {
		if string(f[k]) != "0" {
			t.Fatalf("unknown queue %s: %s", k, f)
		}
	}
	// queue.info created nothing: a consume there still sees the defaults.
	a.enqueue(q, env("alice", "1"), "")
	a.enqueue(q, env("alice", "2"), "")
	a.enqueue(q, env("alice", "3"), "")
	a.enqueue(q, env("alice", "4"), `"delay_ms":60000`)
	if got := a.info(q); got != [5]int64{3, 0, 1, 0, 0} {
		t.Fatalf("after enqueues %v", got)
	}
	ca := a.consume(q, "")
	da := a.deliver(ca)
	if got := a.info(q); got != [5]int64{2, 1, 1, 0, 1} {
		t.Fatalf("one consumer %v", got)
	}
	cb := b.consume(q, "")
	db := b.deliver(cb)
	if got := a.info(q); got != [5]int64{1, 2, 1, 0, 2} {
		t.Fatalf("two consumers %v", got)
	}
	a.settle("reject", da, "")
	a.deliver(ca)
	if got := a.info(q); got != [5]int64{0, 2, 1, 1, 2} {
		t.Fatalf("after reject %v", got)
	}
	b.settle("ack", db, "")
	b.ok("cancel", `"consumer":`+strconv.Quote(cb))
	if got := a.info(q); got != [5]int64{0, 1, 1, 1, 1} {
		t.Fatalf("after ack and cancel %v", got)
	}
	if got := a.info(q + ".dlq"); got != [5]int64{1, 0, 0, 0, 0} {
		t.Fatalf("dlq %v", got)
	}
}

func Test_Cancel_KeepsLeases(t *testing.T) {
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.enqueue(q, env("alice", "1"), "")
	cons := rc.consume(q, `"prefetch":5`)
	d := rc.deliver(cons)
	rc.ok("cancel", `"consumer":`+strconv.Quote(cons))
	rc.enqueue(q, env("alice", "2"), "")
	rc.barrier()
	noFrame(t, rc, "delivery after cancel", isOp("deliver"))
	if got := rc.info(q); got != [5]int64{1, 1, 0, 0, 0} {
		t.Fatalf("info %v", got)
	}
	if f := rc.settle("ack", d, ""); f.op() != "ok" {
		t.Fatalf("ack after cancel: %s", f)
	}
	rc.callErr("not_found", "cancel", `"consumer":`+strconv.Quote(cons))
	rc.barrier()
	noFrame(t, rc, "delivery after cancel", isOp("deliver"))
	if got := rc.info(q); got != [5]int64{1, 0, 0, 0, 0} {
		t.Fatalf("info %v", got)
	}
	// A new consumer takes the waiting message.
	c2 := rc.consume(q, "")
	if d := rc.deliver(c2); d.int("seq") != 2 {
		t.Fatalf("deliver %s", d)
	}
}

func Test_Close_ReleasesLeases(t *testing.T) {
	c, a := one(t, "alice")
	b := login(t, c, c.Nodes[0].URL, "alice")
	q := qname(t, "q")
	// A long backoff: a closed connection must release at once anyway.
	a.ok("queue.declare", fmt.Sprintf(`"queue":%q,"backoff_ms":[60000]`, q))
	msg := env("alice", `"hold"`)
	a.enqueue(q, msg, "")
	ca := a.consume(q, `"lease_ms":60000`)
	d := a.deliver(ca)
	cb := b.consume(q, "")
	b.barrier()
	noFrame(t, b, "delivery of a leased message", isOp("deliver"))
	a.closeNow()
	d2 := b.deliver(cb)
	if d2.int("seq") != d.int("seq") || string(d2["attempt"]) != "2" || string(d2["msg"]) != msg {
		t.Fatalf("redelivery %s", d2)
	}
	if got := b.info(q); got != [5]int64{0, 1, 0, 0, 1} {
		t.Fatalf("info %v", got)
	}
}
