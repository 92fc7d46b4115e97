// Package kv is mcpd's Redis-compatible keyspace: strings, hashes, lists
// and streams with expiry, kept in bbolt and changed only by commands
// applied from the Raft log (docs/redis.md). Every function is
// deterministic: time comes from the command's leader-stamped clock.
package kv

import (
	"bytes"
	"strconv"
)

// Kind is the type of a reply value.
type Kind uint8

// Reply kinds. RESP2 renders Map as a flat array, Null as a null bulk
// string, NullArray as a null array, PairMap as an array of pairs; RESP3
// has a type for each.
const (
	Null      Kind = iota // a null bulk string (RESP3: null)
	Simple                // +OK
	Error                 // -ERR ...
	Int                   // :1
	Bulk                  // $3 foo
	Array                 // *N ...
	Map                   // RESP3 %N, RESP2 a flat array of 2N
	NullArray             // *-1 (RESP3: null)
	PairMap               // RESP3 %N, RESP2 an array of N [key, value] arrays (XREAD)
)

// Value is one reply, as a command produces it: the same on every node,
// rendered for the client's protocol version by the transport.
type Value struct {
	K Kind    `msgpack:"k"`
	S []byte  `msgpack:"s,omitempty"`
	I int64   `msgpack:"i,omitempty"`
	A []Value `msgpack:"a,omitempty"`
}

// Constructors of common replies.
var (
	OK      = Value{K: Simple, S: []byte("OK")}
	NilBulk = Value{K: Null}
)

// Str is a simple string.
func Str(s string) Value { return Value{K: Simple, S: []byte(s)} }

// Err is an error reply; s starts with its code ("ERR ...", "WRONGTYPE ...").
func Err(s string) Value { return Value{K: Error, S: []byte(s)} }

// Integer is an integer reply.
func Integer(n int64) Value { return Value{K: Int, I: n} }

// BulkOf is a bulk string reply.
func BulkOf(b []byte) Value { return Value{K: Bulk, S: b} }

// BulkStr is a bulk string reply of s.
func BulkStr(s string) Value { return Value{K: Bulk, S: []byte(s)} }

// ArrayOf is an array reply.
func ArrayOf(vs ...Value) Value { return Value{K: Array, A: vs} }

// IsErr reports whether v is an error reply.
func (v Value) IsErr() bool { return v.K == Error }

// Errors Redis answers with, word for word.
var (
	errSyntax     = Err("ERR syntax error")
	errNotInt     = Err("ERR value is not an integer or out of range")
	errWrongType  = Err("WRONGTYPE Operation against a key holding the wrong kind of value")
	errOverflow   = Err("ERR increment or decrement would overflow")
	errExpireTime = func(cmd string) Value { return Err("ERR invalid expire time in '" + cmd + "' command") }
)

// ErrArity is the reply to a command with the wrong number of arguments.
func ErrArity(name string) Value {
	return Err("ERR wrong number of arguments for '" + name + "' command")
}

// ErrUnknown is the reply to a command Redis does not know, cut as Redis
// cuts it: each name or argument at its first NUL byte, the name at 128
// bytes, the arguments once 128 bytes of them are quoted, and CR and LF
// turned into spaces.
func ErrUnknown(name string, args [][]byte) Value {
	cut := func(b []byte, n int) []byte {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return b[:min(len(b), n)]
	}
	var quoted []byte
	for _, a := range args {
		if len(quoted) >= 128 {
			break
		}
		quoted = append(quoted, '\'')
		quoted = append(append(quoted, cut(a, 128-len(quoted)+1)...), "' "...)
	}
	b := []byte("ERR unknown command '" + string(cut([]byte(name), 128)) + "', with args beginning with: " + string(quoted))
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return Value{K: Error, S: b}
}

// parseInt parses a Redis integer argument strictly (no spaces, no '+').
func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 || b[0] == '+' {
		return 0, false
	}
	if len(b) > 1 && b[0] == '0' {
		return 0, false
	}
	if len(b) >= 2 && b[0] == '-' && b[1] == '0' { // "-0" too
		return 0, false
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	return n, err == nil
}
