package kv

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Replies that depend on time (idle times, delivery times, min-idle
// selections) at controlled command times; the differential test covers
// the rest against redis-server.
func Test_Group_Times(t *testing.T) {
	db := mustCollDB(t)
	do := func(now int64, cmd, want string) {
		t.Helper()
		if got := show(collExec(t, db, now, splitCmd(cmd)...)); got != want {
			t.Errorf("at +%d %s =\n  %s\nwant\n  %s", now-collNow, cmd, got, want)
		}
	}
	t0 := collNow
	do(t0, "xadd s 1-0 a 1", `"1-0"`)
	do(t0, "xadd s 2-0 b 2", `"2-0"`)
	do(t0, "xadd s 3-0 c 3", `"3-0"`)
	do(t0, "xgroup create s g 0", `+OK`)
	do(t0, "xreadgroup group g alice count 2 streams s >", `{"s" [["1-0" ["a" "1"]] ["2-0" ["b" "2"]]]}`)
	do(t0+100, "xreadgroup group g bob streams s >", `{"s" [["3-0" ["c" "3"]]]}`)
	do(t0+250, "xpending s g - + 10", `[["1-0" "alice" :250 :1] ["2-0" "alice" :250 :1] ["3-0" "bob" :150 :1]]`)
	do(t0+250, "xpending s g idle 200 - + 10", `[["1-0" "alice" :250 :1] ["2-0" "alice" :250 :1]]`)
	do(t0+250, "xpending s g idle 200 - + 10 bob", `[]`)
	do(t0+250, "xinfo consumers s g", `[{"name" "alice" "pending" :2 "idle" :250} {"name" "bob" "pending" :1 "idle" :150}]`)
	// Re-reading history counts a delivery and resets the idle time.
	do(t0+300, "xreadgroup group g alice streams s 0", `{"s" [["1-0" ["a" "1"]] ["2-0" ["b" "2"]]]}`)
	do(t0+300, "xpending s g - + 1", `[["1-0" "alice" :0 :2]]`)
	// XCLAIM takes only entries idle long enough.
	do(t0+350, "xclaim s g carol 100 1-0 3-0 justid", `["3-0"]`)
	do(t0+350, "xpending s g - + 10", `[["1-0" "alice" :50 :2] ["2-0" "alice" :50 :2] ["3-0" "carol" :0 :1]]`)
	do(t0+350, "xclaim s g carol 0 1-0 idle 1000 retrycount 7", `[["1-0" ["a" "1"]]]`)
	do(t0+350, "xpending s g - + 1", `[["1-0" "carol" :1000 :7]]`)
	do(t0+350, "xclaim s g carol 0 2-0 time 5", `[["2-0" ["b" "2"]]]`)
	do(t0+350, "xpending s g 2-0 2-0 1", fmt.Sprintf(`[["2-0" "carol" :%d :3]]`, t0+350-5))
	// XAUTOCLAIM: only 1-0 and 2-0 are idle 300 ms; the scan goes on from
	// the entry after the last one it looked at.
	do(t0+650, "xautoclaim s g dave 300 0 count 1", `["2-0" [["1-0" ["a" "1"]]] []]`)
	do(t0+650, "xautoclaim s g dave 300 2-0 count 1 justid", `["3-0" ["2-0"] []]`)
	do(t0+650, "xautoclaim s g dave 300 3-0", `["0-0" [["3-0" ["c" "3"]]] []]`)
	do(t0+650, "xpending s g", `[:3 "1-0" "3-0" [["dave" "3"]]]`)
	do(t0+700, "xinfo stream s full count 1",
		`{"length" :3 "radix-tree-keys" :1 "radix-tree-nodes" :2 "last-generated-id" "3-0" "max-deleted-entry-id" "0-0" "entries-added" :3 "recorded-first-entry-id" "1-0" `+
			`"entries" [["1-0" ["a" "1"]]] "groups" [{"name" "g" "last-delivered-id" "3-0" "entries-read" :3 "lag" :0 "pel-count" :3 "pending" [["1-0" "dave" :`+fmt.Sprint(t0+650)+` :8]] `+
			`"consumers" [{"name" "alice" "seen-time" :`+fmt.Sprint(t0+300)+` "pel-count" :0 "pending" []} {"name" "bob" "seen-time" :`+fmt.Sprint(t0+100)+` "pel-count" :0 "pending" []} `+
			`{"name" "carol" "seen-time" :`+fmt.Sprint(t0+350)+` "pel-count" :0 "pending" []} {"name" "dave" "seen-time" :`+fmt.Sprint(t0+650)+` "pel-count" :3 "pending" [["1-0" :`+fmt.Sprint(t0+650)+` :8]]}]}]}`)
	checkGroups(t, db)
}

// A group's and a consumer's names go into entry keys with the stream's
// key: a write that would not fit is refused before anything is stored.
func Test_Group_KeyLimit(t *testing.T) {
	long := strings.Repeat("g", bolt.MaxKeySize)
	runCollCases(t, []collCase{
		{"xadd s 1-0 a 1", `"1-0"`},
		{"xgroup create s " + long + " 0", "-ERR key or field too long"},
		{"xgroup create s g 0", "+OK"},
		{"xreadgroup group g " + long + " streams s >", "-ERR key or field too long"},
		{"xgroup createconsumer s g " + long, "-ERR key or field too long"},
		{"xinfo groups s", `[{"name" "g" "consumers" :0 "pending" :0 "last-delivered-id" "0-0" "entries-read" nil "lag" :1}]`},
		{"xgroup create " + strings.Repeat("k", bolt.MaxKeySize-25) + " g 0 mkstream", "-ERR key or field too long"},
	})
}

func Test_Group_KeysOf(t *testing.T) {
	for _, c := range []struct{ cmd, want string }{
		{"xreadgroup group g c streams a b > >", "a b"},
		{"xreadgroup group streams c count 1 streams a 0", "a"},
		{"xreadgroup group g c noack block 0 streams a >", "a"},
		{"xreadgroup group g c streams a b >", ""},
		{"xgroup create s g $", "s"},
		{"xinfo consumers s g", "s"},
		{"xack s g 1-0", "s"},
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

// Deleting or expiring a stream takes its groups with it; a stream made
// again under the name has none.
func Test_Group_GoWithTheStream(t *testing.T) {
	db := mustCollDB(t)
	for _, cmd := range []string{
		"xadd a 1-0 f v", "xgroup create a g 0", "xreadgroup group g c streams a >",
		"xadd b 1-0 f v", "xgroup create b g 0", "xreadgroup group g c streams b >", "pexpire b 10",
		"del a",
	} {
		collExec(t, db, collNow, splitCmd(cmd)...)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return Expire(tx, collNow+10, 10) }); err != nil {
		t.Fatal(err)
	}
	err := db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketXGroup, bucketXPEL, bucketXCons, bucketXCPEL} {
			if n := tx.Bucket(b).Stats().KeyN; n != 0 {
				t.Errorf("%s: %d entries left", b, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	collExec(t, db, collNow, "xadd", "a", "2-0", "f", "v")
	if got := show(collExec(t, db, collNow, "xinfo", "groups", "a")); got != "[]" {
		t.Errorf("a new stream has groups: %s", got)
	}
}

// The same group commands at the same times leave two stores
// byte-identical, and every count matches the entries it counts.
func Test_Group_Deterministic(t *testing.T) {
	dbs := []*bolt.DB{mustCollDB(t), mustCollDB(t)}
	rng := rand.New(rand.NewSource(11))
	var script [][]string
	now := collNow
	for range 3000 {
		now += int64(rng.Intn(20))
		key := fmt.Sprint("s", rng.Intn(2))
		grp := fmt.Sprint("g", rng.Intn(2))
		who := fmt.Sprint("c", rng.Intn(3))
		id := fmt.Sprintf("%d-%d", now-int64(rng.Intn(200)), rng.Intn(2))
		var cmd string
		switch rng.Intn(14) {
		case 0, 1:
			cmd = "xadd " + key + " * f " + fmt.Sprint(rng.Intn(100))
		case 2:
			cmd = "xgroup create " + key + " " + grp + " 0 mkstream"
		case 3, 4:
			cmd = fmt.Sprintf("xreadgroup group %s %s count %d streams %s >", grp, who, rng.Intn(4), key)
		case 5:
			cmd = fmt.Sprintf("xreadgroup group %s %s count 2 streams %s 0", grp, who, key)
		case 6:
			cmd = "xack " + key + " " + grp + " " + id
		case 7:
			cmd = fmt.Sprintf("xclaim %s %s %s %d %s", key, grp, who, rng.Intn(100), id)
		case 8:
			cmd = fmt.Sprintf("xautoclaim %s %s %s %d 0 count 3", key, grp, who, rng.Intn(100))
		case 9:
			cmd = "xdel " + key + " " + id
		case 10:
			cmd = "xgroup delconsumer " + key + " " + grp + " " + who
		case 11:
			cmd = fmt.Sprintf("xgroup setid %s %s %s", key, grp, id)
		case 12:
			cmd = "xgroup destroy " + key + " " + grp
		case 13:
			cmd = "xtrim " + key + " maxlen 5"
		}
		script = append(script, append([]string{fmt.Sprint(now)}, strings.Split(cmd, " ")...))
	}
	var replies [2][]string
	for i, db := range dbs {
		for _, line := range script {
			var at int64
			fmt.Sscan(line[0], &at)
			replies[i] = append(replies[i], show(collExec(t, db, at, line[1:]...)))
		}
		checkGroups(t, db)
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
	pending := 0
	for _, r := range replies[0] {
		if strings.HasPrefix(r, `{"s`) {
			pending++
		}
	}
	if pending == 0 {
		t.Fatal("the script delivered nothing: it tests nothing")
	}
}

// checkGroups verifies every group's counts against its PEL and
// consumers, each PEL entry against its consumer's index, and that no
// group entry belongs to a key that is not a stream.
func checkGroups(t testing.TB, db *bolt.DB) {
	t.Helper()
	err := db.View(func(tx *bolt.Tx) error {
		owned := map[string]int{}
		c := &ctx{tx: tx, now: 0}
		mc := tx.Bucket(bucketMeta).Cursor()
		for dk, v := mc.First(); dk != nil; dk, v = mc.Next() {
			if Type(v[0]) != TypeStream {
				continue
			}
			s, _ := c.openStream(bytes.Clone(dk[1:]), false)
			names := s.groupNames()
			owned[string(bucketXGroup)] += len(names)
			for _, name := range names {
				g := s.group(name)
				var pel int64
				perConsumer := map[string]int64{}
				g.pelFrom(nil, streamID{}, func(id streamID, n nack) bool {
					pel++
					perConsumer[string(n.consumer)]++
					if tx.Bucket(bucketXCPEL).Get(id.append(g.cpelPrefix(n.consumer))) == nil {
						t.Errorf("%q/%q: %v of %q not in its consumer's PEL", dk[1:], name, id, n.consumer)
					}
					return true
				})
				cons := g.consumerNames()
				var cpel int64
				for _, cn := range cons {
					cr, _ := g.consumerOf(cn)
					if cr.pending != perConsumer[string(cn)] {
						t.Errorf("%q/%q consumer %q: pending %d, %d entries", dk[1:], name, cn, cr.pending, perConsumer[string(cn)])
					}
					delete(perConsumer, string(cn))
					g.pelFrom(cn, streamID{}, func(streamID, nack) bool { cpel++; return true })
				}
				if len(perConsumer) != 0 {
					t.Errorf("%q/%q: entries of unknown consumers %v", dk[1:], name, perConsumer)
				}
				if g.pending != pel || cpel != pel || g.consumers != int64(len(cons)) {
					t.Errorf("%q/%q: pending %d consumers %d; %d PEL entries, %d indexed, %d consumers", dk[1:], name, g.pending, g.consumers, pel, cpel, len(cons))
				}
				owned[string(bucketXPEL)] += int(pel)
				owned[string(bucketXCPEL)] += int(cpel)
				owned[string(bucketXCons)] += len(cons)
			}
		}
		for _, b := range [][]byte{bucketXGroup, bucketXPEL, bucketXCons, bucketXCPEL} {
			if n := tx.Bucket(b).Stats().KeyN; n != owned[string(b)] {
				t.Errorf("%s: %d entries, %d of live groups", b, n, owned[string(b)])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
