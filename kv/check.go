package kv

import (
	"strings"

	bolt "go.etcd.io/bbolt"
)

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
	return Value{}, true
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

// ExecMulti runs the commands of a transaction one after the other on
// the write transaction of one log entry: nothing else runs between them.
func ExecMulti(tx *bolt.Tx, now int64, cmds [][][]byte) Value {
	out := make([]Value, len(cmds))
	for i, args := range cmds {
		out[i] = Exec(tx, now, args, true)
	}
	return ArrayOf(out...)
}
