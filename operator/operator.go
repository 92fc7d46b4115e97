// Package operator keeps the human operators of the admin UI in state.db:
// who they are, their WebAuthn passkeys, the one-time invites that let
// them enroll one, and their login sessions. Everything here is applied by
// the FSM from replicated commands, so any node can serve the UI and a
// logout on one node ends the session on all of them.
//
// Secrets never enter the log: an invite is stored under the SHA-256 of
// its code, a session under the SHA-256 of its cookie token. A passkey's
// public half is stored as go-webauthn's credential record (opaque JSON
// here), with its id and signature counter kept beside it so that the FSM
// itself refuses a counter that went backwards.
//
// Times are the applying entry's leader-stamped time (now), never the
// clock of the replica, so every replica stores the same bytes.
package operator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/mcpd/mcpd/auth"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Errors; the FSM maps them to reply codes.
var (
	ErrBadRequest = errors.New("bad request")
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflict")
)

// Bounds on what a command may ask for.
const (
	MinInviteTTLMs  = 60_000
	MaxInviteTTLMs  = 7 * 24 * 3_600_000
	MinSessionTTLMs = 60_000
	MaxSessionTTLMs = 30 * 24 * 3_600_000
	MaxCreds        = 16   // passkeys per operator
	MaxCredData     = 8192 // bytes of one credential record
	MaxOperators    = 1024
)

var (
	bOperators = []byte("operators")
	bCreds     = []byte("operator_creds") // credential id -> operator name
	bInvites   = []byte("operator_invites")
	bSessions  = []byte("operator_sessions")
)

// Operator is one human operator.
type Operator struct {
	Name string `msgpack:"n" json:"name"`
	// Handle is the WebAuthn user handle, random, chosen when the first
	// passkey was enrolled.
	Handle    []byte `msgpack:"h" json:"-"`
	Creds     []Cred `msgpack:"c" json:"passkeys"`
	Created   int64  `msgpack:"t" json:"created_ms"`
	InvitedBy string `msgpack:"b" json:"invited_by"`
	LastLogin int64  `msgpack:"l,omitempty" json:"last_login_ms,omitempty"`
}

// Cred is one passkey of an operator.
type Cred struct {
	ID        []byte `msgpack:"i" json:"id"`
	SignCount uint32 `msgpack:"s" json:"sign_count"`
	// Data is go-webauthn's credential record, JSON.
	Data     []byte `msgpack:"d" json:"-"`
	Added    int64  `msgpack:"a" json:"added_ms"`
	LastUsed int64  `msgpack:"u,omitempty" json:"last_used_ms,omitempty"`
}

// Invite is a pending invitation, stored under the hash of its code.
type Invite struct {
	Name    string `msgpack:"n" json:"name"`
	By      string `msgpack:"b" json:"invited_by"`
	Created int64  `msgpack:"t" json:"created_ms"`
	Expires int64  `msgpack:"e" json:"expires_ms"`
}

// Session is a login, stored under the hash of its cookie token.
type Session struct {
	Operator string `msgpack:"o"`
	Created  int64  `msgpack:"t"`
	Expires  int64  `msgpack:"e"`
}

// NewCred is a passkey to store: its id, counter and record.
type NewCred struct {
	ID        []byte `msgpack:"i"`
	SignCount uint32 `msgpack:"s"`
	Data      []byte `msgpack:"d"`
}

// Check validates a credential before it reaches state.
func (c *NewCred) Check() error {
	if len(c.ID) == 0 || len(c.ID) > 1023 {
		return fmt.Errorf("%w: a passkey id is 1 to 1023 bytes", ErrBadRequest)
	}
	if len(c.Data) == 0 || len(c.Data) > MaxCredData || !json.Valid(c.Data) {
		return fmt.Errorf("%w: a passkey record is JSON of at most %d bytes", ErrBadRequest, MaxCredData)
	}
	return nil
}

// CheckName validates an operator name: the rules of agent names.
func CheckName(name string) error {
	if !auth.ValidAgentName(name) {
		return fmt.Errorf("%w: %q is not an operator name (letters, digits, . _ - @, at most 128)", ErrBadRequest, name)
	}
	return nil
}

// CreateBuckets creates the package's buckets; the FSM calls it when it
// opens state.db (after a restore too), so the functions that write find
// them, and a refused command never creates one.
func CreateBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{bOperators, bCreds, bInvites, bSessions} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

func get[T any](b *bolt.Bucket, key []byte) (*T, error) {
	if b == nil {
		return nil, nil
	}
	raw := b.Get(key)
	if raw == nil {
		return nil, nil
	}
	v := new(T)
	if err := msgpack.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("operator record %x: %w", key, err)
	}
	return v, nil
}

func put(b *bolt.Bucket, key []byte, v any) error {
	raw, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// AddInvite stores an invite for name, valid for ttlMs from now. name may
// be an operator who exists: the invite then adds a passkey to it.
func AddInvite(tx *bolt.Tx, now int64, by, name string, codeHash [32]byte, ttlMs int64) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if ttlMs < MinInviteTTLMs || ttlMs > MaxInviteTTLMs {
		return fmt.Errorf("%w: an invite lives 1 minute to 7 days", ErrBadRequest)
	}
	b := tx.Bucket(bInvites)
	return putFresh(b, now, codeHash, &Invite{Name: name, By: by, Created: now, Expires: now + ttlMs}, "invite code")
}

// expiring is a record that lapses: an invite or a session.
type expiring[T any] interface {
	*T
	expiry() int64
}

func (in *Invite) expiry() int64 { return in.Expires }
func (s *Session) expiry() int64 { return s.Expires }

// putFresh stores v under key in b after deleting the records of b that
// expired by now; a key in use is a conflict.
func putFresh[T any, P expiring[T]](b *bolt.Bucket, now int64, key [32]byte, v P, what string) error {
	if err := deleteWhere(b, func(raw []byte) (bool, error) {
		old := P(new(T))
		err := msgpack.Unmarshal(raw, old)
		return old.expiry() <= now, err
	}); err != nil {
		return err
	}
	if b.Get(key[:]) != nil {
		return fmt.Errorf("%w: that %s exists", ErrConflict, what)
	}
	return put(b, key[:], v)
}

// Enroll consumes the invite with codeHash and stores cred as a passkey
// of the invited operator, creating the operator (with user handle) if it
// is new, then opens a session. It answers the operator's name.
func Enroll(tx *bolt.Tx, now int64, codeHash [32]byte, handle []byte, cred NewCred, sess [32]byte, sessTTLMs int64) (string, error) {
	if err := cred.Check(); err != nil {
		return "", err
	}
	inv := tx.Bucket(bInvites)
	in, err := get[Invite](inv, codeHash[:])
	if err != nil {
		return "", err
	}
	if in == nil || in.Expires <= now {
		return "", fmt.Errorf("%w: no such invite, or it expired or was used", ErrNotFound)
	}
	ops := tx.Bucket(bOperators)
	creds := tx.Bucket(bCreds)
	if creds.Get(cred.ID) != nil {
		return "", fmt.Errorf("%w: that passkey is already enrolled", ErrConflict)
	}
	op, err := get[Operator](ops, []byte(in.Name))
	if err != nil {
		return "", err
	}
	if op == nil {
		if len(handle) < 16 || len(handle) > 64 {
			return "", fmt.Errorf("%w: a user handle is 16 to 64 bytes", ErrBadRequest)
		}
		if ops.Stats().KeyN >= MaxOperators {
			return "", fmt.Errorf("%w: at most %d operators", ErrConflict, MaxOperators)
		}
		op = &Operator{Name: in.Name, Handle: bytes.Clone(handle), Created: now, InvitedBy: in.By}
	}
	if len(op.Creds) >= MaxCreds {
		return "", fmt.Errorf("%w: operator %s has %d passkeys, the most there may be", ErrConflict, op.Name, MaxCreds)
	}
	op.Creds = append(op.Creds, Cred{ID: cred.ID, SignCount: cred.SignCount, Data: cred.Data, Added: now, LastUsed: now})
	op.LastLogin = now
	if err := inv.Delete(codeHash[:]); err != nil {
		return "", err
	}
	if err := creds.Put(cred.ID, []byte(op.Name)); err != nil {
		return "", err
	}
	if err := put(ops, []byte(op.Name), op); err != nil {
		return "", err
	}
	return op.Name, openSession(tx, now, op.Name, sess, sessTTLMs)
}

func openSession(tx *bolt.Tx, now int64, name string, sess [32]byte, ttlMs int64) error {
	if ttlMs < MinSessionTTLMs || ttlMs > MaxSessionTTLMs {
		return fmt.Errorf("%w: a session lives 1 minute to 30 days", ErrBadRequest)
	}
	b := tx.Bucket(bSessions)
	return putFresh(b, now, sess, &Session{Operator: name, Created: now, Expires: now + ttlMs}, "session")
}

// Use records an assertion made with passkey credID of operator name: the
// counter must have gone forward (a passkey whose counter stays zero, as
// synced passkeys do, is exempt). With a session hash it also opens a
// session: that is a login; without, it is a re-authentication.
func Use(tx *bolt.Tx, now int64, name string, credID []byte, signCount uint32, sess *[32]byte, sessTTLMs int64) error {
	ops := tx.Bucket(bOperators)
	op, err := get[Operator](ops, []byte(name))
	if err != nil {
		return err
	}
	if op == nil {
		return fmt.Errorf("%w: no operator %q", ErrNotFound, name)
	}
	i := op.cred(credID)
	if i < 0 {
		return fmt.Errorf("%w: operator %s has no such passkey", ErrNotFound, name)
	}
	c := &op.Creds[i]
	if (c.SignCount != 0 || signCount != 0) && signCount <= c.SignCount {
		return fmt.Errorf("%w: the passkey's signature counter went from %d to %d: it may have been cloned", ErrConflict, c.SignCount, signCount)
	}
	c.SignCount, c.LastUsed = signCount, now
	if sess != nil {
		op.LastLogin = now
		if err := openSession(tx, now, name, *sess, sessTTLMs); err != nil {
			return err
		}
	}
	return put(ops, []byte(name), op)
}

func (op *Operator) cred(id []byte) int {
	for i := range op.Creds {
		if bytes.Equal(op.Creds[i].ID, id) {
			return i
		}
	}
	return -1
}

// EndSession deletes a session; ending one that is gone is no error.
func EndSession(tx *bolt.Tx, sess [32]byte) error {
	b := tx.Bucket(bSessions)
	return b.Delete(sess[:])
}

// Remove deletes an operator with its passkeys, sessions and invites.
func Remove(tx *bolt.Tx, name string) error {
	ops := tx.Bucket(bOperators)
	op, err := get[Operator](ops, []byte(name))
	if err != nil {
		return err
	}
	invites := tx.Bucket(bInvites)
	hadInvite := false
	if err := deleteWhere(invites, func(raw []byte) (bool, error) {
		var v Invite
		err := msgpack.Unmarshal(raw, &v)
		hadInvite = hadInvite || v.Name == name
		return v.Name == name, err
	}); err != nil {
		return err
	}
	if op == nil {
		if hadInvite {
			return nil
		}
		return fmt.Errorf("%w: no operator %q", ErrNotFound, name)
	}
	creds := tx.Bucket(bCreds)
	for _, c := range op.Creds {
		if err := creds.Delete(c.ID); err != nil {
			return err
		}
	}
	sessions := tx.Bucket(bSessions)
	if err := deleteWhere(sessions, func(raw []byte) (bool, error) {
		var v Session
		err := msgpack.Unmarshal(raw, &v)
		return v.Operator == name, err
	}); err != nil {
		return err
	}
	return ops.Delete([]byte(name))
}

func deleteWhere(b *bolt.Bucket, match func([]byte) (bool, error)) error {
	var keys [][]byte
	err := b.ForEach(func(k, v []byte) error {
		ok, err := match(v)
		if ok {
			keys = append(keys, k)
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Get reads an operator; nil when there is none.
func Get(tx *bolt.Tx, name string) (*Operator, error) {
	return get[Operator](tx.Bucket(bOperators), []byte(name))
}

// ByCred reads the operator a passkey belongs to; nil when none.
func ByCred(tx *bolt.Tx, credID []byte) (*Operator, error) {
	b := tx.Bucket(bCreds)
	if b == nil {
		return nil, nil
	}
	name := b.Get(credID)
	if name == nil {
		return nil, nil
	}
	return Get(tx, string(name))
}

// ByHandle reads the operator with a WebAuthn user handle; nil when none.
func ByHandle(tx *bolt.Tx, handle []byte) (*Operator, error) {
	var found *Operator
	err := List(tx, func(op *Operator) error {
		if found == nil && bytes.Equal(op.Handle, handle) {
			found = op
		}
		return nil
	})
	return found, err
}

// List calls fn for every operator, by name.
func List(tx *bolt.Tx, fn func(*Operator) error) error {
	b := tx.Bucket(bOperators)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		var op Operator
		if err := msgpack.Unmarshal(v, &op); err != nil {
			return fmt.Errorf("operator %s: %w", k, err)
		}
		return fn(&op)
	})
}

// Invites lists the pending invites (expired ones not yet pruned
// included; the caller compares Expires with its clock), by expiry.
func Invites(tx *bolt.Tx) ([]Invite, error) {
	var out []Invite
	if b := tx.Bucket(bInvites); b != nil {
		err := b.ForEach(func(_, v []byte) error {
			var in Invite
			if err := msgpack.Unmarshal(v, &in); err != nil {
				return err
			}
			out = append(out, in)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Expires < out[j].Expires })
	return out, nil
}

// GetSession reads a session; nil when there is none. The caller checks
// Expires against its clock.
func GetSession(tx *bolt.Tx, sess [32]byte) (*Session, error) {
	return get[Session](tx.Bucket(bSessions), sess[:])
}

// Count is how many operators there are.
func Count(tx *bolt.Tx) int {
	if b := tx.Bucket(bOperators); b != nil {
		return b.Stats().KeyN
	}
	return 0
}
