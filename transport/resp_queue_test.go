package transport_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/internal/testcluster"
)

// One queue, two faces: a broker queue is the Redis stream "mcp:NAME"
// whose consumer group "mcp" the WebSocket consumers share. Enqueued over
// WebSocket, a message is read with XREADGROUP and acknowledged with
// XACK; added with XADD, it is consumed and acknowledged over WebSocket;
// a Redis client blocked in XREADGROUP wakes for a WebSocket enqueue on
// another node.
func TestRESPQueueFace(t *testing.T) {
	c, leader, followers := startThree(t)
	ws := login(t, c, leader.URL, "producer")
	r := dialRESP(t, startRESP(t, followers[0]))
	q := "jobs"
	key := "mcp:" + q

	// WebSocket enqueue → XREADGROUP → XACK.
	seq := ws.enqueue(q, env("producer", `{"task":"summarize","url":"https://example.org"}`), "")
	ws.enqueue(q, env("producer", `[1,2]`), "")
	testcluster.WaitFor(t, waitTime, func() bool { return r.do("XLEN", key) == ":2" })
	if got := r.do("TYPE", key); got != "+stream" {
		t.Fatalf("TYPE: %s", got)
	}
	got := r.do("XREADGROUP", "GROUP", "mcp", "w1", "COUNT", "1", "STREAMS", key, ">")
	prefix := `[["` + key + `" [["`
	if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, `-`+strconv.FormatUint(seq, 10)+`" ["task" "summarize" "url" "https://example.org"]]]]]`) {
		t.Fatalf("XREADGROUP: %s", got)
	}
	id := strings.SplitN(got[len(prefix):], `"`, 2)[0]
	if info := ws.info(q); info[0] != 1 || info[1] != 1 {
		t.Fatalf("queue.info after XREADGROUP: ready %d inflight %d, want 1 1", info[0], info[1])
	}
	if got := r.do("XPENDING", key, "mcp"); got != `[:1 "`+id+`" "`+id+`" [["w1" "1"]]]` {
		t.Fatalf("XPENDING: %s", got)
	}
	// The consumer's history: what it holds.
	if got := r.do("XREADGROUP", "GROUP", "mcp", "w1", "STREAMS", key, "0"); !strings.Contains(got, id) {
		t.Fatalf("XREADGROUP history: %s", got)
	}
	second := r.do("XREADGROUP", "GROUP", "mcp", "w2", "STREAMS", key, ">")
	if !strings.Contains(second, `["body" "[1,2]"]`) {
		t.Fatalf("a body that is not an object of strings: %s", second)
	}
	if got := r.do("XACK", key, "mcp", id, "1-1"); got != ":1" {
		t.Fatalf("XACK: %s", got)
	}
	if got := r.do("XACK", key, "mcp", id); got != ":0" {
		t.Fatalf("second XACK: %s", got)
	}
	testcluster.WaitFor(t, waitTime, func() bool {
		info := ws.info(q)
		return info[0] == 0 && info[1] == 1
	})

	// XADD → WebSocket consume → ack.
	cons := ws.consume(q, `"prefetch":5,"lease_ms":30000`)
	added := r.do("XADD", key, "*", "task", "translate", "lang", "fr")
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
	if f := ws.settle("ack", d, ""); f.op() != "ok" {
		t.Fatalf("ack: %s", f)
	}

	// A Redis consumer blocked in XREADGROUP wakes for a WebSocket
	// enqueue made through another node.
	ws2 := login(t, c, followers[1].URL, "producer2")
	waddr := startRESP(t, followers[0])
	w, watcher := dialRESP(t, waddr), dialRESP(t, waddr)
	w.send([]string{"XREADGROUP", "GROUP", "mcp", "w3", "BLOCK", "0", "STREAMS", "mcp:later", ">"})
	if got := w.reply(); !strings.HasPrefix(got, "-NOGROUP") {
		t.Fatalf("XREADGROUP on a queue that does not exist: %s", got)
	}
	if got := r.do("XGROUP", "CREATE", "mcp:later", "mcp", "$", "MKSTREAM"); got != "+OK" {
		t.Fatalf("XGROUP CREATE MKSTREAM: %s", got)
	}
	w.send([]string{"XREADGROUP", "GROUP", "mcp", "w3", "BLOCK", "0", "STREAMS", "mcp:later", ">"})
	testcluster.WaitFor(t, waitTime, func() bool {
		return strings.Contains(watcher.do("INFO", "clients"), "blocked_clients:1")
	})
	ws2.enqueue("later", env("producer2", `{"n":"1"}`), "")
	if got := w.reply(); !strings.HasSuffix(got, `["n" "1"]]]]]`) {
		t.Fatalf("woken XREADGROUP: %s", got)
	}

	// Queue keys refuse what would overwrite, delete or expire a queue.
	for _, cmd := range [][]string{{"SET", key, "x"}, {"DEL", key}, {"EXPIRE", key, "10"}, {"XDEL", key, id}, {"XTRIM", key, "MAXLEN", "0"}} {
		if got := r.do(cmd...); !strings.HasPrefix(got, "-ERR "+strings.ToUpper(cmd[0])+" does not apply to an mcpd queue") {
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
		if got := r.do(c.cmd...); got != c.want {
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
