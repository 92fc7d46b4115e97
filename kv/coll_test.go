package kv

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Helpers shared by the hash and list tests.

const collNow = int64(1_700_000_000_000)

func mustCollDB(t testing.TB) *bolt.DB {
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

// collExec runs one command as the node would: a write in a write
// transaction, a read in a read-only one.
func collExec(t testing.TB, db *bolt.DB, now int64, args ...string) Value {
	t.Helper()
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	var out Value
	_, write := Lookup(strings.ToLower(args[0]))
	run := db.View
	if write {
		run = db.Update
	}
	if err := run(func(tx *bolt.Tx) error {
		out = Exec(tx, now, bs, write)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// show renders a reply compactly: :1, "bulk", nil, nilarr, +OK, -ERR ...,
// [a b] for an array and {k v} for a map.
func show(v Value) string {
	switch v.K {
	case Null:
		return "nil"
	case NullArray:
		return "nilarr"
	case Simple:
		return "+" + string(v.S)
	case Error:
		return "-" + string(v.S)
	case Int:
		return ":" + strconv.FormatInt(v.I, 10)
	case Bulk:
		return strconv.Quote(string(v.S))
	}
	parts := make([]string, len(v.A))
	for i, e := range v.A {
		parts[i] = show(e)
	}
	if v.K == Map {
		return "{" + strings.Join(parts, " ") + "}"
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// collCase is one command (fields split on spaces; ” is the empty
// string) and its expected reply as show renders it.
type collCase struct {
	cmd, want string
}

func runCollCases(t *testing.T, cases []collCase) {
	t.Helper()
	db := mustCollDB(t)
	for i, c := range cases {
		args := splitCmd(c.cmd)
		if got := show(collExec(t, db, collNow, args...)); got != c.want {
			t.Errorf("%d: %.80s = %s, want %s", i, c.cmd, got, c.want)
		}
	}
}

// splitCmd splits a command line on spaces; a field in double quotes may
// hold spaces.
func splitCmd(s string) []string {
	var out []string
	for s = strings.TrimLeft(s, " "); s != ""; s = strings.TrimLeft(s, " ") {
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"') + 1
			out = append(out, s[1:end])
			s = s[end+1:]
			continue
		}
		f, rest, _ := strings.Cut(s, " ")
		out = append(out, f)
		s = rest
	}
	return out
}

const wrongType = "-WRONGTYPE Operation against a key holding the wrong kind of value"

// A key state.db cannot hold is refused before anything is written,
// rather than stopping the node.
func Test_Coll_UnstorableKeys(t *testing.T) {
	long := strings.Repeat("k", maxKeyLen+1)
	runCollCases(t, []collCase{
		{`set "" x`, "-ERR empty keys are not supported"},
		{`hset "" f v`, "-ERR empty keys are not supported"},
		{`rpush "" a`, "-ERR empty keys are not supported"},
		{`rpush src a`, ":1"},
		{`lmove src "" left left`, "-ERR empty keys are not supported"},
		{`lrange src 0 -1`, `["a"]`},
		{`lmove nosrc "" left left`, "nil"},
		{`hget "" f`, "nil"},
		{`del ""`, ":0"},
		{"set " + long + " x", "-ERR key or field too long"},
		{"rpush " + long + " x", "-ERR key or field too long"},
		{"hset h " + strings.Repeat("f", bolt.MaxKeySize) + " x", "-ERR key or field too long"},
		{"exists h", ":0"},
	})
}
