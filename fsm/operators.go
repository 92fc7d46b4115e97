package fsm

import (
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/queue"
)

// Operator commands (docs/ops/ui.md): the humans of the admin UI, their
// passkeys, invites and sessions (package operator).
const (
	TypeOperatorInvite MessageType = 32 // an operator (or the local socket) invites one
	TypeOperatorEnroll MessageType = 33 // an invite is redeemed with a new passkey
	TypeOperatorUse    MessageType = 34 // a passkey assertion: a login or a re-authentication
	TypeOperatorLogout MessageType = 35 // a session ends
	TypeOperatorRemove MessageType = 36 // an operator is removed with its passkeys and sessions
)

// OperatorInviteArgs stores an invite under the hash of its code, which
// the proposing node made and only its caller sees.
type OperatorInviteArgs struct {
	Name     string   `msgpack:"n"`
	CodeHash [32]byte `msgpack:"h"`
	TTLMs    int64    `msgpack:"t"`
}

// OperatorEnrollArgs redeems an invite: the passkey the browser made, the
// user handle the node chose for a new operator, and the first session.
type OperatorEnrollArgs struct {
	CodeHash     [32]byte         `msgpack:"h"`
	Handle       []byte           `msgpack:"u"`
	Cred         operator.NewCred `msgpack:"c"`
	Session      [32]byte         `msgpack:"s"`
	SessionTTLMs int64            `msgpack:"t"`
}

// OperatorUseArgs records a verified passkey assertion. With Session it
// opens a session (a login).
type OperatorUseArgs struct {
	Name         string    `msgpack:"n"`
	CredID       []byte    `msgpack:"i"`
	SignCount    uint32    `msgpack:"c"`
	Session      *[32]byte `msgpack:"s,omitempty"`
	SessionTTLMs int64     `msgpack:"t,omitempty"`
}

// OperatorLogoutArgs ends a session.
type OperatorLogoutArgs struct {
	Session [32]byte `msgpack:"s"`
}

// OperatorRemoveArgs removes an operator.
type OperatorRemoveArgs struct {
	Name string `msgpack:"n"`
}

// OperatorResult answers an invite, an enrollment or a logout with the
// operator's name, and an invite with when it expires.
type OperatorResult struct {
	Name    string `msgpack:"n"`
	Expires int64  `msgpack:"e,omitempty"`
}

func operatorErr(err error) error {
	return asBusiness(err, operator.ErrNotFound, queue.ErrNotFound, operator.ErrConflict, queue.ErrConflict,
		operator.ErrBadRequest, queue.ErrBadRequest)
}

func init() {
	register(TypeOperatorInvite, func(a *OperatorInviteArgs) error {
		return operatorErr(operator.CheckName(a.Name))
	}, func(t *Tx, a *OperatorInviteArgs) (any, error) {
		if err := operator.AddInvite(t.Bolt(), t.Now(), t.Actor(), a.Name, a.CodeHash, a.TTLMs); err != nil {
			return nil, operatorErr(err)
		}
		return &OperatorResult{Name: a.Name, Expires: t.Now() + a.TTLMs}, nil
	})
	register(TypeOperatorEnroll, func(a *OperatorEnrollArgs) error {
		return operatorErr(a.Cred.Check())
	}, func(t *Tx, a *OperatorEnrollArgs) (any, error) {
		name, err := operator.Enroll(t.Bolt(), t.Now(), a.CodeHash, a.Handle, a.Cred, a.Session, a.SessionTTLMs)
		if err != nil {
			return nil, operatorErr(err)
		}
		return &OperatorResult{Name: name}, nil
	})
	register(TypeOperatorUse, func(a *OperatorUseArgs) error {
		if len(a.CredID) == 0 {
			return badArg("passkey", "is named by its id")
		}
		return operatorErr(operator.CheckName(a.Name))
	}, func(t *Tx, a *OperatorUseArgs) (any, error) {
		return nil, operatorErr(operator.Use(t.Bolt(), t.Now(), a.Name, a.CredID, a.SignCount, a.Session, a.SessionTTLMs))
	})
	register(TypeOperatorLogout, func(a *OperatorLogoutArgs) error { return nil },
		func(t *Tx, a *OperatorLogoutArgs) (any, error) {
			s, err := operator.GetSession(t.Bolt(), a.Session)
			if err != nil || s == nil {
				return nil, err
			}
			return &OperatorResult{Name: s.Operator}, operator.EndSession(t.Bolt(), a.Session)
		})
	register(TypeOperatorRemove, func(a *OperatorRemoveArgs) error {
		return operatorErr(operator.CheckName(a.Name))
	}, func(t *Tx, a *OperatorRemoveArgs) (any, error) {
		return nil, operatorErr(operator.Remove(t.Bolt(), a.Name))
	})
}
