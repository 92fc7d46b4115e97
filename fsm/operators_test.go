package fsm_test

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/queue"
)

func opCred(id string) operator.NewCred {
	return operator.NewCred{ID: []byte(id), Data: []byte(`{"id":"` + id + `"}`)}
}

var opHandle = []byte("0123456789abcdef0123456789abcdef")

// Refused operator commands change nothing but the audit log, whatever
// their refusal.
func Test_Operators_RefusalsChangeNothing(t *testing.T) {
	x := newArgFixture(t)
	sess := operator.HashToken("s")
	for _, tc := range []struct {
		c    argCase
		want error
	}{
		{argCase{"invite/bad_name", fsm.TypeOperatorInvite, &fsm.OperatorInviteArgs{Name: "a b", TTLMs: 60_000}}, queue.ErrBadRequest},
		{argCase{"invite/ttl_too_short", fsm.TypeOperatorInvite, &fsm.OperatorInviteArgs{Name: "alice", TTLMs: 10}}, queue.ErrBadRequest},
		{argCase{"enroll/unknown_code", fsm.TypeOperatorEnroll, &fsm.OperatorEnrollArgs{CodeHash: operator.HashCode("x"), Handle: opHandle, Cred: opCred("k"), Session: sess, SessionTTLMs: 60_000}}, queue.ErrNotFound},
		{argCase{"enroll/record_not_json", fsm.TypeOperatorEnroll, &fsm.OperatorEnrollArgs{CodeHash: operator.HashCode("x"), Handle: opHandle, Cred: operator.NewCred{ID: []byte("k"), Data: []byte("{")}, Session: sess, SessionTTLMs: 60_000}}, queue.ErrBadRequest},
		{argCase{"use/no_passkey", fsm.TypeOperatorUse, &fsm.OperatorUseArgs{Name: "alice"}}, queue.ErrBadRequest},
		{argCase{"use/unknown_operator", fsm.TypeOperatorUse, &fsm.OperatorUseArgs{Name: "alice", CredID: []byte("k"), SignCount: 1}}, queue.ErrNotFound},
		{argCase{"remove/unknown", fsm.TypeOperatorRemove, &fsm.OperatorRemoveArgs{Name: "alice"}}, queue.ErrNotFound},
	} {
		t.Run(tc.c.name, func(t *testing.T) {
			r := x.apply(t, tc.c)
			if !errors.Is(r.Err, tc.want) || r.Result != nil {
				t.Fatalf("reply %v %+v, want %v", r.Err, r.Result, tc.want)
			}
			if stateDigest(t, x.got) != stateDigest(t, x.ref) {
				t.Fatal("a refused command changed the state")
			}
			if e := lastAuditEntry(t, x.got); e.Outcome == "ok" {
				t.Fatalf("audit entry %+v records no refusal", e)
			}
		})
	}
	// Ending a session that does not exist is no error and no change.
	if r := x.apply(t, argCase{"logout", fsm.TypeOperatorLogout, &fsm.OperatorLogoutArgs{Session: sess}}); r.Err != nil || r.Result != nil {
		t.Fatalf("logout of no session: %v %+v", r.Err, r.Result)
	}
	if stateDigest(t, x.got) != stateDigest(t, x.ref) {
		t.Fatal("a logout of no session changed the state")
	}
}

// An operator's whole life, applied one entry at a time on one replica
// and in one batch on another, leaves them identical; the results carry
// what the admin API answers with.
func Test_Operators_Lifecycle_Deterministic(t *testing.T) {
	code, s1, s2 := operator.HashCode("code"), operator.HashToken("s1"), operator.HashToken("s2")
	cmds := []fsm.Command{
		mustCmd(t, fsm.TypeOperatorInvite, "", 0, &fsm.OperatorInviteArgs{Name: "alice", CodeHash: code, TTLMs: 3_600_000}),
		mustCmd(t, fsm.TypeOperatorEnroll, "", 0, &fsm.OperatorEnrollArgs{CodeHash: code, Handle: opHandle, Cred: opCred("k1"), Session: s1, SessionTTLMs: 60_000}),
		mustCmd(t, fsm.TypeOperatorUse, "", 0, &fsm.OperatorUseArgs{Name: "alice", CredID: []byte("k1"), SignCount: 3, Session: &s2, SessionTTLMs: 60_000}),
		mustCmd(t, fsm.TypeOperatorUse, "", 0, &fsm.OperatorUseArgs{Name: "alice", CredID: []byte("k1"), SignCount: 3}), // replayed counter: refused
		mustCmd(t, fsm.TypeOperatorLogout, "", 0, &fsm.OperatorLogoutArgs{Session: s1}),
		mustCmd(t, fsm.TypeOperatorRemove, "", 0, &fsm.OperatorRemoveArgs{Name: "alice"}),
	}
	var logs []*raft.Log
	for i, c := range cmds {
		c.Actor, c.Conn, c.Req = "operator:local", tConn, uint64(i+1)
		logs = append(logs, mustLog(t, uint64(i+1), 1_700_000_000_000+int64(i)*1000, c))
	}
	a, b := mustFresh(t, "n1"), mustFresh(t, "n2")
	var replies [][]*fsm.Reply
	for _, l := range logs {
		replies = append(replies, a.Apply(l).([]*fsm.Reply))
	}
	b.ApplyBatch(logs)
	if mustDigest(t, a) != mustDigest(t, b) {
		t.Fatal("replicas diverged")
	}
	if r, ok := replies[0][0].Result.(*fsm.OperatorResult); !ok || r.Name != "alice" || r.Expires != 1_700_000_000_000+3_600_000 {
		t.Fatalf("invite result %+v", replies[0][0].Result)
	}
	if r, ok := replies[1][0].Result.(*fsm.OperatorResult); !ok || r.Name != "alice" {
		t.Fatalf("enroll result %+v %v", replies[1][0].Result, replies[1][0].Err)
	}
	if replies[2][0].Err != nil || !errors.Is(replies[3][0].Err, queue.ErrConflict) {
		t.Fatalf("counter: %v then %v", replies[2][0].Err, replies[3][0].Err)
	}
	if r, ok := replies[4][0].Result.(*fsm.OperatorResult); !ok || r.Name != "alice" || replies[5][0].Err != nil {
		t.Fatalf("logout %+v, remove %v", replies[4][0].Result, replies[5][0].Err)
	}
	// The replies survive the trip to a follower.
	enc, err := fsm.EncodeReplies(replies[0])
	if err != nil {
		t.Fatal(err)
	}
	back, err := fsm.DecodeReplies(enc)
	if r, ok := back[0].Result.(*fsm.OperatorResult); err != nil || !ok || r.Expires == 0 {
		t.Fatalf("forwarded invite result %+v %v", back, err)
	}
}
