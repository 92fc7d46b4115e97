package transport_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/internal/testcluster"
)

// One queue, two faces: a broker queue is the Redis stream "mcp:NAME"
// whose consumer group "mcp" the WebSocket consumers share. Enqueued over
// WebSocket, a message is read with XREADGROUP and acknowledged with
// XACK; added with XADD, it is consumed and acknowledged over WebSocket;
// a Redis client blocked in XREADGROUP wakes for a WebSocket enqueue on
// another node.
//
// The leader can change at any command (under load the test cluster's
// 300 ms timeouts let a stalled node lose its lease): a write answered
// TRYAGAIN with nothing applied is sent again, and one whose outcome is
// unknown is followed by a look at the state before it is sent again
// (docs/redis.md), so that each step still happens exactly once.
func TestRESPQueueFace(t *testing.T) {
	c, leader, followers := startThree(t)
	ws := login(t, c, leader.URL, "producer")
	r := dialRESP(t, startRESP(t, followers[0]))
	q := "jobs"
	key := "mcp:" + q

	// WebSocket enqueue → XREADGROUP → XACK.
	seq := ws.enqueueSure(q, env("producer", `{"task":"summarize","url":"https://example.org"}`))
	ws.enqueueSure(q, env("producer", `[1,2]`))
	testcluster.WaitFor(t, waitTime, func() bool { return r.do("XLEN", key) == ":2" })
	if got := r.do("TYPE", key); got != "+stream" {
		t.Fatalf("TYPE: %s", got)
	}
	got := r.readGroup(key, "w1", "COUNT", "1")
	prefix := `[["` + key + `" [["`
	if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, `-`+strconv.FormatUint(seq, 10)+`" ["task" "summarize" "url" "https://example.org"]]]]]`) {
		t.Fatalf("XREADGROUP: %s", got)
	}
	id := strings.SplitN(got[len(prefix):], `"`, 2)[0]
	// The WebSocket's node applies the XREADGROUP on its own time (it
	// may no longer lead).
	testcluster.WaitFor(t, waitTime, func() bool {
		info := ws.info(q)
		return info[0] == 1 && info[1] == 1
	})
	if got := r.do("XPENDING", key, "mcp"); got != `[:1 "`+id+`" "`+id+`" [["w1" "1"]]]` {
		t.Fatalf("XPENDING: %s", got)
	}
	// The consumer's history: what it holds.
	if got := r.do("XREADGROUP", "GROUP", "mcp", "w1", "STREAMS", key, "0"); !strings.Contains(got, id) {
		t.Fatalf("XREADGROUP history: %s", got)
	}
	second := r.readGroup(key, "w2")
	if !strings.Contains(second, `["body" "[1,2]"]`) {
		t.Fatalf("a body that is not an object of strings: %s", second)
	}
	for {
		got, unknown := r.write("XACK", key, "mcp", id, "1-1")
		if !unknown {
			if got != ":1" {
				t.Fatalf("XACK: %s", got)
			}
			break
		}
		if !strings.Contains(r.do("XPENDING", key, "mcp"), `"`+id+`"`) {
			break // the XACK was applied
		}
	}
	if got := r.again("XACK", key, "mcp", id); got != ":0" {
		t.Fatalf("second XACK: %s", got)
	}
	testcluster.WaitFor(t, waitTime, func() bool {
		info := ws.info(q)
		return info[0] == 0 && info[1] == 1
	})

	// XADD → WebSocket consume → ack.
	cons := ws.consumeSure(q, `"prefetch":5,"lease_ms":30000`)
	added := ""
	for added == "" {
		before := r.do("XLEN", key)
		got, unknown := r.write("XADD", key, "*", "task", "translate", "lang", "fr")
		if !unknown {
			added = got
			break
		}
		if r.do("XLEN", key) != before {
			// The XADD was applied: its entry is the stream's last.
			last := r.do("XREVRANGE", key, "+", "-", "COUNT", "1")
			if !strings.HasPrefix(last, `[["`) || !strings.HasSuffix(last, `" ["task" "translate" "lang" "fr"]]]`) {
				t.Fatalf("XREVRANGE after an XADD of unknown outcome: %s", last)
			}
			added = `"` + strings.SplitN(last[len(`[["`):], `"`, 2)[0] + `"`
		}
	}
	if !strings.HasPrefix(added, `"`) {
		t.Fatalf("XADD: %s", added)
	}
	d := ws.deliver(cons)
	var e struct {
		From string          `json:"from"`
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(d["msg"], &e); err != nil || e.From != "redis" || string(e.Body) != `{"task":"translate","lang":"fr"}` {
		t.Fatalf("delivery of an XADD: %s (%v)", d, err)
	}
	if strconv.Quote(strings.Trim(added, `"`)) != added || !strings.HasSuffix(added, "-"+string(d["seq"])+`"`) {
		t.Fatalf("XADD id %s, delivered seq %s", added, d["seq"])
	}
	ws.ackSure(d)

	// A Redis consumer blocked in XREADGROUP wakes for a WebSocket
	// enqueue made through another node.
	ws2 := login(t, c, followers[1].URL, "producer2")
	waddr := startRESP(t, followers[0])
	w, watcher := dialRESP(t, waddr), dialRESP(t, waddr)
	if got := w.again("XREADGROUP", "GROUP", "mcp", "w3", "BLOCK", "0", "STREAMS", "mcp:later", ">"); !strings.HasPrefix(got, "-NOGROUP") {
		t.Fatalf("XREADGROUP on a queue that does not exist: %s", got)
	}
	for {
		got, unknown := r.write("XGROUP", "CREATE", "mcp:later", "mcp", "$", "MKSTREAM")
		if got == "+OK" {
			break
		}
		if !unknown {
			t.Fatalf("XGROUP CREATE MKSTREAM: %s", got)
		}
		if r.do("TYPE", "mcp:later") == "+stream" {
			break // it was applied
		}
	}
	w.send([]string{"XREADGROUP", "GROUP", "mcp", "w3", "BLOCK", "0", "STREAMS", "mcp:later", ">"})
	testcluster.WaitFor(t, waitTime, func() bool {
		return strings.Contains(watcher.do("INFO", "clients"), "blocked_clients:1")
	})
	ws2.enqueueSure("later", env("producer2", `{"n":"1"}`))
	// Woken, the XREADGROUP claims the entry: a write like any other.
	if got := w.readGroupAfter(w.reply(), "mcp:later", "w3"); !strings.HasSuffix(got, `["n" "1"]]]]]`) {
		t.Fatalf("woken XREADGROUP: %s", got)
	}

	// Queue keys refuse what would overwrite, delete or expire a queue.
	for _, cmd := range [][]string{{"SET", key, "x"}, {"DEL", key}, {"EXPIRE", key, "10"}, {"XDEL", key, id}, {"XTRIM", key, "MAXLEN", "0"}} {
		if got := r.again(cmd...); !strings.HasPrefix(got, "-ERR "+strings.ToUpper(cmd[0])+" does not apply to an mcpd queue") {
			t.Fatalf("%v: %s", cmd, got)
		}
	}
	for _, c := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"XADD", key, "1-1", "a", "b"}, "-ERR an mcpd queue gives its messages their ids: XADD takes *"},
		{[]string{"XADD", key, "MAXLEN", "5", "*", "a", "b"}, "-ERR XADD does not trim an mcpd queue: its max_len setting bounds it"},
		{[]string{"XADD", key, "*", "a", "b", "a", "c"}, "-ERR an mcpd queue entry names each field once"},
		{[]string{"XADD", key, "*", "a", "\xff"}, "-ERR an mcpd queue entry is JSON: its fields and values must be UTF-8 text"},
		{[]string{"XADD", "mcp:@agent", "*", "a", "b"}, "-ERR 'mcp:@agent' names no mcpd queue: a queue name is 1-200 bytes of [A-Za-z0-9._-]"},
		{[]string{"XREADGROUP", "GROUP", "other", "c", "STREAMS", key, ">"}, "-NOGROUP No such key 'mcp:jobs' or consumer group 'other' in XREADGROUP with GROUP option"},
		{[]string{"XGROUP", "CREATE", key, "mcp", "$"}, "-BUSYGROUP Consumer Group name already exists"},
		{[]string{"XGROUP", "CREATE", key, "other", "$"}, "-ERR an mcpd queue has one consumer group, mcp"},
		{[]string{"XREAD", "STREAMS", key, "mcp:later", "0", "0"}, "-ERR an mcpd queue is read alone: name one stream per XREAD or XREADGROUP"},
		{[]string{"EXISTS", key, "mcp:none", "plain"}, ":1"},
		{[]string{"TYPE", "mcp:none"}, "+none"},
	} {
		if got := r.again(c.cmd...); got != c.want {
			t.Fatalf("%q: %s, want %s", c.cmd, got, c.want)
		}
	}
	if got := r.do("MULTI"); got != "+OK" {
		t.Fatal(got)
	}
	if got := r.do("XADD", key, "*", "a", "b"); got != "-ERR XADD to an mcpd queue cannot be part of a transaction" {
		t.Fatalf("XADD in MULTI: %s", got)
	}
	if got := r.do("EXEC"); !strings.HasPrefix(got, "-EXECABORT") {
		t.Fatalf("EXEC: %s", got)
	}
}

// tryAgainUnknown begins the TRYAGAIN of a write whose outcome is unknown:
// leadership changed while it committed.
const tryAgainUnknown = "-TRYAGAIN the outcome is unknown"

// write sends a command that goes through Raft, again while the answer is
// TRYAGAIN with nothing applied (no leader in time). An answer whose
// outcome is unknown is reported as unknown once settle has decided it:
// the connection's reads then show whether it was applied.
func (c *respClient) write(args ...string) (reply string, unknown bool) {
	c.t.Helper()
	deadline := time.Now().Add(3 * waitTime)
	for {
		reply = c.do(args...)
		switch {
		case strings.HasPrefix(reply, tryAgainUnknown):
			c.t.Logf("%q: %s", args, reply)
			c.settle()
			return "", true
		case strings.HasPrefix(reply, "-TRYAGAIN ") && time.Now().Before(deadline):
			c.t.Logf("%q: %s; again", args, reply)
			continue
		}
		return reply, false
	}
}

// again sends a command whose answer does not depend on whether an
// earlier attempt was applied (a refusal, a read, an XACK of what is
// acknowledged) until the answer is known.
func (c *respClient) again(args ...string) string {
	c.t.Helper()
	for range 20 {
		if got, unknown := c.write(args...); !unknown {
			return got
		}
	}
	c.t.Fatalf("%q: the outcome stays unknown", args)
	return ""
}

// settle follows a write whose outcome is unknown with a write of this
// connection that commits (a key of the test's own): a leader that
// commits an entry of its term has decided every earlier one, applied or
// gone for good, and a connection's reads follow its writes.
func (c *respClient) settle() {
	c.t.Helper()
	deadline := time.Now().Add(3 * waitTime)
	for {
		got := c.do("SET", "resp-test-settle", "1")
		if got == "+OK" {
			return
		}
		if !strings.HasPrefix(got, "-TRYAGAIN ") || time.Now().After(deadline) {
			c.t.Fatalf("SET after an unknown outcome: %s", got)
		}
	}
}

// readGroup reads new entries of key for consumer of the group mcp
// (XREADGROUP ... >). If the outcome is unknown, the consumer's history
// shows whether the read claimed entries: that is its answer then.
func (c *respClient) readGroup(key, consumer string, opts ...string) string {
	c.t.Helper()
	return c.readGroupAfter(c.do(readGroupArgs(key, consumer, opts...)...), key, consumer, opts...)
}

// readGroupAfter is readGroup given the answer to a first attempt.
func (c *respClient) readGroupAfter(got, key, consumer string, opts ...string) string {
	c.t.Helper()
	for range 20 {
		unknown := false
		switch {
		case strings.HasPrefix(got, tryAgainUnknown):
			c.t.Logf("XREADGROUP %s %s: %s", key, consumer, got)
			c.settle()
			unknown = true
		case strings.HasPrefix(got, "-TRYAGAIN "):
			c.t.Logf("XREADGROUP %s %s: %s; again", key, consumer, got)
		default:
			return got
		}
		if unknown {
			hist := c.do("XREADGROUP", "GROUP", "mcp", consumer, "STREAMS", key, "0")
			if strings.HasPrefix(hist, `[["`+key+`" [["`) {
				return hist // the read was applied
			}
		}
		got = c.do(readGroupArgs(key, consumer, opts...)...)
	}
	c.t.Fatalf("XREADGROUP %s %s: the outcome stays unknown", key, consumer)
	return ""
}

func readGroupArgs(key, consumer string, opts ...string) []string {
	args := append([]string{"XREADGROUP", "GROUP", "mcp", consumer}, opts...)
	return append(args, "STREAMS", key, ">")
}

// sure calls op again while it is answered unavailable with nothing
// applied (no leader in time). An answer unavailable with "unknown":true
// (leadership changed while it committed) is returned, unknown, once a
// later command of the connection has committed (decide).
func (rc *rawConn) sure(op, fields string) (f frame, unknown bool) {
	rc.t.Helper()
	deadline := time.Now().Add(3 * waitTime)
	for {
		f = rc.call(op, fields)
		if f.op() != "err" || f.str("code") != "unavailable" || time.Now().After(deadline) {
			return f, false
		}
		rc.t.Logf("%s: %s", op, f)
		if string(f["unknown"]) == "true" {
			rc.decide()
			return f, true
		}
	}
}

// decide follows a command of unknown outcome with one that commits (the
// declaration of a queue of the connection's own): a leader that commits
// an entry of its term has decided every earlier one, and the reply
// comes when this node has applied it, so its reads show the outcome.
func (rc *rawConn) decide() {
	rc.t.Helper()
	for range 20 {
		if f, unknown := rc.sure("queue.declare", `"queue":"barrier-`+rc.agent+`"`); !unknown {
			if f.op() != "ok" {
				rc.t.Fatalf("queue.declare: %s", f)
			}
			return
		}
	}
	rc.t.Fatal("queue.declare: the outcome stays unknown")
}

// enqueueSure enqueues msg, sent again with the same envelope while the
// answer is unavailable: its id makes that safe (docs/protocol.md). A
// duplicate is the answer only after an attempt of unknown outcome.
func (rc *rawConn) enqueueSure(queue, msg string) uint64 {
	rc.t.Helper()
	was := false
	for range 20 {
		f, unknown := rc.sure("enqueue", `"queue":`+strconv.Quote(queue)+`,"msg":`+msg)
		if unknown {
			was = true
			continue
		}
		if f.op() != "ok" || (string(f["dup"]) != "false" && !was) {
			rc.t.Fatalf("enqueue: %s, want ok with dup false", f)
		}
		return uint64(f.int("seq"))
	}
	rc.t.Fatal("enqueue: the outcome stays unknown")
	return 0
}

// consumeSure opens a consumer of queue and returns its id; "" when an
// attempt of unknown outcome opened one (queue.info counts it, and its id
// comes with its deliveries).
func (rc *rawConn) consumeSure(queue, extra string) string {
	rc.t.Helper()
	before := rc.info(queue)[4]
	for range 20 {
		fields := `"queue":` + strconv.Quote(queue)
		if extra != "" {
			fields += "," + extra
		}
		f, unknown := rc.sure("consume", fields)
		if !unknown {
			if f.op() != "ok" || f.str("consumer") == "" {
				rc.t.Fatalf("consume: %s", f)
			}
			return f.str("consumer")
		}
		if rc.info(queue)[4] > before {
			return ""
		}
	}
	rc.t.Fatal("consume: the outcome stays unknown")
	return ""
}

// ackSure acknowledges the delivery d; an ack of unknown outcome that was
// applied took the message out of the queue's in-flight count.
func (rc *rawConn) ackSure(d frame) {
	rc.t.Helper()
	inflight := rc.info(d.str("queue"))[1]
	for range 20 {
		f, unknown := rc.sure("ack", fmt.Sprintf(`"queue":%s,"seq":%s,"attempt":%s`, d["queue"], d["seq"], d["attempt"]))
		if !unknown {
			if f.op() != "ok" {
				rc.t.Fatalf("ack: %s", f)
			}
			return
		}
		if rc.info(d.str("queue"))[1] < inflight {
			return
		}
	}
	rc.t.Fatal("ack: the outcome stays unknown")
}
