package operator

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func testDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(CreateBuckets); err != nil {
		t.Fatal(err)
	}
	return db
}

var handle = []byte("0123456789abcdef0123456789abcdef")

func cred(id string) NewCred {
	return NewCred{ID: []byte(id), SignCount: 0, Data: []byte(`{"id":"` + id + `"}`)}
}

func TestCodes(t *testing.T) {
	c := NewCode()
	if len(c) != 29 || strings.Count(c, "-") != 5 {
		t.Fatalf("code %q: want 6 groups of 4", c)
	}
	if NewCode() == c {
		t.Fatal("two codes alike")
	}
	// Case, dashes, spaces and the letters read as digits do not matter.
	if HashCode("ab0-1cd") != HashCode(" AbO1 cD") || HashCode("L") != HashCode("1") || HashCode("i") != HashCode("1") {
		t.Fatal("HashCode is not forgiving of how a code is typed")
	}
	if HashCode("AB") == HashCode("AC") {
		t.Fatal("HashCode collides")
	}
	tok := NewToken()
	if CSRFToken(tok) == CSRFToken(NewToken()) || HashToken(tok) == HashToken(NewToken()) {
		t.Fatal("tokens alike")
	}
}

func TestInviteEnrollLoginRemove(t *testing.T) {
	db := testDB(t)
	code := HashCode("first")
	now := int64(1_000_000)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(db.Update(func(tx *bolt.Tx) error { return AddInvite(tx, now, "operator:local", "alice", code, 3_600_000) }))
	// The same code twice is a conflict; a bad name or lifetime is refused.
	if err := db.Update(func(tx *bolt.Tx) error { return AddInvite(tx, now, "x", "alice", code, 3_600_000) }); !errors.Is(err, ErrConflict) {
		t.Fatalf("same code twice: %v", err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return AddInvite(tx, now, "x", "al ice", HashCode("2"), 3_600_000) }); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad name: %v", err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return AddInvite(tx, now, "x", "bob", HashCode("2"), 1000) }); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("1 s invite: %v", err)
	}

	sess := HashToken("s1")
	var name string
	must(db.Update(func(tx *bolt.Tx) (err error) {
		name, err = Enroll(tx, now+10, code, handle, cred("k1"), sess, 60_000)
		return err
	}))
	if name != "alice" {
		t.Fatalf("enrolled %q", name)
	}
	// The invite is spent.
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := Enroll(tx, now+20, code, handle, cred("k2"), HashToken("s2"), 60_000)
		return err
	}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("spent invite: %v", err)
	}
	must(db.View(func(tx *bolt.Tx) error {
		s, err := GetSession(tx, sess)
		if err != nil || s == nil || s.Operator != "alice" || s.Expires != now+10+60_000 {
			t.Fatalf("session %+v %v", s, err)
		}
		op, err := ByCred(tx, []byte("k1"))
		if err != nil || op == nil || op.Name != "alice" {
			t.Fatalf("by cred: %+v %v", op, err)
		}
		op, err = ByHandle(tx, handle)
		if err != nil || op == nil || op.Name != "alice" {
			t.Fatalf("by handle: %+v %v", op, err)
		}
		return nil
	}))

	// A second invite for alice adds a passkey; the same passkey twice is
	// a conflict.
	must(db.Update(func(tx *bolt.Tx) error {
		return AddInvite(tx, now, "operator:alice", "alice", HashCode("second"), 3_600_000)
	}))
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := Enroll(tx, now+30, HashCode("second"), nil, cred("k1"), HashToken("s3"), 60_000)
		return err
	}); !errors.Is(err, ErrConflict) {
		t.Fatalf("same passkey twice: %v", err)
	}
	must(db.Update(func(tx *bolt.Tx) error {
		_, err := Enroll(tx, now+30, HashCode("second"), nil, cred("k2"), HashToken("s3"), 60_000)
		return err
	}))

	// Counters: a passkey that counts must go forward; one that stays at
	// zero is accepted.
	must(db.Update(func(tx *bolt.Tx) error { return Use(tx, now+40, "alice", []byte("k1"), 5, nil, 0) }))
	if err := db.Update(func(tx *bolt.Tx) error { return Use(tx, now+50, "alice", []byte("k1"), 5, nil, 0) }); !errors.Is(err, ErrConflict) {
		t.Fatalf("counter replayed: %v", err)
	}
	must(db.Update(func(tx *bolt.Tx) error { return Use(tx, now+50, "alice", []byte("k2"), 0, nil, 0) }))
	if err := db.Update(func(tx *bolt.Tx) error { return Use(tx, now+50, "alice", []byte("nope"), 9, nil, 0) }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown passkey: %v", err)
	}
	login := HashToken("s4")
	must(db.Update(func(tx *bolt.Tx) error { return Use(tx, now+60, "alice", []byte("k1"), 6, &login, 60_000) }))

	// Expired sessions are pruned when a new one opens.
	must(db.Update(func(tx *bolt.Tx) error {
		return Use(tx, now+200_000, "alice", []byte("k1"), 7, new(HashToken("s5")), 60_000)
	}))
	must(db.View(func(tx *bolt.Tx) error {
		if s, _ := GetSession(tx, sess); s != nil {
			t.Fatal("an expired session was kept")
		}
		return nil
	}))

	// Logout, then removal takes every passkey and session.
	must(db.Update(func(tx *bolt.Tx) error { return EndSession(tx, HashToken("s5")) }))
	must(db.Update(func(tx *bolt.Tx) error { return Remove(tx, "alice") }))
	must(db.View(func(tx *bolt.Tx) error {
		if op, _ := ByCred(tx, []byte("k1")); op != nil {
			t.Fatal("passkey index kept after removal")
		}
		if Count(tx) != 0 {
			t.Fatal("operator kept")
		}
		return nil
	}))
	if err := db.Update(func(tx *bolt.Tx) error { return Remove(tx, "alice") }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing twice: %v", err)
	}
}

func TestEnrollRefusals(t *testing.T) {
	db := testDB(t)
	code := HashCode("c")
	if err := db.Update(func(tx *bolt.Tx) error { return AddInvite(tx, 0, "x", "bob", code, 60_000) }); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		now    int64
		handle []byte
		cred   NewCred
		ttl    int64
		want   error
	}{
		"expired invite":   {60_000, handle, cred("k"), 60_000, ErrNotFound},
		"short handle":     {1, []byte("short"), cred("k"), 60_000, ErrBadRequest},
		"record not JSON":  {1, handle, NewCred{ID: []byte("k"), Data: []byte("{")}, 60_000, ErrBadRequest},
		"no passkey id":    {1, handle, NewCred{Data: []byte("{}")}, 60_000, ErrBadRequest},
		"session too long": {1, handle, cred("k"), MaxSessionTTLMs + 1, ErrBadRequest},
	} {
		// bbolt rolls the transaction back on error: nothing is kept.
		err := db.Update(func(tx *bolt.Tx) error {
			_, err := Enroll(tx, tc.now, code, tc.handle, tc.cred, HashToken(name), tc.ttl)
			return err
		})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if err := db.View(func(tx *bolt.Tx) error {
		in, err := GetInvite(tx, code)
		if in == nil || Count(tx) != 0 {
			t.Fatalf("a refused enrollment changed state: invite %v, %d operators", in, Count(tx))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
