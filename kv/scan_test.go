package kv

import (
	"fmt"
	"testing"
)

// scanAll runs a whole SCAN iteration and returns how often each key came
// back; between calls it runs between(call).
func scanAll(t *testing.T, c func(args ...string) Value, between func(call int), extra ...string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	cursor := "0"
	for call := 0; ; call++ {
		if call > 10000 {
			t.Fatal("SCAN does not end")
		}
		v := c(append([]string{"SCAN", cursor}, extra...)...)
		if v.K != Array || len(v.A) != 2 {
			t.Fatalf("SCAN reply %s", show(v))
		}
		for _, k := range v.A[1].A {
			seen[string(k.S)]++
		}
		cursor = string(v.A[0].S)
		if cursor == "0" {
			return seen
		}
		if between != nil {
			between(call)
		}
	}
}

func TestScan(t *testing.T) {
	db := mustCollDB(t)
	c := func(args ...string) Value { return collExec(t, db, 1000, args...) }
	// Keys that share long prefixes, so cursors (seven bytes of a key)
	// fall between keys with the same prefix; the empty key sorts first.
	var all []string
	for i := range 300 {
		all = append(all, fmt.Sprintf("session:user:%05d", i))
	}
	all = append(all, "", "a", "b:1", "zz")
	for _, k := range all {
		c("SET", k, "v")
	}
	c("RPUSH", "list:1", "x")
	c("SET", "gone", "v", "PXAT", "500") // expired at time 1000

	for _, count := range []string{"1", "7", "10", "1000"} {
		seen := scanAll(t, c, nil, "COUNT", count)
		for _, k := range all {
			if seen[k] == 0 {
				t.Fatalf("COUNT %s: key %q never returned", count, k)
			}
		}
		if seen["gone"] != 0 {
			t.Fatalf("an expired key was returned")
		}
	}
	if seen := scanAll(t, c, nil, "MATCH", "session:*", "COUNT", "50"); len(seen) != 300 {
		t.Fatalf("MATCH session:*: %d keys", len(seen))
	}
	if seen := scanAll(t, c, nil, "TYPE", "list"); len(seen) != 1 || seen["list:1"] != 1 {
		t.Fatalf("TYPE list: %v", seen)
	}
	// Keys deleted and added during the scan: every key present
	// throughout is returned.
	deleted := map[string]bool{}
	seen := scanAll(t, c, func(call int) {
		k := all[(call*37)%300]
		if !deleted[k] && k != all[0] {
			c("DEL", k)
			deleted[k] = true
		}
		c("SET", fmt.Sprintf("new:%d", call), "v")
	}, "COUNT", "5")
	for _, k := range all {
		if !deleted[k] && seen[k] == 0 {
			t.Fatalf("key %q, present throughout, never returned", k)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"SCAN", "x"}, "-ERR invalid cursor"},
		{[]string{"SCAN", "0", "COUNT", "0"}, "-ERR syntax error"},
		{[]string{"SCAN", "0", "COUNT", "x"}, "-ERR value is not an integer or out of range"},
		{[]string{"SCAN", "0", "MATCH"}, "-ERR syntax error"},
		{[]string{"SCAN", "0", "BOGUS", "1"}, "-ERR syntax error"},
	} {
		if got := show(c(tc.args...)); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
}
