package fsm

import (
	"strings"

	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
)

// RedisArgs is one Redis write command: its arguments as the client sent
// them, the name first; or, for EXEC, the commands of a transaction in
// Multi (reads included), run one after the other in this entry.
type RedisArgs struct {
	Args  [][]byte   `msgpack:"a,omitempty"`
	Multi [][][]byte `msgpack:"m,omitempty"`
}

// RedisResult answers a Redis command with its reply, which the transport
// renders for the client's protocol version.
type RedisResult struct {
	Value kv.Value `msgpack:"v"`
}

// RedisTouched is the effect of an applied Redis write on every node:
// the keys it named, so the node can wake the clients blocked on them
// (BLPOP and its kind). Its target is no connection.
type RedisTouched struct{ Keys [][]byte }

// Target implements queue.Effect.
func (*RedisTouched) Target() string { return "" }

// touched appends the keys of cmds to the transaction's effects.
func touched(t *queue.Tx, cmds ...[][]byte) {
	var keys [][]byte
	for _, c := range cmds {
		if known, write := kv.Lookup(strings.ToLower(string(c[0]))); !known || !write {
			continue
		}
		ks, _ := kv.KeysOf(c)
		keys = append(keys, ks...)
	}
	if len(keys) > 0 {
		t.Effects = append(t.Effects, &RedisTouched{Keys: keys})
	}
}

// maxRedisArgs bounds a command's arguments (a checked command cannot
// carry more than a frame holds anyway).
const maxRedisArgs = 1 << 20

func init() {
	register(TypeRedis, func(a *RedisArgs) error {
		if a.Multi != nil {
			if len(a.Args) != 0 || len(a.Multi) > maxRedisArgs {
				return badArg("multi", "must be a list of commands")
			}
			for _, c := range a.Multi {
				if len(c) == 0 {
					return badArg("multi", "must name each command")
				}
				if _, ok := kv.Check(c); !ok {
					return badArg("multi", "must hold known commands with their arities")
				}
			}
			return nil
		}
		if len(a.Args) == 0 || len(a.Args) > maxRedisArgs {
			return badArg("args", "must name a command")
		}
		if known, write := kv.Lookup(strings.ToLower(string(a.Args[0]))); !known || !write {
			return badArg("args", "must be a Redis write command")
		}
		return nil
	}, func(t *queue.Tx, a *RedisArgs) (any, error) {
		if a.Multi != nil {
			v := kv.ExecMulti(t.Bolt(), t.Now(), a.Multi)
			touched(t, a.Multi...)
			return &RedisResult{Value: v}, nil
		}
		v := kv.Exec(t.Bolt(), t.Now(), a.Args, true)
		if !v.IsErr() {
			touched(t, a.Args)
		}
		return &RedisResult{Value: v}, nil
	})
}
