package fsm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// ---------------------------------------------------------------- helpers

func mustOpen(t testing.TB, path, local string) *fsm.FSM {
	t.Helper()
	f, err := fsm.Open(path, local)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustFresh(t testing.TB, local string) *fsm.FSM {
	t.Helper()
	return mustOpen(t, filepath.Join(t.TempDir(), "state.db"), local)
}

func mustDigest(t *testing.T, f *fsm.FSM) [32]byte {
	t.Helper()
	d, _, err := f.Digest()
	if err != nil {
		t.Fatalf("digest: %v", err)
	}
	return d
}

func mustCmd(t testing.TB, mt fsm.MessageType, conn string, req uint64, body any) fsm.Command {
	t.Helper()
	c, err := fsm.NewCommand(mt, conn, req, body)
	if err != nil {
		t.Fatalf("command %d: %v", mt, err)
	}
	return c
}

func mustLog(t testing.TB, index uint64, at int64, cmds ...fsm.Command) *raft.Log {
	t.Helper()
	data, err := fsm.EncodeEntry(&fsm.Entry{Time: at, Cmds: cmds})
	if err != nil {
		t.Fatalf("encode entry %d: %v", index, err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

// applySingly applies logs one Apply call each.
func applySingly(f *fsm.FSM, logs []*raft.Log) {
	for _, l := range logs {
		f.Apply(l)
	}
}

// applyBatches applies logs in ApplyBatch groups of random size 1..max.
func applyBatches(f *fsm.FSM, logs []*raft.Log, r *rand.Rand, max int) {
	for len(logs) > 0 {
		n := min(1+r.IntN(max), len(logs))
		out := f.ApplyBatch(logs[:n])
		if len(out) != n {
			panic(fmt.Sprintf("ApplyBatch returned %d responses for %d logs", len(out), n))
		}
		logs = logs[n:]
	}
}

// collector is an EffectSink that records every effect.
type collector struct {
	mu  sync.Mutex
	got []queue.Effect
}

func (c *collector) sink(e []queue.Effect) {
	c.mu.Lock()
	c.got = append(c.got, e...)
	c.mu.Unlock()
}

func (c *collector) take() []queue.Effect {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.got
	c.got = nil
	return out
}

// memSink is a raft.SnapshotSink writing to memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

var _ raft.SnapshotSink = (*memSink)(nil)

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func mustSnapshot(t *testing.T, f *fsm.FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v, want closed", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// ------------------------------------------------------- random log maker

// genLog builds a seeded random log of n entries. It applies each entry to
// a reference FSM of node n1 as it goes, so that later commands can name
// deliveries, consumers and subscriptions that really exist (and, on
// purpose, some that do not).
type genLog struct {
	t    testing.TB
	r    *rand.Rand
	ref  *fsm.FSM
	col  collector
	logs []*raft.Log
	now  int64
	req  uint64

	conns    []string // open connections, n1 (visible to the reference) and n2
	nextConn map[string]int
	n2epoch  uint64
	leases   []queue.Delivery // deliveries seen for n1 connections
	cons     []consRef
	subs     []consRef
	sent     []queue.EnqueueArgs
	pubs     []queue.PublishArgs

	stats map[string]int
}

type consRef struct {
	id   uint64
	conn string
}

var (
	genQueues = []string{"q0", "q1", "q2", "q0.dlq", "shared.dlq"}
	genTopics = []string{"a.b", "a.c", "a.b.c", "x.y.z", "x"}
	genPats   = []string{"a.*", "a.>", ">", "x.*.z", "a.b", "*"}
)

func (g *genLog) conn() string { return g.conns[g.r.IntN(len(g.conns))] }

func (g *genLog) newConn(node string, epoch uint64) string {
	g.nextConn[node]++
	return fmt.Sprintf("%s/%d/%d", node, epoch, g.nextConn[node])
}

func (g *genLog) command() fsm.Command {
	r := g.r
	g.req++
	conn := g.conn()
	switch p := r.IntN(100); {
	case p < 28: // enqueue (new, duplicate or conflicting)
		var a queue.EnqueueArgs
		if len(g.sent) > 0 && r.IntN(100) < 15 {
			a = g.sent[max(0, len(g.sent)-1-r.IntN(20))] // recent: inside the dedup window
			switch r.IntN(3) {
			case 0:
				a.Queue = genQueues[r.IntN(3)]
			case 1:
				a.Env = append([]byte("changed:"), a.Env...)
				a.Hash = sha256.Sum256(a.Env)
			}
		} else {
			id := fmt.Sprintf("m%d", len(g.sent))
			env := []byte(fmt.Sprintf(`{"id":%q,"n":%d}`, id, r.Int64()))
			a = queue.EnqueueArgs{Queue: genQueues[r.IntN(3)], From: fmt.Sprintf("agent%d", r.IntN(3)), ID: id, Env: env, Hash: sha256.Sum256(env)}
			if r.IntN(5) == 0 {
				a.DelayMs = int64(r.IntN(5000))
			}
			a.Priority = uint8(r.IntN(11)) // 10 is out of range
			g.sent = append(g.sent, a)
		}
		return mustCmd(g.t, fsm.TypeEnqueue, conn, g.req, &a)
	case p < 36:
		return mustCmd(g.t, fsm.TypeConsume, conn, g.req, &queue.ConsumeArgs{
			Queue: genQueues[r.IntN(len(genQueues))], Conn: conn, Prefetch: r.IntN(5), LeaseMs: int64(r.IntN(8000)),
		})
	case p < 66: // settle a delivery
		a := queue.SettleArgs{Queue: "q0", Seq: uint64(1 + r.IntN(20)), Attempt: 1, Conn: conn}
		if len(g.leases) > 0 && r.IntN(10) > 0 {
			i := len(g.leases) - 1 - r.IntN(min(len(g.leases), 8)) // a recent one: it may still be leased
			d := g.leases[i]
			g.leases = append(g.leases[:i], g.leases[i+1:]...)
			a = queue.SettleArgs{Queue: d.Queue, Seq: d.Seq, Attempt: d.Attempt, Conn: d.Conn}
			if r.IntN(20) == 0 {
				a.Attempt++
			}
		}
		switch q := r.IntN(10); {
		case q < 5:
			return mustCmd(g.t, fsm.TypeAck, a.Conn, g.req, &a)
		case q < 7:
			if r.IntN(2) == 0 {
				d := int64(r.IntN(3000))
				a.DelayMs = &d
			}
			return mustCmd(g.t, fsm.TypeNack, a.Conn, g.req, &a)
		case q < 8:
			if r.IntN(2) == 0 {
				a.Reason = "no good"
			}
			return mustCmd(g.t, fsm.TypeReject, a.Conn, g.req, &a)
		default:
			a.LeaseMs = int64(r.IntN(10000))
			if r.IntN(2) == 0 {
				g.leases = append(g.leases, queue.Delivery{Queue: a.Queue, Seq: a.Seq, Attempt: a.Attempt, Conn: a.Conn})
			}
			return mustCmd(g.t, fsm.TypeExtend, a.Conn, g.req, &a)
		}
	case p < 70:
		a := queue.CancelArgs{Consumer: uint64(1 + r.IntN(40)), Conn: conn}
		if len(g.cons) > 0 && r.IntN(4) > 0 {
			i := r.IntN(len(g.cons))
			a = queue.CancelArgs{Consumer: g.cons[i].id, Conn: g.cons[i].conn}
			g.cons = append(g.cons[:i], g.cons[i+1:]...)
		}
		return mustCmd(g.t, fsm.TypeCancel, a.Conn, g.req, &a)
	case p < 73:
		a := queue.DeclareArgs{Queue: genQueues[r.IntN(len(genQueues))]}
		if r.IntN(2) == 0 {
			a.MaxAttempts = new(r.IntN(5)) // 0 is a bad request
		}
		if r.IntN(2) == 0 {
			a.BackoffMs = []int64{int64(r.IntN(2000)), int64(r.IntN(4000))}
		}
		if r.IntN(3) == 0 {
			a.DLQ = new(genQueues[3+r.IntN(2)])
		}
		if r.IntN(3) == 0 {
			a.MaxLen = new(int64(r.IntN(15)))
		}
		return mustCmd(g.t, fsm.TypeDeclare, conn, g.req, &a)
	case p < 82:
		var a queue.PublishArgs
		if len(g.pubs) > 0 && r.IntN(100) < 15 {
			a = g.pubs[max(0, len(g.pubs)-1-r.IntN(20))]
			if r.IntN(2) == 0 {
				a.Topic = genTopics[r.IntN(len(genTopics))]
			}
		} else {
			env := []byte(fmt.Sprintf(`{"id":"p%d"}`, len(g.pubs)))
			a = queue.PublishArgs{Topic: genTopics[r.IntN(len(genTopics))], From: "agent0", ID: fmt.Sprintf("p%d", len(g.pubs)), Env: env, Hash: sha256.Sum256(env)}
			g.pubs = append(g.pubs, a)
		}
		return mustCmd(g.t, fsm.TypePublish, conn, g.req, &a)
	case p < 87:
		return mustCmd(g.t, fsm.TypeSubscribe, conn, g.req, &queue.SubscribeArgs{Pattern: genPats[r.IntN(len(genPats))], Conn: conn})
	case p < 88: // an operator redrives dead letters
		a := fsm.QueueRedriveArgs{DLQ: genQueues[3+r.IntN(2)], Limit: 1 + r.IntN(3)}
		if r.IntN(3) == 0 {
			a.To = genQueues[r.IntN(3)]
		}
		c := mustCmd(g.t, fsm.TypeQueueRedrive, conn, g.req, &a)
		c.Actor = "operator:gen"
		return c
	case p < 91:
		a := fsm.UnsubscribeArgs{Sub: uint64(1 + r.IntN(30)), Conn: conn}
		if len(g.subs) > 0 && r.IntN(4) > 0 {
			i := r.IntN(len(g.subs))
			a = fsm.UnsubscribeArgs{Sub: g.subs[i].id, Conn: g.subs[i].conn}
			g.subs = append(g.subs[:i], g.subs[i+1:]...)
		}
		return mustCmd(g.t, fsm.TypeUnsubscribe, a.Conn, g.req, &a)
	case p < 97: // a connection closes; a new one opens on the same node
		i := r.IntN(len(g.conns))
		old := g.conns[i]
		node := queue.ConnNode(old)
		epoch := uint64(1)
		if node == "n2" {
			epoch = g.n2epoch
		}
		g.conns[i] = g.newConn(node, epoch)
		return mustCmd(g.t, fsm.TypeConnClosed, "", 0, &fsm.ConnClosedArgs{Conn: old})
	default: // node n2 restarts: its connections of older epochs end
		g.n2epoch++
		for i, c := range g.conns {
			if queue.ConnNode(c) == "n2" && r.IntN(2) == 0 {
				g.conns[i] = g.newConn("n2", g.n2epoch)
			}
		}
		return mustCmd(g.t, fsm.TypeNodeStarted, "", 0, &fsm.NodeStartedArgs{Node: "n2", Epoch: g.n2epoch})
	}
}

func (g *genLog) entry() {
	r := g.r
	idx := uint64(len(g.logs) + 1)
	if r.IntN(50) == 0 { // entries raft applies without a command
		typ := raft.LogNoop
		if r.IntN(2) == 0 {
			typ = raft.LogConfiguration
		}
		l := &raft.Log{Index: idx, Term: 1, Type: typ}
		g.logs = append(g.logs, l)
		g.ref.Apply(l)
		return
	}
	g.now += int64(r.IntN(1500))
	at := g.now
	if r.IntN(25) == 0 { // a leader with a clock behind: clamped
		at -= int64(1 + r.IntN(20000))
		g.stats["backwards"]++
	}
	var cmds []fsm.Command
	switch n := r.IntN(20); {
	case n < 2: // a tick: expiries only
		g.stats["tick"]++
	case n < 16:
		cmds = append(cmds, g.command())
	default:
		for range 2 + r.IntN(4) {
			cmds = append(cmds, g.command())
		}
	}
	l := mustLog(g.t, idx, at, cmds...)
	g.logs = append(g.logs, l)
	g.ref.Apply(l)
	for _, e := range g.col.take() {
		switch e := e.(type) {
		case *queue.Delivery:
			g.stats["delivery"]++
			g.leases = append(g.leases, *e)
		case *queue.Event:
			g.stats["event"]++
		case *fsm.Reply:
			switch {
			case e.Err != nil:
				for _, s := range []error{queue.ErrNotFound, queue.ErrFull, queue.ErrConflict, queue.ErrBadRequest, queue.ErrForbidden} {
					if errors.Is(e.Err, s) {
						g.stats["err:"+s.Error()]++
					}
				}
			case e.Result == nil:
				g.stats["ok"]++
			case e.Type == fsm.TypeQueueRedrive:
				g.stats["redriven"] += len(e.Result.(*fsm.QueueRedriveResult).Moved)
			default:
				switch res := e.Result.(type) {
				case *fsm.ConsumeResult:
					g.cons = append(g.cons, consRef{res.Consumer, e.Conn})
				case *fsm.SubscribeResult:
					g.subs = append(g.subs, consRef{res.Sub, e.Conn})
				case *fsm.EnqueueResult:
					if res.Dup {
						g.stats["dup"]++
					}
				case *fsm.PublishResult:
					if res.Dup {
						g.stats["pubdup"]++
					}
				}
			}
		}
	}
}

// sampleTimelines counts the events in the timelines of the messages
// the reference holds now, by kind ("timeline:delivered"), and those
// dropped to bound them: acked messages go, so the log's coverage of
// timelines is what samples along the way saw.
func (g *genLog) sampleTimelines() {
	err := g.ref.View(func(tx *bolt.Tx) error {
		for _, q := range genQueues {
			var bad error
			if err := queue.ReadMessages(tx, q, false, func(m queue.Message) bool {
				es, err := m.Timeline()
				for _, e := range es {
					g.stats["timeline:"+e.Kind.String()]++
				}
				g.stats["timeline:dropped"] += m.TimelineDropped
				bad = err
				return err == nil
			}); err != nil || bad != nil {
				return errors.Join(err, bad)
			}
		}
		return nil
	})
	if err != nil {
		g.t.Fatalf("sample timelines: %v", err)
	}
}

type testLog struct {
	logs  []*raft.Log
	final [32]byte // digest of the reference after the whole log
	stats map[string]int
}

var (
	logOnce  sync.Once
	logCache testLog
	logErr   error
)

// sharedLog is the seeded random log of the determinism, snapshot and
// restart tests, made once per test binary.
func sharedLog(t *testing.T) testLog {
	t.Helper()
	logOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fsm-gen-")
		if err != nil {
			logErr = err
			return
		}
		defer os.RemoveAll(dir)
		ref, err := fsm.Open(filepath.Join(dir, "state.db"), "n1")
		if err != nil {
			logErr = err
			return
		}
		defer ref.Close()
		g := &genLog{t: t, r: rand.New(rand.NewPCG(20240601, 7)), ref: ref, now: 1_764_000_000_000,
			nextConn: map[string]int{}, n2epoch: 1, stats: map[string]int{}}
		ref.SetSink(g.col.sink)
		for range 4 {
			g.conns = append(g.conns, g.newConn("n1", 1))
		}
		for range 2 {
			g.conns = append(g.conns, g.newConn("n2", 1))
		}
		for i := range 3000 {
			g.entry()
			if i%100 == 99 {
				g.sampleTimelines()
			}
		}
		logCache = testLog{logs: g.logs, stats: g.stats}
		logCache.final, _, logErr = ref.Digest()
		var dead int64
		logErr = errors.Join(logErr, ref.View(func(tx *bolt.Tx) error {
			for _, q := range genQueues {
				info, err := queue.ReadInfo(tx, q)
				if err != nil {
					return err
				}
				dead += info.Dead
			}
			return nil
		}))
		logCache.stats["dead"] = int(dead)
	})
	if logErr != nil {
		t.Fatalf("generate log: %v", logErr)
	}
	return logCache
}

// --------------------------------------------------------------- tests

// The random log must actually exercise the state machine.
func Test_FSM_GeneratedLog_CoversCommands(t *testing.T) {
	tl := sharedLog(t)
	t.Logf("stats: %v", tl.stats)
	for _, k := range []string{"delivery", "event", "dup", "pubdup", "tick", "backwards", "dead", "redriven",
		"err:" + queue.ErrNotFound.Error(), "err:" + queue.ErrConflict.Error(), "err:" + queue.ErrBadRequest.Error(), "err:" + queue.ErrFull.Error(),
		// Timelines, as sampled along the log: every kind of event, and
		// timelines long enough to drop events.
		"timeline:enqueued", "timeline:delivered", "timeline:nacked", "timeline:rejected", "timeline:expired",
		"timeline:released", "timeline:dead", "timeline:redriven", "timeline:dropped"} {
		if tl.stats[k] < 3 {
			t.Errorf("stat %q = %d: the generated log barely exercises it", k, tl.stats[k])
		}
	}
}

// Same log, different batch groupings and local node ids: same state.
func Test_FSM_Determinism_BatchingAndLocalNode(t *testing.T) {
	tl := sharedLog(t)

	single := mustFresh(t, "n2")
	var colA collector
	single.SetSink(colA.sink)
	applySingly(single, tl.logs)

	batched := mustFresh(t, "n3")
	applyBatches(batched, tl.logs, rand.New(rand.NewPCG(1, 2)), 64)

	one := mustFresh(t, "n1")
	one.ApplyBatch(tl.logs)

	last := tl.logs[len(tl.logs)-1].Index
	for name, f := range map[string]*fsm.FSM{"single/n2": single, "batched/n3": batched, "one-batch/n1": one} {
		if got := mustDigest(t, f); got != tl.final {
			t.Errorf("%s: digest %x, reference %x", name, got, tl.final)
		}
		if got := f.AppliedIndex(); got != last {
			t.Errorf("%s: applied index %d, want %d", name, got, last)
		}
		if got, want := f.NextDeadline(), batched.NextDeadline(); got != want || got == 0 {
			t.Errorf("%s: NextDeadline %d, batched %d", name, got, want)
		}
	}
	// Node n2 sees effects only for its own connections, besides those
	// for every node (no target: a revocation, a publish for the Redis
	// subscribers).
	for _, e := range colA.take() {
		if e.Target() != "" && queue.ConnNode(e.Target()) != "n2" {
			t.Fatalf("n2 got an effect for %s: %#v", e.Target(), e)
		}
	}
}

// A snapshot taken mid-log and restored elsewhere continues to the same
// state; Persist runs while Apply goes on.
func Test_FSM_Snapshot_MidLogRestore(t *testing.T) {
	tl := sharedLog(t)
	r := rand.New(rand.NewPCG(3, 4))
	half := len(tl.logs) / 2

	a := mustFresh(t, "n1")
	applyBatches(a, tl.logs[:half], r, 32)
	atHalf := mustDigest(t, a)

	snap, err := a.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	sink := &memSink{}
	done := make(chan error, 1)
	go func() {
		err := snap.Persist(sink)
		snap.Release()
		done <- err
	}()
	applyBatches(a, tl.logs[half:], r, 32) // concurrently with Persist
	if err := <-done; err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}

	b := mustFresh(t, "n2")
	applySingly(b, tl.logs[:10]) // some state to be replaced
	if err := b.Restore(nopCloser{bytes.NewReader(sink.Bytes())}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := b.AppliedIndex(); got != tl.logs[half-1].Index {
		t.Fatalf("restored applied index %d, want %d", got, tl.logs[half-1].Index)
	}
	if got := mustDigest(t, b); got != atHalf {
		t.Fatalf("restored digest %x, want the state at the snapshot %x", got, atHalf)
	}
	// Raft replays from wherever it likes: entries at or below the snapshot
	// index must not apply twice.
	var col collector
	b.SetSink(col.sink)
	applyBatches(b, tl.logs[:half], r, 50)
	if fx := col.take(); len(fx) != 0 {
		t.Fatalf("replaying applied entries produced %d effects", len(fx))
	}
	if got := mustDigest(t, b); got != atHalf {
		t.Fatalf("replaying applied entries changed the state")
	}
	applyBatches(b, tl.logs[half-5:], r, 50)

	if da, db := mustDigest(t, a), mustDigest(t, b); da != tl.final || db != tl.final {
		t.Fatalf("final digests: source %x, restored %x, reference %x", da, db, tl.final)
	}
	if a.NextDeadline() != b.NextDeadline() {
		t.Fatalf("NextDeadline: source %d, restored %d", a.NextDeadline(), b.NextDeadline())
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func Test_FSM_Restore_RejectsGarbage(t *testing.T) {
	f := mustFresh(t, "n1")
	applySingly(f, []*raft.Log{mustLog(t, 1, 1000, mustCmd(t, fsm.TypeEnqueue, "", 0, &queue.EnqueueArgs{Queue: "q", From: "a", ID: "1", Env: []byte("x")}))})
	before := mustDigest(t, f)
	if err := f.Restore(nopCloser{bytes.NewReader(bytes.Repeat([]byte("not a db"), 1000))}); err == nil {
		t.Fatal("restore of garbage succeeded")
	}
	if got := mustDigest(t, f); got != before || f.AppliedIndex() != 1 {
		t.Fatalf("a failed restore changed the state")
	}
}

// A node restart reopens state.db; raft replays entries it already
// applied, which must change nothing.
func Test_FSM_Restart_NoDoubleApply(t *testing.T) {
	tl := sharedLog(t)
	r := rand.New(rand.NewPCG(5, 6))
	path := filepath.Join(t.TempDir(), "state.db")
	k := len(tl.logs) * 2 / 3

	f, err := fsm.Open(path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	applyBatches(f, tl.logs[:k], r, 40)
	before := mustDigest(t, f)
	deadline := f.NextDeadline()
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	f = mustOpen(t, path, "n1")
	if got := f.AppliedIndex(); got != tl.logs[k-1].Index {
		t.Fatalf("reopened applied index %d, want %d", got, tl.logs[k-1].Index)
	}
	if got := mustDigest(t, f); got != before {
		t.Fatal("reopen changed the state")
	}
	if got := f.NextDeadline(); got != deadline {
		t.Fatalf("reopened NextDeadline %d, want %d", got, deadline)
	}
	var col collector
	f.SetSink(col.sink)
	applyBatches(f, tl.logs[:k], r, 40)
	applySingly(f, tl.logs[k-20:k])
	if got := mustDigest(t, f); got != before {
		t.Fatal("replaying applied entries changed the state")
	}
	if fx := col.take(); len(fx) != 0 {
		t.Fatalf("replaying applied entries produced %d effects", len(fx))
	}
	if got := f.AppliedIndex(); got != tl.logs[k-1].Index {
		t.Fatalf("applied index moved to %d on replay", got)
	}
	// A batch straddling the applied index applies only its new part.
	applyBatches(f, tl.logs[k-7:], r, 40)
	if got := mustDigest(t, f); got != tl.final {
		t.Fatalf("after the rest of the log: digest %x, reference %x", got, tl.final)
	}
}

// A crash can leave state.db behind the log (entries applied but not yet
// committed to it): reopening the older file and replaying the log from
// the start reaches the same state as the peers.
func Test_FSM_Restart_StaleStateReplays(t *testing.T) {
	tl := sharedLog(t)
	r := rand.New(rand.NewPCG(7, 8))
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	k1, k2 := len(tl.logs)/4, len(tl.logs)*3/4

	f, err := fsm.Open(path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	applyBatches(f, tl.logs[:k1], r, 40)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	stale, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f = mustOpen(t, path, "n1")
	applyBatches(f, tl.logs[k1:k2], r, 40)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, stale, 0o600); err != nil { // the "crash"
		t.Fatal(err)
	}

	f = mustOpen(t, path, "n1")
	if got := f.AppliedIndex(); got != tl.logs[k1-1].Index {
		t.Fatalf("applied index %d, want %d", got, tl.logs[k1-1].Index)
	}
	applyBatches(f, tl.logs, r, 40)
	if got := mustDigest(t, f); got != tl.final {
		t.Fatalf("digest %x, reference %x", got, tl.final)
	}
}

func mustPanic(t *testing.T, what string, fn func()) (msg any) {
	t.Helper()
	defer func() {
		msg = recover()
		if msg == nil {
			t.Fatalf("%s did not panic", what)
		}
	}()
	fn()
	return nil
}

func Test_FSM_CorruptEntry_PanicsAndDecodeFails(t *testing.T) {
	good1 := mustLog(t, 1, 1000, mustCmd(t, fsm.TypeEnqueue, "n1/1/1", 1, &queue.EnqueueArgs{Queue: "q", From: "a", ID: "1", Env: []byte(`{"x":1}`)}))
	good2 := mustLog(t, 2, 2000, mustCmd(t, fsm.TypeEnqueue, "n1/1/1", 2, &queue.EnqueueArgs{Queue: "q", From: "a", ID: "2", Env: []byte(`{"x":2}`)}))

	e, err := fsm.DecodeEntry(good2.Data)
	if err != nil || e.Time != 2000 || len(e.Cmds) != 1 || e.Cmds[0].Type != fsm.TypeEnqueue || e.Cmds[0].Req != 2 {
		t.Fatalf("round trip: %+v, %v", e, err)
	}

	n := len(good2.Data)
	for _, pos := range []int{0, 1, 4, 5, 6, n / 2, n - 1} {
		t.Run(fmt.Sprintf("byte_%d", pos), func(t *testing.T) {
			data := bytes.Clone(good2.Data)
			data[pos] ^= 0x20
			if _, err := fsm.DecodeEntry(data); !errors.Is(err, fsm.ErrCorrupt) {
				t.Fatalf("DecodeEntry: err = %v, want ErrCorrupt", err)
			}
			f := mustFresh(t, "n1")
			var col collector
			f.SetSink(col.sink)
			before := mustDigest(t, f)
			bad := &raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: data}
			mustPanic(t, "ApplyBatch", func() { f.ApplyBatch([]*raft.Log{good1, bad}) })
			// The batch's transaction rolled back: nothing of it is stored,
			// and nothing was handed out.
			if f.AppliedIndex() != 0 || mustDigest(t, f) != before {
				t.Fatalf("state changed by a panicking batch (applied %d)", f.AppliedIndex())
			}
			if fx := col.take(); len(fx) != 0 {
				t.Fatalf("panicking batch produced %d effects", len(fx))
			}
			mustPanic(t, "Apply", func() { f.Apply(bad) })
			// The FSM is still usable with the intact entries.
			f.ApplyBatch([]*raft.Log{good1, good2})
			if f.AppliedIndex() != 2 {
				t.Fatalf("applied index %d after good entries, want 2", f.AppliedIndex())
			}
		})
	}
	for _, data := range [][]byte{nil, {}, {1}, good2.Data[:4], good2.Data[:n-1], append(bytes.Clone(good2.Data), 0)} {
		if _, err := fsm.DecodeEntry(data); !errors.Is(err, fsm.ErrCorrupt) {
			t.Errorf("DecodeEntry(%d bytes): err = %v, want ErrCorrupt", len(data), err)
		}
	}
}

// A well-formed entry whose command cannot be understood must stop the
// replica, not be skipped.
func Test_FSM_UndecodableCommand_Panics(t *testing.T) {
	for name, c := range map[string]fsm.Command{
		"unknown_type": {Type: 200, Body: []byte{0xc0}},
		"bad_body":     {Type: fsm.TypeEnqueue, Body: []byte{0xc1}},
	} {
		t.Run(name, func(t *testing.T) {
			f := mustFresh(t, "n1")
			l := mustLog(t, 1, 1000, c)
			mustPanic(t, "Apply", func() { f.Apply(l) })
			if f.AppliedIndex() != 0 {
				t.Fatalf("applied index %d", f.AppliedIndex())
			}
		})
	}
}

// fmtFx renders effects compactly for order checks.
func fmtFx(fx []queue.Effect) []string {
	var out []string
	for _, e := range fx {
		switch e := e.(type) {
		case *fsm.Reply:
			s := fmt.Sprintf("R %s #%d", e.Conn, e.Req)
			if e.Err != nil {
				s += " err=" + e.Err.Error()
			}
			switch r := e.Result.(type) {
			case *fsm.ConsumeResult:
				s += fmt.Sprintf(" consumer=%d", r.Consumer)
			case *fsm.EnqueueResult:
				s += fmt.Sprintf(" seq=%d dup=%v", r.Seq, r.Dup)
			case *fsm.PublishResult:
				s += fmt.Sprintf(" receivers=%d dup=%v", r.Receivers, r.Dup)
			case *fsm.SubscribeResult:
				s += fmt.Sprintf(" sub=%d", r.Sub)
			case *fsm.ExtendResult:
				s += fmt.Sprintf(" until=%d", r.LeaseUntil)
			case nil:
			default:
				s += fmt.Sprintf(" %#v", r)
			}
			out = append(out, s)
		case *queue.Delivery:
			out = append(out, fmt.Sprintf("D %s c%d %s/%d a%d until=%d", e.Conn, e.Consumer, e.Queue, e.Seq, e.Attempt, e.LeaseUntil))
		case *queue.Event:
			out = append(out, fmt.Sprintf("E %s s%d %s", e.Conn, e.Sub, e.Topic))
		}
	}
	return out
}

func enqCmd(t *testing.T, conn string, req uint64, q, id string) fsm.Command {
	env := []byte(id)
	return mustCmd(t, fsm.TypeEnqueue, conn, req, &queue.EnqueueArgs{Queue: q, From: "alice", ID: id, Env: env, Hash: sha256.Sum256(env)})
}

// The reply to a command precedes the deliveries the command makes, and
// replies go only to connections of the local node.
func Test_FSM_Effects_ReplyBeforeDelivery(t *testing.T) {
	const (
		cons = "n1/1/1"
		prod = "n1/1/2"
		far  = "n2/1/1"
	)
	consume := func(req uint64, prefetch int) fsm.Command {
		return mustCmd(t, fsm.TypeConsume, cons, req, &queue.ConsumeArgs{Queue: "jobs", Conn: cons, Prefetch: prefetch, LeaseMs: 1000})
	}
	ack := func(req, seq uint64, attempt int) fsm.Command {
		return mustCmd(t, fsm.TypeAck, cons, req, &queue.SettleArgs{Queue: "jobs", Seq: seq, Attempt: attempt, Conn: cons})
	}
	steps := []struct {
		at   int64
		cmds []fsm.Command
		want []string
	}{
		{1000, []fsm.Command{enqCmd(t, prod, 1, "jobs", "m1")}, []string{"R n1/1/2 #1 seq=1 dup=false"}},
		{1000, []fsm.Command{consume(2, 1)}, []string{"R n1/1/1 #2 consumer=1", "D n1/1/1 c1 jobs/1 a1 until=2000"}},
		{1100, []fsm.Command{enqCmd(t, prod, 3, "jobs", "m2")}, []string{"R n1/1/2 #3 seq=2 dup=false"}},
		{1200, []fsm.Command{ack(4, 1, 1)}, []string{"R n1/1/1 #4", "D n1/1/1 c1 jobs/2 a1 until=2200"}},
		{1200, []fsm.Command{ack(5, 1, 1)}, []string{"R n1/1/1 #5 err=" + queue.ErrNotFound.Error()}},
		{1300, []fsm.Command{ack(6, 2, 1), consume(7, 5), enqCmd(t, prod, 8, "jobs", "m3"), enqCmd(t, prod, 9, "jobs", "m4")}, []string{
			"R n1/1/1 #6",
			"R n1/1/1 #7 consumer=2",
			"R n1/1/2 #8 seq=3 dup=false",
			"D n1/1/1 c2 jobs/3 a1 until=2300", // round robin: c1 was served last
			"R n1/1/2 #9 seq=4 dup=false",
			"D n1/1/1 c1 jobs/4 a1 until=2300",
		}},
		// A command from another node's connection: no reply here, but the
		// delivery it makes for a local consumer is.
		{1400, []fsm.Command{ack(10, 3, 1), enqCmd(t, far, 11, "jobs", "m5")}, []string{
			"R n1/1/1 #10",
			"D n1/1/1 c2 jobs/5 a1 until=2400",
		}},
		// Leases of jobs/4 and jobs/5 lapse before m6 is stored: ready again
		// at 2400 + backoff 1000.
		{2400, []fsm.Command{enqCmd(t, prod, 12, "jobs", "m6")}, []string{
			"R n1/1/2 #12 seq=6 dup=false",
			"D n1/1/1 c1 jobs/6 a1 until=3400",
		}},
		// Expiries run first: the redelivery of jobs/4 precedes the reply.
		{3400, []fsm.Command{enqCmd(t, prod, 13, "jobs", "m7")}, []string{
			"D n1/1/1 c2 jobs/4 a2 until=4400",
			"D n1/1/1 c1 jobs/5 a2 until=4400",
			"R n1/1/2 #13 seq=7 dup=false",
			"D n1/1/1 c2 jobs/7 a1 until=4400",
		}},
		{3400, []fsm.Command{enqCmd(t, prod, 14, "jobs", "m6")}, []string{"R n1/1/2 #14 seq=6 dup=true"}},
	}
	f := mustFresh(t, "n1")
	var col collector
	f.SetSink(col.sink)
	for i, s := range steps {
		f.Apply(mustLog(t, uint64(i+1), s.at, s.cmds...))
		if got := fmtFx(col.take()); !reflect.DeepEqual(got, s.want) {
			t.Errorf("entry %d:\n got %q\nwant %q", i+1, got, s.want)
		}
	}
}

// Entries stamped earlier than one already applied run at the later time:
// the state machine's clock never goes back.
func Test_FSM_Apply_ClampsTimeGoingBackwards(t *testing.T) {
	f := mustFresh(t, "n1")
	var col collector
	f.SetSink(col.sink)
	f.Apply(mustLog(t, 1, 10000, enqCmd(t, "n1/1/2", 1, "jobs", "m1")))
	f.Apply(mustLog(t, 2, 5000, mustCmd(t, fsm.TypeConsume, "n1/1/1", 2, &queue.ConsumeArgs{Queue: "jobs", Conn: "n1/1/1", Prefetch: 1, LeaseMs: 1000})))
	want := []string{"R n1/1/2 #1 seq=1 dup=false", "R n1/1/1 #2 consumer=1", "D n1/1/1 c1 jobs/1 a1 until=11000"}
	if got := fmtFx(col.take()); !reflect.DeepEqual(got, want) {
		t.Fatalf("effects\n got %q\nwant %q", got, want)
	}
	if got := f.NextDeadline(); got != 11000 {
		t.Fatalf("NextDeadline = %d, want 11000", got)
	}
	// A tick (no commands) at the deadline expires the lease.
	f.Apply(mustLog(t, 3, 11000))
	var info queue.Info
	if err := f.View(func(tx *bolt.Tx) error {
		var err error
		info, err = queue.ReadInfo(tx, "jobs")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if want := (queue.Info{Delayed: 1, Consumers: 1}); info != want {
		t.Fatalf("after the tick: info %+v, want %+v", info, want)
	}
}
