package transport_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// Raw-protocol harness: a gorilla WebSocket client that speaks PROTOCOL.md
// frame by frame, so tests see exactly what the server writes.

// waitTime bounds every wait for a frame; nothing in these tests should
// take nearly that long.
const waitTime = 10 * time.Second

// frame is one decoded server frame; values stay raw so that types and
// bytes can be checked exactly.
type frame map[string]json.RawMessage

func (f frame) op() string { return f.str("op") }

func (f frame) has(k string) bool { _, ok := f[k]; return ok }

func (f frame) str(k string) string {
	var s string
	if v, ok := f[k]; ok {
		_ = json.Unmarshal(v, &s)
	}
	return s
}

func (f frame) int(k string) int64 {
	n, err := strconv.ParseInt(string(f[k]), 10, 64)
	if err != nil {
		return -1 << 62
	}
	return n
}

func (f frame) String() string {
	b, _ := json.Marshal(map[string]json.RawMessage(f))
	return string(b)
}

// rawConn is one client connection.
type rawConn struct {
	t       testing.TB
	ws      *websocket.Conn
	hello   frame
	agent   string
	rid     int64
	backlog []frame // frames read but not yet consumed
	closed  *websocket.CloseError
}

// dialRaw connects to url and reads the hello.
func dialRaw(t testing.TB, c *testcluster.Cluster, url string) *rawConn {
	t.Helper()
	d := websocket.Dialer{
		TLSClientConfig:  c.TLS.ClientTLS(),
		Subprotocols:     []string{"mcp.v1"},
		HandshakeTimeout: waitTime,
	}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "mcp.v1" {
		t.Fatalf("subprotocol %q, want mcp.v1", got)
	}
	rc := &rawConn{t: t, ws: ws, rid: 1000}
	t.Cleanup(func() { ws.Close() })
	rc.hello = rc.read()
	if rc.hello.op() != "hello" {
		t.Fatalf("first frame %s, want hello", rc.hello)
	}
	return rc
}

// login dials url and authenticates as agent (dev mode).
func login(t testing.TB, c *testcluster.Cluster, url, agent string) *rawConn {
	t.Helper()
	rc := dialRaw(t, c, url)
	rc.sendText(fmt.Sprintf(`{"op":"auth","rid":1,"agent":%q,"alg":"none"}`, agent))
	f := rc.next(isReply(json.RawMessage("1")))
	if f.op() != "ok" || f.str("agent") != agent {
		t.Fatalf("auth as %s: %s", agent, f)
	}
	rc.agent = agent
	return rc
}

// sendText writes one text frame as given.
func (rc *rawConn) sendText(s string) {
	rc.t.Helper()
	rc.sendMsg(websocket.TextMessage, []byte(s))
}

func (rc *rawConn) sendMsg(mt int, data []byte) {
	rc.t.Helper()
	_ = rc.ws.SetWriteDeadline(time.Now().Add(waitTime))
	if err := rc.ws.WriteMessage(mt, data); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// read reads one frame from the socket within waitTime.
func (rc *rawConn) read() frame {
	rc.t.Helper()
	f, err := rc.readWithin(waitTime)
	if err != nil {
		rc.t.Fatalf("read (agent %s): %v", rc.agent, err)
	}
	return f
}

func (rc *rawConn) readWithin(d time.Duration) (frame, error) {
	_ = rc.ws.SetReadDeadline(time.Now().Add(d))
	mt, data, err := rc.ws.ReadMessage()
	if err != nil {
		if ce, ok := err.(*websocket.CloseError); ok {
			rc.closed = ce
		}
		return nil, err
	}
	if mt != websocket.TextMessage {
		return nil, fmt.Errorf("server sent a non-text frame (type %d)", mt)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("server frame is not a JSON object: %q", data)
	}
	// docs/protocol.md: ok and push frames start with op.
	if op := f.op(); op != "hello" && op != "err" && !bytes.HasPrefix(data, []byte(`{"op":`)) {
		return nil, fmt.Errorf("server %s frame does not start with op: %.120s", op, data)
	}
	return f, nil
}

// next returns the first frame (backlog first) that matches pred; the
// frames skipped stay in the backlog.
func (rc *rawConn) next(pred func(frame) bool) frame {
	rc.t.Helper()
	for i, f := range rc.backlog {
		if pred(f) {
			rc.backlog = append(rc.backlog[:i:i], rc.backlog[i+1:]...)
			return f
		}
	}
	deadline := time.Now().Add(waitTime)
	for {
		f, err := rc.readWithin(time.Until(deadline))
		if err != nil {
			rc.t.Fatalf("waiting for a frame (agent %s): %v; unmatched frames: %v", rc.agent, err, rc.backlog)
		}
		if pred(f) {
			return f
		}
		rc.backlog = append(rc.backlog, f)
	}
}

// take removes and returns every backlog frame matching pred.
func (rc *rawConn) take(pred func(frame) bool) []frame {
	var out, keep []frame
	for _, f := range rc.backlog {
		if pred(f) {
			out = append(out, f)
		} else {
			keep = append(keep, f)
		}
	}
	rc.backlog = keep
	return out
}

// nextRid returns a fresh integer rid.
func (rc *rawConn) nextRid() json.RawMessage {
	rc.rid++
	return json.RawMessage(strconv.FormatInt(rc.rid, 10))
}

// call sends op with fields (a JSON object body without braces, or "")
// and returns its reply.
func (rc *rawConn) call(op, fields string) frame {
	rc.t.Helper()
	rid := rc.nextRid()
	s := fmt.Sprintf(`{"op":%q,"rid":%s`, op, rid)
	if fields != "" {
		s += "," + fields
	}
	rc.sendText(s + "}")
	return rc.next(isReply(rid))
}

// ok calls and requires an ok reply.
func (rc *rawConn) ok(op, fields string) frame {
	rc.t.Helper()
	f := rc.call(op, fields)
	if f.op() != "ok" {
		rc.t.Fatalf("%s %s: %s", op, fields, f)
	}
	return f
}

// callErr calls and requires err with code.
func (rc *rawConn) callErr(code, op, fields string) frame {
	rc.t.Helper()
	f := rc.call(op, fields)
	wantErr(rc.t, f, code)
	return f
}

// barrier makes a request that goes through Raft and waits for its reply:
// every push from entries applied before it is then in the backlog.
func (rc *rawConn) barrier() {
	rc.t.Helper()
	rc.ok("queue.declare", `"queue":"barrier-`+rc.agent+`"`)
}

// ping checks that the connection still serves requests.
func (rc *rawConn) ping() frame {
	rc.t.Helper()
	f := rc.ok("ping", "")
	if f.str("node") == "" {
		rc.t.Fatalf("ping without node: %s", f)
	}
	return f
}

// info returns queue.info counters.
func (rc *rawConn) info(queue string) [5]int64 {
	rc.t.Helper()
	f := rc.ok("queue.info", `"queue":`+strconv.Quote(queue))
	return [5]int64{f.int("ready"), f.int("inflight"), f.int("delayed"), f.int("dead"), f.int("consumers")}
}

// enqueue enqueues msg and returns the seq.
func (rc *rawConn) enqueue(queue, msg, extra string) uint64 {
	rc.t.Helper()
	fields := `"queue":` + strconv.Quote(queue) + `,"msg":` + msg
	if extra != "" {
		fields += "," + extra
	}
	f := rc.ok("enqueue", fields)
	if string(f["dup"]) != "false" {
		rc.t.Fatalf("enqueue: %s, want dup false", f)
	}
	return uint64(f.int("seq"))
}

// consume opens a consumer and returns its id.
func (rc *rawConn) consume(queue, extra string) string {
	rc.t.Helper()
	fields := `"queue":` + strconv.Quote(queue)
	if extra != "" {
		fields += "," + extra
	}
	f := rc.ok("consume", fields)
	id := f.str("consumer")
	if id == "" {
		rc.t.Fatalf("consume: no consumer id: %s", f)
	}
	return id
}

// deliver waits for the next deliver frame of consumer (any consumer if "").
func (rc *rawConn) deliver(consumer string) frame {
	rc.t.Helper()
	return rc.next(func(f frame) bool {
		return f.op() == "deliver" && (consumer == "" || f.str("consumer") == consumer)
	})
}

// settle sends ack/nack/reject/extend for a deliver frame.
func (rc *rawConn) settle(op string, d frame, extra string) frame {
	rc.t.Helper()
	fields := fmt.Sprintf(`"queue":%s,"seq":%s,"attempt":%s`, d["queue"], d["seq"], d["attempt"])
	if extra != "" {
		fields += "," + extra
	}
	return rc.call(op, fields)
}

// closeNow closes the socket without a close handshake.
func (rc *rawConn) closeNow() { rc.ws.Close() }

func isReply(rid json.RawMessage) func(frame) bool {
	return func(f frame) bool {
		return (f.op() == "ok" || f.op() == "err") && bytes.Equal(f["rid"], rid)
	}
}

func isOp(op string) func(frame) bool {
	return func(f frame) bool { return f.op() == op }
}

func wantErr(t testing.TB, f frame, code string) {
	t.Helper()
	if f.op() != "err" || f.str("code") != code {
		t.Fatalf("got %s, want err %s", f, code)
	}
	if f.str("msg") == "" {
		t.Fatalf("err without msg: %s", f)
	}
}

var msgCounter atomic.Int64

// newID returns a fresh envelope id.
func newID() string {
	return fmt.Sprintf("m-%d-%d", time.Now().UnixNano(), msgCounter.Add(1))
}

// env builds an envelope from agent with body (raw JSON).
func env(agent, body string) string {
	return envID(agent, newID(), body)
}

func envID(agent, id, body string) string {
	return fmt.Sprintf(`{"id":%q,"from":%q,"ts":%d,"body":%s}`, id, agent, time.Now().UnixMilli(), body)
}

// startCluster starts an n-node cluster with opt.
func startCluster(t testing.TB, n int, opt transport.Options) *testcluster.Cluster {
	t.Helper()
	return testcluster.Start(t, n, testcluster.Options{Transport: opt})
}

// one starts a single-node cluster and logs in as agent.
func one(t testing.TB, agent string) (*testcluster.Cluster, *rawConn) {
	t.Helper()
	c := startCluster(t, 1, transport.Options{})
	return c, login(t, c, c.Nodes[0].URL, agent)
}

// qname returns a queue name unique to the test.
func qname(t testing.TB, suffix string) string {
	n := strings.NewReplacer("/", ".", "#", "-").Replace(t.Name())
	if len(n) > 150 {
		n = n[len(n)-150:]
	}
	return n + "." + suffix
}

// noFrame asserts the backlog holds nothing matching pred.
func noFrame(t testing.TB, rc *rawConn, what string, pred func(frame) bool) {
	t.Helper()
	if got := rc.take(pred); len(got) > 0 {
		t.Fatalf("unexpected %s: %v", what, got)
	}
}
