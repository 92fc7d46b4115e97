package fsm

import (
	"bytes"
	"strings"

	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
)

// RedisArgs is one Redis write command: its arguments as the client sent
// them, the name first; or, for EXEC, the commands of a transaction in
// Multi (reads included), run one after the other in this entry. A
// PUBLISH carries, when its channel is also a topic, the envelope the
// proposing node wrapped the message in for WebSocket subscribers (Env,
// From, ID: the FSM cannot draw an id).
type RedisArgs struct {
	Args  [][]byte   `msgpack:"a,omitempty"`
	Multi [][][]byte `msgpack:"m,omitempty"`
	Env   []byte     `msgpack:"e,omitempty"`
	From  string     `msgpack:"f,omitempty"`
	ID    string     `msgpack:"i,omitempty"`
	Hash  [32]byte   `msgpack:"h,omitempty"`
	// Watch and Sums are the keys an EXEC's connection watched and their
	// digests (kv.Digest) when it watched them: the transaction runs only
	// if every one is unchanged when it is applied.
	Watch [][]byte `msgpack:"w,omitempty"`
	Sums  [][]byte `msgpack:"ws,omitempty"`
}

// Published is the effect of a publish on every node, for the Redis
// subscribers there: the channel, and the message as Redis clients get
// it (a Redis publisher's message as sent; a WebSocket publisher's
// envelope as JSON). Receivers counts the WebSocket subscriptions it
// reached. Its target is no connection.
type Published struct {
	Channel   []byte
	Message   []byte
	Receivers int64
}

// Target implements queue.Effect.
func (*Published) Target() string { return "" }

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
func touched(t *Tx, cmds ...[][]byte) {
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
		if len(a.Watch) != len(a.Sums) || len(a.Watch) > maxRedisArgs || (a.Watch != nil && a.Multi == nil) {
			return badArg("watch", "must pair each watched key of a transaction with its digest")
		}
		for i, k := range a.Watch {
			if _, q := kv.QueueOf(k); q || len(a.Sums[i]) != 32 {
				return badArg("watch", "must name keyspace keys with 32-byte digests")
			}
		}
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
		if strings.EqualFold(string(a.Args[0]), "xadd") && a.Env != nil {
			if len(a.Args) < 2 {
				return badArg("args", "XADD names a key")
			}
			if _, ok := kv.QueueOf(a.Args[1]); !ok {
				return badArg("args", "an envelope goes with an XADD to a queue key only")
			}
			return checkSender(a.From, a.ID, a.Env)
		}
		if strings.EqualFold(string(a.Args[0]), "publish") {
			if len(a.Args) != 3 {
				return badArg("args", "PUBLISH takes a channel and a message")
			}
			if a.Env != nil {
				return firstErr(checkSender(a.From, a.ID, a.Env), func() error {
					if !queue.ValidTopic(string(a.Args[1]), false) {
						return badArg("args", "an envelope goes with a topic channel only")
					}
					return nil
				}())
			}
			return nil
		}
		if known, write := kv.Lookup(strings.ToLower(string(a.Args[0]))); !known || !write {
			return badArg("args", "must be a Redis write command")
		}
		return nil
	}, func(t *Tx, a *RedisArgs) (any, error) {
		if a.Multi != nil {
			for i, k := range a.Watch {
				if d := kv.Digest(t.Bolt(), t.Now(), k); !bytes.Equal(d[:], a.Sums[i]) {
					// A watched key changed: nothing runs, EXEC answers null.
					return &RedisResult{Value: kv.Value{K: kv.NullArray}}, nil
				}
			}
			out := make([]kv.Value, len(a.Multi))
			for i, c := range a.Multi {
				// A blocking read in a transaction does not block, as in
				// Redis: finding nothing, it answers null.
				if out[i] = kv.ExecFace(t.Bolt(), t.Tx, t.Now(), c, true, nil); kv.WantsBlock(out[i]) {
					out[i] = kv.Value{K: kv.NullArray}
				}
			}
			touched(t, a.Multi...)
			return &RedisResult{Value: kv.ArrayOf(out...)}, nil
		}
		if strings.EqualFold(string(a.Args[0]), "publish") {
			return publishRedis(t, a)
		}
		var env *kv.QueueEnv
		if a.Env != nil {
			env = &kv.QueueEnv{Env: a.Env, From: a.From, ID: a.ID, Hash: a.Hash}
		}
		v := kv.ExecFace(t.Bolt(), t.Tx, t.Now(), a.Args, true, env)
		if !v.IsErr() {
			touched(t, a.Args)
		}
		return &RedisResult{Value: v}, nil
	})
}

// publishRedis applies a Redis PUBLISH: to the WebSocket subscribers of
// the topic of the same name (through the envelope), and to the Redis
// subscribers of every node (the Published effect). The reply is the
// number of WebSocket subscriptions reached; the node adds its Redis
// subscribers.
func publishRedis(t *Tx, a *RedisArgs) (any, error) {
	var receivers int64
	if a.Env != nil {
		res, err := t.Publish(queue.PublishArgs{Topic: string(a.Args[1]), From: a.From, ID: a.ID, Hash: a.Hash, Env: a.Env})
		if err != nil {
			return nil, err
		}
		receivers = int64(res.Receivers)
	}
	t.Effects = append(t.Effects, &Published{Channel: a.Args[1], Message: a.Args[2], Receivers: receivers})
	return &RedisResult{Value: kv.Integer(receivers)}, nil
}
