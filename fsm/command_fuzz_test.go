package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	"github.com/vmihailenco/msgpack/v5"
)

// Fuzz targets for the decoders a replica runs on bytes it did not make:
// log entries (DecodeEntry), their command bodies, and the replies a
// leader forwards (DecodeReplies). A panic in them would stop every
// replica at the same entry.

// fzArgs returns an empty body of command type t, nil for unknown types.
func fzArgs(t fsm.MessageType) any {
	switch t {
	case fsm.TypeEnqueue:
		return &queue.EnqueueArgs{}
	case fsm.TypeConsume:
		return &queue.ConsumeArgs{}
	case fsm.TypeAck, fsm.TypeNack, fsm.TypeReject, fsm.TypeExtend:
		return &queue.SettleArgs{}
	case fsm.TypeCancel:
		return &queue.CancelArgs{}
	case fsm.TypeDeclare:
		return &queue.DeclareArgs{}
	case fsm.TypePublish:
		return &queue.PublishArgs{}
	case fsm.TypeSubscribe:
		return &queue.SubscribeArgs{}
	case fsm.TypeUnsubscribe:
		return &fsm.UnsubscribeArgs{}
	case fsm.TypeConnClosed:
		return &fsm.ConnClosedArgs{}
	case fsm.TypeNodeStarted:
		return &fsm.NodeStartedArgs{}
	case fsm.TypeNodeDown:
		return &fsm.NodeDownArgs{}
	case fsm.TypeAuditCheckpoint:
		return &fsm.AuditCheckpointArgs{}
	case fsm.TypeAgentAdd:
		return &fsm.AgentAddArgs{}
	case fsm.TypeAgentRevoke:
		return &fsm.AgentRevokeArgs{}
	case fsm.TypeAuthEvent:
		return &fsm.AuthEventArgs{}
	case fsm.TypeRedis:
		return &fsm.RedisArgs{}
	case fsm.TypeRegister:
		return &route.RegisterArgs{}
	case fsm.TypeTaskSubmit:
		return &task.SubmitArgs{}
	case fsm.TypeTaskDone, fsm.TypeTaskFail:
		return &task.SettleArgs{}
	case fsm.TypeTaskCancel:
		return &task.CancelArgs{}
	case fsm.TypeTaskDecide:
		return &task.DecideArgs{}
	case fsm.TypeCapSensitive:
		return &fsm.CapSensitiveArgs{}
	case fsm.TypeTaskPrune:
		return &fsm.TaskPruneArgs{}
	case fsm.TypeAuditPrune:
		return &fsm.AuditPruneArgs{}
	case fsm.TypeClusterLevel:
		return &fsm.ClusterLevelArgs{}
	case fsm.TypeRestoreRecord:
		return &fsm.RestoreRecordArgs{}
	case fsm.TypeQueueRedrive:
		return &fsm.QueueRedriveArgs{}
	case fsm.TypeMessageDelete:
		return &fsm.MessageDeleteArgs{}
	}
	return nil
}

// fzEntries are well-formed entries covering every command type.
func fzEntries(tb testing.TB) []*fsm.Entry {
	conn := "n1/1/c1"
	seven, name, zero := 7, "jobs.dlq", int64(0)
	cmd := func(t fsm.MessageType, conn string, req uint64, body any) fsm.Command {
		c, err := fsm.NewCommand(t, conn, req, body)
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	return []*fsm.Entry{
		{Time: 1_700_000_000_000, Cmds: []fsm.Command{
			cmd(fsm.TypeNodeStarted, "", 0, &fsm.NodeStartedArgs{Node: "n1", Epoch: 1}),
			cmd(fsm.TypeDeclare, conn, 1, &queue.DeclareArgs{Queue: "jobs", MaxAttempts: &seven, BackoffMs: []int64{10, 20}, SetBackoff: true, DLQ: &name, MaxLen: &zero}),
			cmd(fsm.TypeEnqueue, conn, 2, &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: "m1", Env: []byte(`{"id":"m1"}`), DelayMs: 5, Priority: 9}),
			cmd(fsm.TypeConsume, conn, 3, &queue.ConsumeArgs{Queue: "jobs", Conn: conn, Prefetch: 2, LeaseMs: 1000}),
		}},
		{Time: 1_700_000_000_100, Cmds: []fsm.Command{
			cmd(fsm.TypeAck, conn, 4, &queue.SettleArgs{Queue: "jobs", Seq: 1, Attempt: 1, Conn: conn}),
			cmd(fsm.TypeNack, conn, 5, &queue.SettleArgs{Queue: "jobs", Seq: 1, Attempt: 1, Conn: conn, DelayMs: &zero}),
			cmd(fsm.TypeReject, conn, 6, &queue.SettleArgs{Queue: "jobs", Seq: 1, Attempt: 1, Conn: conn, Reason: "bad"}),
			cmd(fsm.TypeExtend, conn, 7, &queue.SettleArgs{Queue: "jobs", Seq: 1, Attempt: 1, Conn: conn, LeaseMs: 500}),
			cmd(fsm.TypeCancel, conn, 8, &queue.CancelArgs{Consumer: 1, Conn: conn}),
		}},
		{Time: 1_700_000_000_200, Cmds: []fsm.Command{
			cmd(fsm.TypeSubscribe, conn, 9, &queue.SubscribeArgs{Pattern: "a.*.>", Conn: conn}),
			cmd(fsm.TypePublish, conn, 10, &queue.PublishArgs{Topic: "a.b.c", From: "alice", ID: "p1", Env: []byte(`{}`)}),
			cmd(fsm.TypeUnsubscribe, conn, 11, &fsm.UnsubscribeArgs{Sub: 1, Conn: conn}),
			cmd(fsm.TypeConnClosed, "", 0, &fsm.ConnClosedArgs{Conn: conn}),
			cmd(fsm.TypeNodeDown, "", 0, &fsm.NodeDownArgs{Node: "n2"}),
			cmd(fsm.TypeAuditCheckpoint, "", 0, &fsm.AuditCheckpointArgs{Seq: 1, Hash: make([]byte, 32), Public: make([]byte, 32), Sig: make([]byte, 64)}),
		}},
		{Time: 1_700_000_000_300, Cmds: []fsm.Command{
			cmd(fsm.TypeAgentAdd, "n1/1/call1", 1, &fsm.AgentAddArgs{Agent: auth.Agent{Name: "cipher", Alg: auth.AlgEd25519, Public: make([]byte, 32),
				Caps: []string{"ghidra.decompile"}, ACL: auth.ACL{Enqueue: []string{"jobs.*"}}, Limits: auth.Limits{MsgsPerSec: 5}}}),
			cmd(fsm.TypeAgentAdd, "", 0, &fsm.AgentAddArgs{Agent: auth.Agent{Name: "legacy", Alg: auth.AlgHMACSHA256, Sealed: make([]byte, 60), SealKey: "00"}}),
			cmd(fsm.TypeAuthEvent, "", 0, &fsm.AuthEventArgs{Kind: "auth.fail", Agent: "cipher", Code: "bad_signature", Node: "n1", Suppressed: 3}),
			cmd(fsm.TypeAgentRevoke, "n1/1/call2", 1, &fsm.AgentRevokeArgs{Name: "cipher", Reason: "lost"}),
		}},
		{Time: 1_700_000_000_400, Cmds: []fsm.Command{
			cmd(fsm.TypeRedis, conn, 12, &fsm.RedisArgs{Args: [][]byte{[]byte("SET"), []byte("k"), []byte("v"), []byte("PX"), []byte("50")}}),
			cmd(fsm.TypeRedis, conn, 13, &fsm.RedisArgs{Args: [][]byte{[]byte("incrby"), []byte("n"), []byte("-9223372036854775808")}}),
			cmd(fsm.TypeRedis, conn, 14, &fsm.RedisArgs{Args: [][]byte{[]byte("MSET"), []byte("a"), []byte("1"), []byte("b")}}),
			cmd(fsm.TypeRedis, conn, 15, &fsm.RedisArgs{Args: [][]byte{[]byte("EXPIRE"), []byte("a"), []byte("-1")}}),
			cmd(fsm.TypeRedis, conn, 16, &fsm.RedisArgs{Args: [][]byte{[]byte("GET"), []byte("k")}}),
		}},
		{Time: 1_700_000_000_500, Cmds: []fsm.Command{
			cmd(fsm.TypeRedis, conn, 17, &fsm.RedisArgs{Args: [][]byte{[]byte("DEL"), []byte("k"), []byte("a"), []byte("n")}}),
		}},
		{Time: 1_700_000_000_600, Cmds: []fsm.Command{
			cmd(fsm.TypeRedis, conn, 18, &fsm.RedisArgs{Args: [][]byte{[]byte("HSET"), []byte("h"), []byte("f"), []byte("1"), []byte("g\x00"), []byte("v")}}),
			cmd(fsm.TypeRedis, conn, 19, &fsm.RedisArgs{Args: [][]byte{[]byte("hincrby"), []byte("h"), []byte("f"), []byte("9223372036854775807")}}),
			cmd(fsm.TypeRedis, conn, 20, &fsm.RedisArgs{Args: [][]byte{[]byte("HDEL"), []byte("h"), []byte("f"), []byte("nope")}}),
			cmd(fsm.TypeRedis, conn, 21, &fsm.RedisArgs{Args: [][]byte{[]byte("RPUSH"), []byte("l"), []byte("a"), []byte("b"), []byte("c")}}),
			cmd(fsm.TypeRedis, conn, 22, &fsm.RedisArgs{Args: [][]byte{[]byte("LINSERT"), []byte("l"), []byte("BEFORE"), []byte("b"), []byte("x")}}),
			cmd(fsm.TypeRedis, conn, 23, &fsm.RedisArgs{Args: [][]byte{[]byte("LMOVE"), []byte("l"), []byte("l2"), []byte("LEFT"), []byte("RIGHT")}}),
			cmd(fsm.TypeRedis, conn, 24, &fsm.RedisArgs{Args: [][]byte{[]byte("lrem"), []byte("l"), []byte("-1"), []byte("c")}}),
			cmd(fsm.TypeRedis, conn, 25, &fsm.RedisArgs{Args: [][]byte{[]byte("LMPOP"), []byte("2"), []byte("nol"), []byte("l"), []byte("RIGHT"), []byte("COUNT"), []byte("5")}}),
			cmd(fsm.TypeRedis, conn, 26, &fsm.RedisArgs{Args: [][]byte{[]byte("LPOP"), []byte("h"), []byte("0")}}),
			cmd(fsm.TypeRedis, conn, 27, &fsm.RedisArgs{Args: [][]byte{[]byte("SET"), []byte("l2"), []byte("s")}}),
		}},
		{Time: 1_700_000_000_700, Cmds: []fsm.Command{
			cmd(fsm.TypeRedis, conn, 28, &fsm.RedisArgs{Args: bs("XADD", "s", "1-1", "f", "v")}),
			cmd(fsm.TypeRedis, conn, 29, &fsm.RedisArgs{Args: bs("XGROUP", "CREATE", "s", "g", "0")}),
			cmd(fsm.TypeRedis, conn, 30, &fsm.RedisArgs{Args: bs("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">")}),
			cmd(fsm.TypeRedis, conn, 31, &fsm.RedisArgs{Args: bs("XAUTOCLAIM", "s", "g", "d", "0", "0")}),
			cmd(fsm.TypeRedis, conn, 32, &fsm.RedisArgs{Multi: [][][]byte{bs("XACK", "s", "g", "1-1"), bs("XGROUP", "DELCONSUMER", "s", "g", "d")},
				Watch: [][]byte{[]byte("s")}, Sums: [][]byte{make([]byte, 32)}}),
			cmd(fsm.TypeRedis, conn, 33, &fsm.RedisArgs{Args: bs("XGROUP", "CREATE", "mcp:jobs", "mcp", "$", "MKSTREAM")}),
			cmd(fsm.TypeRedis, conn, 34, &fsm.RedisArgs{Args: bs("XADD", "mcp:jobs", "*", "task", "t"),
				Env: []byte(`{"id":"redis-1","from":"redis","ts":1700000000700,"body":{"task":"t"}}`), From: "redis", ID: "redis-1"}),
			cmd(fsm.TypeRedis, conn, 35, &fsm.RedisArgs{Args: bs("XREADGROUP", "GROUP", "mcp", "w", "COUNT", "1", "STREAMS", "mcp:jobs", ">")}),
			cmd(fsm.TypeRedis, conn, 36, &fsm.RedisArgs{Args: bs("XACK", "mcp:jobs", "mcp", "1700000000700-1")}),
		}},
		{Time: 1_700_000_000_800, Cmds: []fsm.Command{
			cmd(fsm.TypeQueueRedrive, "n1/1/call3", 1, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 2}, To: "jobs"}),
			cmd(fsm.TypeQueueRedrive, "n1/1/call4", 1, &fsm.QueueRedriveArgs{DLQ: "jobs.dlq", Limit: 10, After: 1, Through: 9}),
			cmd(fsm.TypeMessageDelete, "n1/1/call5", 1, &fsm.MessageDeleteArgs{Queue: "jobs", Seq: 1, Force: true}),
		}},
		{Time: -1, Cmds: nil},
		{Time: 0, Cmds: []fsm.Command{{Type: 200, Body: msgpack.RawMessage{0xc0}}}},
	}
}

// fzSeal frames a msgpack body as EncodeEntry does, with a correct CRC, so
// that mutations reach the msgpack decoder instead of the checksum.
func fzSeal(body []byte) []byte {
	out := make([]byte, 5, 5+len(body))
	out[0] = 1
	binary.BigEndian.PutUint32(out[1:5], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
	return append(out, body...)
}

// fzBodies are malformed msgpack bodies: truncations, wrong types, huge
// lengths, deep nesting, invalid UTF-8 and duplicate keys.
var fzBodies = [][]byte{
	{},
	{0xc0}, // nil
	{0x80}, // {}
	{0x81, 0xa1, 'c', 0xdd, 0xff, 0xff, 0xff, 0xff},                                                     // c: array of 2^32-1
	{0x81, 0xa1, 'c', 0x91, 0xdf, 0x7f, 0xff, 0xff, 0xff},                                               // c: [map of 2^31-1]
	{0x82, 0xa2, 't', 's', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xa2, 't', 's', 0x01},  // ts twice, huge
	{0x81, 0xa1, 'c', 0x91, 0x82, 0xa1, 't', 0xcd, 0x01, 0x00, 0xa1, 'b', 0xc6, 0xff, 0xff, 0xff, 0xff}, // bin of 4 GiB
	{0x81, 0xa1, 'c', 0x91, 0x82, 0xa1, 't', 0x01, 0xa1, 'b', 0xa2, 0xff, 0xfe},                         // body is a string of invalid UTF-8
	{0x81, 0xa2, 't', 's', 0xa3, 'a', 'b', 'c'},                                                         // ts is a string
	{0x81, 0xa1, 'c', 0xd9, 0x03, 'a', 'b', 'c'},                                                        // c is a string
	append(bytes.Repeat([]byte{0x91}, 10000), 0xc0),
	append(append([]byte{0x81, 0xa1, 'c', 0x91, 0x81, 0xa1, 'b'}, bytes.Repeat([]byte{0x81, 0xa1, 'x'}, 5000)...), 0xc0),
	{0xc1},                   // never used
	{0xd4, 0x01, 0x00},       // fixext 1
	{0xd6, 0xff, 0, 0, 0, 0}, // timestamp ext
}

func fzAddEntrySeeds(f *testing.F) {
	for _, e := range fzEntries(f) {
		b, err := fsm.EncodeEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		flipped := bytes.Clone(b)
		flipped[len(b)-1] ^= 1
		f.Add(flipped)
	}
	for _, body := range fzBodies {
		f.Add(fzSeal(body))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 0, 0xc0})
}

// FuzzDecodeEntry: DecodeEntry never panics; a rejection wraps ErrCorrupt.
// An accepted entry encodes again to an entry that decodes equal, and that
// second encoding is stable. Every command body decodes, or fails to,
// without a panic.
func FuzzDecodeEntry(f *testing.F) {
	fzAddEntrySeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fzCheckEntry(t, b)
	})
}

// FuzzDecodeEntryBody is FuzzDecodeEntry with the header and CRC made
// right for the input, so the fuzzer explores the msgpack decoding.
func FuzzDecodeEntryBody(f *testing.F) {
	for _, e := range fzEntries(f) {
		b, err := fsm.EncodeEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[5:])
	}
	for _, body := range fzBodies {
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fzCheckEntry(t, fzSeal(body))
	})
}

func fzCheckEntry(t *testing.T, b []byte) {
	e, err := fsm.DecodeEntry(b)
	if err != nil {
		if e != nil || !errors.Is(err, fsm.ErrCorrupt) {
			t.Fatalf("rejection %v does not wrap ErrCorrupt", err)
		}
		return
	}
	enc, err := fsm.EncodeEntry(e)
	if err != nil {
		t.Fatalf("re-encode %+v: %v", e, err)
	}
	e2, err := fsm.DecodeEntry(enc)
	if err != nil {
		t.Fatalf("re-encoded entry rejected: %v", err)
	}
	if !fzSameEntry(e, e2) {
		t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, e2)
	}
	enc2, err := fsm.EncodeEntry(e2)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding not stable: %x vs %x (%v)", enc, enc2, err)
	}
	for _, c := range e.Cmds {
		if a := fzArgs(c.Type); a != nil {
			_ = msgpack.Unmarshal(c.Body, a)
		}
	}
}

// fzSameEntry compares entries, counting a nil and an empty command list
// or body as equal.
func fzSameEntry(a, b *fsm.Entry) bool {
	if a.Time != b.Time || len(a.Cmds) != len(b.Cmds) {
		return false
	}
	for i := range a.Cmds {
		x, y := a.Cmds[i], b.Cmds[i]
		if x.Type != y.Type || x.Conn != y.Conn || x.Req != y.Req || !bytes.Equal(x.Body, y.Body) {
			return false
		}
	}
	return true
}

// FuzzApplyEntry applies fuzzed entries, with a correct CRC, to a real FSM.
// Apply may panic only as DESIGN.md says: deliberately, for an entry it
// cannot apply faithfully (an undecodable entry or command body, an
// unknown command type), after rolling the batch back. An entry whose
// commands all decode must apply without a panic: an argument no client
// request could carry (an empty queue name, a lease out of range) is that
// command's error reply, not a reason to stop every replica. A Go runtime
// error (index out of range, nil dereference) is a bug either way.
func FuzzApplyEntry(f *testing.F) {
	for _, e := range append(fzEntries(f), fzInvalidEntries(f)...) {
		b, err := fsm.EncodeEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[5:])
	}
	st, err := fsm.Open(filepath.Join(f.TempDir(), "state.db"), "n1")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	var index uint64
	f.Fuzz(func(t *testing.T, body []byte) {
		index++
		l := &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: fzSeal(body)}
		e, decErr := fsm.DecodeEntry(l.Data)
		var out any
		msg := func() (msg any) {
			defer func() { msg = recover() }()
			out = st.Apply(l)
			return nil
		}()
		if msg == nil {
			if decErr == nil {
				fzCheckReplies(t, e, out)
			}
			return
		}
		s := fmt.Sprint(msg)
		if decErr == nil && fzDecodable(e) {
			t.Fatalf("Apply of an entry whose commands all decode panicked: %s\nentry: %+v", s, e)
		}
		if !strings.HasPrefix(s, "fsm: ") || strings.Contains(s, "runtime error") || decErr != nil && !strings.Contains(s, "log entry") {
			t.Fatalf("Apply of %+v panicked: %s", e, s)
		}
	})
}

// FuzzApplyCommand is FuzzApplyEntry one level up: it builds a command of
// any type from fuzzed field values (names, connection ids, numbers, the
// entry's time) instead of msgpack bytes, so the fuzzer explores what the
// argument checks and the queue functions see. Every such command decodes,
// so Apply must never panic, and its reply error is a business error.
func FuzzApplyCommand(f *testing.F) {
	// type, name, conn, from, id, n1, n2, n3, flags, time
	f.Add(uint8(fsm.TypeDeclare), "jobs", "n1/1/1", "jobs.dlq", "m1", int64(3), int64(100), uint64(0), uint8(0xff), int64(1_700_000_000_000))
	f.Add(uint8(fsm.TypeEnqueue), "jobs", "n1/1/1", "alice", "m1", int64(0), int64(0), uint64(9), uint8(0), int64(1_700_000_000_001))
	f.Add(uint8(fsm.TypeConsume), "jobs", "n1/1/1", "", "", int64(2), int64(1000), uint64(0), uint8(0), int64(1_700_000_000_002))
	f.Add(uint8(fsm.TypeNack), "jobs", "n1/1/1", "", "", int64(1), int64(0), uint64(1), uint8(1), int64(1_700_000_000_003))
	f.Add(uint8(fsm.TypeExtend), "jobs", "n1/1/1", "", "", int64(1), int64(5000), uint64(1), uint8(0), int64(1_700_000_000_004))
	f.Add(uint8(fsm.TypeSubscribe), "a.*.>", "n1/1/1", "", "", int64(0), int64(0), uint64(0), uint8(0), int64(1_700_000_000_005))
	f.Add(uint8(fsm.TypePublish), "a.b.c", "n1/1/1", "alice", "p1", int64(0), int64(0), uint64(0), uint8(0), int64(1_700_000_000_006))
	f.Add(uint8(fsm.TypeNodeDown), "n1", "", "", "", int64(0), int64(0), uint64(0), uint8(0), int64(1_700_000_000_007))
	f.Add(uint8(fsm.TypeDeclare), "", "", "", "", int64(0), int64(0), uint64(0), uint8(0), int64(0))
	f.Add(uint8(fsm.TypeDeclare), "jobs", "", "", "", int64(0), int64(0), uint64(0), uint8(1<<3), int64(0))
	f.Add(uint8(fsm.TypeConsume), "a\x00b", "n1/1/\x00", "", "", int64(0), int64(0), uint64(0), uint8(0), int64(0))
	f.Add(uint8(fsm.TypeEnqueue), "jobs", "n1/1/1", "alice", "m2", int64(queue.MaxDelayMs), int64(0), uint64(0), uint8(0), int64(math.MaxInt64))
	f.Add(uint8(15), "work", "n1/1/1", "worker", "", int64(2), int64(0), uint64(0), uint8(0), int64(1_700_000_000_010))
	f.Add(uint8(16), "work", `{"id":"x","from":"origin","ts":1,"body":1}`, "origin", "t1", int64(2), int64(1000), uint64(3), uint8(1<<3), int64(1_700_000_000_011))
	f.Add(uint8(16), "work", `{}`, "origin", "t1", int64(1), int64(0), uint64(0), uint8(1<<1), int64(1_700_000_000_012))
	f.Add(uint8(17), "", "1", "worker", "t1", int64(1), int64(10), uint64(0), uint8(0), int64(1_700_000_000_013))
	f.Add(uint8(18), "boom", "", "worker", "t2", int64(1), int64(0), uint64(0), uint8(1), int64(1_700_000_000_014))
	f.Add(uint8(19), "why", "", "origin", "g1", int64(0), int64(0), uint64(0), uint8(0), int64(1_700_000_000_015))
	f.Add(uint8(20), "ok", "", "alice", "t3", int64(0), int64(0), uint64(0), uint8(1), int64(1_700_000_000_016))
	f.Add(uint8(21), "work", "", "alice", "", int64(0), int64(0), uint64(0), uint8(1), int64(1_700_000_000_017))
	f.Add(uint8(22), "jobs.dlq", "", "jobs", "", int64(1), int64(0), uint64(1), uint8(3), int64(1_700_000_000_018))
	f.Add(uint8(22), "jobs.dlq", "", "", "", int64(0), int64(0), uint64(0), uint8(0), int64(1_700_000_000_019))
	f.Add(uint8(23), "jobs", "", "", "", int64(0), int64(0), uint64(1), uint8(1), int64(1_700_000_000_020))
	st, err := fsm.Open(filepath.Join(f.TempDir(), "state.db"), "n1")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	var index uint64
	f.Fuzz(func(t *testing.T, typ uint8, name, conn, from, id string, n1, n2 int64, n3 uint64, flags uint8, at int64) {
		mt := fzTypes[int(typ)%len(fzTypes)]
		index++
		cmd, err := fsm.NewCommand(mt, "n1/1/1", index, fzBody(mt, name, conn, from, id, n1, n2, n3, flags))
		if err != nil {
			t.Fatal(err)
		}
		e := &fsm.Entry{Time: at, Cmds: []fsm.Command{cmd}}
		data, err := fsm.EncodeEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		func() {
			defer func() {
				if msg := recover(); msg != nil {
					t.Fatalf("Apply of %+v panicked: %v", fzBody(mt, name, conn, from, id, n1, n2, n3, flags), msg)
				}
			}()
			out = st.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data})
		}()
		fzCheckReplies(t, e, out)
	})
}

// fzTypes are the command types FuzzApplyCommand builds: the queue
// commands, the delegation commands and the operator's redrive and
// delete (the others have fuzz entries of their own in fzEntries).
var fzTypes = []fsm.MessageType{
	0, fsm.TypeEnqueue, fsm.TypeConsume, fsm.TypeAck, fsm.TypeNack, fsm.TypeReject, fsm.TypeExtend, fsm.TypeCancel,
	fsm.TypeDeclare, fsm.TypePublish, fsm.TypeSubscribe, fsm.TypeUnsubscribe, fsm.TypeConnClosed, fsm.TypeNodeStarted, fsm.TypeNodeDown,
	fsm.TypeRegister, fsm.TypeTaskSubmit, fsm.TypeTaskDone, fsm.TypeTaskFail, fsm.TypeTaskCancel, fsm.TypeTaskDecide, fsm.TypeCapSensitive,
	fsm.TypeTaskPrune, fsm.TypeAuditPrune, fsm.TypeClusterLevel, fsm.TypeRestoreRecord, fsm.TypeQueueRedrive, fsm.TypeMessageDelete,
}

func init() { fzTypes[0] = fsm.TypeNodeDown }

// fzBody fills the argument type of mt from fuzzed values; flags chooses
// which optional fields are present.
func fzBody(mt fsm.MessageType, name, conn, from, id string, n1, n2 int64, n3 uint64, flags uint8) any {
	opt := func(bit uint8) bool { return flags&(1<<bit) != 0 }
	switch mt {
	case fsm.TypeEnqueue:
		return &queue.EnqueueArgs{Queue: name, From: from, ID: id, Env: []byte(conn), DelayMs: n1, Priority: uint8(n3)}
	case fsm.TypeConsume:
		return &queue.ConsumeArgs{Queue: name, Conn: conn, Prefetch: int(n1), LeaseMs: n2}
	case fsm.TypeAck, fsm.TypeNack, fsm.TypeReject, fsm.TypeExtend:
		a := &queue.SettleArgs{Queue: name, Seq: n3, Attempt: int(n1), Conn: conn, Reason: id, LeaseMs: n2}
		if opt(0) {
			a.DelayMs = &n2
		}
		return a
	case fsm.TypeCancel:
		return &queue.CancelArgs{Consumer: n3, Conn: conn}
	case fsm.TypeDeclare:
		a := &queue.DeclareArgs{Queue: name, SetBackoff: opt(2)}
		if opt(0) {
			m := int(n1)
			a.MaxAttempts = &m
		}
		if opt(1) {
			a.BackoffMs = []int64{n2, n1, int64(n3)}[:1+n3%3]
		}
		if opt(3) {
			a.DLQ = &from
		}
		if opt(4) {
			a.MaxLen = &n2
		}
		return a
	case fsm.TypePublish:
		return &queue.PublishArgs{Topic: name, From: from, ID: id, Env: []byte(conn)}
	case fsm.TypeSubscribe:
		return &queue.SubscribeArgs{Pattern: name, Conn: conn}
	case fsm.TypeUnsubscribe:
		return &fsm.UnsubscribeArgs{Sub: n3, Conn: conn}
	case fsm.TypeConnClosed:
		return &fsm.ConnClosedArgs{Conn: conn}
	case fsm.TypeNodeStarted:
		return &fsm.NodeStartedArgs{Node: name, Epoch: n3}
	case fsm.TypeRegister:
		return &route.RegisterArgs{Agent: from, Conn: conn, Caps: []route.Cap{{Name: name, MaxInflight: int(n1)}}}
	case fsm.TypeTaskSubmit:
		a := &task.SubmitArgs{From: from, Tasks: []task.Spec{{Ref: name, Capability: name, Input: []byte(conn), MaxAttempts: int(n1), TimeoutMs: n2, Approval: opt(1)}},
			Limits: task.Limits{MaxDepth: int(n3 % 16), MaxFanout: int(n1), AllowRepeat: opt(2)}}
		if opt(0) {
			a.Parent = id
		}
		if opt(3) {
			a.Tasks = append(a.Tasks, task.Spec{Ref: id, Capability: name, Input: []byte(conn), Deps: []string{name}})
		}
		return a
	case fsm.TypeTaskDone, fsm.TypeTaskFail:
		return &task.SettleArgs{Task: id, Attempt: int(n1), Agent: from, Output: []byte(conn), Error: name, Retry: opt(0), MaxOutput: n2}
	case fsm.TypeTaskCancel:
		a := &task.CancelArgs{Task: id, Agent: from, Reason: name}
		if opt(0) {
			a.Agent, a.Operator = "", from
		}
		return a
	case fsm.TypeTaskDecide:
		return &task.DecideArgs{Task: id, Operator: from, Approve: opt(0), Reason: name}
	case fsm.TypeCapSensitive:
		return &fsm.CapSensitiveArgs{Cap: name, Operator: from, On: opt(0)}
	case fsm.TypeTaskPrune:
		a := &fsm.TaskPruneArgs{Roots: []string{id, name}[:1+n3%2], RetentionMs: n2}
		if opt(0) {
			a.Roots = []string{"g1", "g2"}[:1+n3%2]
		}
		return a
	case fsm.TypeAuditPrune:
		return &fsm.AuditPruneArgs{Through: n3, Max: int(n1)}
	case fsm.TypeClusterLevel:
		// A level above this version's stops the node by design.
		return &fsm.ClusterLevelArgs{Level: int(n1 % (fsm.Level + 1))}
	case fsm.TypeRestoreRecord:
		return &fsm.RestoreRecordArgs{ID: id, Actor: from, Subject: name}
	case fsm.TypeQueueRedrive:
		a := &fsm.QueueRedriveArgs{DLQ: name, Limit: int(n1), After: uint64(n2), Through: n3}
		if opt(0) {
			a.To = from
		}
		if opt(1) {
			a.Seqs = []uint64{n3, uint64(n1), uint64(n2)}[:1+n3%3]
		}
		return a
	case fsm.TypeMessageDelete:
		return &fsm.MessageDeleteArgs{Queue: name, Seq: n3, Force: opt(0)}
	default:
		return &fsm.NodeDownArgs{Node: name}
	}
}

// fzDecodable reports whether every command of e has a known type and a
// body that decodes into its argument type, as the handlers decode it.
func fzDecodable(e *fsm.Entry) bool {
	for _, c := range e.Cmds {
		a := fzArgs(c.Type)
		if a == nil || mpack.Unmarshal(c.Body, a) != nil {
			return false
		}
	}
	return true
}

// fzCheckReplies: an applied entry answers each client command once, in
// order, and every error it answers with is a business error.
func fzCheckReplies(t *testing.T, e *fsm.Entry, out any) {
	var want []fsm.Command
	for _, c := range e.Cmds {
		if c.Conn != "" {
			want = append(want, c)
		}
	}
	rs, _ := out.([]*fsm.Reply)
	if len(rs) != len(want) {
		t.Fatalf("%d replies for %d client commands", len(rs), len(want))
	}
	for i, r := range rs {
		if r.Conn != want[i].Conn || r.Req != want[i].Req || r.Type != want[i].Type {
			t.Fatalf("reply %d answers %s #%d type %d, want %s #%d type %d", i, r.Conn, r.Req, r.Type, want[i].Conn, want[i].Req, want[i].Type)
		}
		if r.Err != nil && !fzBusiness(r.Err) {
			t.Fatalf("reply %d: %v is not a business error", i, r.Err)
		}
	}
}

func fzBusiness(err error) bool {
	for _, s := range []error{queue.ErrNotFound, queue.ErrFull, queue.ErrConflict, queue.ErrBadRequest, queue.ErrForbidden} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// fzInvalidEntries carry commands that decode but hold values no client
// request could: each must be answered with an error reply.
func fzInvalidEntries(tb testing.TB) []*fsm.Entry {
	var cmds []fsm.Command
	for i, c := range invalidCommands() {
		cmd, err := fsm.NewCommand(c.typ, "n1/1/1", uint64(i+1), c.body)
		if err != nil {
			tb.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	var out []*fsm.Entry
	for i := 0; i < len(cmds); i += 8 {
		out = append(out, &fsm.Entry{Time: 1_700_000_000_000 + int64(i), Cmds: cmds[i:min(i+8, len(cmds))]})
	}
	return out
}

// FuzzDecodeReplies: DecodeReplies never panics, and what it accepts
// encodes to bytes that decode to the same replies.
func FuzzDecodeReplies(f *testing.F) {
	good, err := fsm.EncodeReplies([]*fsm.Reply{
		{Conn: "n1/1/c1", Req: 1, Type: fsm.TypeEnqueue, Result: &fsm.EnqueueResult{Seq: 4, Dup: true}},
		{Conn: "n1/1/c1", Req: 2, Type: fsm.TypeConsume, Result: &fsm.ConsumeResult{Consumer: 3}},
		{Conn: "n1/1/c1", Req: 3, Type: fsm.TypeAck, Err: queue.ErrNotFound},
		{Conn: "n1/1/c1", Req: 4, Type: fsm.TypeDeclare, Err: fmt.Errorf("%w: max_attempts", queue.ErrBadRequest)},
		{Conn: "n1/1/c1", Req: 5, Type: fsm.TypeDeclare, Result: &fsm.DeclareResult{MaxAttempts: 5, BackoffMs: []int64{1}}},
		{Conn: "n1/1/c1", Req: 6, Type: fsm.TypeExtend, Result: &fsm.ExtendResult{LeaseUntil: -1}},
		{Conn: "n1/1/c1", Req: 7, Type: fsm.TypeQueueRedrive, Result: &fsm.QueueRedriveResult{Moved: []queue.Moved{{From: 1, Queue: "jobs", Seq: 2}}, More: true, Last: 1}},
		{Conn: "n1/1/c1", Req: 8, Type: fsm.TypeMessageDelete, Result: &fsm.MessageDeleteResult{State: queue.StateInflight, Holder: "n1/1/c1"}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	for _, b := range fzBodies {
		f.Add(b)
	}
	f.Add([]byte{0x91, 0x83, 0xa1, 'e', 0xa3, 'x', 'y', 'z', 0xa1, 't', 0x01, 0xa1, 'x', 0xc4, 0x01, 0xc1})
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := fsm.DecodeReplies(b)
		if err != nil {
			return
		}
		enc, err := fsm.EncodeReplies(rs)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		rs2, err := fsm.DecodeReplies(enc)
		if err != nil {
			t.Fatalf("re-encoded replies rejected: %v", err)
		}
		if len(rs) != len(rs2) {
			t.Fatalf("%d replies became %d", len(rs), len(rs2))
		}
		for i := range rs {
			a, b := rs[i], rs2[i]
			if a.Conn != b.Conn || a.Req != b.Req || a.Type != b.Type || !reflect.DeepEqual(a.Result, b.Result) ||
				(a.Err == nil) != (b.Err == nil) || a.Err != nil && a.Err.Error() != b.Err.Error() {
				t.Fatalf("reply %d changed:\n%+v\n%+v", i, a, b)
			}
			for _, s := range []error{queue.ErrNotFound, queue.ErrFull, queue.ErrConflict, queue.ErrBadRequest, queue.ErrForbidden} {
				if errors.Is(a.Err, s) != errors.Is(b.Err, s) {
					t.Fatalf("reply %d: error %v lost its sentinel", i, a.Err)
				}
			}
		}
	})
}

func bs(args ...string) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = []byte(a)
	}
	return out
}
