package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// adminLog is a log in which messages die (reject, nack, a closed
// connection) and an operator redrives and deletes them, with refusals
// among the commands. Consumers are on n1 and n2.
func adminLog(t *testing.T) []*raft.Log {
	const (
		c1 = "n1/1/1"
		c2 = "n2/1/1"
		op = "n1/1/call1"
	)
	var (
		logs []*raft.Log
		req  uint64
		now  int64 = 1_700_000_000_000
	)
	cmd := func(mt fsm.MessageType, conn, actor string, body any) fsm.Command {
		req++
		c := mustCmd(t, mt, conn, req, body)
		c.Actor = actor
		return c
	}
	entry := func(step int64, cmds ...fsm.Command) {
		now += step
		logs = append(logs, mustLog(t, uint64(len(logs)+1), now, cmds...))
	}
	redrive := func(a fsm.QueueRedriveArgs) fsm.Command {
		return cmd(fsm.TypeQueueRedrive, op, "operator:alice", &a)
	}
	del := func(q string, seq uint64, force bool) fsm.Command {
		return cmd(fsm.TypeMessageDelete, op, "operator:alice", &fsm.MessageDeleteArgs{Queue: q, Seq: seq, Force: force})
	}
	settle := func(mt fsm.MessageType, seq uint64) fsm.Command {
		return cmd(mt, c2, "bob", &queue.SettleArgs{Queue: "jobs", Seq: seq, Attempt: 1, Conn: c2})
	}

	var first []fsm.Command
	first = append(first, cmd(fsm.TypeDeclare, c1, "operator:alice", &queue.DeclareArgs{Queue: "jobs", MaxAttempts: new(1)}))
	for i := range 6 {
		first = append(first, cmd(fsm.TypeEnqueue, c1, "alice", &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: fmt.Sprint("m", i+1),
			Env: fmt.Appendf(nil, `{"n":%d}`, i+1), Priority: uint8(i % 3)}))
	}
	first = append(first, cmd(fsm.TypeConsume, c2, "bob", &queue.ConsumeArgs{Queue: "jobs", Conn: c2, Prefetch: 3, LeaseMs: 60_000}))
	entry(0, first...)
	// Leased: jobs/3, jobs/6 (priority 2), jobs/2 (priority 1).
	entry(10, settle(fsm.TypeReject, 3), settle(fsm.TypeNack, 6), settle(fsm.TypeAck, 2))
	// Leased now: jobs/5, jobs/1, jobs/4; they die with the connection.
	entry(10, cmd(fsm.TypeConnClosed, "", "", &fsm.ConnClosedArgs{Conn: c2}))
	// jobs.dlq: 1 (jobs/3), 2 (jobs/6), 3 (jobs/1), 4 (jobs/4), 5 (jobs/5).
	entry(10,
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{2, 4}}),                                            // req 13: to jobs/7, jobs/8
		cmd(fsm.TypeConsume, c1, "carol", &queue.ConsumeArgs{Queue: "jobs.dlq", Conn: c1, Prefetch: 1, LeaseMs: 5_000}), // leases jobs.dlq/1
	)
	entry(10,
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1}}),                                     // req 15: leased: conflict
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs", Seqs: []uint64{7}}),                                         // req 16: not a dead letter
		redrive(fsm.QueueRedriveArgs{DLQ: "nope.dlq"}),                                                        // req 17: not found
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Limit: 1}),                                              // req 18: jobs.dlq/3 to jobs/9, more after 3
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Limit: 1, After: 3}),                                    // req 19: jobs.dlq/5 to jobs/10
		del("jobs.dlq", 1, false),                                                                             // req 20: leased: conflict
		del("jobs", 8, false),                                                                                 // req 21: ready: deleted
		cmd(fsm.TypeDeclare, c1, "operator:alice", &queue.DeclareArgs{Queue: "retry", MaxLen: new(int64(1))}), // req 22
	)
	entry(10,
		del("jobs.dlq", 1, true), // req 23: forced: the lease ends
		del("jobs", 99, false),   // req 24: not found
		cmd(fsm.TypeConsume, c1, "carol", &queue.ConsumeArgs{Queue: "jobs", Conn: c1, Prefetch: 1, LeaseMs: 100}), // req 25: leases jobs/7 (priority 2)
		cmd(fsm.TypeCancel, c1, "carol", &queue.CancelArgs{Consumer: 2, Conn: c1}),                                // req 26: the consumer of jobs.dlq
	)
	// The leases of jobs/7, then jobs/10 (priority 1) lapse: they die
	// again, as jobs.dlq/6 and 7; jobs/9 is leased.
	entry(1000)
	entry(1000)
	entry(10,
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", To: "retry", Limit: 5}), // req 27: room for one of two: full
		redrive(fsm.QueueRedriveArgs{DLQ: "jobs.dlq", To: "retry", Limit: 1}), // req 28: jobs.dlq/6 to retry/1
	)
	return logs
}

// Redrive and delete answer as the queue package decides, through the
// replies a client's node hands back, and the audit log names the
// operator and what was moved or deleted.
func Test_QueueAdmin_RepliesAndAudit(t *testing.T) {
	f := mustFresh(t, "n1")
	replies := map[uint64]*fsm.Reply{}
	for _, l := range adminLog(t) {
		rs, _ := f.Apply(l).([]*fsm.Reply)
		for _, r := range rs {
			replies[r.Req] = r
		}
	}
	moved := func(req uint64) []queue.Moved {
		t.Helper()
		r := replies[req]
		if r == nil || r.Err != nil {
			t.Fatalf("req %d: %+v", req, r)
		}
		return r.Result.(*fsm.QueueRedriveResult).Moved
	}
	if got, want := moved(13), []queue.Moved{{From: 2, Queue: "jobs", Seq: 7}, {From: 4, Queue: "jobs", Seq: 8}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("redrive by seqs: %+v, want %+v", got, want)
	}
	if got, r := moved(18), replies[18].Result.(*fsm.QueueRedriveResult); !reflect.DeepEqual(got, []queue.Moved{{From: 3, Queue: "jobs", Seq: 9}}) || !r.More || r.Last != 3 {
		t.Fatalf("first batch: %+v", r)
	}
	if got := moved(19); !reflect.DeepEqual(got, []queue.Moved{{From: 5, Queue: "jobs", Seq: 10}}) {
		t.Fatalf("second batch: %+v", got)
	}
	if got := moved(28); !reflect.DeepEqual(got, []queue.Moved{{From: 6, Queue: "retry", Seq: 1}}) {
		t.Fatalf("redrive to retry: %+v", got)
	}
	for req, want := range map[uint64]error{15: queue.ErrConflict, 16: queue.ErrBadRequest, 17: queue.ErrNotFound, 20: queue.ErrConflict, 24: queue.ErrNotFound, 27: queue.ErrFull} {
		if r := replies[req]; r == nil || !errors.Is(r.Err, want) || r.Result != nil {
			t.Errorf("req %d: %+v, want %v", req, r, want)
		}
	}
	if r := replies[21].Result.(*fsm.MessageDeleteResult); r.State != queue.StateReady {
		t.Errorf("delete of jobs/8: %+v", r)
	}
	if r := replies[23].Result.(*fsm.MessageDeleteResult); r.State != queue.StateInflight || r.Holder != "n1/1/1" || r.Dead == nil || r.Dead.Queue != "jobs" {
		t.Errorf("forced delete of jobs.dlq/1: %+v", r)
	}
	// What is left: jobs/9, leased; jobs.dlq/7 (jobs/10, dead again);
	// retry/1.
	err := f.View(func(tx *bolt.Tx) error {
		for name, want := range map[string][]uint64{"jobs": {9}, "jobs.dlq": {7}, "retry": {1}} {
			got := []uint64{}
			if err := queue.ReadMessages(tx, name, false, func(m queue.Message) bool { got = append(got, m.Seq); return true }); err != nil {
				return err
			}
			if !reflect.DeepEqual(got, want) {
				return fmt.Errorf("%s holds %v, want %v", name, got, want)
			}
		}
		for name, want := range map[string]queue.Info{
			"jobs":     {Inflight: 1, Dead: 7, Consumers: 1},
			"jobs.dlq": {Ready: 1},
			"retry":    {Ready: 1},
		} {
			if got, err := queue.ReadInfo(tx, name); err != nil || got != want {
				return fmt.Errorf("%s: %+v (%v), want %+v", name, got, err, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The audit log: who, what, and the outcome, refusals included.
	want := map[string]bool{
		"queue.redrive operator:alice jobs.dlq/2,4 (2 moved) ok":        false,
		"queue.redrive operator:alice jobs.dlq/1 conflict":              false,
		"queue.redrive operator:alice nope.dlq/* not_found":             false,
		"queue.redrive operator:alice jobs/7 bad_request":               false,
		"queue.redrive operator:alice jobs.dlq/* (1 moved) ok":          false,
		"queue.redrive operator:alice jobs.dlq/* to retry full":         false,
		"queue.redrive operator:alice jobs.dlq/* to retry (1 moved) ok": false,
		"queue.delete operator:alice jobs.dlq/1 conflict":               false,
		"queue.delete operator:alice jobs/8 ok":                         false,
		"queue.delete operator:alice jobs.dlq/1 (leased to n1/1/1) ok":  false,
		"queue.delete operator:alice jobs/99 not_found":                 false,
	}
	head := mustAuditHead(t, f)
	for seq := uint64(1); seq <= head.Seq; seq++ {
		e := auditEntry(t, f, seq)
		if k := fmt.Sprintf("%s %s %s %s", e.Kind, e.Actor, e.Subject, e.Outcome); e.Kind == "queue.redrive" || e.Kind == "queue.delete" {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected audit entry %q", k)
			}
			want[k] = true
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("no audit entry %q", k)
		}
	}
	mustVerifyAudit(t, f, nil)
}

// Replicas applying the log, one entry at a time or in batches, with
// other local node ids, reach the same state and the same audit head.
func Test_QueueAdmin_Determinism(t *testing.T) {
	logs := adminLog(t)
	single := mustFresh(t, "n1")
	applySingly(single, logs)
	batched := mustFresh(t, "n2")
	applyBatches(batched, logs, rand.New(rand.NewPCG(5, 6)), 3)
	one := mustFresh(t, "n3")
	one.ApplyBatch(logs)
	want := mustDigest(t, single)
	for name, f := range map[string]*fsm.FSM{"batched/n2": batched, "one-batch/n3": one} {
		if got := mustDigest(t, f); got != want {
			t.Errorf("%s: digest %x, want %x", name, got, want)
		}
		if mustAuditHead(t, f) != mustAuditHead(t, single) {
			t.Errorf("%s: audit head differs", name)
		}
	}
	// And after a snapshot round trip.
	restored := mustFresh(t, "n2")
	if err := restored.Restore(nopCloser{bytes.NewReader(mustSnapshot(t, single))}); err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, restored); got != want {
		t.Errorf("restored: digest %x, want %x", got, want)
	}
}

// A refused redrive or delete changes nothing but the audit log, which
// records the refusal.
func Test_QueueAdmin_RefusalsChangeNothing(t *testing.T) {
	x := newArgFixture(t) // jobs/1 leased to tConn
	for _, c := range []struct {
		argCase
		err  error
		code string
	}{
		{argCase{"redrive/unknown_dlq", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq"}}, queue.ErrNotFound, "not_found"},
		{argCase{"redrive/not_a_dead_letter", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs", Seqs: []uint64{1}, To: "other"}}, queue.ErrBadRequest, "bad_request"},
		{argCase{"redrive/unknown_seq", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs", Seqs: []uint64{2}}}, queue.ErrNotFound, "not_found"},
		{argCase{"redrive/seq_twice", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs", Seqs: []uint64{1, 1}}}, queue.ErrBadRequest, "bad_request"},
		{argCase{"redrive/into_itself", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs", To: "jobs"}}, queue.ErrBadRequest, "bad_request"},
		{argCase{"delete/leased", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "jobs", Seq: 1}}, queue.ErrConflict, "conflict"},
		{argCase{"delete/unknown_seq", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "jobs", Seq: 2, Force: true}}, queue.ErrNotFound, "not_found"},
		{argCase{"delete/unknown_queue", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "nope", Seq: 1}}, queue.ErrNotFound, "not_found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := x.apply(t, c.argCase)
			if !errors.Is(r.Err, c.err) || r.Result != nil {
				t.Fatalf("reply %+v, want %v", r, c.err)
			}
			if stateDigest(t, x.got) != stateDigest(t, x.ref) {
				t.Fatal("a refused command changed the state")
			}
			if e := lastAuditEntry(t, x.got); e.Outcome != c.code {
				t.Fatalf("audit entry %+v, want outcome %s", e, c.code)
			}
		})
	}
}

// The replies cross to a follower with their results and errors.
func Test_QueueAdmin_RepliesForwarded(t *testing.T) {
	rs := []*fsm.Reply{
		{Conn: "n1/1/call1", Req: 1, Type: fsm.TypeQueueRedrive, Result: &fsm.QueueRedriveResult{Moved: []queue.Moved{{From: 3, Queue: "jobs", Seq: 9}}, More: true, Last: 3}},
		{Conn: "n1/1/call2", Req: 1, Type: fsm.TypeMessageDelete, Result: &fsm.MessageDeleteResult{State: queue.StateInflight, Attempts: 2, Holder: "n2/1/4",
			Dead: &queue.DeadInfo{Queue: "jobs", Seq: 1, Reason: "max_attempts", Attempts: 5}}},
		{Conn: "n1/1/call3", Req: 1, Type: fsm.TypeQueueRedrive, Err: fmt.Errorf("%w: room for 1 of 2", queue.ErrFull)},
	}
	b, err := fsm.EncodeReplies(rs)
	if err != nil {
		t.Fatal(err)
	}
	back, err := fsm.DecodeReplies(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rs {
		if !reflect.DeepEqual(back[i].Result, rs[i].Result) || (rs[i].Err != nil) != (back[i].Err != nil) {
			t.Errorf("reply %d: %+v, want %+v", i, back[i], rs[i])
		}
	}
	if !errors.Is(back[2].Err, queue.ErrFull) || back[2].Err.Error() != rs[2].Err.Error() {
		t.Errorf("error %v, want %v", back[2].Err, rs[2].Err)
	}
	if !fsm.RepliedOnApply(fsm.TypeQueueRedrive) || !fsm.RepliedOnApply(fsm.TypeMessageDelete) {
		t.Error("an operator's next read on the same node must see the change")
	}
	if !fsm.RepliedOnApply(fsm.TypeAuthEvent) {
		t.Error("a snapshot saved on a follower must hold the entries before its own audit entry")
	}
}
