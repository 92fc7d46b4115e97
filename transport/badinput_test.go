package transport_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/transport"
)

// seeded logs in as alice on a fresh node and fills queue q with one ready
// message, so that tests can show bad input changed nothing.
func seeded(t *testing.T) (*rawConn, string, [5]int64) {
	t.Helper()
	_, rc := one(t, "alice")
	q := qname(t, "q")
	rc.enqueue(q, env("alice", `"seed"`), "")
	before := rc.info(q)
	if before != [5]int64{1, 0, 0, 0, 0} {
		t.Fatalf("seeded info %v", before)
	}
	return rc, q, before
}

// unchanged checks the queue counters did not move and the connection
// still serves requests.
func unchanged(t *testing.T, rc *rawConn, q string, before [5]int64) {
	t.Helper()
	if got := rc.info(q); got != before {
		t.Fatalf("queue.info %v, want unchanged %v", got, before)
	}
	rc.ping()
}

// noRidErr reads the next frame and requires err code without a rid.
func noRidErr(t *testing.T, rc *rawConn, code, sent string) {
	t.Helper()
	f := rc.next(isOp("err"))
	if f.str("code") != code || f.has("rid") || f.str("msg") == "" {
		t.Fatalf("sent %q: got %s, want err %s without rid", sent, f, code)
	}
}

func Test_Hello_Fields(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	rc := dialRaw(t, c, c.Nodes[0].URL)
	h := rc.hello
	if string(h["v"]) != "1" {
		t.Errorf("hello v %s, want 1", h["v"])
	}
	if h.str("node") != c.Nodes[0].ID {
		t.Errorf("hello node %s, want %s", h["node"], c.Nodes[0].ID)
	}
	if string(h["max_frame"]) != "1048576" {
		t.Errorf("hello max_frame %s, want 1048576", h["max_frame"])
	}
	nonce := h.str("nonce")
	raw, err := base64.StdEncoding.DecodeString(nonce)
	if err != nil || len(raw) != 32 || base64.StdEncoding.EncodeToString(raw) != nonce {
		t.Errorf("hello nonce %q: not standard padded base64 of 32 bytes (%d bytes, %v)", nonce, len(raw), err)
	}
	// Every connection gets a fresh nonce.
	if other := dialRaw(t, c, c.Nodes[0].URL).hello.str("nonce"); other == nonce {
		t.Errorf("two connections got the same nonce %q", nonce)
	}
}

func Test_BadInput_MalformedJSON(t *testing.T) {
	rc, q, before := seeded(t)
	enq := fmt.Sprintf(`{"op":"enqueue","rid":5,"queue":%q,"msg":%s`, q, env("alice", "1"))
	for _, s := range []string{
		enq, // truncated: no closing brace
		enq + `}}`,
		`not json`,
		`{"op":"ping","rid":7,}`,
		`{'op':'ping','rid':8}`,
		``,
	} {
		rc.sendText(s)
		noRidErr(t, rc, "bad_request", s)
		unchanged(t, rc, q, before)
	}
}

func Test_BadInput_NotAnObject(t *testing.T) {
	rc, q, before := seeded(t)
	for _, s := range []string{
		`[{"op":"ping","rid":1}]`, `[]`, `42`, `-1.5`, `"ping"`, `true`, `null`,
	} {
		rc.sendText(s)
		noRidErr(t, rc, "bad_request", s)
		unchanged(t, rc, q, before)
	}
}

func Test_BadInput_InvalidRid(t *testing.T) {
	rc, q, before := seeded(t)
	long := strings.Repeat("r", 65)
	multibyte := strings.Repeat("é", 33) // 66 bytes
	for _, rid := range []string{
		"", // missing
		`1.5`, `1.0`, `{"n":1}`, `[1]`, `true`, `null`,
		strconv.Quote(long), strconv.Quote(multibyte),
		`9007199254740993`,         // 2^53 + 1
		`-9007199254740993`,        // -(2^53 + 1)
		`18446744073709551617`,     // beyond uint64
		`123456789012345678901234`, // far beyond
	} {
		s := fmt.Sprintf(`{"op":"enqueue","rid":%s,"queue":%q,"msg":%s}`, rid, q, env("alice", "1"))
		if rid == "" {
			s = fmt.Sprintf(`{"op":"enqueue","queue":%q,"msg":%s}`, q, env("alice", "1"))
		}
		rc.sendText(s)
		noRidErr(t, rc, "bad_request", s)
		unchanged(t, rc, q, before)
	}
}

func Test_BadInput_RidEcho(t *testing.T) {
	_, rc := one(t, "alice")
	for _, rid := range []string{
		`0`, `7`, `-12`, `9007199254740992`, `-9007199254740992`,
		`""`, `"abc"`, `"7"`, strconv.Quote(strings.Repeat("r", 64)), strconv.Quote(strings.Repeat("é", 32)),
	} {
		rc.sendText(`{"op":"ping","rid":` + rid + `}`)
		f := rc.next(isOp("ok"))
		if string(f["rid"]) != rid {
			t.Errorf("rid %s echoed as %s", rid, f["rid"])
		}
	}
	// Errors echo the rid the same way.
	rc.sendText(`{"op":"nope","rid":"x-1"}`)
	if f := rc.next(isOp("err")); string(f["rid"]) != `"x-1"` {
		t.Errorf("err rid %s, want \"x-1\"", f["rid"])
	}
	rc.sendText(`{"op":"nope","rid":-3}`)
	if f := rc.next(isOp("err")); string(f["rid"]) != `-3` {
		t.Errorf("err rid %s, want -3", f["rid"])
	}
}

func Test_BadInput_UnknownOp(t *testing.T) {
	rc, q, before := seeded(t)
	for _, s := range []string{
		`{"op":"frobnicate","rid":11}`,
		`{"op":"","rid":11}`,
		`{"op":"ENQUEUE","rid":11,"queue":"` + q + `","msg":` + env("alice", "1") + `}`,
		`{"rid":11}`,           // missing op
		`{"op":null,"rid":11}`, // op null
		`{"op":5,"rid":11}`,    // op not a string
		`{"op":["ping"],"rid":11}`,
	} {
		rc.sendText(s)
		f := rc.next(isOp("err"))
		if f.str("code") != "bad_request" || string(f["rid"]) != "11" {
			t.Fatalf("sent %s: got %s, want err bad_request rid 11", s, f)
		}
		unchanged(t, rc, q, before)
	}
}

func Test_BadInput_Fields(t *testing.T) {
	rc, q, before := seeded(t)
	Q := strconv.Quote(q)
	m := env("alice", "1")
	now := time.Now().UnixMilli()
	for _, fields := range []struct{ op, fields string }{
		// enqueue
		{"enqueue", `"msg":` + m},
		{"enqueue", `"queue":null,"msg":` + m},
		{"enqueue", `"queue":12,"msg":` + m},
		{"enqueue", `"queue":"","msg":` + m},
		{"enqueue", `"queue":"a b","msg":` + m},
		{"enqueue", `"queue":"` + strings.Repeat("q", 201) + `","msg":` + m},
		{"enqueue", `"queue":` + Q},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"priority":10`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"priority":-1`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"priority":1.5`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"priority":"1"`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"delay_ms":-1`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"delay_ms":2592000001`},
		{"enqueue", `"queue":` + Q + `,"msg":` + m + `,"delay_ms":"5"`},
		{"enqueue", `"queue":` + Q + `,"msg":"text"`},
		{"enqueue", `"queue":` + Q + `,"msg":[1]`},
		{"enqueue", `"queue":` + Q + `,"msg":7`},
		{"enqueue", `"queue":` + Q + `,"msg":null`},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"from":"alice","ts":%d}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","ts":%d}`, now)},
		{"enqueue", `"queue":` + Q + `,"msg":{"id":"x1","from":"alice"}`},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":"alice","ts":"%d"}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":"alice","ts":%d.5}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"","from":"alice","ts":%d}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":%q,"from":"alice","ts":%d}`, strings.Repeat("i", 129), now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":5,"from":"alice","ts":%d}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":7,"ts":%d}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":"alice","ts":%d,"intent":3}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":"alice","ts":%d,"parent":{}}`, now)},
		{"enqueue", `"queue":` + Q + fmt.Sprintf(`,"msg":{"id":"x1","from":"alice","ts":%d,"sig":"abc"}`, now)},
		// send
		{"send", `"msg":` + m},
		{"send", `"to":"b o b","msg":` + m},
		{"send", `"to":5,"msg":` + m},
		// consume
		{"consume", `"prefetch":1`},
		{"consume", `"queue":5`},
		{"consume", `"queue":` + Q + `,"prefetch":0`},
		{"consume", `"queue":` + Q + `,"prefetch":1001`},
		{"consume", `"queue":` + Q + `,"prefetch":"2"`},
		{"consume", `"queue":` + Q + `,"lease_ms":99`},
		{"consume", `"queue":` + Q + `,"lease_ms":3600001`},
		{"consume", `"queue":` + Q + `,"lease_ms":1000.5`},
		// settle
		{"ack", `"queue":` + Q + `,"attempt":1`},
		{"ack", `"queue":` + Q + `,"seq":1`},
		{"ack", `"seq":1,"attempt":1`},
		{"ack", `"queue":` + Q + `,"seq":"1","attempt":1`},
		{"ack", `"queue":` + Q + `,"seq":0,"attempt":1`},
		{"ack", `"queue":` + Q + `,"seq":1,"attempt":0`},
		{"nack", `"queue":` + Q + `,"seq":1,"attempt":1,"delay_ms":-1`},
		{"nack", `"queue":` + Q + `,"seq":1,"attempt":1,"delay_ms":"1"`},
		{"nack", `"queue":` + Q + `,"seq":1,"attempt":1,"reason":5`},
		{"nack", `"queue":` + Q + `,"seq":1,"attempt":1,"reason":"` + strings.Repeat("r", 1025) + `"`},
		{"reject", `"queue":` + Q + `,"seq":1,"attempt":1,"reason":5`},
		{"reject", `"queue":` + Q + `,"seq":1,"attempt":1,"reason":"` + strings.Repeat("r", 1025) + `"`},
		{"extend", `"queue":` + Q + `,"seq":1,"attempt":1`},
		{"extend", `"queue":` + Q + `,"seq":1,"attempt":1,"lease_ms":99`},
		{"extend", `"queue":` + Q + `,"seq":1,"attempt":1,"lease_ms":3600001`},
		// cancel, unsubscribe
		{"cancel", ``},
		{"cancel", `"consumer":1`},
		{"unsubscribe", ``},
		{"unsubscribe", `"sub":1`},
		// queue.declare, queue.info
		{"queue.declare", `"max_attempts":2`},
		{"queue.declare", `"queue":` + Q + `,"max_attempts":0`},
		{"queue.declare", `"queue":` + Q + `,"max_attempts":"2"`},
		{"queue.declare", `"queue":` + Q + `,"backoff_ms":5`},
		{"queue.declare", `"queue":` + Q + `,"backoff_ms":[-1]`},
		{"queue.declare", `"queue":` + Q + `,"backoff_ms":["1"]`},
		{"queue.declare", `"queue":` + Q + `,"dlq":"a b"`},
		{"queue.declare", `"queue":` + Q + `,"dlq":` + Q},
		{"queue.declare", `"queue":` + Q + `,"max_len":"3"`},
		{"queue.declare", `"queue":` + Q + `,"max_len":-1`},
		{"queue.info", ``},
		{"queue.info", `"queue":[]`},
		// publish, subscribe
		{"publish", `"msg":` + m},
		{"publish", `"topic":"t"`},
		{"publish", `"topic":3,"msg":` + m},
		{"subscribe", ``},
		{"subscribe", `"topic":true`},
		// auth after auth is covered elsewhere; ping takes no fields.
	} {
		f := rc.callErr("bad_request", fields.op, fields.fields)
		if f.str("msg") == "" {
			t.Fatalf("%s %s: err without msg", fields.op, fields.fields)
		}
		unchanged(t, rc, q, before)
	}
	// The declare attempts changed nothing either.
	d := rc.ok("queue.declare", `"queue":`+Q)
	if string(d["max_attempts"]) != "5" || string(d["backoff_ms"]) != "[1000,5000,30000]" ||
		d.str("dlq") != q+".dlq" || string(d["max_len"]) != "null" {
		t.Fatalf("settings changed by rejected declares: %s", d)
	}
}

func Test_BadInput_WrongSender(t *testing.T) {
	rc, q, before := seeded(t)
	id := newID()
	rc.callErr("forbidden", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, envID("mallory", id, "1")))
	unchanged(t, rc, q, before)
	rc.callErr("forbidden", "publish", fmt.Sprintf(`"topic":"t","msg":%s`, envID("mallory", newID(), "1")))
	rc.callErr("forbidden", "send", fmt.Sprintf(`"to":"bob","msg":%s`, envID("bob", newID(), "1")))
	unchanged(t, rc, q, before)
	// The refused envelope was not remembered: its id is still free.
	rc.enqueue(q, envID("alice", id, "1"), "")
}

func Test_BadInput_Replay(t *testing.T) {
	rc, q, before := seeded(t)
	for _, off := range []int64{-10 * 60 * 1000, 10 * 60 * 1000} {
		id := newID()
		msg := fmt.Sprintf(`{"id":%q,"from":"alice","ts":%d}`, id, time.Now().UnixMilli()+off)
		rc.callErr("replay", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, msg))
		unchanged(t, rc, q, before)
		rc.callErr("replay", "publish", `"topic":"t","msg":`+msg)
		unchanged(t, rc, q, before)
	}
}

// bigEnqueue builds an enqueue frame of exactly size bytes with rid 77.
func bigEnqueue(t *testing.T, q string, size int) string {
	t.Helper()
	head := fmt.Sprintf(`{"op":"enqueue","rid":77,"queue":%q,"msg":{"id":%q,"from":"alice","ts":%d,"body":"`,
		q, newID(), time.Now().UnixMilli())
	s := head + strings.Repeat("x", size-len(head)-3) + `"}}`
	if len(s) != size {
		t.Fatalf("built %d bytes, want %d", len(s), size)
	}
	return s
}

// wantTooLarge reads an err too_large without rid, then a close 1009.
func wantTooLarge(t *testing.T, rc *rawConn) {
	t.Helper()
	f, err := rc.readWithin(waitTime)
	if err != nil {
		t.Fatalf("want err too_large, got %v", err)
	}
	if f.op() != "err" || f.str("code") != "too_large" || f.has("rid") {
		t.Fatalf("got %s, want err too_large without rid", f)
	}
	f, err = rc.readWithin(waitTime)
	if err == nil {
		t.Fatalf("frame after too_large: %s", f)
	}
	if rc.closed == nil || rc.closed.Code != websocket.CloseMessageTooBig {
		t.Fatalf("after too_large: %v, want close 1009", err)
	}
}

func Test_BadInput_MaxFrameExact(t *testing.T) {
	c := startCluster(t, 1, transport.Options{MaxFrame: 4096})
	rc := login(t, c, c.Nodes[0].URL, "alice")
	if string(rc.hello["max_frame"]) != "4096" {
		t.Fatalf("hello max_frame %s, want 4096", rc.hello["max_frame"])
	}
	q := qname(t, "q")
	rc.sendText(bigEnqueue(t, q, 4096))
	if f := rc.next(isReply(json.RawMessage("77"))); f.op() != "ok" {
		t.Fatalf("frame of exactly max_frame: %s", f)
	}
	if got := rc.info(q); got != [5]int64{1, 0, 0, 0, 0} {
		t.Fatalf("info %v", got)
	}
}

// tooLarge sends an enqueue frame of size bytes to a node with max_frame
// 4096 and expects too_large, close 1009, and no change to the queue.
// A frame far over the limit is written from another goroutine: the
// server need not read the rest of it.
func tooLarge(t *testing.T, size int) {
	c := startCluster(t, 1, transport.Options{MaxFrame: 4096})
	url := c.Nodes[0].URL
	other := login(t, c, url, "alice")
	q := qname(t, "q")
	other.enqueue(q, env("alice", "1"), "")
	before := other.info(q)
	rc := login(t, c, url, "alice")
	data := []byte(bigEnqueue(t, q, size))
	if size < 65536 {
		rc.sendMsg(websocket.TextMessage, data)
	} else {
		go func() { _ = rc.ws.WriteMessage(websocket.TextMessage, data) }()
	}
	wantTooLarge(t, rc)
	unchanged(t, other, q, before)
}

func Test_BadInput_TooLarge(t *testing.T) { tooLarge(t, 4097) }

func Test_BadInput_TooLargeHuge(t *testing.T) { tooLarge(t, 200_000) }

func Test_BadInput_BinaryFrame(t *testing.T) {
	rc, q, before := seeded(t)
	ping := []byte(`{"op":"ping","rid":42}`)
	rc.sendMsg(websocket.BinaryMessage, ping)
	f := rc.read()
	if f.op() != "err" || f.str("code") != "bad_request" || f.has("rid") {
		t.Fatalf("binary frame: %s, want err bad_request without rid", f)
	}
	enq := fmt.Sprintf(`{"op":"enqueue","rid":43,"queue":%q,"msg":%s}`, q, env("alice", "1"))
	rc.sendMsg(websocket.BinaryMessage, []byte(enq))
	noRidErr(t, rc, "bad_request", "binary enqueue")
	unchanged(t, rc, q, before)
}

func Test_Auth_BeforeAuth(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	rc := dialRaw(t, c, c.Nodes[0].URL)
	rc.agent = "anon"
	q := qname(t, "q")
	for _, r := range []struct{ op, fields string }{
		{"ping", ""},
		{"enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, env("alice", "1"))},
		{"consume", fmt.Sprintf(`"queue":%q`, q)},
		{"queue.info", fmt.Sprintf(`"queue":%q`, q)},
		{"subscribe", `"topic":"a"`},
	} {
		rc.callErr("unauthenticated", r.op, r.fields)
	}
	rc.sendText(`{"op":"auth","rid":"a1","agent":"alice","alg":"none"}`)
	if f := rc.next(isReply(json.RawMessage(`"a1"`))); f.op() != "ok" || f.str("agent") != "alice" {
		t.Fatalf("auth: %s", f)
	}
	rc.agent = "alice"
	if got := rc.info(q); got != [5]int64{} {
		t.Fatalf("requests before auth changed %s: %v", q, got)
	}
}

func Test_Auth_Twice(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	rc := login(t, c, c.Nodes[0].URL, "alice")
	rc.callErr("bad_request", "auth", `"agent":"bob","alg":"none"`)
	rc.callErr("bad_request", "auth", `"agent":"alice","alg":"none"`)
	// Still alice.
	q := qname(t, "q")
	rc.enqueue(q, env("alice", "1"), "")
	rc.callErr("forbidden", "enqueue", fmt.Sprintf(`"queue":%q,"msg":%s`, q, env("bob", "1")))
}

func Test_Auth_BadAgentName(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	rc := dialRaw(t, c, c.Nodes[0].URL)
	for _, name := range []string{`""`, `"bad name"`, `"a/b"`, `"@alice"`, `"` + strings.Repeat("a", 65) + `"`, `"é"`, `5`, `null`} {
		rc.callErr("bad_request", "auth", `"agent":`+name+`,"alg":"none"`)
		rc.callErr("unauthenticated", "ping", "")
	}
	rc.callErr("bad_request", "auth", `"alg":"none"`)
	rc.callErr("bad_request", "auth", `"agent":"alice"`)
	rc.callErr("bad_request", "auth", `"agent":"alice","alg":"rot13"`)
	rc.callErr("unauthenticated", "ping", "")
	// The longest valid name works.
	name := strings.Repeat("a", 64)
	if f := rc.ok("auth", `"agent":"`+name+`","alg":"none"`); f.str("agent") != name {
		t.Fatalf("auth: %s", f)
	}
	rc.ping()
}

func Test_Auth_UnknownAgentSigned(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	rc := dialRaw(t, c, c.Nodes[0].URL)
	sig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	rc.callErr("unauthenticated", "auth", `"agent":"ghost","alg":"ed25519","sig":"`+sig+`"`)
	rc.callErr("unauthenticated", "ping", "")
	rc.callErr("unauthenticated", "auth", `"agent":"ghost","alg":"hmac-sha256","sig":"`+strings.Repeat("0", 64)+`"`)
	rc.callErr("unauthenticated", "ping", "")
	rc.ok("auth", `"agent":"alice","alg":"none"`)
	rc.ping()
}

func Test_Settle_NotFound(t *testing.T) {
	c, a := one(t, "alice")
	b := login(t, c, c.Nodes[0].URL, "alice")
	q := qname(t, "q")
	msg := env("alice", `"x"`)
	seq := a.enqueue(q, msg, "")
	cons := a.consume(q, `"lease_ms":60000`)
	d := a.deliver(cons)
	if uint64(d.int("seq")) != seq || d.int("attempt") != 1 {
		t.Fatalf("deliver %s", d)
	}
	sub := a.ok("subscribe", `"topic":"nf.t"`).str("sub")
	before := a.info(q)
	if before != [5]int64{0, 1, 0, 0, 1} {
		t.Fatalf("info %v", before)
	}
	Q := strconv.Quote(q)
	for _, op := range []string{"ack", "nack", "reject", "extend"} {
		extra := ""
		if op == "extend" {
			extra = `,"lease_ms":1000`
		}
		for _, target := range []string{
			fmt.Sprintf(`"queue":%s,"seq":%d,"attempt":1`, Q, seq+100),
			fmt.Sprintf(`"queue":%s,"seq":%d,"attempt":2`, Q, seq),
			fmt.Sprintf(`"queue":%q,"seq":%d,"attempt":1`, q+"x", seq),
		} {
			a.callErr("not_found", op, target+extra)
		}
		// Leased to a's connection, not b's (same agent).
		b.callErr("not_found", op, fmt.Sprintf(`"queue":%s,"seq":%d,"attempt":1`, Q, seq)+extra)
		unchanged(t, a, q, before)
	}
	for _, id := range []string{`"c999999"`, `"bogus"`, `""`, `"c"`, `"s1"`} {
		a.callErr("not_found", "cancel", `"consumer":`+id)
	}
	b.callErr("not_found", "cancel", `"consumer":`+strconv.Quote(cons))
	for _, id := range []string{`"s999999"`, `"bogus"`, `""`, `"c1"`} {
		a.callErr("not_found", "unsubscribe", `"sub":`+id)
	}
	b.callErr("not_found", "unsubscribe", `"sub":`+strconv.Quote(sub))
	unchanged(t, a, q, before)
	// a's consumer and subscription still work.
	if f := a.settle("ack", d, ""); f.op() != "ok" {
		t.Fatalf("ack: %s", f)
	}
	a.callErr("not_found", "ack", fmt.Sprintf(`"queue":%s,"seq":%d,"attempt":1`, Q, seq))
	seq2 := b.enqueue(q, env("alice", `"y"`), "")
	if d2 := a.deliver(cons); uint64(d2.int("seq")) != seq2 {
		t.Fatalf("deliver %s, want seq %d", d2, seq2)
	}
	p := b.ok("publish", `"topic":"nf.t","msg":`+env("alice", "1"))
	if string(p["receivers"]) != "1" {
		t.Fatalf("publish: %s", p)
	}
	if ev := a.next(isOp("event")); ev.str("sub") != sub {
		t.Fatalf("event %s", ev)
	}
}

func Test_Inbox_Forbidden(t *testing.T) {
	c, alice := one(t, "alice")
	for _, r := range []struct{ op, fields string }{
		{"enqueue", `"queue":"@bob","msg":` + env("alice", "1")},
		{"enqueue", `"queue":"@alice","msg":` + env("alice", "1")},
		{"enqueue", `"queue":"@bob.dlq","msg":` + env("alice", "1")},
		{"consume", `"queue":"@bob"`},
		{"consume", `"queue":"@bob.dlq"`},
		{"queue.info", `"queue":"@bob"`},
		{"queue.declare", `"queue":"@bob"`},
		{"ack", `"queue":"@bob","seq":1,"attempt":1`},
	} {
		alice.callErr("forbidden", r.op, r.fields)
	}
	// Nothing reached bob's inbox.
	bob := login(t, c, c.Nodes[0].URL, "bob")
	if got := bob.info("@bob"); got != [5]int64{} {
		t.Fatalf("@bob info %v", got)
	}
	alice.consume("@alice", "")
	alice.consume("@alice.dlq", "")
	alice.ping()
}

func Test_Inbox_SendDelivers(t *testing.T) {
	c, alice := one(t, "alice")
	bob := login(t, c, c.Nodes[0].URL, "bob")
	msg := fmt.Sprintf(`{ "body" : {"n": 12345678901234567890123, "s":"\u00e9"}, "ts":%d,"from":"alice" ,"id":%q}`,
		time.Now().UnixMilli(), newID())
	f := alice.ok("send", `"to":"bob","msg":`+msg)
	if string(f["seq"]) != "1" || string(f["dup"]) != "false" {
		t.Fatalf("send: %s", f)
	}
	if f := alice.ok("send", `"to":"bob","msg":`+msg); string(f["seq"]) != "1" || string(f["dup"]) != "true" {
		t.Fatalf("send again: %s", f)
	}
	cons := bob.consume("@bob", "")
	d := bob.deliver(cons)
	if d.str("queue") != "@bob" || d.int("seq") != 1 || d.int("attempt") != 1 {
		t.Fatalf("deliver %s", d)
	}
	if string(d["msg"]) != msg {
		t.Fatalf("msg\n got %s\nwant %s", d["msg"], msg)
	}
	if f := bob.settle("ack", d, ""); f.op() != "ok" {
		t.Fatalf("ack: %s", f)
	}
	if got := bob.info("@bob"); got != [5]int64{0, 0, 0, 0, 1} {
		t.Fatalf("@bob info %v", got)
	}
}
