package auth

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"

	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// bucketAgents holds the agent identities: name -> msgpack Agent.
var bucketAgents = []byte("agents")

// Buckets lists the buckets of state.db this package owns.
var Buckets = [][]byte{bucketAgents}

// CreateBuckets makes sure every bucket of this package exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Errors of identity changes; the FSM maps them to protocol codes.
var (
	ErrAgentExists  = errors.New("agent already exists")
	ErrAgentUnknown = errors.New("no such agent")
	ErrBadAgent     = errors.New("bad agent record")
)

// Operations an ACL governs.
const (
	OpEnqueue   = "enqueue"
	OpConsume   = "consume"
	OpPublish   = "publish"
	OpSubscribe = "subscribe"
	OpSend      = "send"
	OpRegister  = "register"
	OpSubmit    = "submit"
	OpKeys      = "keys" // the Redis keyspace
)

// Ops lists the operations an ACL governs, in display order.
var Ops = []string{OpEnqueue, OpConsume, OpPublish, OpSubscribe, OpSend, OpRegister, OpSubmit, OpKeys}

// ACL grants an agent operations on names matching glob patterns
// (path.Match syntax: '*' any run of characters, '?' one, [a-z] a class).
// What no pattern grants is denied. Queue patterns govern enqueue and
// consume (and the queue's settings); topic patterns publish and
// subscribe, where a subscription's own pattern ("alerts.>") must match;
// send names recipient agents; register and submit name capabilities.
// An agent's own inbox @NAME is always its to consume.
type ACL struct {
	Enqueue   []string `msgpack:"eq,omitempty" json:"enqueue,omitempty"`
	Consume   []string `msgpack:"co,omitempty" json:"consume,omitempty"`
	Publish   []string `msgpack:"pu,omitempty" json:"publish,omitempty"`
	Subscribe []string `msgpack:"su,omitempty" json:"subscribe,omitempty"`
	Send      []string `msgpack:"se,omitempty" json:"send,omitempty"`
	Register  []string `msgpack:"re,omitempty" json:"register,omitempty"`
	Submit    []string `msgpack:"sb,omitempty" json:"submit,omitempty"`
	// Keys are the Redis keys the agent may read and write; commands on
	// the whole keyspace (KEYS, DBSIZE) need the pattern "*".
	Keys []string `msgpack:"ky,omitempty" json:"keys,omitempty"`
}

// Patterns returns the patterns of one operation.
func (a *ACL) Patterns(op string) []string {
	switch op {
	case OpEnqueue:
		return a.Enqueue
	case OpConsume:
		return a.Consume
	case OpPublish:
		return a.Publish
	case OpSubscribe:
		return a.Subscribe
	case OpSend:
		return a.Send
	case OpRegister:
		return a.Register
	case OpSubmit:
		return a.Submit
	case OpKeys:
		return a.Keys
	}
	return nil
}

// Allows reports whether some pattern of op matches name.
func (a *ACL) Allows(op, name string) bool {
	for _, p := range a.Patterns(op) {
		if ok, err := path.Match(p, name); err == nil && ok {
			return true
		}
	}
	return false
}

// Check refuses malformed patterns, which would otherwise match nothing
// without a word.
func (a *ACL) Check() error {
	for _, op := range Ops {
		for _, p := range a.Patterns(op) {
			if p == "" || len(p) > 256 {
				return fmt.Errorf("%w: %s pattern must be 1 to 256 bytes", ErrBadAgent, op)
			}
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("%w: %s pattern %q: %v", ErrBadAgent, op, p, err)
			}
		}
	}
	return nil
}

// Limits are an agent's rates on each node it connects to; zero is
// unlimited. Burst is one second's worth.
type Limits struct {
	MsgsPerSec  float64 `msgpack:"m,omitempty" json:"msgs_per_sec,omitempty"`
	BytesPerSec float64 `msgpack:"b,omitempty" json:"bytes_per_sec,omitempty"`
}

// Agent is an agent identity as the replicated state keeps it. Only the
// public half of an Ed25519 key is kept; an HMAC secret is kept sealed
// under the cluster key (clusterkey.go).
type Agent struct {
	Name   string `msgpack:"n" json:"name"`
	Alg    string `msgpack:"a" json:"alg"`
	Public []byte `msgpack:"p,omitempty" json:"public_key,omitempty"`
	Sealed []byte `msgpack:"s,omitempty" json:"-"`
	// TokenHash is the SHA-256 of the agent's Redis AUTH token, if it has
	// one (the token itself is only in the agent's credential).
	TokenHash []byte `msgpack:"th,omitempty" json:"-"`
	// SealKey is the ID of the cluster key that sealed the secret.
	SealKey   string   `msgpack:"sk,omitempty" json:"seal_key,omitempty"`
	Caps      []string `msgpack:"c,omitempty" json:"capabilities,omitempty"`
	ACL       ACL      `msgpack:"acl" json:"acl"`
	Limits    Limits   `msgpack:"l" json:"limits"`
	Created   int64    `msgpack:"ct" json:"created"`
	CreatedBy string   `msgpack:"cb,omitempty" json:"created_by,omitempty"`
	Revoked   int64    `msgpack:"rt,omitempty" json:"revoked,omitempty"`
	RevokedBy string   `msgpack:"rb,omitempty" json:"revoked_by,omitempty"`
	Reason    string   `msgpack:"rr,omitempty" json:"revoke_reason,omitempty"`
}

// MarshalJSON shows the record as the admin API does: with redis_token,
// whether the agent has a Redis token (derived from TokenHash, which is
// never shown).
func (a Agent) MarshalJSON() ([]byte, error) {
	type plain Agent
	return json.Marshal(struct {
		plain
		RedisToken bool `json:"redis_token"`
	}{plain(a), len(a.TokenHash) > 0})
}

// Check validates a record before it is stored.
func (a *Agent) Check() error {
	if !ValidAgentName(a.Name) {
		return fmt.Errorf("%w: %q is not an agent name", ErrBadAgent, a.Name)
	}
	switch a.Alg {
	case AlgEd25519:
		if len(a.Public) != ed25519.PublicKeySize || len(a.Sealed) != 0 {
			return fmt.Errorf("%w: an ed25519 agent has a %d-byte public key and no secret", ErrBadAgent, ed25519.PublicKeySize)
		}
	case AlgHMACSHA256:
		if len(a.Sealed) == 0 || len(a.Public) != 0 || a.SealKey == "" {
			return fmt.Errorf("%w: an hmac-sha256 agent has a sealed secret and no public key", ErrBadAgent)
		}
	default:
		return fmt.Errorf("%w: alg must be ed25519 or hmac-sha256", ErrBadAgent)
	}
	for _, c := range a.Caps {
		if !ValidCapability(c) {
			return fmt.Errorf("%w: %q is not a capability name", ErrBadAgent, c)
		}
	}
	if len(a.TokenHash) != 0 && len(a.TokenHash) != 32 {
		return fmt.Errorf("%w: a token hash is 32 bytes (SHA-256)", ErrBadAgent)
	}
	if a.Limits.MsgsPerSec < 0 || a.Limits.BytesPerSec < 0 {
		return fmt.Errorf("%w: limits must not be negative", ErrBadAgent)
	}
	return a.ACL.Check()
}

// Active reports whether the agent may authenticate.
func (a *Agent) Active() bool { return a.Revoked == 0 }

// MayRegister reports whether the agent may register capability c: it
// must be listed in its capabilities or granted by its register ACL.
func (a *Agent) MayRegister(c string) bool {
	return slices.Contains(a.Caps, c) || a.ACL.Allows(OpRegister, c)
}

// ValidCapability reports whether c is a capability name: 1–128 bytes
// of [A-Za-z0-9._-].
func ValidCapability(c string) bool { return validName(c, 128) }

// GetAgent reads an agent record; ok is false when there is none.
func GetAgent(tx *bolt.Tx, name string) (a Agent, ok bool, err error) {
	v := tx.Bucket(bucketAgents).Get([]byte(name))
	if v == nil {
		return Agent{}, false, nil
	}
	if err := mpack.Unmarshal(v, &a); err != nil {
		return Agent{}, false, fmt.Errorf("agent %q: %w", name, err)
	}
	return a, true, nil
}

// ListAgents calls fn for each agent record in name order.
func ListAgents(tx *bolt.Tx, fn func(a *Agent) error) error {
	return tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
		var a Agent
		if err := mpack.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("agent %q: %w", k, err)
		}
		return fn(&a)
	})
}

// AddAgent stores a new identity stamped with the command time. A name in
// use, revoked or not, is refused: a revoked name is not reused, so the
// audit log's actor names stay unambiguous.
func AddAgent(tx *bolt.Tx, a Agent, now int64) (Agent, error) {
	if err := a.Check(); err != nil {
		return Agent{}, err
	}
	b := tx.Bucket(bucketAgents)
	if b.Get([]byte(a.Name)) != nil {
		if old, ok, err := GetAgent(tx, a.Name); err == nil && ok && old.Revoked != 0 {
			return Agent{}, fmt.Errorf("%w: %s was revoked, and a revoked name is not used again: choose another name", ErrAgentExists, a.Name)
		}
		return Agent{}, fmt.Errorf("%w: %s", ErrAgentExists, a.Name)
	}
	a.Created, a.Revoked, a.RevokedBy, a.Reason = now, 0, "", ""
	return a, putAgent(b, &a)
}

// RevokeAgent marks an identity revoked. Revoking a revoked agent keeps
// the first revocation and is not an error.
func RevokeAgent(tx *bolt.Tx, name, by, reason string, now int64) (Agent, error) {
	a, ok, err := GetAgent(tx, name)
	if err != nil {
		return Agent{}, err
	}
	if !ok {
		return Agent{}, fmt.Errorf("%w: %s", ErrAgentUnknown, name)
	}
	if a.Revoked != 0 {
		return a, nil
	}
	a.Revoked, a.RevokedBy, a.Reason = now, by, reason
	return a, putAgent(tx.Bucket(bucketAgents), &a)
}

func putAgent(b *bolt.Bucket, a *Agent) error {
	v, err := msgpack.Marshal(a)
	if err != nil {
		return err
	}
	return b.Put([]byte(a.Name), v)
}
