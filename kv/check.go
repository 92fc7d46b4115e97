package kv

import "strings"

// Check tells whether args would be accepted as a command: a known name
// with the right number of arguments. It returns Redis's error reply
// otherwise, for a transaction that queues commands before running them.
func Check(args [][]byte) (Value, bool) {
	name := strings.ToLower(string(args[0]))
	s, ok := commands[name]
	if !ok {
		return ErrUnknown(string(args[0]), args[1:]), false
	}
	if (s.arity > 0 && len(args) != s.arity) || (s.arity < 0 && len(args) < -s.arity) {
		return ErrArity(name), false
	}
	return checkSub(name, args)
}

// Info describes a command for COMMAND: its name, arity and whether it
// writes.
type Info struct {
	Name  string
	Arity int
	Write bool
}

// Commands lists the keyspace commands.
func Commands() []Info {
	out := make([]Info, 0, len(commands))
	for name, s := range commands {
		out = append(out, Info{Name: name, Arity: s.arity, Write: s.write})
	}
	return out
}

// keySpec says where a command's keys are: from first to last (negative:
// counted from the end) every step arguments; numkeys, when not zero, is
// the position of an argument giving the count of keys that follow it.
type keySpec struct{ first, last, step, numkeys int }

// keySpecs lists the commands whose keys are not just their first
// argument; whole marks those that read the whole keyspace.
var keySpecs = map[string]keySpec{
	"mget": {1, -1, 1, 0}, "del": {1, -1, 1, 0}, "unlink": {1, -1, 1, 0}, "exists": {1, -1, 1, 0},
	"mset":  {1, -1, 2, 0},
	"lmove": {1, 2, 1, 0}, "rpoplpush": {1, 2, 1, 0}, "blmove": {1, 2, 1, 0}, "brpoplpush": {1, 2, 1, 0},
	"blpop": {1, -2, 1, 0}, "brpop": {1, -2, 1, 0},
	"lmpop": {0, 0, 0, 1}, "blmpop": {0, 0, 0, 2},
	"xgroup": {2, 2, 1, 0}, "xinfo": {2, 2, 1, 0},
}

// wholeKeyspace are the commands that read every key.
var wholeKeyspace = map[string]bool{"keys": true, "dbsize": true, "scan": true, "flushall": true, "flushdb": true}

// KeysOf returns the keys a command names, and whether it reaches the
// whole keyspace instead, for access control. args must have passed Check.
func KeysOf(args [][]byte) (keys [][]byte, whole bool) {
	name := strings.ToLower(string(args[0]))
	if wholeKeyspace[name] {
		return nil, true
	}
	if name == "xread" || name == "xreadgroup" {
		p, bad := parseReadGroup(args, name == "xreadgroup")
		if bad != nil {
			return nil, false
		}
		return p.keys, false
	}
	ks, ok := keySpecs[name]
	if !ok {
		if len(args) > 1 {
			return args[1:2], false
		}
		return nil, false
	}
	if ks.numkeys > 0 {
		if ks.numkeys >= len(args) {
			return nil, false
		}
		n, ok := parseInt(args[ks.numkeys])
		if !ok || n < 0 || int(n) > len(args)-ks.numkeys-1 {
			return nil, false
		}
		return args[ks.numkeys+1 : ks.numkeys+1+int(n)], false
	}
	last := ks.last
	if last < 0 {
		last = len(args) + last
	}
	for i := ks.first; i <= last && i < len(args); i += ks.step {
		keys = append(keys, args[i])
	}
	return keys, false
}

// Match is Redis's glob match (PSUBSCRIBE): '*', '?', '[...]' with
// ranges and '^', and '\' escapes; the empty string matches only the
// empty pattern, as in Redis.
func Match(pattern, s []byte) bool { return stringMatch(pattern, s) }
