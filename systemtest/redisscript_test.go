package systemtest

import (
	"bufio"
	"slices"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/kv"
)

// The pieces of the Redis differential test that need no server.

func Test_RedisDiff_SplitArgs(t *testing.T) {
	cases := []struct {
		line string
		want []string
		err  bool
	}{
		{line: "SET k v", want: []string{"SET", "k", "v"}},
		{line: "  GET\tk  ", want: []string{"GET", "k"}},
		{line: `SET "a b" ""`, want: []string{"SET", "a b", ""}},
		{line: `ECHO "\x00\xffq\"\\\r\n\t"`, want: []string{"ECHO", "\x00\xffq\"\\\r\n\t"}},
		{line: `ECHO 'a "b" \x00'`, want: []string{"ECHO", `a "b" \x00`}},
		{line: `ECHO a"b c"d`, want: []string{"ECHO", "ab cd"}},
		{line: "PING # a comment", want: []string{"PING"}},
		{line: `ECHO "# not a comment"`, want: []string{"ECHO", "# not a comment"}},
		{line: "# only a comment", want: nil},
		{line: `ECHO "open`, err: true},
		{line: `ECHO 'open`, err: true},
		{line: `ECHO "\x4"`, err: true},
		{line: `ECHO "\xzz"`, err: true},
		{line: `ECHO "\q"`, err: true},
	}
	for _, c := range cases {
		got, err := splitArgs(c.line)
		if (err != nil) != c.err {
			t.Errorf("splitArgs(%q): error %v, want error %v", c.line, err, c.err)
			continue
		}
		if !c.err && !slices.Equal(got, c.want) {
			t.Errorf("splitArgs(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

func Test_RedisDiff_ParseScript(t *testing.T) {
	lines, err := parseScript("t.txt", "# head\n\nPING\n~sort KEYS *\n~ttl TTL k\n~pttl ~skip-reply PTTL k\n~hello HELLO 3\nECHO \"~sort\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 6 {
		t.Fatalf("%d lines, want 6: %+v", len(lines), lines)
	}
	if l := lines[0]; l.No != 3 || l.File != "t.txt" || l.command() != "PING" || l.Sort || l.Tol != 0 {
		t.Errorf("line 0: %+v", l)
	}
	if l := lines[1]; !l.Sort || l.command() != "KEYS *" {
		t.Errorf("line 1: %+v", l)
	}
	if l := lines[2]; l.Tol != 1 {
		t.Errorf("line 2: %+v", l)
	}
	if l := lines[3]; l.Tol != 100 || !l.SkipReply || l.command() != "PTTL k" {
		t.Errorf("line 3: %+v", l)
	}
	if l := lines[4]; !l.Hello {
		t.Errorf("line 4: %+v", l)
	}
	if l := lines[5]; l.Sort || !slices.Equal(l.Args, []string{"ECHO", "~sort"}) {
		t.Errorf("line 5: a quoted ~word is an argument: %+v", l)
	}
	raw, err := parseScript("t.txt", "~inline   ECHO \"a b\" # kept\r\n~closes ~raw \"*1\\r\\n$x\\r\\n\"\nQUIT\n")
	if err != nil {
		t.Fatal(err)
	}
	if l := raw[0]; !l.Inline || l.Args != nil || l.wire() != "ECHO \"a b\" # kept\r\n" || l.closes() {
		t.Errorf("inline line: %+v, wire %q", l, l.wire())
	}
	if l := raw[1]; !l.Raw || !l.closes() || l.wire() != "*1\r\n$x\r\n" {
		t.Errorf("raw line: %+v, wire %q", l, l.wire())
	}
	if l := raw[2]; !l.closes() || l.wire() != "*1\r\n$4\r\nQUIT\r\n" {
		t.Errorf("QUIT line: %+v, wire %q", l, l.wire())
	}
	for _, bad := range []string{"~nosuch PING", "~sort", "ECHO \"x", "~inline  ", "~raw a b", "~raw"} {
		if _, err := parseScript("bad.txt", bad); err == nil {
			t.Errorf("parseScript(%q) accepted", bad)
		}
	}
}

func mustReadRESP(t *testing.T, wire string) respReply {
	t.Helper()
	r, err := readRESP(bufio.NewReader(strings.NewReader(wire)))
	if err != nil {
		t.Fatalf("readRESP(%q): %v", wire, err)
	}
	return r
}

func Test_RedisDiff_ReadAndRender(t *testing.T) {
	cases := []struct{ wire, want string }{
		{"+OK\r\n", "+OK"},
		{"-ERR bad\r\n", "-ERR bad"},
		{":-42\r\n", ":-42"},
		{"$3\r\na\x00b\r\n", `"a\x00b"`},
		{"$0\r\n\r\n", `""`},
		{"$-1\r\n", "$nil"},
		{"*-1\r\n", "*nil"},
		{"_\r\n", "_"},
		{"*0\r\n", "*[]"},
		{"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n$-1\r\n", `*[:1, "x", *[$nil]]`},
		{"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n_\r\n", `%{+a: :1, "b": _}`},
		{"~1\r\n#t\r\n", "~{#t}"},
		{",1.5\r\n", ",1.5"},
		{"(12345678901234567890\r\n", "(12345678901234567890"},
		{"=7\r\ntxt:abc\r\n", `="txt:abc"`},
		{">2\r\n+message\r\n:1\r\n", ">[+message, :1]"},
		{"|1\r\n+ttl\r\n:3\r\n+OK\r\n", "|{+ttl: :3} +OK"},
	}
	for _, c := range cases {
		if got := mustReadRESP(t, c.wire).String(); got != c.want {
			t.Errorf("%q renders %s, want %s", c.wire, got, c.want)
		}
	}
	for _, bad := range []string{"", "+OK\n", ":x\r\n", "$5\r\nab\r\n", "$2\r\nabcd", "#x\r\n", "?\r\n", "*2\r\n:1\r\n", "$-2\r\n"} {
		if r, err := readRESP(bufio.NewReader(strings.NewReader(bad))); err == nil {
			t.Errorf("readRESP(%q) = %s, want an error", bad, r)
		}
	}
}

func Test_RedisDiff_Compare(t *testing.T) {
	rep := func(wire string) respReply { return mustReadRESP(t, wire) }
	plain := scriptLine{Args: []string{"X"}}
	cases := []struct {
		name      string
		l         scriptLine
		want, got string
		same      bool
	}{
		{"equal", plain, "+OK\r\n", "+OK\r\n", true},
		{"simple vs bulk", plain, "+OK\r\n", "$2\r\nOK\r\n", false},
		{"null bulk vs null", plain, "$-1\r\n", "_\r\n", false},
		{"null bulk vs null array", plain, "$-1\r\n", "*-1\r\n", false},
		{"error text", plain, "-ERR a\r\n", "-ERR b\r\n", false},
		{"int vs bulk", plain, ":1\r\n", "$1\r\n1\r\n", false},
		{"order counts", plain, "*2\r\n:1\r\n:2\r\n", "*2\r\n:2\r\n:1\r\n", false},
		{"~sort ignores order", scriptLine{Sort: true}, "*2\r\n:1\r\n:2\r\n", "*2\r\n:2\r\n:1\r\n", true},
		{"~sort keeps multiplicity", scriptLine{Sort: true}, "*2\r\n:1\r\n:1\r\n", "*2\r\n:1\r\n:2\r\n", false},
		{"~sort keeps the type", scriptLine{Sort: true}, "*1\r\n:1\r\n", "~1\r\n:1\r\n", false},
		{"~ttl within 1", scriptLine{Tol: 1}, ":100\r\n", ":99\r\n", true},
		{"~ttl beyond 1", scriptLine{Tol: 1}, ":100\r\n", ":98\r\n", false},
		{"~ttl needs integers", scriptLine{Tol: 1}, ":-2\r\n", "$-1\r\n", false},
		{"~ttl exact negatives", scriptLine{Tol: 1}, ":-2\r\n", ":-1\r\n", true},
		{"~skip-reply", scriptLine{SkipReply: true}, "$3\r\nabc\r\n", "-ERR x\r\n", true},
		{"~hello server differs", scriptLine{Hello: true},
			"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n",
			"%3\r\n$6\r\nserver\r\n$4\r\nmcpd\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n", true},
		{"~hello proto differs", scriptLine{Hello: true},
			"%1\r\n$5\r\nproto\r\n:3\r\n", "%1\r\n$5\r\nproto\r\n:2\r\n", false},
		{"~hello field missing", scriptLine{Hello: true},
			"%2\r\n$5\r\nproto\r\n:3\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n", "%1\r\n$5\r\nproto\r\n:3\r\n", false},
		{"~hello map vs array", scriptLine{Hello: true},
			"%1\r\n$5\r\nproto\r\n:3\r\n", "*2\r\n$5\r\nproto\r\n:3\r\n", false},
		{"~hello server type", scriptLine{Hello: true},
			"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n", "%1\r\n$6\r\nserver\r\n+mcpd\r\n", false},
		{"~hello errors compared", scriptLine{Hello: true}, "-NOPROTO x\r\n", "-ERR x\r\n", false},
	}
	for _, c := range cases {
		why := compareReplies(c.l, rep(c.want), rep(c.got))
		if (why == "") != c.same {
			t.Errorf("%s: compareReplies = %q, want same=%v", c.name, why, c.same)
		}
	}
}

// Test_RedisDiff_Scripts checks the scripts themselves: they parse, they hold
// at least 400 commands, and each command mcpd implements appears in them.
func Test_RedisDiff_Scripts(t *testing.T) {
	scripts, err := loadScripts()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	total := 0
	for _, lines := range scripts {
		for _, l := range lines {
			total++
			switch {
			case l.Inline:
				seen[strings.ToUpper(strings.Fields(l.Text)[0])]++
			case len(l.Args) > 0:
				seen[strings.ToUpper(l.Args[0])]++
			}
		}
	}
	if total < 400 {
		t.Errorf("%d commands in %d scripts, want at least 400", total, len(scripts))
	}
	names := slices.Clone(redisDiffCommands)
	for _, c := range kv.Commands() {
		names = append(names, strings.ToUpper(c.Name))
	}
	for _, name := range names {
		if seen[name] == 0 {
			t.Errorf("no script runs %s", name)
		}
	}
}

// redisDiffCommands are the connection commands mcpd's Redis face
// implements; the scripts must exercise each of them and each keyspace
// command (kv.Commands).
var redisDiffCommands = []string{
	"PING", "ECHO", "HELLO", "SELECT", "QUIT", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH",
	"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BLMPOP",
	"GET", "SET", "SETNX", "GETDEL", "INCR", "INCRBY", "DECR", "DECRBY", "MGET", "MSET",
	"DEL", "UNLINK", "EXISTS", "TYPE", "KEYS", "DBSIZE",
	"EXPIRE", "PEXPIRE", "TTL", "PTTL", "PERSIST",
}
