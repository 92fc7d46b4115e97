package transport_test

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// publish publishes msg on topic and returns receivers, requiring dup false.
func publish(t *testing.T, rc *rawConn, topic, msg string) int64 {
	t.Helper()
	f := rc.ok("publish", fmt.Sprintf(`"topic":%q,"msg":%s`, topic, msg))
	if string(f["dup"]) != "false" {
		t.Fatalf("publish %s: %s, want dup false", topic, f)
	}
	return f.int("receivers")
}

func subscribe(t *testing.T, rc *rawConn, pattern string) string {
	t.Helper()
	f := rc.ok("subscribe", fmt.Sprintf(`"topic":%q`, pattern))
	if len(f) != 3 || !strings.HasPrefix(f.str("sub"), "s") {
		t.Fatalf("subscribe %s: %s, want op, rid and sub", pattern, f)
	}
	return f.str("sub")
}

func Test_PubSub_Wildcards(t *testing.T) {
	c, s := one(t, "alice")
	p := login(t, c, c.Nodes[0].URL, "bob")
	subs := map[string]string{}
	for _, pat := range []string{"a.*", "a.>", "a.b.c", ">", "*.b", "a.*.c", "*", "b.>"} {
		subs[subscribe(t, s, pat)] = pat
	}
	for _, tc := range []struct {
		topic string
		want  []string
	}{
		{"a.b", []string{"a.*", "a.>", ">", "*.b"}},
		{"a.b.c", []string{"a.>", "a.b.c", ">", "a.*.c"}},
		{"a", []string{">", "*"}},
		{"a.x.c.d", []string{"a.>", ">"}},
		{"b", []string{">", "*"}},
		{"b.b", []string{">", "*.b", "b.>"}},
		{"A.b", []string{">", "*.b"}},
		{"x-y_z.9", []string{">"}},
	} {
		msg := env("bob", strconv.Quote(tc.topic))
		if n := publish(t, p, tc.topic, msg); n != int64(len(tc.want)) {
			t.Fatalf("publish %s: receivers %d, want %d", tc.topic, n, len(tc.want))
		}
		s.barrier()
		var got []string
		for _, ev := range s.take(isOp("event")) {
			if ev.str("topic") != tc.topic || string(ev["msg"]) != msg || len(ev) != 4 {
				t.Fatalf("event %s for %s", ev, tc.topic)
			}
			got = append(got, subs[ev.str("sub")])
		}
		sort.Strings(got)
		sort.Strings(tc.want)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Fatalf("topic %s reached %v, want %v", tc.topic, got, tc.want)
		}
	}
	p.barrier()
	noFrame(t, p, "event for a publisher without subscriptions", isOp("event"))
}

func Test_PubSub_InvalidTopics(t *testing.T) {
	_, rc := one(t, "alice")
	for _, pat := range []string{"", ".", "a..b", ".a", "a.", "a.b*", "a*", "a.>.b", ">.a", "a b", "a.*x", "a/b", "a.#", "é", "a.>>", "**"} {
		rc.callErr("bad_request", "subscribe", fmt.Sprintf(`"topic":%q`, pat))
	}
	for _, topic := range []string{"", "a.*", "a.>", "*", ">", "a..b", "a.", "a b", "a.b*"} {
		rc.callErr("bad_request", "publish", fmt.Sprintf(`"topic":%q,"msg":%s`, topic, env("alice", "1")))
	}
	// Nothing was subscribed.
	if n := publish(t, rc, "a.b", env("alice", "1")); n != 0 {
		t.Fatalf("receivers %d, want 0", n)
	}
	rc.barrier()
	noFrame(t, rc, "event", isOp("event"))
}

func Test_PubSub_SelfDelivery(t *testing.T) {
	_, rc := one(t, "alice")
	sub := subscribe(t, rc, "self.>")
	msg := env("alice", `{"k":[1,2,3]}`)
	if n := publish(t, rc, "self.echo", msg); n != 1 {
		t.Fatalf("receivers %d, want 1", n)
	}
	ev := rc.next(isOp("event"))
	if ev.str("sub") != sub || ev.str("topic") != "self.echo" || string(ev["msg"]) != msg || ev.has("rid") {
		t.Fatalf("event %s", ev)
	}
}

func Test_PubSub_DuplicatePublish(t *testing.T) {
	c, s := one(t, "alice")
	p := login(t, c, c.Nodes[0].URL, "bob")
	sub := subscribe(t, s, "dup.t")
	id := newID()
	msg := envID("bob", id, `"once"`)
	if n := publish(t, p, "dup.t", msg); n != 1 {
		t.Fatalf("receivers %d", n)
	}
	if ev := s.next(isOp("event")); ev.str("sub") != sub || string(ev["msg"]) != msg {
		t.Fatalf("event %s", ev)
	}
	f := p.ok("publish", `"topic":"dup.t","msg":`+msg)
	if string(f["dup"]) != "true" || string(f["receivers"]) != "0" {
		t.Fatalf("duplicate publish: %s, want dup true receivers 0", f)
	}
	s.barrier()
	noFrame(t, s, "event for a duplicate publish", isOp("event"))
	p.callErr("conflict", "publish", `"topic":"dup.t","msg":`+envID("bob", id, `"twice"`))
	p.callErr("conflict", "publish", `"topic":"dup.u","msg":`+msg)
	p.callErr("conflict", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, qname(t, "q"), msg))
	s.barrier()
	noFrame(t, s, "event for a refused publish", isOp("event"))
}

func Test_PubSub_Unsubscribe(t *testing.T) {
	c, s := one(t, "alice")
	p := login(t, c, c.Nodes[0].URL, "bob")
	s1 := subscribe(t, s, "u.t")
	s2 := subscribe(t, s, "u.*")
	if s1 == s2 {
		t.Fatalf("two subscriptions share id %s", s1)
	}
	if n := publish(t, p, "u.t", env("bob", "1")); n != 2 {
		t.Fatalf("receivers %d, want 2", n)
	}
	s.barrier()
	if evs := s.take(isOp("event")); len(evs) != 2 || evs[0].str("sub") == evs[1].str("sub") {
		t.Fatalf("events %v", evs)
	}
	if f := s.ok("unsubscribe", `"sub":`+strconv.Quote(s1)); len(f) != 2 {
		t.Fatalf("unsubscribe: %s, want just op and rid", f)
	}
	if n := publish(t, p, "u.t", env("bob", "2")); n != 1 {
		t.Fatalf("receivers %d, want 1", n)
	}
	s.barrier()
	if evs := s.take(isOp("event")); len(evs) != 1 || evs[0].str("sub") != s2 {
		t.Fatalf("events after unsubscribe %v", evs)
	}
	s.callErr("not_found", "unsubscribe", `"sub":`+strconv.Quote(s1))
	s.ok("unsubscribe", `"sub":`+strconv.Quote(s2))
	if n := publish(t, p, "u.t", env("bob", "3")); n != 0 {
		t.Fatalf("receivers %d, want 0", n)
	}
	s.barrier()
	noFrame(t, s, "event after unsubscribe", isOp("event"))
}

func Test_PubSub_CloseEndsSubscriptions(t *testing.T) {
	c, s := one(t, "alice")
	p := login(t, c, c.Nodes[0].URL, "bob")
	subscribe(t, s, "gone.t")
	s.closeNow()
	// The subscription ends once the close is applied.
	deadline := time.Now().Add(waitTime)
	for publish(t, p, "gone.t", env("bob", "1")) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("subscription of a closed connection still counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func Test_PubSub_PublishOrder(t *testing.T) {
	c, s := one(t, "alice")
	p := login(t, c, c.Nodes[0].URL, "bob")
	subscribe(t, s, "ord.>")
	const n = 30
	// Pipelined: all requests outstanding at once.
	for i := range n {
		p.sendText(fmt.Sprintf(`{"op":"publish","rid":%d,"topic":"ord.x","msg":%s}`, 5000+i, env("bob", strconv.Itoa(i))))
	}
	for i := range n {
		f := p.next(isReply([]byte(strconv.Itoa(5000 + i))))
		if f.op() != "ok" || string(f["receivers"]) != "1" {
			t.Fatalf("publish %d: %s", i, f)
		}
	}
	for i := range n {
		ev := s.next(isOp("event"))
		if !strings.Contains(string(ev["msg"]), `"body":`+strconv.Itoa(i)+`}`) {
			t.Fatalf("event %d: %s", i, ev["msg"])
		}
	}
}
