package cluster

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/mcpd/mcpd/fsm"
)

// FuzzReadFrame reads arbitrary bytes from the forwarding port as the
// leader (a request) and the follower (a response) do: no panic and no
// allocation beyond what the bytes back, and an accepted frame written
// again reads back equal.
func FuzzReadFrame(f *testing.F) {
	frame := func(tb testing.TB, v any) []byte {
		var b bytes.Buffer
		if err := writeFrame(&b, v); err != nil {
			tb.Fatal(err)
		}
		return b.Bytes()
	}
	req := frame(f, fwdRequest{ID: 7, Cmds: []fsm.Command{{Type: fsm.TypeEnqueue, Conn: "n1/1/c1", Req: 3, Body: []byte{0x80}}}})
	f.Add(req)
	f.Add(req[:len(req)-1])
	f.Add(frame(f, fwdResponse{ID: 7, Status: fwdNotLeader, Msg: "not the leader", Replies: []byte{0x90}}))
	f.Add([]byte{0, 0, 0, 8, 0x81, 0xa1, 'c', 0xdd, 0xff, 0xff, 0xff, 0xff}) // 2^32-1 commands
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})                                    // over the frame limit
	f.Add([]byte{0, 0, 0, 1, 0xc1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 4 && binary.BigEndian.Uint32(b) > uint32(len(b)) {
			// A length the input cannot back only costs a buffer of that
			// size; keep it from slowing the fuzzer down.
			binary.BigEndian.PutUint32(b, uint32(len(b)))
		}
		var rq fwdRequest
		if err := readFrame(bytes.NewReader(b), &rq); err == nil {
			var again fwdRequest
			if err := readFrame(bytes.NewReader(frame(t, rq)), &again); err != nil || !reflect.DeepEqual(rq, again) {
				t.Fatalf("request %+v read back as %+v (%v)", rq, again, err)
			}
		}
		var rs fwdResponse
		if err := readFrame(bytes.NewReader(b), &rs); err == nil {
			if len(rs.Replies) == 0 {
				rs.Replies = nil // omitted when written
			}
			var again fwdResponse
			if err := readFrame(bytes.NewReader(frame(t, rs)), &again); err != nil || !reflect.DeepEqual(rs, again) {
				t.Fatalf("response %+v read back as %+v (%v)", rs, again, err)
			}
		}
	})
}
