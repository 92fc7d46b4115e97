package webui

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/task"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// user is an operator as go-webauthn sees it.
type user struct {
	op    *operator.Operator
	creds []webauthn.Credential
}

func (u *user) WebAuthnID() []byte                         { return u.op.Handle }
func (u *user) WebAuthnName() string                       { return u.op.Name }
func (u *user) WebAuthnDisplayName() string                { return u.op.Name }
func (u *user) WebAuthnCredentials() []webauthn.Credential { return u.creds }

// newUser decodes an operator's passkeys; the counter kept beside each
// record is the latest.
func newUser(op *operator.Operator) (*user, error) {
	u := &user{op: op}
	for _, c := range op.Creds {
		var wc webauthn.Credential
		if err := json.Unmarshal(c.Data, &wc); err != nil {
			return nil, fmt.Errorf("passkey of %s: %w", op.Name, err)
		}
		wc.Authenticator.SignCount = c.SignCount
		u.creds = append(u.creds, wc)
	}
	return u, nil
}

// readBody reads a ceremony request body, bounded.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCeremonyBody))
	if err != nil {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", "request body: "+err.Error())
		return nil, false
	}
	return b, true
}

func busy(w http.ResponseWriter) {
	transport.WriteError(w, http.StatusTooManyRequests, "rate_limited", "too many passkey ceremonies in flight from here or on this node; finish one or wait five minutes")
}

// refused answers a failed ceremony. The details go to the log, not to
// whoever is trying codes or replaying assertions.
func (s *Server) refused(w http.ResponseWriter, what string, err error) {
	s.log.Warn("passkey ceremony refused", "ceremony", what, "err", err)
	transport.WriteError(w, http.StatusUnauthorized, "unauthenticated", what+" failed: "+publicReason(err))
}

func publicReason(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Type
	}
	return "the passkey was not accepted"
}

// enrollBegin answers POST /ui/api/enroll/begin {"code": ...}: the
// options of navigator.credentials.create for the invited operator.
func (s *Server) enrollBegin(w http.ResponseWriter, r *http.Request) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Code string `json:"code"`
	}
	if err := json.Unmarshal(b, &req); err != nil || strings.TrimSpace(req.Code) == "" {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", `the body is {"code": "the invite code"}`)
		return
	}
	hash := operator.HashCode(req.Code)
	var in *operator.Invite
	var op *operator.Operator
	err := s.node.Read(func(tx *bolt.Tx) (err error) {
		if in, err = operator.GetInvite(tx, hash); err != nil || in == nil {
			return err
		}
		op, err = operator.Get(tx, in.Name)
		return err
	})
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	if in == nil || in.Expires <= time.Now().UnixMilli() {
		s.log.Warn("enrollment with an unknown or expired invite code", "remote", r.RemoteAddr)
		transport.WriteError(w, http.StatusNotFound, "not_found", "no such invite code, or it expired or was used: ask for a new one ('mcpd operator invite NAME')")
		return
	}
	c := &ceremony{kind: "enroll", codeHash: hash, name: in.Name}
	if op == nil {
		c.handle = make([]byte, 32)
		_, _ = rand.Read(c.handle)
		op = &operator.Operator{Name: in.Name, Handle: c.handle}
	}
	u, err := newUser(op)
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	exclude := make([]protocol.CredentialDescriptor, len(u.creds))
	for i := range u.creds {
		exclude[i] = u.creds[i].Descriptor()
	}
	opts, data, err := s.wa.BeginRegistration(u, webauthn.WithExclusions(exclude))
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	c.data = *data
	if !s.begin(w, r, c) {
		busy(w)
		return
	}
	transport.WriteJSON(w, http.StatusOK, map[string]any{"operator": in.Name, "options": opts})
}

// enrollFinish answers POST /ui/api/enroll/finish with the browser's new
// credential: it stores the passkey, spends the invite and logs in.
func (s *Server) enrollFinish(w http.ResponseWriter, r *http.Request) {
	c, ok := s.finish(w, r, "enroll")
	if !ok {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", "no enrollment in progress (or it took over 5 minutes): start again")
		return
	}
	handle := c.handle
	var op *operator.Operator
	if err := s.node.Read(func(tx *bolt.Tx) (err error) {
		op, err = operator.Get(tx, c.name)
		return err
	}); err != nil {
		transport.WriteFail(w, err)
		return
	}
	if op == nil {
		op = &operator.Operator{Name: c.name, Handle: handle}
	}
	u, err := newUser(op)
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	cred, err := s.wa.FinishRegistration(u, c.data, r)
	if err != nil {
		s.refused(w, "enrollment", err)
		return
	}
	rec, err := json.Marshal(cred)
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	token := operator.NewToken()
	args := &fsm.OperatorEnrollArgs{CodeHash: c.codeHash, Handle: handle,
		Cred:    operator.NewCred{ID: cred.ID, SignCount: cred.Authenticator.SignCount, Data: rec},
		Session: operator.HashToken(token), SessionTTLMs: s.cfg.SessionTTL.Milliseconds()}
	if _, err := s.admin.Call(r.Context(), "operator:"+c.name, fsm.TypeOperatorEnroll, args); err != nil {
		transport.WriteFail(w, err)
		return
	}
	s.setSession(w, token)
	s.log.Info("operator enrolled a passkey", "operator", c.name)
	transport.WriteJSON(w, http.StatusOK, map[string]any{"operator": c.name, "csrf": operator.CSRFToken(token)})
}

// loginBegin answers POST /ui/api/login/begin: the options of
// navigator.credentials.get for any of this site's passkeys.
func (s *Server) loginBegin(w http.ResponseWriter, r *http.Request) {
	opts, data, err := s.wa.BeginDiscoverableLogin()
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	if !s.begin(w, r, &ceremony{kind: "login", data: *data}) {
		busy(w)
		return
	}
	transport.WriteJSON(w, http.StatusOK, map[string]any{"options": opts})
}

// findUser is go-webauthn's discoverable-login handler: the operator a
// passkey's user handle names, who must also own the passkey.
func (s *Server) findUser(rawID, handle []byte) (webauthn.User, error) {
	var op *operator.Operator
	err := s.node.Read(func(tx *bolt.Tx) error {
		byHandle, err := operator.ByHandle(tx, handle)
		if err != nil || byHandle == nil {
			return err
		}
		byCred, err := operator.ByCred(tx, rawID)
		if err != nil || byCred == nil || byCred.Name != byHandle.Name {
			return err
		}
		op = byHandle
		return nil
	})
	if err != nil {
		return nil, err
	}
	if op == nil {
		return nil, errors.New("no operator has that passkey")
	}
	return newUser(op)
}

// loginFinish answers POST /ui/api/login/finish with the assertion: the
// counter is recorded and a session opened.
func (s *Server) loginFinish(w http.ResponseWriter, r *http.Request) {
	c, ok := s.finish(w, r, "login")
	if !ok {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", "no login in progress (or it took over 5 minutes): start again")
		return
	}
	u, cred, err := s.wa.FinishPasskeyLogin(s.findUser, c.data, r)
	if err != nil {
		s.refused(w, "login", err)
		return
	}
	if cred.Authenticator.CloneWarning {
		s.refused(w, "login", errors.New("the passkey's signature counter went backwards: it may have been cloned"))
		return
	}
	name := u.WebAuthnName()
	token := operator.NewToken()
	hash := operator.HashToken(token)
	args := &fsm.OperatorUseArgs{Name: name, CredID: cred.ID, SignCount: cred.Authenticator.SignCount,
		Session: &hash, SessionTTLMs: s.cfg.SessionTTL.Milliseconds()}
	if _, err := s.admin.Call(r.Context(), "operator:"+name, fsm.TypeOperatorUse, args); err != nil {
		transport.WriteFail(w, err)
		return
	}
	s.setSession(w, token)
	s.log.Info("operator logged in", "operator", name)
	transport.WriteJSON(w, http.StatusOK, map[string]any{"operator": name, "csrf": operator.CSRFToken(token)})
}

// decideAction is what a re-authentication for a task decision is bound
// to.
func decideAction(id string, approve bool) string {
	if approve {
		return "approve " + id
	}
	return "deny " + id
}

// reauthBegin answers POST /ui/api/reauth/begin {"task": ID, "approve":
// bool}: the options of navigator.credentials.get for the session's own
// passkeys, bound to that decision.
func (s *Server) reauthBegin(w http.ResponseWriter, r *http.Request) {
	a, ok := s.requireSession(w, r)
	if !ok {
		return
	}
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Task    string `json:"task"`
		Approve bool   `json:"approve"`
	}
	if err := json.Unmarshal(b, &req); err != nil || req.Task == "" {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", `the body is {"task": ID, "approve": true|false}`)
		return
	}
	u, ok := s.sessionUser(w, a)
	if !ok {
		return
	}
	opts, data, err := s.wa.BeginLogin(u, webauthn.WithUserVerification(protocol.VerificationPreferred))
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	if !s.begin(w, r, &ceremony{kind: "reauth", data: *data, session: a.hash, action: decideAction(req.Task, req.Approve)}) {
		busy(w)
		return
	}
	transport.WriteJSON(w, http.StatusOK, map[string]any{"options": opts})
}

func (s *Server) sessionUser(w http.ResponseWriter, a authed) (*user, bool) {
	var op *operator.Operator
	err := s.node.Read(func(tx *bolt.Tx) (err error) {
		op, err = operator.Get(tx, a.name)
		return err
	})
	if err == nil && op == nil {
		err = fmt.Errorf("operator %s is gone", a.name)
	}
	var u *user
	if err == nil {
		u, err = newUser(op)
	}
	if err != nil {
		transport.WriteFail(w, err)
		return nil, false
	}
	return u, true
}

// DecideRequest is the body of POST /ui/api/tasks/{id}/decide.
type DecideRequest struct {
	Approve   bool            `json:"approve"`
	Reason    string          `json:"reason,omitempty"`
	Assertion json.RawMessage `json:"assertion"`
}

// decide answers POST /ui/api/tasks/{id}/decide: the decision, with the
// passkey assertion that reauthBegin asked for. It is recorded under the
// operator's name, as an admin request would be.
func (s *Server) decide(w http.ResponseWriter, r *http.Request) {
	a, ok := s.requireSession(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var req DecideRequest
	if err := json.Unmarshal(b, &req); err != nil || len(req.Assertion) == 0 {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", `the body is {"approve": bool, "reason": "...", "assertion": {...}}`)
		return
	}
	if len(req.Reason) > task.MaxReasonLen {
		transport.WriteError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("reason: at most %d bytes", task.MaxReasonLen))
		return
	}
	c, ok := s.finish(w, r, "reauth")
	if !ok || c.session != a.hash || c.action != decideAction(id, req.Approve) {
		transport.WriteError(w, http.StatusForbidden, "reauth_required", "confirm this decision with your passkey (the confirmation is for one task and one decision)")
		return
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(req.Assertion)
	if err != nil {
		s.refused(w, "confirmation", err)
		return
	}
	u, ok := s.sessionUser(w, a)
	if !ok {
		return
	}
	cred, err := s.wa.ValidateLogin(u, c.data, parsed)
	if err == nil && cred.Authenticator.CloneWarning {
		err = errors.New("the passkey's signature counter went backwards: it may have been cloned")
	}
	if err != nil {
		s.refused(w, "confirmation", err)
		return
	}
	if _, err := s.admin.Call(r.Context(), "operator:"+a.name, fsm.TypeOperatorUse,
		&fsm.OperatorUseArgs{Name: a.name, CredID: cred.ID, SignCount: cred.Authenticator.SignCount}); err != nil {
		transport.WriteFail(w, err)
		return
	}
	verb := "deny"
	if req.Approve {
		verb = "approve"
	}
	body, _ := json.Marshal(transport.AdminDecision{Reason: req.Reason})
	r2, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "/v1/tasks/"+url.PathEscape(id)+"/"+verb, bytes.NewReader(body))
	if err != nil {
		transport.WriteFail(w, err)
		return
	}
	r2.Header.Set("Content-Type", "application/json")
	s.log.Info("task decision confirmed with a passkey", "operator", a.name, "task", id, "decision", verb)
	s.admin.Serve(w, r2, "operator:"+a.name)
}
