package kv

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// The replies below are Redis 7.0's, taken from redis-server for the same
// commands in the same order.
func Test_List_Commands(t *testing.T) {
	runCollCases(t, []collCase{
		{"set s x", "+OK"},
		{"lmpop 2 nol s left", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"rpush l a b c d e", ":5"},
		{"lmpop 2 s l left", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lrange l 0 -1", "[\"a\" \"b\" \"c\" \"d\" \"e\"]"},
		{"lrange l -100 100", "[\"a\" \"b\" \"c\" \"d\" \"e\"]"},
		{"lrange l 3 1", "[]"},
		{"lrange l x 1", "-ERR value is not an integer or out of range"},
		{"lrange nol 0 -1", "[]"},
		{"lrange s 0 -1", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lrange l -9223372036854775808 9223372036854775807", "[\"a\" \"b\" \"c\" \"d\" \"e\"]"},
		{"lrange l 9223372036854775807 -9223372036854775808", "[]"},
		{"lindex l -1", "\"e\""},
		{"lindex l 10", "nil"},
		{"lindex l x", "-ERR value is not an integer or out of range"},
		{"lindex nol 0", "nil"},
		{"lindex nol x", "nil"},
		{"lindex s x", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lset nol 0 x", "-ERR no such key"},
		{"lset nol x x", "-ERR no such key"},
		{"lset l 10 x", "-ERR index out of range"},
		{"lset l x x", "-ERR value is not an integer or out of range"},
		{"lset s 0 x", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lset l -1 z", "+OK"},
		{"lset l -5 first", "+OK"},
		{"lrange l 0 -1", "[\"first\" \"b\" \"c\" \"d\" \"z\"]"},
		{"lrem l 0 a", ":0"},
		{"lrem l x a", "-ERR value is not an integer or out of range"},
		{"lrem nol 1 a", ":0"},
		{"lrem s x a", "-ERR value is not an integer or out of range"},
		{"ltrim l 1 0", "+OK"},
		{"exists l", ":0"},
		{"rpush l a b c", ":3"},
		{"ltrim l x 0", "-ERR value is not an integer or out of range"},
		{"ltrim nol 0 1", "+OK"},
		{"ltrim nol x 1", "-ERR value is not an integer or out of range"},
		{"ltrim s 0 1", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"linsert l middle b x", "-ERR syntax error"},
		{"linsert l before z x", ":-1"},
		{"linsert nol before z x", ":0"},
		{"linsert s before z x", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"linsert l after b x", ":4"},
		{"lrange l 0 -1", "[\"a\" \"b\" \"x\" \"c\"]"},
		{"linsert l BEFORE a y", ":5"},
		{"linsert l after c w", ":6"},
		{"linsert l before w v", ":7"},
		{"lrange l 0 -1", "[\"y\" \"a\" \"b\" \"x\" \"c\" \"v\" \"w\"]"},
		{"lmove l l left right", "\"y\""},
		{"lrange l 0 -1", "[\"a\" \"b\" \"x\" \"c\" \"v\" \"w\" \"y\"]"},
		{"lmove l l up right", "-ERR syntax error"},
		{"lmove nol l left right", "nil"},
		{"lmove nol s left right", "nil"},
		{"lmove l s left right", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lmove s l left right", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"rpoplpush l new", "\"y\""},
		{"lrange new 0 -1", "[\"y\"]"},
		{"lmove l new RIGHT right", "\"w\""},
		{"lrange new 0 -1", "[\"y\" \"w\"]"},
		{"lpushx nol a", ":0"},
		{"rpushx l", "-ERR wrong number of arguments for 'rpushx' command"},
		{"rpushx s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lpushx l p q", ":7"},
		{"rpushx l r s", ":9"},
		{"lrange l 0 -1", "[\"q\" \"p\" \"a\" \"b\" \"x\" \"c\" \"v\" \"r\" \"s\"]"},
		{"lpush s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"llen s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"llen nol", ":0"},
		{"llen l", ":9"},
		{"del l new", ":2"},
		{"rpush l a b a c a d a", ":7"},
		{"lrem l 2 a", ":2"},
		{"lrange l 0 -1", "[\"b\" \"c\" \"a\" \"d\" \"a\"]"},
		{"lrem l -1 a", ":1"},
		{"lrange l 0 -1", "[\"b\" \"c\" \"a\" \"d\"]"},
		{"rpush l a a a", ":7"},
		{"lrem l -9223372036854775808 a", ":4"},
		{"lrange l 0 -1", "[\"b\" \"c\" \"d\"]"},
		{"del l", ":1"},
		{"rpush l a b a c a", ":5"},
		{"lpos l a", ":0"},
		{"lpos l a rank 2", ":2"},
		{"lpos l a rank -1", ":4"},
		{"lpos l a rank -2 count 2", "[:2 :0]"},
		{"lpos l a count 0", "[:0 :2 :4]"},
		{"lpos l a count 2 rank 2", "[:2 :4]"},
		{"lpos l a maxlen 2 count 0", "[:0]"},
		{"lpos l a maxlen 2 count 0 rank -1", "[:4]"},
		{"lpos l a rank -9223372036854775808", ":4"},
		{"lpos l a rank -9223372036854775808 count 1", "[:4 :2 :0]"},
		{"lpos l a rank 9223372036854775807", "nil"},
		{"lpos l a rank 9223372036854775807 count 0", "[]"},
		{"lpos l z count 0", "[]"},
		{"lpos l z", "nil"},
		{"lpos nol a count 0", "[]"},
		{"lpos nol a", "nil"},
		{"lpos l a rank 0", "-ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list"},
		{"lpos l a count -1", "-ERR COUNT can't be negative"},
		{"lpos l a maxlen -1", "-ERR MAXLEN can't be negative"},
		{"lpos l a foo", "-ERR syntax error"},
		{"lpos l a rank", "-ERR syntax error"},
		{"lpos s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lpos s a rank 0", "-ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list"},
		{"lpos l a RANK", "-ERR syntax error"},
		{"lpos l a count x", "-ERR COUNT can't be negative"},
		{"lpos l a maxlen x", "-ERR MAXLEN can't be negative"},
		{"lpos l a rank x", "-ERR value is not an integer or out of range"},
		{"lpop l 0", "[]"},
		{"lpop nol 0", "nilarr"},
		{"lpop nol", "nil"},
		{"lpop l -1", "-ERR value is out of range, must be positive"},
		{"lpop l abc", "-ERR value is out of range, must be positive"},
		{"lpop l 1 2", "-ERR wrong number of arguments for 'lpop' command"},
		{"lpop s 0", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lpop s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"lpop s -1", "-ERR value is out of range, must be positive"},
		{"lpop l 01", "-ERR value is out of range, must be positive"},
		{"lpop l -0", "-ERR value is out of range, must be positive"},
		{"lpop l 9223372036854775808", "-ERR value is out of range, must be positive"},
		{"lpop l 2", "[\"a\" \"b\"]"},
		{"rpop l 5", "[\"a\" \"c\" \"a\"]"},
		{"exists l", ":0"},
		{"lmpop 1 nol left", "nilarr"},
		{"lmpop 0 nol left", "-ERR numkeys should be greater than 0"},
		{"lmpop -1 nol left", "-ERR numkeys should be greater than 0"},
		{"lmpop 2 nol left", "-ERR syntax error"},
		{"lmpop 1 nol middle", "-ERR syntax error"},
		{"lmpop 1 nol left count 0", "-ERR count should be greater than 0"},
		{"lmpop 1 nol left count -1", "-ERR count should be greater than 0"},
		{"lmpop 1 nol left count 1 count 2", "-ERR syntax error"},
		{"lmpop 1 nol left foo", "-ERR syntax error"},
		{"lmpop 1 nol left count", "-ERR syntax error"},
		{"lmpop x nol left", "-ERR numkeys should be greater than 0"},
		{"lmpop 99999999999999999999 nol left", "-ERR numkeys should be greater than 0"},
		{"lmpop 9223372036854775807 nol left", "-ERR syntax error"},
		{"rpush l2 1 2 3", ":3"},
		{"lmpop 2 nol l2 right count 2", "[\"l2\" [\"3\" \"2\"]]"},
		{"lmpop 2 nol l2 right count 5", "[\"l2\" [\"1\"]]"},
		{"rpush l3 x", ":1"},
		{"lmpop 1 l3 LEFT", "[\"l3\" [\"x\"]]"},
		{"lmpop 1 s left count 0", "-ERR count should be greater than 0"},
		{"lpush e1 a b c", ":3"},
		{"rpush e1 d", ":4"},
		{"lrange e1 0 -1", "[\"c\" \"b\" \"a\" \"d\"]"},
		{"lpop e1", "\"c\""},
		{"rpop e1", "\"d\""},
		{"lpop e1 5", "[\"b\" \"a\"]"},
		{"type e1", "+none"},
	})
}

// LINSERT moves the shorter side; either way the order is the same.
func Test_List_InsertBothSides(t *testing.T) {
	runCollCases(t, []collCase{
		{"rpush l a b c d e f", ":6"},
		{"linsert l before b x", ":7"},
		{"linsert l after e y", ":8"},
		{"linsert l before a h", ":9"},
		{"linsert l after f t", ":10"},
		{"lrange l 0 -1", `["h" "a" "x" "b" "c" "d" "e" "y" "f" "t"]`},
		{"lpush l p", ":11"},
		{"rpush l q", ":12"},
		{"lrange l 0 -1", `["p" "h" "a" "x" "b" "c" "d" "e" "y" "f" "t" "q"]`},
		{"lindex l 11", `"q"`},
		{"lindex l -12", `"p"`},
		{"ltrim l 2 -3", "+OK"},
		{"lrange l 0 -1", `["a" "x" "b" "c" "d" "e" "y" "f"]`},
		{"ltrim l -3 100", "+OK"},
		{"lrange l 0 -1", `["e" "y" "f"]`},
		{"ltrim l 5 10", "+OK"},
		{"exists l", ":0"},
	})
}

// randomCollCmds is a fixed pseudo-random mix of hash and list commands
// over a few keys, some of them expiring.
func randomCollCmds(n int) [][]string {
	r := rand.New(rand.NewSource(1))
	keys := []string{"a", "b", "a\x00", ""}
	v := func() string { return string(rune('a' + r.Intn(4))) }
	num := func() string { return fmt.Sprint(r.Intn(11) - 5) }
	var out [][]string
	for range n {
		k, k2 := keys[r.Intn(len(keys))], keys[r.Intn(len(keys))]
		var c []string
		switch r.Intn(14) {
		case 0:
			c = []string{"rpush", "l" + k, v(), v()}
		case 1:
			c = []string{"lpush", "l" + k, v()}
		case 2:
			c = []string{"linsert", "l" + k, "before", v(), v()}
		case 3:
			c = []string{"lrem", "l" + k, num(), v()}
		case 4:
			c = []string{"ltrim", "l" + k, num(), num()}
		case 5:
			c = []string{"lmove", "l" + k, "l" + k2, "left", "right"}
		case 6:
			c = []string{"lpop", "l" + k, fmt.Sprint(r.Intn(3))}
		case 7:
			c = []string{"lset", "l" + k, num(), v()}
		case 8:
			c = []string{"hset", "h" + k, v(), num(), v(), v()}
		case 9:
			c = []string{"hdel", "h" + k, v()}
		case 10:
			c = []string{"hincrby", "h" + k, v(), num()}
		case 11:
			c = []string{"pexpire", "h" + k, fmt.Sprint(r.Intn(50))}
		case 12:
			c = []string{"pexpire", "l" + k, fmt.Sprint(r.Intn(50))}
		default:
			c = []string{"set", "l" + k, v()}
		}
		out = append(out, c)
	}
	return out
}

func dumpBuckets(t *testing.T, db *bolt.DB) []byte {
	var buf bytes.Buffer
	if err := db.View(func(tx *bolt.Tx) error {
		for _, name := range Buckets {
			fmt.Fprintf(&buf, "%s\n", name)
			if err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				fmt.Fprintf(&buf, "%x %x\n", k, v)
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Two nodes applying the same commands at the same times hold the same
// bytes and give the same replies.
func Test_Coll_Deterministic(t *testing.T) {
	db1, db2 := mustCollDB(t), mustCollDB(t)
	for i, c := range randomCollCmds(2000) {
		now := collNow + int64(i)*3
		r1, r2 := show(collExec(t, db1, now, c...)), show(collExec(t, db2, now, c...))
		if r1 != r2 {
			t.Fatalf("%v: %s and %s", c, r1, r2)
		}
		if err := db1.Update(func(tx *bolt.Tx) error { return Expire(tx, now, 100) }); err != nil {
			t.Fatal(err)
		}
		if err := db2.Update(func(tx *bolt.Tx) error { return Expire(tx, now, 100) }); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			checkColls(t, db1)
		}
	}
	checkColls(t, db1)
	if d1, d2 := dumpBuckets(t, db1), dumpBuckets(t, db2); !bytes.Equal(d1, d2) {
		t.Fatal("the two state files differ")
	}
}

// Deleting, expiring or overwriting a hash or list leaves nothing of it.
func Test_Coll_NothingLeft(t *testing.T) {
	db := mustCollDB(t)
	for i, c := range randomCollCmds(1000) {
		collExec(t, db, collNow+int64(i), c...)
	}
	late := collNow + 10_000
	if err := db.Update(func(tx *bolt.Tx) error { return Expire(tx, late, 1<<20) }); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "a\x00", ""} {
		collExec(t, db, late, "set", "h"+k, "x")
		collExec(t, db, late, "del", "l"+k, "h"+k)
	}
	want := ""
	for _, name := range Buckets {
		want += string(name) + "\n"
	}
	if got := string(dumpBuckets(t, db)); got != want {
		t.Fatalf("left behind:\n%s", got)
	}
}
