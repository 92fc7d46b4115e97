package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
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
// cannot apply faithfully (an undecodable body, an unknown command type,
// an error that is not a business outcome), after rolling the batch back.
// A Go runtime error (index out of range, nil dereference) is a bug.
func FuzzApplyEntry(f *testing.F) {
	for _, e := range fzEntries(f) {
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
		msg := func() (msg any) {
			defer func() { msg = recover() }()
			st.Apply(l)
			return nil
		}()
		if msg == nil {
			return
		}
		s := fmt.Sprint(msg)
		if !strings.HasPrefix(s, "fsm: ") || strings.Contains(s, "runtime error") || decErr != nil && !strings.Contains(s, "log entry") {
			t.Fatalf("Apply of %+v panicked: %s", e, s)
		}
	})
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
