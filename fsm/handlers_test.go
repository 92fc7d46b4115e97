package fsm_test

import (
	"crypto/sha256"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
)

// argCase is one command body for the argument-check tables.
type argCase struct {
	name string
	typ  fsm.MessageType
	body any
}

const (
	tConn = "n1/1/1"
	tEnv  = `{"id":"m1"}`
)

func enqArgs(mod func(a *queue.EnqueueArgs)) *queue.EnqueueArgs {
	a := &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: "m1", Env: []byte(tEnv)}
	mod(a)
	return a
}

func consArgs(mod func(a *queue.ConsumeArgs)) *queue.ConsumeArgs {
	a := &queue.ConsumeArgs{Queue: "jobs", Conn: tConn, Prefetch: 1, LeaseMs: 1000}
	mod(a)
	return a
}

func settleArgs(mod func(a *queue.SettleArgs)) *queue.SettleArgs {
	a := &queue.SettleArgs{Queue: "jobs", Seq: 1, Attempt: 1, Conn: tConn}
	mod(a)
	return a
}

func pubArgs(mod func(a *queue.PublishArgs)) *queue.PublishArgs {
	a := &queue.PublishArgs{Topic: "a.b", From: "alice", ID: "p1", Env: []byte(tEnv)}
	mod(a)
	return a
}

// invalidCommands decode, but each holds one value that no client request
// can carry (the transport refuses it first): a faulty peer's command.
func invalidCommands() []argCase {
	long := strings.Repeat("a", 1025)
	return []argCase{
		// enqueue and send
		{"enqueue/empty_queue", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue = "" })},
		{"enqueue/nul_in_queue", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue = "jo\x00bs" })},
		{"enqueue/space_in_queue", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue = "jo bs" })},
		{"enqueue/queue_too_long", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue = long })},
		{"enqueue/inbox_without_agent", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue = "@" })},
		{"enqueue/empty_from", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.From = "" })},
		{"enqueue/nul_in_from", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.From = "al\x00ice" })},
		{"enqueue/from_is_a_dlq", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.From = "alice.dlq" })},
		{"enqueue/empty_id", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.ID = "" })},
		{"enqueue/id_too_long", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.ID = strings.Repeat("i", 129) })},
		{"enqueue/no_envelope", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Env = nil })},
		{"enqueue/negative_delay", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.DelayMs = -1 })},
		{"enqueue/delay_too_long", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.DelayMs = queue.MaxDelayMs + 1 })},
		{"enqueue/delay_overflows", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.DelayMs = math.MaxInt64 })},
		{"enqueue/priority_10", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Priority = 10 })},
		{"enqueue/priority_255", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Priority = 255 })},

		// consume
		{"consume/empty_queue", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Queue = "" })},
		{"consume/empty_conn", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Conn = "" })},
		{"consume/conn_without_node", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Conn = "/1/1" })},
		{"consume/conn_without_slash", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Conn = "n1" })},
		{"consume/nul_in_conn", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Conn = "n1/1/\x00" })},
		{"consume/conn_too_long", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Conn = "n1/1/" + long })},
		{"consume/prefetch_0", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Prefetch = 0 })},
		{"consume/prefetch_negative", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Prefetch = math.MinInt })},
		{"consume/prefetch_too_large", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.Prefetch = queue.MaxPrefetch + 1 })},
		{"consume/lease_0", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.LeaseMs = 0 })},
		{"consume/lease_too_short", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.LeaseMs = queue.MinLeaseMs - 1 })},
		{"consume/lease_too_long", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.LeaseMs = queue.MaxLeaseMs + 1 })},
		{"consume/lease_overflows", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.LeaseMs = math.MaxInt64 })},

		// ack, nack, reject, extend
		{"ack/empty_queue", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Queue = "" })},
		{"ack/empty_conn", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Conn = "" })},
		{"ack/seq_0", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Seq = 0 })},
		{"ack/seq_too_large", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Seq = queue.MaxSeq + 1 })},
		{"ack/seq_max_uint64", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Seq = math.MaxUint64 })},
		{"ack/attempt_0", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Attempt = 0 })},
		{"ack/attempt_negative", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Attempt = -1 })},
		{"ack/attempt_too_large", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Attempt = queue.MaxAttempt + 1 })},
		{"nack/nul_in_queue", fsm.TypeNack, settleArgs(func(a *queue.SettleArgs) { a.Queue = "jobs\x00" })},
		{"nack/negative_delay", fsm.TypeNack, settleArgs(func(a *queue.SettleArgs) { a.DelayMs = new(int64(-1)) })},
		{"nack/delay_too_long", fsm.TypeNack, settleArgs(func(a *queue.SettleArgs) { a.DelayMs = new(int64(queue.MaxDelayMs + 1)) })},
		{"reject/reason_too_long", fsm.TypeReject, settleArgs(func(a *queue.SettleArgs) { a.Reason = long })},
		{"reject/conn_without_slash", fsm.TypeReject, settleArgs(func(a *queue.SettleArgs) { a.Conn = "n1" })},
		{"extend/lease_0", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = 0 })},
		{"extend/lease_too_short", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = queue.MinLeaseMs - 1 })},
		{"extend/lease_too_long", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = queue.MaxLeaseMs + 1 })},
		{"extend/lease_negative", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = math.MinInt64 })},

		// cancel
		{"cancel/empty_conn", fsm.TypeCancel, &queue.CancelArgs{Consumer: 1}},
		{"cancel/nul_in_conn", fsm.TypeCancel, &queue.CancelArgs{Consumer: 1, Conn: "n1\x00/1/1"}},

		// queue.declare
		{"declare/empty_queue", fsm.TypeDeclare, &queue.DeclareArgs{}},
		{"declare/nul_in_queue", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "\x00"}},
		{"declare/max_attempts_0", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", MaxAttempts: new(0)}},
		{"declare/max_attempts_too_large", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", MaxAttempts: new(queue.MaxMaxAttempts + 1)}},
		{"declare/backoff_too_many_steps", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", BackoffMs: make([]int64, queue.MaxBackoffLen+1)}},
		{"declare/backoff_negative_step", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", BackoffMs: []int64{10, -1}}},
		{"declare/backoff_step_too_long", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", BackoffMs: []int64{math.MaxInt64}}},
		{"declare/empty_dlq", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", DLQ: new("")}},
		{"declare/nul_in_dlq", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", DLQ: new("jobs\x00dlq")}},
		{"declare/dlq_too_long", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", DLQ: new(long)}},
		{"declare/max_len_negative", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", MaxLen: new(int64(-1))}},
		{"declare/max_len_too_large", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs", MaxLen: new(int64(queue.MaxSeq + 1))}},

		// publish, subscribe, unsubscribe
		{"publish/empty_topic", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.Topic = "" })},
		{"publish/wildcard_topic", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.Topic = "a.*" })},
		{"publish/empty_token", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.Topic = "a..b" })},
		{"publish/empty_from", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.From = "" })},
		{"publish/empty_id", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.ID = "" })},
		{"publish/no_envelope", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.Env = []byte{} })},
		{"subscribe/empty_pattern", fsm.TypeSubscribe, &queue.SubscribeArgs{Conn: tConn}},
		{"subscribe/gt_not_last", fsm.TypeSubscribe, &queue.SubscribeArgs{Pattern: "a.>.b", Conn: tConn}},
		{"subscribe/empty_conn", fsm.TypeSubscribe, &queue.SubscribeArgs{Pattern: "a.*"}},
		{"unsubscribe/empty_conn", fsm.TypeUnsubscribe, &fsm.UnsubscribeArgs{Sub: 1}},

		// commands the nodes issue themselves
		{"conn_closed/empty_conn", fsm.TypeConnClosed, &fsm.ConnClosedArgs{}},
		{"conn_closed/nul_in_conn", fsm.TypeConnClosed, &fsm.ConnClosedArgs{Conn: "n1/1\x00/1"}},
		{"node_started/empty_node", fsm.TypeNodeStarted, &fsm.NodeStartedArgs{Epoch: 1}},
		{"node_started/slash_in_node", fsm.TypeNodeStarted, &fsm.NodeStartedArgs{Node: "n1/1", Epoch: 1}},
		{"node_started/node_too_long", fsm.TypeNodeStarted, &fsm.NodeStartedArgs{Node: long, Epoch: 1}},
		{"node_down/empty_node", fsm.TypeNodeDown, &fsm.NodeDownArgs{}},
		{"node_down/nul_in_node", fsm.TypeNodeDown, &fsm.NodeDownArgs{Node: "n\x002"}},

		// a Redis command without a name (its audit entry once indexed it)
		{"redis/no_args", fsm.TypeRedis, &fsm.RedisArgs{}},

		// the operator's redrive and delete
		{"redrive/empty_dlq", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{}},
		{"redrive/nul_in_dlq", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs\x00.dlq"}},
		{"redrive/space_in_to", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", To: "jo bs"}},
		{"redrive/to_too_long", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", To: long}},
		{"redrive/too_many_seqs", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: manySeqs(queue.MaxRedrive + 1)}},
		{"redrive/seq_0", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 0}}},
		{"redrive/seq_too_large", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{queue.MaxSeq + 1}}},
		{"redrive/seq_max_uint64", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{math.MaxUint64}}},
		{"redrive/limit_negative", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Limit: -1}},
		{"redrive/limit_too_large", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Limit: queue.MaxRedrive + 1}},
		{"redrive/after_max_uint64", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", After: math.MaxUint64}},
		{"redrive/through_too_large", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Through: queue.MaxSeq + 1}},
		{"delete/empty_queue", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Seq: 1}},
		{"delete/nul_in_queue", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "jobs\x00", Seq: 1}},
		{"delete/seq_0", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "jobs"}},
		{"delete/seq_max_uint64", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: "jobs", Seq: math.MaxUint64, Force: true}},
	}
}

// manySeqs is 1..n.
func manySeqs(n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

// limitCommands hold values at the edge of what the transport accepts:
// the checks must let every one of them through.
func limitCommands() []argCase {
	longQueue := strings.Repeat("q", 200) + strings.Repeat(".dlq", 206) // 1024 bytes
	agent := strings.Repeat("a", 64)
	return []argCase{
		{"enqueue/longest_queue", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue, a.ID = longQueue, "l1" })},
		{"enqueue/inbox", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue, a.ID = "@"+agent, "l2" })},
		{"enqueue/inbox_dlq", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) { a.Queue, a.ID = "@bob.dlq", "l3" })},
		{"enqueue/limits", fsm.TypeEnqueue, enqArgs(func(a *queue.EnqueueArgs) {
			a.From, a.ID, a.DelayMs, a.Priority = agent, strings.Repeat("\x00", queue.MaxIDLen), queue.MaxDelayMs, queue.MaxPriority
		})},
		{"consume/limits", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) {
			a.Queue, a.Prefetch, a.LeaseMs = longQueue, queue.MaxPrefetch, queue.MaxLeaseMs
		})},
		{"consume/shortest_lease", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) { a.LeaseMs = queue.MinLeaseMs })},
		{"consume/long_node_id", fsm.TypeConsume, consArgs(func(a *queue.ConsumeArgs) {
			a.Conn = strings.Repeat("n", queue.MaxConnLen-4) + "/1/1"
		})},
		{"ack/limits", fsm.TypeAck, settleArgs(func(a *queue.SettleArgs) { a.Seq, a.Attempt = queue.MaxSeq, queue.MaxAttempt })},
		{"nack/longest_delay", fsm.TypeNack, settleArgs(func(a *queue.SettleArgs) { a.DelayMs = new(int64(queue.MaxDelayMs)) })},
		{"nack/zero_delay", fsm.TypeNack, settleArgs(func(a *queue.SettleArgs) { a.DelayMs = new(int64(0)) })},
		{"reject/longest_reason", fsm.TypeReject, settleArgs(func(a *queue.SettleArgs) { a.Reason = strings.Repeat("r", queue.MaxReasonLen) })},
		{"extend/shortest_lease", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = queue.MinLeaseMs })},
		{"extend/longest_lease", fsm.TypeExtend, settleArgs(func(a *queue.SettleArgs) { a.LeaseMs = queue.MaxLeaseMs })},
		{"cancel/any_consumer", fsm.TypeCancel, &queue.CancelArgs{Consumer: math.MaxUint64, Conn: tConn}},
		{"declare/limits", fsm.TypeDeclare, &queue.DeclareArgs{
			Queue: "limits", MaxAttempts: new(queue.MaxMaxAttempts), SetBackoff: true,
			BackoffMs: append(make([]int64, queue.MaxBackoffLen-1), queue.MaxDelayMs),
			DLQ:       new(longQueue), MaxLen: new(int64(queue.MaxSeq)),
		}},
		{"declare/empty_backoff_unbounded", fsm.TypeDeclare, &queue.DeclareArgs{Queue: "limits", SetBackoff: true, DLQ: new("@bob.dlq"), MaxLen: new(int64(0))}},
		{"publish/longest_topic", fsm.TypePublish, pubArgs(func(a *queue.PublishArgs) { a.Topic = strings.Repeat("t.", 255) + "tt" })},
		{"subscribe/wildcards", fsm.TypeSubscribe, &queue.SubscribeArgs{Pattern: "a.*.>", Conn: tConn}},
		{"unsubscribe/any_sub", fsm.TypeUnsubscribe, &fsm.UnsubscribeArgs{Sub: math.MaxUint64, Conn: tConn}},
		{"conn_closed/other_node", fsm.TypeConnClosed, &fsm.ConnClosedArgs{Conn: "n2/7/9"}},
		{"node_started", fsm.TypeNodeStarted, &fsm.NodeStartedArgs{Node: "n2", Epoch: math.MaxUint64}},
		{"node_down", fsm.TypeNodeDown, &fsm.NodeDownArgs{Node: "n2"}},
		{"redrive/limits", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: longQueue, To: "@" + agent, Limit: queue.MaxRedrive, After: queue.MaxSeq, Through: queue.MaxSeq}},
		{"redrive/most_seqs", fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: append(manySeqs(queue.MaxRedrive-1), queue.MaxSeq)}},
		{"delete/limits", fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: longQueue, Seq: queue.MaxSeq, Force: true}},
	}
}

// argFixture is two FSMs with the same state: a queue with a leased
// message and a subscription. Each case applies its command to one and an
// empty entry to the other at the same index and time.
type argFixture struct {
	got, ref *fsm.FSM
	index    uint64
	now      int64
}

func newArgFixture(t *testing.T) *argFixture {
	x := &argFixture{got: mustFresh(t, "n1"), ref: mustFresh(t, "n1"), index: 1, now: 1_700_000_000_000}
	setup := mustLog(t, 1, x.now,
		mustCmd(t, fsm.TypeEnqueue, tConn, 1, &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: "setup", Env: []byte(tEnv)}),
		mustCmd(t, fsm.TypeConsume, tConn, 2, &queue.ConsumeArgs{Queue: "jobs", Conn: tConn, Prefetch: 1, LeaseMs: 60_000}),
		mustCmd(t, fsm.TypeSubscribe, tConn, 3, &queue.SubscribeArgs{Pattern: ">", Conn: tConn}),
	)
	for _, f := range []*fsm.FSM{x.got, x.ref} {
		for _, r := range f.Apply(setup).([]*fsm.Reply) {
			if r.Err != nil {
				t.Fatalf("setup: %v", r.Err)
			}
		}
	}
	return x
}

// apply applies c to got and an empty entry to ref, and returns c's reply.
func (x *argFixture) apply(t *testing.T, c argCase) *fsm.Reply {
	t.Helper()
	x.index++
	x.now++
	var out any
	func() {
		defer func() {
			if msg := recover(); msg != nil {
				t.Fatalf("Apply panicked: %v", msg)
			}
		}()
		out = x.got.Apply(mustLog(t, x.index, x.now, mustCmd(t, c.typ, tConn, x.index, c.body)))
	}()
	x.ref.Apply(mustLog(t, x.index, x.now))
	rs, _ := out.([]*fsm.Reply)
	if len(rs) != 1 {
		t.Fatalf("%d replies, want 1", len(rs))
	}
	return rs[0]
}

// A command that decodes but carries an invalid value is answered with
// ErrBadRequest and changes nothing but the audit log; before the checks, several of them
// (an empty queue name, an empty dead-letter queue) failed inside bbolt
// and stopped the replica.
func Test_Handlers_InvalidArguments_BadRequestNoChange(t *testing.T) {
	x := newArgFixture(t)
	for _, c := range invalidCommands() {
		t.Run(c.name, func(t *testing.T) {
			r := x.apply(t, c)
			if !errors.Is(r.Err, queue.ErrBadRequest) {
				t.Fatalf("reply error %v, want ErrBadRequest", r.Err)
			}
			if r.Result != nil {
				t.Fatalf("rejected command has a result: %+v", r.Result)
			}
			if strings.Contains(r.Err.Error(), "\x00") || len(r.Err.Error()) > 200 {
				t.Fatalf("error message echoes the value: %q", r.Err)
			}
			// Its audit entry, recording the refusal, is the only change.
			if stateDigest(t, x.got) != stateDigest(t, x.ref) {
				t.Fatal("a rejected command changed the state")
			}
			if e := lastAuditEntry(t, x.got); e.Outcome != "bad_request" || e.Digest != sha256.Sum256(mustCmd(t, c.typ, tConn, 0, c.body).Body) {
				t.Fatalf("audit entry %+v, want the refusal of the command", e)
			}
		})
	}
	// The replies travel to followers: the sentinel survives the trip.
	rs := []*fsm.Reply{x.apply(t, invalidCommands()[0])}
	b, err := fsm.EncodeReplies(rs)
	if err != nil {
		t.Fatal(err)
	}
	back, err := fsm.DecodeReplies(b)
	if err != nil || len(back) != 1 || !errors.Is(back[0].Err, queue.ErrBadRequest) || back[0].Err.Error() != rs[0].Err.Error() {
		t.Fatalf("forwarded reply %+v (%v), want %v", back, err, rs[0].Err)
	}
}

// The checks are never stricter than the transport: values at its limits
// pass them (the queue functions may still refuse, e.g. a settle of a
// delivery that does not exist).
func Test_Handlers_ArgumentsAtLimits_Accepted(t *testing.T) {
	x := newArgFixture(t)
	for _, c := range limitCommands() {
		t.Run(c.name, func(t *testing.T) {
			if r := x.apply(t, c); errors.Is(r.Err, queue.ErrBadRequest) {
				t.Fatalf("refused: %v", r.Err)
			}
		})
	}
}

// The checks are the same on every replica and at every point of the log:
// they read nothing but the arguments.
func Test_Handlers_InvalidArguments_SameOnEveryReplica(t *testing.T) {
	var logs []*raft.Log
	for i, c := range append(invalidCommands(), limitCommands()...) {
		logs = append(logs, mustLog(t, uint64(i+1), 1_700_000_000_000+int64(i), mustCmd(t, c.typ, tConn, uint64(i+1), c.body)))
	}
	a, b := mustFresh(t, "n1"), mustFresh(t, "n2")
	applySingly(a, logs)
	b.ApplyBatch(logs)
	if mustDigest(t, a) != mustDigest(t, b) {
		t.Fatal("replicas diverged")
	}
}

// Some invalid values did not fail at once: they were stored, and a later
// command that used them stopped every replica. Each entry here did.
func Test_Handlers_InvalidArguments_NoLaterPanic(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmds func(t *testing.T) []fsm.Command
	}{
		{"empty_dlq_then_dead_letter", func(t *testing.T) []fsm.Command {
			return []fsm.Command{
				mustCmd(t, fsm.TypeDeclare, tConn, 1, &queue.DeclareArgs{Queue: "q", DLQ: new("")}),
				mustCmd(t, fsm.TypeEnqueue, tConn, 2, &queue.EnqueueArgs{Queue: "q", From: "a", ID: "1", Env: []byte(tEnv)}),
				mustCmd(t, fsm.TypeConsume, tConn, 3, &queue.ConsumeArgs{Queue: "q", Conn: tConn, Prefetch: 1, LeaseMs: 1000}),
				mustCmd(t, fsm.TypeReject, tConn, 4, &queue.SettleArgs{Queue: "q", Seq: 1, Attempt: 1, Conn: tConn}),
			}
		}},
		{"nul_in_queue_then_conn_closed", func(t *testing.T) []fsm.Command {
			// The lease index key "conn 0 queue 0 seq" no longer parses.
			return []fsm.Command{
				mustCmd(t, fsm.TypeEnqueue, tConn, 1, &queue.EnqueueArgs{Queue: "a\x00b", From: "a", ID: "1", Env: []byte(tEnv)}),
				mustCmd(t, fsm.TypeConsume, tConn, 2, &queue.ConsumeArgs{Queue: "a\x00b", Conn: tConn, Prefetch: 1, LeaseMs: 1000}),
				mustCmd(t, fsm.TypeConnClosed, "", 0, &fsm.ConnClosedArgs{Conn: tConn}),
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFresh(t, "n1")
			var out any
			func() {
				defer func() {
					if msg := recover(); msg != nil {
						t.Fatalf("Apply panicked: %v", msg)
					}
				}()
				out = f.Apply(mustLog(t, 1, 1_700_000_000_000, tc.cmds(t)...))
			}()
			if rs, _ := out.([]*fsm.Reply); len(rs) == 0 || !errors.Is(rs[0].Err, queue.ErrBadRequest) {
				t.Fatalf("replies %+v: the first command must be refused", rs)
			}
		})
	}
}
