package fsm_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// stateDigest is a digest of every bucket but the audit log's.
func stateDigest(t *testing.T, f *fsm.FSM) [32]byte {
	t.Helper()
	skip := map[string]bool{}
	for _, b := range audit.Buckets {
		skip[string(b)] = true
	}
	h := sha256.New()
	err := f.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if skip[string(name)] {
				return nil
			}
			fmt.Fprintf(h, "bucket %q\n", name)
			return b.ForEach(func(k, v []byte) error {
				fmt.Fprintf(h, "%x=%x\n", k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func mustAuditHead(t *testing.T, f *fsm.FSM) audit.Head {
	t.Helper()
	h, err := f.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func auditEntry(t *testing.T, f *fsm.FSM, seq uint64) audit.Entry {
	t.Helper()
	var e audit.Entry
	err := f.View(func(tx *bolt.Tx) error {
		var ok bool
		var err error
		if e, ok, err = audit.Get(tx, seq); err == nil && !ok {
			err = fmt.Errorf("no audit entry %d", seq)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func lastAuditEntry(t *testing.T, f *fsm.FSM) audit.Entry {
	t.Helper()
	return auditEntry(t, f, mustAuditHead(t, f).Seq)
}

func mustVerifyAudit(t *testing.T, f *fsm.FSM, pub ed25519.PublicKey) audit.Report {
	t.Helper()
	var r audit.Report
	err := f.View(func(tx *bolt.Tx) error {
		var err error
		r, err = audit.Verify(tx, pub)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK {
		t.Fatalf("audit log: %s", r)
	}
	return r
}

// auditKey is a fixed cluster audit key.
func auditKey() (ed25519.PrivateKey, ed25519.PublicKey) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	return key, key.Public().(ed25519.PublicKey)
}

// twoReplicas are two fresh state machines and a function that applies
// an entry of commands to both, at the next index and a later time.
func twoReplicas(t *testing.T) (a, b *fsm.FSM, apply func(cmds ...fsm.Command)) {
	a, b = mustFresh(t, "n1"), mustFresh(t, "n2")
	idx := uint64(0)
	return a, b, func(cmds ...fsm.Command) {
		idx++
		l := mustLog(t, idx, 1_700_000_000_000+int64(idx), cmds...)
		a.Apply(l)
		b.Apply(l)
	}
}

// Replicas that apply the same log, whatever their batching and node id,
// hold the same chain: one entry per command, none for ticks and expiries.
func Test_FSM_Audit_SameHeadOnEveryReplica(t *testing.T) {
	tl := sharedLog(t)
	var cmds uint64
	for _, l := range tl.logs {
		if e, err := fsm.DecodeEntry(l.Data); err == nil {
			cmds += uint64(len(e.Cmds))
		}
	}
	a, b := mustFresh(t, "n1"), mustFresh(t, "n2")
	applySingly(a, tl.logs)
	applyBatches(b, tl.logs, rand.New(rand.NewPCG(5, 6)), 100)
	ha, hb := mustAuditHead(t, a), mustAuditHead(t, b)
	if ha != hb {
		t.Fatalf("heads differ: n1 %d %x, n2 %d %x", ha.Seq, ha.Hash, hb.Seq, hb.Hash)
	}
	if ha.Seq != cmds {
		t.Fatalf("%d audit entries for %d commands", ha.Seq, cmds)
	}
	if r := mustVerifyAudit(t, a, nil); r.Entries != cmds || r.Head != ha {
		t.Fatalf("report %s", r)
	}
	// A restart replays nothing twice, and a snapshot carries the chain.
	c := mustFresh(t, "n3")
	if err := c.Restore(nopCloser{bytes.NewReader(mustSnapshot(t, a))}); err != nil {
		t.Fatal(err)
	}
	applySingly(c, tl.logs) // all at or below the restored index: skipped
	if h := mustAuditHead(t, c); h != ha {
		t.Fatalf("restored head %d %x, want %d %x", h.Seq, h.Hash, ha.Seq, ha.Hash)
	}
}

// Each command's entry names what happened, who asked, what it concerned
// and how it ended, at the entry's time, with the digest of its body.
func Test_FSM_Audit_EntriesDescribeCommands(t *testing.T) {
	f := mustFresh(t, "n1")
	const conn = "n1/1/1"
	env := []byte(tEnv)
	type want struct{ kind, actor, subject, outcome string }
	steps := []struct {
		actor string
		cmd   fsm.Command
		want  want
	}{
		{"alice", mustCmd(t, fsm.TypeEnqueue, conn, 1, &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: "m1", Env: env}),
			want{"enqueue", "alice", "jobs", "ok"}},
		{"alice", mustCmd(t, fsm.TypeEnqueue, conn, 2, &queue.EnqueueArgs{Queue: "@bob", From: "alice", ID: "m2", Env: env}),
			want{"send", "alice", "@bob", "ok"}},
		{"alice", mustCmd(t, fsm.TypeEnqueue, conn, 3, &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: "m1", Env: env, Hash: sha256.Sum256([]byte("other"))}),
			want{"enqueue", "alice", "jobs", "conflict"}},
		{"bob", mustCmd(t, fsm.TypeAck, conn, 4, &queue.SettleArgs{Queue: "jobs", Seq: 99, Attempt: 1, Conn: conn}),
			want{"ack", "bob", "jobs/99", "not_found"}},
		{"bob", mustCmd(t, fsm.TypeNack, conn, 5, &queue.SettleArgs{Queue: "jobs", Seq: 98, Attempt: 1, Conn: conn}),
			want{"nack", "bob", "jobs/98", "not_found"}},
		{"bob", mustCmd(t, fsm.TypeConsume, conn, 6, &queue.ConsumeArgs{Queue: "jobs", Conn: conn, Prefetch: 0, LeaseMs: 1000}),
			want{"consume", "bob", "jobs", "bad_request"}},
		{"operator:root", mustCmd(t, fsm.TypeDeclare, conn, 7, &queue.DeclareArgs{Queue: "jobs"}),
			want{"queue.declare", "operator:root", "jobs", "ok"}},
		{"alice", mustCmd(t, fsm.TypePublish, conn, 8, &queue.PublishArgs{Topic: "a.b", From: "alice", ID: "p1", Env: env}),
			want{"publish", "alice", "a.b", "ok"}},
		{"bob", mustCmd(t, fsm.TypeSubscribe, conn, 9, &queue.SubscribeArgs{Pattern: "a.>", Conn: conn}),
			want{"subscribe", "bob", "a.>", "ok"}},
		{"bob", mustCmd(t, fsm.TypeUnsubscribe, conn, 10, &fsm.UnsubscribeArgs{Sub: 77, Conn: conn}),
			want{"unsubscribe", "bob", "77", "not_found"}},
		{"bob", mustCmd(t, fsm.TypeCancel, conn, 11, &queue.CancelArgs{Consumer: 5, Conn: conn}),
			want{"cancel", "bob", "5", "not_found"}},
		{"operator:root", mustCmd(t, fsm.TypeAgentRevoke, conn, 12, &fsm.AgentRevokeArgs{Name: "ghost"}),
			want{"agent.revoke", "operator:root", "ghost", "not_found"}},
		{"operator:root", mustCmd(t, fsm.TypeAgentAdd, conn, 13, &fsm.AgentAddArgs{Agent: auth.Agent{Name: "carol", Alg: "bogus"}}),
			want{"agent.add", "operator:root", "carol", "bad_request"}},
		{"", mustCmd(t, fsm.TypeAuthEvent, "", 0, &fsm.AuthEventArgs{Kind: "auth.fail", Agent: "mallory", Subject: "hello", Code: "unauthorized", Node: "n1"}),
			want{"auth.fail", "mallory", "hello", "unauthorized"}},
		{"", mustCmd(t, fsm.TypeAuthEvent, "", 0, &fsm.AuthEventArgs{Kind: "auth.ok", Agent: "alice", Node: "n1"}),
			want{"auth.ok", "alice", "", "ok"}},
		{"", mustCmd(t, fsm.TypeConnClosed, "", 0, &fsm.ConnClosedArgs{Conn: conn}),
			want{"conn.closed", "", conn, "ok"}},
		{"", mustCmd(t, fsm.TypeNodeStarted, "", 0, &fsm.NodeStartedArgs{Node: "n2", Epoch: 3}),
			want{"node.started", "", "n2", "ok"}},
		{"", mustCmd(t, fsm.TypeNodeDown, "", 0, &fsm.NodeDownArgs{Node: "n3"}),
			want{"node.down", "", "n3", "ok"}},
	}
	at := int64(1_700_000_000_000)
	for i, s := range steps {
		s.cmd.Actor = s.actor
		f.Apply(mustLog(t, uint64(i+1), at+int64(i), s.cmd))
		e := lastAuditEntry(t, f)
		got := want{e.Kind, e.Actor, e.Subject, e.Outcome}
		if e.Seq != uint64(i+1) || got != s.want {
			t.Errorf("step %d: entry %d %+v, want %+v", i, e.Seq, got, s.want)
		}
		if e.Time != at+int64(i) || e.Digest != sha256.Sum256(s.cmd.Body) {
			t.Errorf("step %d: time %d, digest %x", i, e.Time, e.Digest)
		}
	}
	// Two commands in one entry: two entries at the entry's time.
	f.Apply(mustLog(t, uint64(len(steps)+1), at+1000,
		mustCmd(t, fsm.TypeDeclare, conn, 20, &queue.DeclareArgs{Queue: "a"}),
		mustCmd(t, fsm.TypeDeclare, conn, 21, &queue.DeclareArgs{Queue: "b"})))
	if a, b := auditEntry(t, f, uint64(len(steps)+1)), lastAuditEntry(t, f); a.Subject != "a" || b.Subject != "b" || a.Time != at+1000 || b.Time != at+1000 {
		t.Fatalf("entries %+v and %+v", a, b)
	}
	// A tick adds nothing.
	before := mustAuditHead(t, f)
	f.Apply(mustLog(t, uint64(len(steps)+2), at+5000))
	if mustAuditHead(t, f) != before {
		t.Fatal("a tick added an audit entry")
	}
	mustVerifyAudit(t, f, nil)
}

// The checkpoint command stores a checkpoint only when the signature
// verifies and the entry it names has its hash; its own entry records the
// outcome either way.
func Test_FSM_Audit_Checkpoint(t *testing.T) {
	key, pub := auditKey()
	a, b, apply := twoReplicas(t)
	for i := range 5 {
		apply(mustCmd(t, fsm.TypeDeclare, "n1/1/1", uint64(i), &queue.DeclareArgs{Queue: fmt.Sprintf("q%d", i)}))
	}
	head := mustAuditHead(t, a)
	checkpoint := func(c audit.Checkpoint) fsm.Command {
		cmd, err := fsm.NewAuditCheckpoint(c)
		if err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	forged := audit.Sign(key, head)
	forged.Sig[0] ^= 1
	wrongHash := audit.Sign(key, audit.Head{Seq: head.Seq, Hash: sha256.Sum256([]byte("x"))})
	for _, tc := range []struct {
		name    string
		cmd     fsm.Command
		seq     uint64 // the entry it names
		outcome string
	}{
		{"bad_signature", checkpoint(forged), head.Seq, "bad_request"},
		{"hash_mismatch", checkpoint(wrongHash), head.Seq, "bad_request"},
		{"no_such_entry", checkpoint(audit.Sign(key, audit.Head{Seq: 99, Hash: head.Hash})), 99, "bad_request"},
		{"malformed", mustCmd(t, fsm.TypeAuditCheckpoint, "", 0, &fsm.AuditCheckpointArgs{Seq: head.Seq, Hash: head.Hash[:4]}), head.Seq, "bad_request"},
		{"valid", checkpoint(audit.Sign(key, head)), head.Seq, "ok"},
		{"again", checkpoint(audit.Sign(key, head)), head.Seq, "conflict"},
	} {
		apply(tc.cmd)
		e := lastAuditEntry(t, a)
		if e.Kind != audit.KindCheckpoint || e.Subject != audit.CheckpointSubject(tc.seq) || e.Outcome != tc.outcome {
			t.Fatalf("%s: entry %+v, want outcome %s", tc.name, e, tc.outcome)
		}
	}
	_ = a.View(func(tx *bolt.Tx) error {
		c, ok, err := audit.LatestCheckpoint(tx)
		if err != nil || !ok || c.Seq != head.Seq || c.Hash != head.Hash || !c.Public.Equal(pub) {
			t.Fatalf("stored checkpoint %+v %v %v", c, ok, err)
		}
		if _, ok, _ := audit.GetCheckpoint(tx, 99); ok {
			t.Fatal("a refused checkpoint was stored")
		}
		return nil
	})
	if r := mustVerifyAudit(t, a, pub); r.Checkpoints != 1 || r.Entries != head.Seq+6 {
		t.Fatalf("report %s", r)
	}
	if mustDigest(t, a) != mustDigest(t, b) {
		t.Fatal("replicas diverged")
	}
}

// Pruning the audit log by command, in steps: refused before a checkpoint
// covers what would stay; then each step's entry names the base it
// reached, the chain verifies from there after every step, and two
// replicas stay identical.
func Test_FSM_Audit_Prune(t *testing.T) {
	key, pub := auditKey()
	a, b, apply := twoReplicas(t)
	for i := range 30 {
		apply(mustCmd(t, fsm.TypeDeclare, "n1/1/1", uint64(i), &queue.DeclareArgs{Queue: fmt.Sprintf("q%d", i)}))
	}
	step := func(through uint64, max int) audit.Entry {
		apply(mustCmd(t, fsm.TypeAuditPrune, "n1/1/op", 1, &fsm.AuditPruneArgs{Through: through, Max: max}))
		return lastAuditEntry(t, a)
	}
	if e := step(10, 100); e.Kind != audit.KindPrune || e.Outcome != "conflict" || e.Subject != "10" {
		t.Fatalf("a prune without a checkpoint: %+v", e)
	}
	head := mustAuditHead(t, a)
	cmd, err := fsm.NewAuditCheckpoint(audit.Sign(key, head))
	if err != nil {
		t.Fatal(err)
	}
	apply(cmd)
	if e := step(head.Seq, 100); e.Outcome != "conflict" {
		t.Fatalf("a prune through the checkpoint: %+v", e)
	}
	for _, want := range []uint64{8, 16, 20} {
		e := step(20, 8)
		if e.Outcome != "ok" || e.Subject != audit.PruneSubject(want) {
			t.Fatalf("step to %d: %+v", want, e)
		}
		if r := mustVerifyAudit(t, a, pub); r.Pruned != want || r.Checkpoints != 1 {
			t.Fatalf("after the step to %d: %s", want, r)
		}
		if mustDigest(t, a) != mustDigest(t, b) {
			t.Fatal("replicas diverged")
		}
	}
	if e := step(0, 8); e.Outcome != "bad_request" {
		t.Fatalf("through 0: %+v", e)
	}
}
