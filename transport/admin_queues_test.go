package transport_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/queue"
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

// peekSeqs lists the seqs of a queue's messages through the admin API.
func (a *adminAPI) peekSeqs(t *testing.T, q string) []uint64 {
	t.Helper()
	var msgs []transport.AdminMessage
	raw, _ := json.Marshal(a.wantList(t, "/v1/queues/"+q+"/messages"))
	if err := json.Unmarshal(raw, &msgs); err != nil {
		t.Fatal(err)
	}
	out := []uint64{}
	for _, m := range msgs {
		out = append(out, m.Seq)
	}
	return out
}

// The operator redrives dead letters and deletes messages; bad requests
// and refusals (an unknown queue, a message that is no dead letter, a
// leased one, a full target) change nothing.
func TestAdminQueueRedriveDelete(t *testing.T) {
	c, rc := one(t, "alice")
	admin := serveAdmin(t, transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	q := qname(t, "q")
	dlq := q + ".dlq"
	rc.ok("queue.declare", `"queue":"`+q+`","max_attempts":1`)
	for _, body := range []string{`"one"`, `"two"`, `"three"`} {
		rc.enqueue(q, env("alice", body), "")
	}
	cons := rc.consume(q, `"prefetch":3,"lease_ms":60000`)
	for range 3 {
		if f := rc.settle("reject", rc.deliver(cons), `"reason":"bad"`); f.op() != "ok" {
			t.Fatalf("reject: %s", f)
		}
	}
	rc.ok("cancel", `"consumer":`+strconv.Quote(cons))
	plain := rc.enqueue(dlq, env("alice", `"not dead"`), "") // dlq/4: no dead letter
	rc.barrier()
	if got := admin.peekSeqs(t, dlq); !reflect.DeepEqual(got, []uint64{1, 2, 3, 4}) || plain != 4 {
		t.Fatalf("%s holds %v", dlq, got)
	}

	// Refused: nothing moves.
	redrive := "/v1/queues/" + dlq + "/redrive"
	for _, c := range []struct {
		status     int
		path, body string
		code       string
	}{
		{400, redrive, `{"seqs":[0]}`, "bad_request"},
		{400, redrive, `{"seqs":[1,1]}`, "bad_request"},
		{400, redrive, `{"seqs":[1],"limit":3}`, "bad_request"},
		{400, redrive, `{"limit":-1}`, "bad_request"},
		{400, redrive, `{"to":"no good"}`, "bad_request"},
		{400, redrive, `{"to":"` + dlq + `"}`, "bad_request"},
		{400, redrive, `{"seqz":[1]}`, "bad_request"},
		{400, redrive, `{"seqs":[1,` + strconv.FormatUint(plain, 10) + `]}`, "bad_request"}, // not a dead letter
		{404, redrive, `{"seqs":[1,99]}`, "not_found"},
		{404, redrive, `{"seqs":[1],"to":"no.such.queue"}`, "not_found"},
		{404, "/v1/queues/no.such.queue.dlq/redrive", `{}`, "not_found"},
		{400, "/v1/queues/bad%20name/redrive", `{}`, "bad_request"},
	} {
		out := admin.want(c.status, "POST", c.path, c.body, "")
		if string(out["code"]) != `"`+c.code+`"` {
			t.Fatalf("POST %s %s: %s, want code %s", c.path, c.body, mustMarshal(out), c.code)
		}
	}
	if got := admin.peekSeqs(t, dlq); !reflect.DeepEqual(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("after refusals, %s holds %v", dlq, got)
	}
	if got := admin.peekSeqs(t, q); len(got) != 0 {
		t.Fatalf("after refusals, %s holds %v", q, got)
	}

	// A target with room for one of two: full, nothing moves.
	small := qname(t, "small")
	rc.ok("queue.declare", `"queue":"`+small+`","max_len":1`)
	if out := admin.want(409, "POST", redrive, `{"seqs":[1,2],"to":"`+small+`"}`, ""); string(out["code"]) != `"full"` {
		t.Fatalf("full target: %s", mustMarshal(out))
	}

	// By seqs, then every dead letter left (the plain message stays).
	var got transport.AdminRedrive
	raw, _ := json.Marshal(admin.want(200, "POST", redrive, `{"seqs":[2]}`, ""))
	if err := json.Unmarshal(raw, &got); err != nil || got.Moved != 1 || !reflect.DeepEqual(got.Seqs, []uint64{4}) ||
		got.Messages[0] != (queue.Moved{From: 2, Queue: q, Seq: 4}) {
		t.Fatalf("redrive by seqs: %s %v", raw, err)
	}
	raw, _ = json.Marshal(admin.want(200, "POST", redrive, "", ""))
	if err := json.Unmarshal(raw, &got); err != nil || got.Moved != 2 || !reflect.DeepEqual(got.Seqs, []uint64{5, 6}) {
		t.Fatalf("redrive of all: %s %v", raw, err)
	}
	if got := admin.peekSeqs(t, dlq); !reflect.DeepEqual(got, []uint64{4}) {
		t.Fatalf("%s holds %v", dlq, got)
	}
	var msgs []transport.AdminMessage
	raw, _ = json.Marshal(admin.wantList(t, "/v1/queues/"+q+"/messages"))
	if err := json.Unmarshal(raw, &msgs); err != nil || len(msgs) != 3 || msgs[0].Seq != 4 || msgs[0].State != "ready" || msgs[0].Attempts != 0 || msgs[0].Dead != nil ||
		!strings.Contains(string(msgs[0].Envelope), `"two"`) {
		t.Fatalf("redriven messages: %+v %v", msgs, err)
	}
	if info := rc.info(q); info != [5]int64{3, 0, 0, 3, 0} {
		t.Fatalf("queue.info %s: %v", q, info)
	}

	// Delete: bad seqs, unknown ones, a leased one unless forced.
	for _, c := range []struct {
		status int
		path   string
	}{
		{400, "/v1/queues/" + q + "/messages/abc"},
		{400, "/v1/queues/" + q + "/messages/0"},
		{400, "/v1/queues/" + q + "/messages/18446744073709551615"},
		{400, "/v1/queues/" + q + "/messages/4?force=maybe"},
		{404, "/v1/queues/" + q + "/messages/99"},
		{404, "/v1/queues/no.such.queue/messages/1"},
	} {
		admin.want(c.status, "DELETE", c.path, "", "")
	}
	out := admin.want(200, "DELETE", "/v1/queues/"+dlq+"/messages/4", "", "")
	if string(out["state"]) != `"ready"` || string(out["seq"]) != "4" {
		t.Fatalf("delete: %s", mustMarshal(out))
	}
	cons = rc.consume(q, `"prefetch":1,"lease_ms":60000`)
	d := rc.deliver(cons)
	seq := strconv.FormatInt(d.int("seq"), 10)
	if out := admin.want(409, "DELETE", "/v1/queues/"+q+"/messages/"+seq, "", ""); string(out["code"]) != `"conflict"` {
		t.Fatalf("delete of a leased message: %s", mustMarshal(out))
	}
	out = admin.want(200, "DELETE", "/v1/queues/"+q+"/messages/"+seq+"?force=true", "", "")
	if string(out["state"]) != `"inflight"` || string(out["holder"]) == "" {
		t.Fatalf("forced delete: %s", mustMarshal(out))
	}
	// The consumer's ack finds nothing; its capacity went to the next one.
	wantErr(t, rc.settle("ack", d, ""), "not_found")
	if next := rc.deliver(cons); next.int("seq") == d.int("seq") {
		t.Fatalf("redelivered the deleted message: %s", next)
	}

	// The audit log names the operator.
	resp, err := http.Get(admin.url + "/v1/audit/entries?limit=10000")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`"kind":"queue.redrive","actor":"operator:local","subject":"` + dlq + `/2 (1 moved)","outcome":"ok"`,
		`"kind":"queue.redrive","actor":"operator:local","subject":"` + dlq + `/1,4","outcome":"bad_request"`,
		`"kind":"queue.delete","actor":"operator:local","subject":"` + q + `/` + seq + ` (leased to `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

// Redriving more dead letters than one command moves: the node proposes
// them queue.MaxRedrive at a time and answers once, and "limit" bounds
// the whole request.
func TestAdminQueueRedriveManyCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("enqueues over a thousand messages")
	}
	c, rc := one(t, "alice")
	admin := serveAdmin(t, transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	q := qname(t, "q")
	total := queue.MaxRedrive + 5
	rc.ok("queue.declare", `"queue":"`+q+`","max_attempts":1`)
	for i := range total {
		rc.enqueue(q, env("alice", strconv.Itoa(i)), "")
	}
	// Every message leased by one connection, which then goes away: each
	// dies on its last attempt.
	worker := login(t, c, c.Nodes[0].URL, "bob")
	worker.consume(q, `"prefetch":1000,"lease_ms":60000`)
	worker.consume(q, `"prefetch":1000,"lease_ms":60000`)
	testcluster.WaitFor(t, 10*time.Second, func() bool { return rc.info(q)[1] == int64(total) })
	worker.closeNow()
	testcluster.WaitFor(t, 10*time.Second, func() bool { return rc.info(q + ".dlq")[0] == int64(total) })

	var got transport.AdminRedrive
	raw, _ := json.Marshal(admin.want(200, "POST", "/v1/queues/"+q+".dlq/redrive", `{"limit":1001}`, ""))
	if err := json.Unmarshal(raw, &got); err != nil || got.Moved != 1001 || len(got.Seqs) != 1001 || got.Seqs[1000] != uint64(total+1001) {
		t.Fatalf("limit 1001: moved %d, %d seqs, %v", got.Moved, len(got.Seqs), err)
	}
	raw, _ = json.Marshal(admin.want(200, "POST", "/v1/queues/"+q+".dlq/redrive", `{}`, ""))
	if err := json.Unmarshal(raw, &got); err != nil || got.Moved != total-1001 {
		t.Fatalf("the rest: moved %d, %v", got.Moved, err)
	}
	if info := rc.info(q); info != [5]int64{int64(total), 0, 0, int64(total), 0} {
		t.Fatalf("queue.info %s: %v", q, info)
	}
}

// A dead letter's page shows its timeline: the enqueue, each delivery
// and its nack or reject (with the reason), the dead-lettering; after a
// redrive the message carries it on, with the operator's redrive.
func TestAdminQueueTimeline(t *testing.T) {
	c, rc := one(t, "alice")
	admin := serveAdmin(t, transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	q := qname(t, "q")
	rc.ok("queue.declare", `"queue":"`+q+`","max_attempts":2,"backoff_ms":[]`)
	rc.enqueue(q, env("alice", `"one"`), "")
	cons := rc.consume(q, `"prefetch":1,"lease_ms":60000`)
	if f := rc.settle("nack", rc.deliver(cons), ""); f.op() != "ok" {
		t.Fatalf("nack: %s", f)
	}
	if f := rc.settle("reject", rc.deliver(cons), `"reason":"unparseable"`); f.op() != "ok" {
		t.Fatalf("reject: %s", f)
	}
	rc.ok("cancel", `"consumer":`+strconv.Quote(cons))
	rc.barrier()

	// The JSON as the web UI reads it.
	type event struct {
		AtMs     int64  `json:"at_ms"`
		Event    string `json:"event"`
		Attempt  int    `json:"attempt"`
		Who      string `json:"who"`
		Consumer uint64 `json:"consumer"`
		Detail   string `json:"detail"`
	}
	timeline := func(q string) []event {
		t.Helper()
		msgs := admin.wantList(t, "/v1/queues/"+q+"/messages")
		if len(msgs) != 1 {
			t.Fatalf("%s holds %d messages", q, len(msgs))
		}
		var m struct {
			Timeline []event `json:"timeline"`
		}
		if err := json.Unmarshal(msgs[0], &m); err != nil {
			t.Fatal(err)
		}
		for i, e := range m.Timeline {
			if e.AtMs < time.Now().Add(-time.Minute).UnixMilli() || (i > 0 && e.AtMs < m.Timeline[i-1].AtMs) {
				t.Fatalf("%s: event %d at %d: %s", q, i, e.AtMs, msgs[0])
			}
		}
		return m.Timeline
	}
	brief := func(es []event) string {
		var parts []string
		for _, e := range es {
			s := e.Event + "/" + strconv.Itoa(e.Attempt)
			if e.Who != "" {
				s += " " + e.Who
			}
			if e.Detail != "" {
				s += ": " + e.Detail
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, "; ")
	}
	dead := timeline(q + ".dlq")
	conn := dead[1].Who
	if dead[1].Consumer == 0 || !strings.HasPrefix(conn, "n1/") {
		t.Fatalf("delivery event %+v", dead[1])
	}
	want := "enqueued/0 alice; delivered/1 " + conn + "; nacked/1 " + conn + "; delivered/2 " + conn +
		"; rejected/2 " + conn + ": unparseable; dead/2: rejected: unparseable"
	if got := brief(dead); got != want {
		t.Fatalf("dead letter's timeline:\n%s\nwant\n%s", got, want)
	}

	admin.want(200, "POST", "/v1/queues/"+q+".dlq/redrive", `{}`, "")
	if got, want := brief(timeline(q)), want+"; redriven/0 operator:local: from "+q+".dlq/1"; got != want {
		t.Fatalf("redriven message's timeline:\n%s\nwant\n%s", got, want)
	}
}
