package kv

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// The replies below are Redis 7.0's, taken from redis-server for the same
// commands in the same order (XREAD's map is RESP3's; RESP2 has an array
// of [key, entries] pairs).
func Test_Stream_Commands(t *testing.T) {
	runCollCases(t, []collCase{
		{`set str x`, `+OK`},
		{`xadd str 1-1 f v`, `-WRONGTYPE Operation against a key holding the wrong kind of value`},
		{`xadd s 1-1 f v`, `"1-1"`},
		{`xadd s 1-1 f v`, `-ERR The ID specified in XADD is equal or smaller than the target stream top item`},
		{`xadd s 1-* g w`, `"1-2"`},
		{`xadd s 2 a 1 b 2`, `"2-0"`},
		{`xadd s 0-0 a b`, `-ERR The ID specified in XADD must be greater than 0-0`},
		{`xadd s 9-x a b`, `-ERR Invalid stream ID specified as stream command argument`},
		{`xadd s - a b`, `-ERR Invalid stream ID specified as stream command argument`},
		{`xadd s 10-1 a`, `-ERR wrong number of arguments for 'xadd' command`},
		{`xadd nos nomkstream 1-1 a b`, `nil`},
		{`exists nos`, `:0`},
		{`xadd s nomkstream 10-1 dup 1 dup 2`, `"10-1"`},
		{`xlen s`, `:4`},
		{`xlen str`, `-WRONGTYPE Operation against a key holding the wrong kind of value`},
		{`xrange s - +`, `[["1-1" ["f" "v"]] ["1-2" ["g" "w"]] ["2-0" ["a" "1" "b" "2"]] ["10-1" ["dup" "1" "dup" "2"]]]`},
		{`xrevrange s + -`, `[["10-1" ["dup" "1" "dup" "2"]] ["2-0" ["a" "1" "b" "2"]] ["1-2" ["g" "w"]] ["1-1" ["f" "v"]]]`},
		{`xrange s (1-1 (10-1`, `[["1-2" ["g" "w"]] ["2-0" ["a" "1" "b" "2"]]]`},
		{`xrevrange s (10-1 (1-1`, `[["2-0" ["a" "1" "b" "2"]] ["1-2" ["g" "w"]]]`},
		{`xrange s - + count 2`, `[["1-1" ["f" "v"]] ["1-2" ["g" "w"]]]`},
		{`xrevrange s + - count 1`, `[["10-1" ["dup" "1" "dup" "2"]]]`},
		{`xrange s - + count 0`, `nilarr`},
		{`xrange nos - + count 0`, `[]`},
		{`xrange str - +`, `-WRONGTYPE Operation against a key holding the wrong kind of value`},
		{`xrange s (18446744073709551615-18446744073709551615 +`, `-ERR invalid start ID for the interval`},
		{`xrange s - (0-0`, `-ERR invalid end ID for the interval`},
		{`xrange s 5 1`, `[]`},
		{`xdel s 1-2 1-2 99-0`, `:1`},
		{`xdel s bad`, `-ERR Invalid stream ID specified as stream command argument`},
		{`xdel nos bad`, `:0`},
		{`xrange s - +`, `[["1-1" ["f" "v"]] ["2-0" ["a" "1" "b" "2"]] ["10-1" ["dup" "1" "dup" "2"]]]`},
		{`xtrim s maxlen 1 limit 5`, `-ERR syntax error, LIMIT cannot be used without the special ~ option`},
		{`xtrim s minid 5 maxlen 1`, `-ERR syntax error, MAXLEN and MINID options at the same time are not compatible`},
		{`xtrim s maxlen -1`, `-ERR The MAXLEN argument must be >= 0.`},
		{`xtrim nos maxlen 1`, `:0`},
		{`xtrim s minid 2-0`, `:1`},
		{`xrange s - +`, `[["2-0" ["a" "1" "b" "2"]] ["10-1" ["dup" "1" "dup" "2"]]]`},
		{`xadd s maxlen = 1 11-0 k v`, `"11-0"`},
		{`xrange s - +`, `[["11-0" ["k" "v"]]]`},
		{`xtrim s maxlen 0`, `:1`},
		{`exists s`, `:1`},
		{`type s`, `+stream`},
		{`xlen s`, `:0`},
		{`xadd s 11-0 k v`, `-ERR The ID specified in XADD is equal or smaller than the target stream top item`},
		{`xadd s 11-* k v`, `"11-1"`},
		{`xadd r1 1-1 a 1`, `"1-1"`},
		{`xadd r1 1-2 b 2`, `"1-2"`},
		{`xadd r2 5-0 x y`, `"5-0"`},
		{`xread streams r1 r2 0 0`, `{"r1" [["1-1" ["a" "1"]] ["1-2" ["b" "2"]]] "r2" [["5-0" ["x" "y"]]]}`},
		{`xread count 1 streams r1 r2 1-1 0`, `{"r1" [["1-2" ["b" "2"]]] "r2" [["5-0" ["x" "y"]]]}`},
		{`xread streams r1 r2 $ $`, `nilarr`},
		{`xread streams nos 0`, `nilarr`},
		{`xread streams r1 str bad 0`, `-ERR Invalid stream ID specified as stream command argument`},
		{`xread streams str r1 0 bad`, `-WRONGTYPE Operation against a key holding the wrong kind of value`},
		{`xread streams r1 r2 0`, `-ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.`},
		{`xread count 1 block 0 streams r1 0`, `{"r1" [["1-1" ["a" "1"]]]}`},
	})
}

// An automatic id is the command's time, or the last id's sequence plus
// one when the time is not past the last id's milliseconds.
func Test_Stream_AutoIDs(t *testing.T) {
	db := mustCollDB(t)
	for i, c := range []struct {
		now       int64
		cmd, want string
	}{
		{collNow, "xadd s * a 1", `"1700000000000-0"`},
		{collNow, "xadd s * a 1", `"1700000000000-1"`},
		{collNow - 5, "xadd s * a 1", `"1700000000000-2"`},
		{collNow + 1, "xadd s * a 1", `"1700000000001-0"`},
		{collNow + 1, "xadd s 1700000000001-* a 1", `"1700000000001-1"`},
		{collNow + 1, "xadd s 1700000000002-* a 1", `"1700000000002-0"`},
		{collNow + 1, "xadd s * a 1", `"1700000000002-1"`},
		{collNow + 1, "xadd s 5-* a 1", "-ERR The ID specified in XADD is equal or smaller than the target stream top item"},
		{collNow + 1, "xadd s 1700000000002-18446744073709551615 a 1", `"1700000000002-18446744073709551615"`},
		{collNow + 1, "xadd s 1700000000002-* a 1", "-ERR The ID specified in XADD is equal or smaller than the target stream top item"},
		{collNow + 1, "xadd s * a 1", `"1700000000003-0"`},
		{collNow + 1, "xadd s maxlen = 2 * a 1", `"1700000000003-1"`},
		{collNow + 1, "xlen s", ":2"},
		{collNow + 1, "xrange s - + count 1", `[["1700000000003-0" ["a" "1"]]]`},
	} {
		if got := show(collExec(t, db, c.now, splitCmd(c.cmd)...)); got != c.want {
			t.Errorf("%d: %s = %s, want %s", i, c.cmd, got, c.want)
		}
	}
	checkStreams(t, db)
}

// Redis trims whole nodes with "~"; mcpd trims exactly, up to LIMIT
// entries.
func Test_Stream_ApproxTrimIsExact(t *testing.T) {
	runCollCases(t, []collCase{
		{"xadd s 1 a 1", `"1-0"`},
		{"xadd s 2 a 1", `"2-0"`},
		{"xadd s 3 a 1", `"3-0"`},
		{"xadd s 4 a 1", `"4-0"`},
		{"xtrim s maxlen ~ 0 limit 1", ":1"},
		{"xtrim s minid ~ 4", ":2"},
		{"xrange s - +", `[["4-0" ["a" "1"]]]`},
	})
}

// A stream's entry key holds its key and a 16-byte id.
func Test_Stream_KeyLimit(t *testing.T) {
	runCollCases(t, []collCase{
		{"xadd " + strings.Repeat("k", bolt.MaxKeySize-20) + " 1-1 a b", `"1-1"`},
		{"xadd " + strings.Repeat("k", bolt.MaxKeySize-19) + " 1-1 a b", "-ERR key or field too long"},
		{"xadd " + strings.Repeat("k", bolt.MaxKeySize-19) + " nomkstream 1-1 a b", "-ERR key or field too long"},
		{"xlen " + strings.Repeat("k", bolt.MaxKeySize-19), ":0"},
	})
}

// DEL and expiry remove a stream's entries and counters; an emptied
// stream stays.
func Test_Stream_DelAndExpiry(t *testing.T) {
	db := mustCollDB(t)
	do := func(now int64, cmd, want string) {
		t.Helper()
		if got := show(collExec(t, db, now, splitCmd(cmd)...)); got != want {
			t.Errorf("%s = %s, want %s", cmd, got, want)
		}
	}
	do(collNow, "xadd a 1-1 f v", `"1-1"`)
	do(collNow, "xadd a 1-2 f v", `"1-2"`)
	do(collNow, "xadd b 1-1 f v", `"1-1"`)
	do(collNow, "xdel b 1-1", ":1")
	do(collNow, "type b", "+stream")
	do(collNow, "xadd b 1-1 f v", "-ERR The ID specified in XADD is equal or smaller than the target stream top item")
	do(collNow, "xadd c 1-1 f v", `"1-1"`)
	do(collNow, "pexpire c 10", ":1")
	checkStreams(t, db)
	do(collNow, "del a b", ":2")
	do(collNow+5, "xlen c", ":1")
	do(collNow+10, "xlen c", ":0")
	if err := db.Update(func(tx *bolt.Tx) error { return Expire(tx, collNow+10, 10) }); err != nil {
		t.Fatal(err)
	}
	err := db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketExp, bucketStream, bucketXMeta} {
			if n := tx.Bucket(b).Stats().KeyN; n != 0 {
				t.Errorf("%s: %d entries left", b, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	do(collNow, "xadd b 1-1 f v", `"1-1"`)
}

// The same commands at the same times leave two stores byte-identical.
func Test_Stream_Deterministic(t *testing.T) {
	dbs := []*bolt.DB{mustCollDB(t), mustCollDB(t)}
	rng := rand.New(rand.NewSource(7))
	var script [][]string
	now := collNow
	for range 2000 {
		now += int64(rng.Intn(3)) - 1
		key := fmt.Sprint("s", rng.Intn(3))
		var cmd string
		switch rng.Intn(8) {
		case 0, 1, 2:
			cmd = "xadd " + key + " * f " + fmt.Sprint(rng.Intn(100))
		case 3:
			cmd = fmt.Sprintf("xadd %s %d-* f v", key, now+int64(rng.Intn(3)))
		case 4:
			cmd = fmt.Sprintf("xadd %s maxlen = %d * f v", key, rng.Intn(20))
		case 5:
			cmd = fmt.Sprintf("xdel %s %d-%d", key, now-int64(rng.Intn(3)), rng.Intn(3))
		case 6:
			cmd = fmt.Sprintf("xtrim %s minid ~ %d limit 3", key, now-int64(rng.Intn(5)))
		case 7:
			cmd = "pexpire " + key + " " + fmt.Sprint(rng.Intn(50))
		}
		script = append(script, append([]string{fmt.Sprint(now)}, strings.Split(cmd, " ")...))
	}
	var replies [2][]string
	for i, db := range dbs {
		for _, line := range script {
			var at int64
			fmt.Sscan(line[0], &at)
			replies[i] = append(replies[i], show(collExec(t, db, at, line[1:]...)))
			if err := db.Update(func(tx *bolt.Tx) error { return Expire(tx, at, 10) }); err != nil {
				t.Fatal(err)
			}
		}
		checkStreams(t, db)
	}
	for j := range replies[0] {
		if replies[0][j] != replies[1][j] {
			t.Fatalf("reply %d: %s and %s", j, replies[0][j], replies[1][j])
		}
	}
	if a, b := dumpBuckets(t, dbs[0]), dumpBuckets(t, dbs[1]); !bytes.Equal(a, b) {
		t.Fatal("the two stores differ")
	}
}

// checkStreams verifies each stream's counters against its entries, and
// that no entry belongs to a key that is not a stream.
func checkStreams(t testing.TB, db *bolt.DB) {
	t.Helper()
	err := db.View(func(tx *bolt.Tx) error {
		owned := 0
		c := &ctx{tx: tx, now: 0}
		mc := tx.Bucket(bucketMeta).Cursor()
		for dk, v := mc.First(); dk != nil; dk, v = mc.Next() {
			if Type(v[0]) != TypeStream {
				continue
			}
			s, _ := c.openStream(bytes.Clone(dk[1:]), false)
			if s == nil {
				continue
			}
			var ids []streamID
			cur := s.b.Cursor()
			for k, _ := cur.Seek(s.prefix); k != nil && bytes.HasPrefix(k, s.prefix); k, _ = cur.Next() {
				ids = append(ids, readID(k[len(s.prefix):]))
			}
			owned += len(ids)
			if uint64(len(ids)) != s.length || s.added < s.length {
				t.Errorf("stream %q: length %d added %d, %d entries", dk[1:], s.length, s.added, len(ids))
			}
			if len(ids) > 0 && (ids[0] != s.first || ids[len(ids)-1].cmp(s.last) > 0) {
				t.Errorf("stream %q: first %v last %v, entries %v..%v", dk[1:], s.first, s.last, ids[0], ids[len(ids)-1])
			}
			if len(ids) == 0 && s.first != (streamID{}) {
				t.Errorf("stream %q: empty with first %v", dk[1:], s.first)
			}
		}
		if n := tx.Bucket(bucketStream).Stats().KeyN; n != owned {
			t.Errorf("%s: %d entries, %d of live streams", bucketStream, n, owned)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func Test_ParseStreamID(t *testing.T) {
	for _, c := range []struct {
		arg    string
		strict bool
		want   streamID
		wantOK bool
	}{
		{"1-2", true, streamID{1, 2}, true},
		{"5", true, streamID{5, 0}, true},
		{"007-01", true, streamID{7, 1}, true},
		{" 8", true, streamID{8, 0}, true},
		{"+9-+1", true, streamID{9, 1}, true},
		{"18446744073709551615-18446744073709551615", true, maxStreamID, true},
		{"18446744073709551616", true, streamID{}, false},
		{"1--1", true, streamID{}, false},
		{"-", true, streamID{}, false},
		{"-", false, streamID{}, true},
		{"+", false, maxStreamID, true},
		{"", true, streamID{}, false},
		{"1-", true, streamID{}, false},
		{"1-2\x00junk", true, streamID{1, 2}, true},
		{strings.Repeat("1", 128), true, streamID{}, false},
	} {
		id, _, ok := parseStreamID([]byte(c.arg), 0, c.strict, false)
		if ok != c.wantOK || (ok && id != c.want) {
			t.Errorf("parseStreamID(%q) = %v %v, want %v %v", c.arg, id, ok, c.want, c.wantOK)
		}
	}
}

func Test_XReadKeys(t *testing.T) {
	for _, c := range []struct{ cmd, want string }{
		{"xread streams a b 0 0", "a b"},
		{"xread count 1 block 0 streams a 0", "a"},
		{"xread count streams a 0", ""},
		{"xread streams a b 0", ""},
	} {
		keys, whole := KeysOf(bytesArgs(strings.Split(c.cmd, " ")))
		var got []string
		for _, k := range keys {
			got = append(got, string(k))
		}
		if whole || strings.Join(got, " ") != c.want {
			t.Errorf("KeysOf(%s) = %q %v, want %q", c.cmd, got, whole, c.want)
		}
	}
}
