package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
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
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true}) // nothing here survives a crash
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
	if v.K == Map || v.K == PairMap {
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

// The empty key is a key like any other; one longer than state.db can
// hold is refused before anything is written, rather than stopping the
// node.
func Test_Coll_KeyLimits(t *testing.T) {
	long := strings.Repeat("k", maxKeyLen+1)
	runCollCases(t, []collCase{
		{`set "" x`, "+OK"},
		{`get ""`, `"x"`},
		{`hset "" f v`, wrongType},
		{`del ""`, ":1"},
		{`hset "" f v`, ":1"},
		{`hget "" f`, `"v"`},
		{`del ""`, ":1"},
		{`rpush src a`, ":1"},
		{`lmove src "" left left`, `"a"`},
		{`lrange "" 0 -1`, `["a"]`},
		{`exists src`, ":0"},
		{`keys *`, `[""]`},
		{`keys **`, `[]`},
		{`keys ""`, `[""]`},
		{`keys *?`, `[]`},
		{`del ""`, ":1"},
		{"set " + long + " x", "-ERR key or field too long"},
		{"rpush " + long + " x", "-ERR key or field too long"},
		{"hset h " + strings.Repeat("f", bolt.MaxKeySize) + " x", "-ERR key or field too long"},
		{"exists h", ":0"},
	})
}

// checkColls verifies what the hash and list buckets must hold: each
// hash's count matches its fields and order entries, each list's entries
// are exactly positions head..tail-1, and no entry belongs to a key that
// is not a hash or list.
func checkColls(t testing.TB, db *bolt.DB) {
	t.Helper()
	err := db.View(func(tx *bolt.Tx) error {
		owned := map[string]int{} // bucket name -> entries of live keys
		mc := tx.Bucket(bucketMeta).Cursor()
		for dk, v := mc.First(); dk != nil; dk, v = mc.Next() {
			k := dk[1:]
			p := collKey(k)
			count := func(b []byte) int {
				n := 0
				c := tx.Bucket(b).Cursor()
				for ek, _ := c.Seek(p); ek != nil && bytes.HasPrefix(ek, p); ek, _ = c.Next() {
					n++
				}
				owned[string(b)] += n
				return n
			}
			switch Type(v[0]) {
			case TypeHash:
				hm := tx.Bucket(bucketHMeta).Get(dk)
				if len(hm) != 16 {
					t.Errorf("hash %q: no counters", k)
					continue
				}
				want := int(binary.BigEndian.Uint64(hm))
				if f, o := count(bucketHash), count(bucketHOrd); want == 0 || f != want || o != want {
					t.Errorf("hash %q: count %d, %d fields, %d order entries", k, want, f, o)
				}
			case TypeList:
				lm := tx.Bucket(bucketLMeta).Get(dk)
				if len(lm) != 16 {
					t.Errorf("list %q: no positions", k)
					continue
				}
				head, tail := int64(binary.BigEndian.Uint64(lm)), int64(binary.BigEndian.Uint64(lm[8:]))
				l := &list{prefix: p, head: head, tail: tail, b: tx.Bucket(bucketList)}
				if n := count(bucketList); head >= tail || int64(n) != tail-head {
					t.Errorf("list %q: head %d tail %d, %d entries", k, head, tail, n)
				}
				for i := range tail - head {
					if l.b.Get(l.posKey(head+i)) == nil {
						t.Errorf("list %q: no element %d", k, i)
					}
				}
			}
		}
		for _, b := range [][]byte{bucketHash, bucketHOrd, bucketList} {
			if n := tx.Bucket(b).Stats().KeyN; n != owned[string(b)] {
				t.Errorf("%s: %d entries, %d of live keys", b, n, owned[string(b)])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzCollCommands runs lines of space-separated commands (hash, list,
// stream, consumer group and key commands) and checks that nothing panics
// and the buckets stay consistent.
func FuzzCollCommands(f *testing.F) {
	f.Add("rpush l a b c\nlinsert l before b x\nlrem l -1 c\nlmove l l left right\nltrim l 1 -1")
	f.Add("hset h a 1 b 2\nhincrby h a 9223372036854775807\nhdel h a b\nhsetnx h c 3")
	f.Add("lpush l a\npexpire l 1\nlmpop 2 m l right count 5\nset l x\nlpos l a rank -1 count 0")
	f.Add("xadd s 1-0 a b\nxgroup create s g 0\nxreadgroup group g c streams s >\nxdel s 1-0\nxautoclaim s g d 0 0\nxack s g 1-0")
	f.Add("xgroup create s g $ mkstream\nxadd s * f v\nxreadgroup group g c count 1 streams s >\nxclaim s g d 0 0-1 1-0 force\nxgroup delconsumer s g c\nxgroup setid s g 0\ndel s")
	db := mustCollDB(f)
	f.Fuzz(func(t *testing.T, script string) {
		for i, line := range strings.Split(script, "\n") {
			args := strings.Split(line, " ")
			if len(args) > 64 {
				continue
			}
			name := strings.ToLower(args[0])
			if _, ok := Check(bytesArgs(args)); !ok || name == "keys" {
				continue
			}
			collExec(t, db, collNow+int64(i), args...)
		}
		checkColls(t, db)
		checkStreams(t, db)
		checkGroups(t, db)
		collExec(t, db, collNow, "del", "l", "m", "h", "a", "b", "s")
	})
}

func bytesArgs(args []string) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = []byte(a)
	}
	return out
}

func Test_ErrUnknown_CutAsRedis(t *testing.T) {
	long := strings.Repeat("a", 160)
	var many [][]byte
	for i := 1; i <= 40; i++ {
		many = append(many, []byte(fmt.Sprintf("b%d", i)))
	}
	for _, c := range []struct {
		name string
		args [][]byte
		want string
	}{
		{"\x00\x01", nil, "ERR unknown command '', with args beginning with: "},
		{"FOO", [][]byte{[]byte(long)}, "ERR unknown command 'FOO', with args beginning with: '" + long[:128] + "' "},
		{"FOO", many, "ERR unknown command 'FOO', with args beginning with: 'b1' 'b2' 'b3' 'b4' 'b5' 'b6' 'b7' 'b8' 'b9' 'b10' 'b11' 'b12' 'b13' 'b14' 'b15' 'b16' 'b17' 'b18' 'b19' 'b20' 'b21' 'b22' 'b23' "},
		{"a\r\nb", [][]byte{[]byte("x\x00y"), []byte("\xff")}, "ERR unknown command 'a  b', with args beginning with: 'x' '\xff' "},
	} {
		if got := string(ErrUnknown(c.name, c.args).S); got != c.want {
			t.Errorf("ErrUnknown(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}

func Test_Match_EmptyString(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{{"*", "", false}, {"**", "", false}, {"", "", true}, {"*", "a", true}, {"**", "a", true}, {"a**", "a", true}} {
		if got := Match([]byte(c.p), []byte(c.s)); got != c.want {
			t.Errorf("Match(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

// A multi-key write naming a key state.db cannot hold writes none of its
// keys.
func Test_Coll_MultiKeyWriteRefusedWhole(t *testing.T) {
	long := strings.Repeat("k", maxKeyLen+1)
	runCollCases(t, []collCase{
		{"mset a 1 " + long + " 2", "-ERR key or field too long"},
		{"exists a", ":0"},
	})
}
