package client

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeServer speaks enough of MCP for the client's tests: hello/auth,
// enqueue/send with deduplication, consume/ack/nack/cancel with leases
// released on close, subscribe/publish/unsubscribe, ping, agent.key, and a
// test op "echo" whose replies come back in reverse order. Hooks inject
// failures. It verifies no signature, so it delivers forgeries as a lying
// server would.
type fakeServer struct {
	t   *testing.T
	ts  *httptest.Server
	url string

	mu       sync.Mutex
	conns    map[*fakeConn]struct{}
	connects int
	nextID   int
	frames   []fakeFrame // every request received, in order
	queues   map[string]*fakeQueue
	dedup    map[string]*fakeMsg       // from + "/" + id
	acks     []string                  // "queue/seq/attempt"
	keys     map[string]map[string]any // agent -> agent.key result
	maxFrame int

	// hooks
	failEnqueue   int // answer this many enqueues with unavailable (unknown)
	dropOnEnqueue int // store this many enqueues, then drop the connection instead of replying
	echoBatch     int // hold echo replies until this many are waiting, then answer in reverse
	echoHeld      []fakeHeld
	holdConsume   chan struct{} // consume replies wait until this closes
	failKeys      int           // answer this many agent.key requests with internal
}

type fakeFrame struct {
	conn int
	op   string
	raw  []byte
	msg  json.RawMessage
}

type fakeHeld struct {
	fc  *fakeConn
	rid json.RawMessage
	n   json.RawMessage
}

type fakeQueue struct {
	msgs []*fakeMsg
}

type fakeMsg struct {
	queue   string
	seq     uint64
	raw     []byte
	leased  *fakeConn
	attempt int
	acked   bool
}

type fakeConn struct {
	id        int
	ws        *websocket.Conn
	wmu       sync.Mutex
	consumers map[string]string // id -> queue
	subs      map[string]string // id -> topic
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	s := &fakeServer{
		t:        t,
		conns:    map[*fakeConn]struct{}{},
		queues:   map[string]*fakeQueue{},
		dedup:    map[string]*fakeMsg{},
		keys:     map[string]map[string]any{},
		maxFrame: 1 << 20,
	}
	up := websocket.Upgrader{Subprotocols: []string{Subprotocol}}
	s.ts = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s.serve(ws)
	}))
	s.url = "wss://" + s.ts.Listener.Addr().String() + "/v1"
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) close() {
	s.dropAll()
	s.ts.Close()
}

// caFile writes the server's certificate as a PEM CA file.
func (s *fakeServer) caFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ts.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *fakeServer) certPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.ts.Certificate())
	return p
}

// dropAll closes every connection without a close frame.
func (s *fakeServer) dropAll() {
	s.mu.Lock()
	conns := make([]*fakeConn, 0, len(s.conns))
	for fc := range s.conns {
		conns = append(conns, fc)
	}
	s.mu.Unlock()
	for _, fc := range conns {
		fc.ws.Close()
	}
}

func (s *fakeServer) with(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
}

func (s *fakeServer) framesOf(op string) []fakeFrame {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fakeFrame
	for _, f := range s.frames {
		if f.op == op {
			out = append(out, f)
		}
	}
	return out
}

func (fc *fakeConn) send(v any) {
	b, _ := json.Marshal(v)
	fc.sendRaw(b)
}

func (fc *fakeConn) sendRaw(b []byte) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.ws.WriteMessage(websocket.TextMessage, b)
}

func (s *fakeServer) serve(ws *websocket.Conn) {
	s.mu.Lock()
	s.connects++
	fc := &fakeConn{id: s.connects, ws: ws, consumers: map[string]string{}, subs: map[string]string{}}
	s.conns[fc] = struct{}{}
	maxFrame := s.maxFrame
	s.mu.Unlock()
	defer s.gone(fc)
	fc.send(map[string]any{"op": "hello", "v": 1, "node": "fake1", "nonce": "bm9uY2U=", "max_frame": maxFrame})
	// Frames are recorded as they arrive, so tests can see requests that
	// wait behind a held one.
	type request struct {
		op  string
		req map[string]json.RawMessage
	}
	reqs := make(chan request, 64)
	go func() {
		defer close(reqs)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			var req map[string]json.RawMessage
			if err := json.Unmarshal(b, &req); err != nil {
				fc.send(map[string]any{"op": "err", "code": "bad_request", "msg": "malformed"})
				continue
			}
			op := str(req["op"])
			s.mu.Lock()
			s.frames = append(s.frames, fakeFrame{conn: fc.id, op: op, raw: b, msg: req["msg"]})
			s.mu.Unlock()
			reqs <- request{op, req}
		}
	}()
	for r := range reqs {
		if !s.handle(fc, r.op, r.req) {
			ws.Close()
			for range reqs {
			}
			return
		}
	}
}

// gone releases the leases and consumers of a closed connection.
func (s *fakeServer) gone(fc *fakeConn) {
	fc.ws.Close()
	s.mu.Lock()
	delete(s.conns, fc)
	var queues []string
	for _, q := range s.queues {
		for _, m := range q.msgs {
			if m.leased == fc {
				m.leased = nil
				queues = append(queues, m.queue)
			}
		}
	}
	s.mu.Unlock()
	for _, q := range queues {
		s.dispatch(q)
	}
}

func str(raw json.RawMessage) string {
	var v string
	json.Unmarshal(raw, &v)
	return v
}

func num(raw json.RawMessage) int64 {
	var v int64
	json.Unmarshal(raw, &v)
	return v
}

// handle answers one request; false drops the connection.
func (s *fakeServer) handle(fc *fakeConn, op string, req map[string]json.RawMessage) bool {
	rid := req["rid"]
	ok := func(fields map[string]any) {
		m := map[string]any{"op": "ok", "rid": rid}
		for k, v := range fields {
			m[k] = v
		}
		fc.send(m)
	}
	fail := func(code, msg string, unknown bool) {
		m := map[string]any{"op": "err", "rid": rid, "code": code, "msg": msg}
		if unknown {
			m["unknown"] = true
		}
		fc.send(m)
	}
	switch op {
	case "auth":
		ok(map[string]any{"agent": str(req["agent"])})
	case "ping":
		ok(map[string]any{"node": "fake1", "leader": nil, "time": time.Now().UnixMilli()})
	case "register", "task.done", "task.fail":
		ok(nil)
	case "agent.key":
		s.mu.Lock()
		k, found := s.keys[str(req["agent"])]
		failed := s.failKeys > 0
		if failed {
			s.failKeys--
		}
		s.mu.Unlock()
		if failed {
			fail("internal", "storage read failed", false)
			return true
		}
		if !found {
			fail("not_found", "unknown agent", false)
			return true
		}
		ok(k)
	case "echo":
		s.mu.Lock()
		s.echoHeld = append(s.echoHeld, fakeHeld{fc: fc, rid: rid, n: req["n"]})
		var release []fakeHeld
		if len(s.echoHeld) >= s.echoBatch {
			release, s.echoHeld = s.echoHeld, nil
		}
		s.mu.Unlock()
		for i := len(release) - 1; i >= 0; i-- {
			h := release[i]
			h.fc.send(map[string]any{"op": "ok", "rid": h.rid, "n": h.n})
		}
	case "enqueue", "send":
		queue := str(req["queue"])
		if op == "send" {
			queue = "@" + str(req["to"])
		}
		var env struct {
			ID   string `json:"id"`
			From string `json:"from"`
		}
		if err := json.Unmarshal(req["msg"], &env); err != nil || env.ID == "" {
			fail("bad_request", "bad envelope", false)
			return true
		}
		s.mu.Lock()
		if s.failEnqueue > 0 {
			s.failEnqueue--
			s.mu.Unlock()
			fail("unavailable", "no quorum", true)
			return true
		}
		key := env.From + "/" + env.ID
		if m := s.dedup[key]; m != nil {
			s.mu.Unlock()
			if m.queue != queue || string(m.raw) != string(req["msg"]) {
				fail("conflict", "different content", false)
			} else {
				ok(map[string]any{"seq": m.seq, "dup": true})
			}
			return true
		}
		q := s.queues[queue]
		if q == nil {
			q = &fakeQueue{}
			s.queues[queue] = q
		}
		m := &fakeMsg{queue: queue, seq: uint64(len(q.msgs) + 1), raw: append([]byte(nil), req["msg"]...)}
		q.msgs = append(q.msgs, m)
		s.dedup[key] = m
		drop := s.dropOnEnqueue > 0
		if drop {
			s.dropOnEnqueue--
		}
		s.mu.Unlock()
		if drop {
			return false
		}
		ok(map[string]any{"seq": m.seq, "dup": false})
		s.dispatch(queue)
	case "consume":
		s.mu.Lock()
		hold := s.holdConsume
		s.mu.Unlock()
		if hold != nil {
			<-hold
		}
		s.mu.Lock()
		s.nextID++
		id := fmt.Sprintf("c%d", s.nextID)
		fc.consumers[id] = str(req["queue"])
		s.mu.Unlock()
		ok(map[string]any{"consumer": id})
		s.dispatch(str(req["queue"]))
	case "cancel":
		s.mu.Lock()
		id := str(req["consumer"])
		_, found := fc.consumers[id]
		delete(fc.consumers, id)
		s.mu.Unlock()
		if !found {
			fail("not_found", "no such consumer", false)
			return true
		}
		ok(nil)
	case "ack", "nack", "reject", "extend":
		s.mu.Lock()
		var hit *fakeMsg
		if q := s.queues[str(req["queue"])]; q != nil {
			seq := num(req["seq"])
			if seq >= 1 && int(seq) <= len(q.msgs) {
				m := q.msgs[seq-1]
				if m.leased == fc && int64(m.attempt) == num(req["attempt"]) && !m.acked {
					hit = m
				}
			}
		}
		if hit != nil && op != "extend" {
			s.acks = append(s.acks, fmt.Sprintf("%s %s/%d/%d", op, hit.queue, hit.seq, hit.attempt))
			hit.leased = nil
			hit.acked = op != "nack"
		}
		s.mu.Unlock()
		if hit == nil {
			fail("not_found", "no such delivery", false)
			return true
		}
		if op == "extend" {
			ok(map[string]any{"lease_until": time.Now().UnixMilli() + num(req["lease_ms"])})
			return true
		}
		ok(nil)
		s.dispatch(hit.queue)
	case "subscribe":
		s.mu.Lock()
		s.nextID++
		id := fmt.Sprintf("s%d", s.nextID)
		fc.subs[id] = str(req["topic"])
		s.mu.Unlock()
		ok(map[string]any{"sub": id})
	case "unsubscribe":
		s.mu.Lock()
		id := str(req["sub"])
		_, found := fc.subs[id]
		delete(fc.subs, id)
		s.mu.Unlock()
		if !found {
			fail("not_found", "no such subscription", false)
			return true
		}
		ok(nil)
	case "publish":
		topic := str(req["topic"])
		type target struct {
			fc  *fakeConn
			sub string
		}
		var targets []target
		s.mu.Lock()
		for c := range s.conns {
			for id, t := range c.subs {
				if t == topic {
					targets = append(targets, target{c, id})
				}
			}
		}
		s.mu.Unlock()
		ok(map[string]any{"receivers": len(targets)})
		for _, t := range targets {
			t.fc.sendRaw([]byte(`{"op":"event","sub":"` + t.sub + `","topic":"` + topic + `","msg":` + string(req["msg"]) + `}`))
		}
	default:
		fail("bad_request", "unknown op "+op, false)
	}
	return true
}

// dispatch leases every ready message of queue to its first consumer.
func (s *fakeServer) dispatch(queue string) {
	type push struct {
		fc    *fakeConn
		frame []byte
	}
	var pushes []push
	s.mu.Lock()
	q := s.queues[queue]
	var target *fakeConn
	var cid string
	for c := range s.conns {
		for id, qn := range c.consumers {
			if qn == queue && (target == nil || id < cid) {
				target, cid = c, id
			}
		}
	}
	if q != nil && target != nil {
		for _, m := range q.msgs {
			if m.acked || m.leased != nil {
				continue
			}
			m.leased = target
			m.attempt++
			head := fmt.Sprintf(`{"op":"deliver","consumer":%q,"queue":%q,"seq":%d,"attempt":%d,"lease_until":%d,"msg":`,
				cid, queue, m.seq, m.attempt, time.Now().Add(30*time.Second).UnixMilli())
			pushes = append(pushes, push{target, []byte(head + string(m.raw) + "}")})
		}
	}
	s.mu.Unlock()
	for _, p := range pushes {
		p.fc.sendRaw(p.frame)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// clientGoroutines lists the stacks of goroutines run by the client package
// (not its tests or the fake server).
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "fakeServer") {
			continue
		}
		for _, m := range []string{"mcpd/client.(*conn)", "mcpd/client.(*Client)", "mcpd/client.(*mailbox", "mcpd/client.startPump"} {
			if strings.Contains(g, m) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
