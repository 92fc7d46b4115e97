package fsm

import (
	"strings"

	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
)

// RedisArgs is one Redis write command: its arguments as the client sent
// them, the name first.
type RedisArgs struct {
	Args [][]byte `msgpack:"a"`
}

// RedisResult answers a Redis command with its reply, which the transport
// renders for the client's protocol version.
type RedisResult struct {
	Value kv.Value `msgpack:"v"`
}

// maxRedisArgs bounds a command's arguments (a checked command cannot
// carry more than a frame holds anyway).
const maxRedisArgs = 1 << 20

func init() {
	register(TypeRedis, func(a *RedisArgs) error {
		if len(a.Args) == 0 || len(a.Args) > maxRedisArgs {
			return badArg("args", "must name a command")
		}
		if known, write := kv.Lookup(strings.ToLower(string(a.Args[0]))); !known || !write {
			return badArg("args", "must be a Redis write command")
		}
		return nil
	}, func(t *queue.Tx, a *RedisArgs) (any, error) {
		return &RedisResult{Value: kv.Exec(t.Bolt(), t.Now(), a.Args, true)}, nil
	})
}
