// Package fsm is mcpd's replicated state machine: the command types and
// their codec, the Apply dispatch table, the bbolt layout of state.db, and
// snapshots. See DESIGN.md beside this file.
package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/vmihailenco/msgpack/v5"
)

// MessageType identifies a command. Values are only ever appended: a log
// written by one version must mean the same to every later one.
type MessageType uint8

// Command types.
const (
	TypeEnqueue     MessageType = 1
	TypeConsume     MessageType = 2
	TypeAck         MessageType = 3
	TypeNack        MessageType = 4
	TypeReject      MessageType = 5
	TypeExtend      MessageType = 6
	TypeCancel      MessageType = 7
	TypeDeclare     MessageType = 8
	TypePublish     MessageType = 9
	TypeSubscribe   MessageType = 10
	TypeUnsubscribe MessageType = 11
	TypeConnClosed  MessageType = 12
	TypeNodeStarted MessageType = 13
	TypeNodeDown    MessageType = 14
	// Trust (docs/security.md).
	TypeAgentAdd        MessageType = 15 // an operator adds an agent identity
	TypeAgentRevoke     MessageType = 16 // an operator revokes one
	TypeAuthEvent       MessageType = 17 // an authentication or authorization decision a node made
	TypeAuditCheckpoint MessageType = 18 // the leader's signature over the audit head
	// The Redis keyspace (docs/redis.md).
	TypeRedis MessageType = 19 // one Redis write command
)

// Command is one request to change the state. Conn and Req name the client
// request it answers (empty for commands a node issues itself); the node
// holding that connection turns the Apply outcome into the reply.
type Command struct {
	Type MessageType `msgpack:"t"`
	Conn string      `msgpack:"c,omitempty"`
	Req  uint64      `msgpack:"r,omitempty"`
	// Actor is who asked for the change, for the audit log: the agent the
	// connection authenticated as, "operator:NAME" for an admin command,
	// empty for what a node issues itself.
	Actor string             `msgpack:"a,omitempty"`
	Body  msgpack.RawMessage `msgpack:"b"`
}

// NewCommand encodes a command body.
func NewCommand(t MessageType, conn string, req uint64, body any) (Command, error) {
	raw, err := msgpack.Marshal(body)
	if err != nil {
		return Command{}, fmt.Errorf("encode command %d: %w", t, err)
	}
	return Command{Type: t, Conn: conn, Req: req, Body: raw}, nil
}

// Entry is the payload of one Raft log entry: a group of commands committed
// together, stamped with the leader's clock when it was proposed.
type Entry struct {
	Time int64     `msgpack:"ts"`
	Cmds []Command `msgpack:"c"`
}

// entryVersion leads every encoded entry.
const entryVersion = 1

// ErrCorrupt is returned by DecodeEntry when a log entry fails its checksum.
var ErrCorrupt = errors.New("log entry checksum mismatch")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// EncodeEntry serialises an entry: a version byte, a CRC-32C of the body,
// then the msgpack body. The CRC lets Apply detect a corrupted entry
// instead of applying it.
func EncodeEntry(e *Entry) ([]byte, error) {
	body, err := msgpack.Marshal(e)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 5, 5+len(body))
	out[0] = entryVersion
	binary.BigEndian.PutUint32(out[1:5], crc32.Checksum(body, castagnoli))
	return append(out, body...), nil
}

// DecodeEntry is the inverse of EncodeEntry.
func DecodeEntry(b []byte) (*Entry, error) {
	if len(b) < 5 || b[0] != entryVersion {
		return nil, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	if crc32.Checksum(b[5:], castagnoli) != binary.BigEndian.Uint32(b[1:5]) {
		return nil, ErrCorrupt
	}
	e := &Entry{}
	if err := mpack.Unmarshal(b[5:], e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return e, nil
}

// ConnClosedArgs ends a connection's consumers, subscriptions and leases.
type ConnClosedArgs struct {
	Conn string `msgpack:"c"`
}

// NodeStartedArgs ends what a node's earlier incarnations held.
type NodeStartedArgs struct {
	Node  string `msgpack:"n"`
	Epoch uint64 `msgpack:"e"`
	// Level is the command level the node's version applies (levels.go);
	// a version before levels sends none. A node announces it again,
	// with the same epoch, when the state lost it (a snapshot restore).
	Level int `msgpack:"l,omitempty"`
}

// NodeDownArgs ends the connections of a node the leader lost contact with.
type NodeDownArgs struct {
	Node string `msgpack:"n"`
}

// UnsubscribeArgs removes a subscription of a connection.
type UnsubscribeArgs struct {
	Sub  uint64 `msgpack:"s"`
	Conn string `msgpack:"c"`
}

// AgentAddArgs adds an agent identity; the FSM stamps its creation time.
type AgentAddArgs struct {
	Agent auth.Agent `msgpack:"a"`
}

// AgentRevokeArgs revokes an agent identity.
type AgentRevokeArgs struct {
	Name   string `msgpack:"n"`
	Reason string `msgpack:"r,omitempty"`
}

// AuthEventArgs records an authentication or authorization decision a
// node made without changing anything else: a handshake that succeeded or
// failed, an envelope refused (bad_signature, replay, forbidden), an
// operation denied by the ACL, a rate limit hit. Kind is e.g. "auth.ok",
// "auth.fail", "denied"; Code the protocol error code ("" on success).
// Suppressed counts the events of the same kind this node did not record
// individually since its previous one, so a flood of failures costs the
// log one entry per interval.
type AuthEventArgs struct {
	Kind       string `msgpack:"k"`
	Agent      string `msgpack:"a"`
	Subject    string `msgpack:"s,omitempty"`
	Code       string `msgpack:"c,omitempty"`
	Detail     string `msgpack:"d,omitempty"`
	Node       string `msgpack:"n"`
	Remote     string `msgpack:"ra,omitempty"`
	Suppressed uint64 `msgpack:"x,omitempty"`
}

// AuditCheckpointArgs carries the leader's Ed25519 signature, by the
// cluster audit key, over the audit chain head it had applied: the FSM
// checks that the entry at Seq has Hash and that Sig verifies under
// Public, then stores the checkpoint (its own entry follows it).
type AuditCheckpointArgs struct {
	Seq    uint64 `msgpack:"q"`
	Hash   []byte `msgpack:"h"`
	Public []byte `msgpack:"p"`
	Sig    []byte `msgpack:"s"`
}
