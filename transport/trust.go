package transport

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/time/rate"
)

// CloseRevoked closes the connections of an agent an operator revoked.
const CloseRevoked = 4003

// maxAuthFails is how many refused auth attempts a connection may make
// before it is closed (CloseAuthTimeout): each costs a signature check
// and an audit event, and a client that holds the right key needs one.
const maxAuthFails = 3

// identity is what a connection proved in its handshake. rec is nil for a
// dev connection (alg "none"), which the ACL does not restrict.
type identity struct {
	rec   *auth.Agent
	key   auth.Key
	limit *agentLimit // nil: unlimited
}

// agentLimit holds an agent's rate limits on this node, shared by its
// connections here.
type agentLimit struct {
	mu          sync.Mutex
	msgs, bytes *rate.Limiter
}

func newAgentLimit(l auth.Limits) *agentLimit {
	if l.MsgsPerSec <= 0 && l.BytesPerSec <= 0 {
		return nil
	}
	a := &agentLimit{}
	if l.MsgsPerSec > 0 {
		a.msgs = rate.NewLimiter(rate.Limit(l.MsgsPerSec), max(1, int(l.MsgsPerSec)))
	}
	if l.BytesPerSec > 0 {
		a.bytes = rate.NewLimiter(rate.Limit(l.BytesPerSec), max(1, int(l.BytesPerSec)))
	}
	return a
}

// allow takes one message of n bytes, or nothing when either limit is
// exhausted. A frame larger than a second's worth of bytes passes only at
// a full bucket, as the burst is one second.
func (a *agentLimit) allow(n int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.msgs != nil && a.msgs.TokensAt(now) < 1 {
		return false
	}
	if a.bytes != nil {
		n = min(n, a.bytes.Burst())
		if !a.bytes.AllowN(now, n) {
			return false
		}
	}
	if a.msgs != nil {
		a.msgs.AllowN(now, 1)
	}
	return true
}

// trust tracks the authenticated connections of each agent on this node,
// for revocation and shared rate limits.
type trust struct {
	mu       sync.Mutex
	agents   map[string]map[*conn]struct{}
	limits   map[string]*agentLimit
	onRevoke []func(agent string)
	onEffect []func(queue.Effect)
}

// OnNodeEffect adds a function called, on the apply path, with every
// other effect addressed to the node rather than a connection (such as
// fsm.RedisTouched). It must not block.
func (s *Server) OnNodeEffect(fn func(queue.Effect)) {
	s.trust.mu.Lock()
	s.trust.onEffect = append(s.trust.onEffect, fn)
	s.trust.mu.Unlock()
}

// OnRevoke adds a function called, on the apply path, with each agent an
// operator revokes: the other faces of the node (the Redis port) close
// that agent's connections too. It must not block.
func (s *Server) OnRevoke(fn func(agent string)) {
	s.trust.mu.Lock()
	s.trust.onRevoke = append(s.trust.onRevoke, fn)
	s.trust.mu.Unlock()
}

// RecordAuthEvent proposes an authentication decision made by another
// face of the node for the audit log, with the same bounds as the
// WebSocket server's own.
func (s *Server) RecordAuthEvent(ev fsm.AuthEventArgs) { s.audit.record(nil, ev) }

// nodeSink receives the effects addressed to the node.
type nodeSink struct{ s *Server }

func (n nodeSink) Push(e queue.Effect) {
	n.s.trust.mu.Lock()
	revokeHooks, effectHooks := n.s.trust.onRevoke, n.s.trust.onEffect
	n.s.trust.mu.Unlock()
	if r, ok := e.(*fsm.AgentRevoked); ok {
		n.s.revoke(r.Agent)
		for _, h := range revokeHooks {
			h(r.Agent)
		}
		return
	}
	if u, ok := e.(*task.Updated); ok {
		n.s.taskUpdated(u)
		return
	}
	for _, h := range effectHooks {
		h(e)
	}
}

// track records an authenticated connection under its agent and returns
// the agent's shared limiter.
func (s *Server) track(c *conn, lim auth.Limits) *agentLimit {
	s.trust.mu.Lock()
	defer s.trust.mu.Unlock()
	if s.trust.agents == nil {
		s.trust.agents = map[string]map[*conn]struct{}{}
		s.trust.limits = map[string]*agentLimit{}
	}
	set := s.trust.agents[c.agent]
	if set == nil {
		set = map[*conn]struct{}{}
		s.trust.agents[c.agent] = set
	}
	set[c] = struct{}{}
	l, ok := s.trust.limits[c.agent]
	if !ok {
		l = newAgentLimit(lim)
		s.trust.limits[c.agent] = l
	}
	return l
}

// untrack forgets a closed connection.
func (s *Server) untrack(c *conn) {
	s.trust.mu.Lock()
	defer s.trust.mu.Unlock()
	set := s.trust.agents[c.agent]
	if _, ok := set[c]; !ok {
		return
	}
	delete(set, c)
	if len(set) == 0 {
		delete(s.trust.agents, c.agent)
		delete(s.trust.limits, c.agent)
	}
}

// revoke closes every connection of agent on this node. It runs on the
// apply path and does not block.
func (s *Server) revoke(agent string) {
	s.trust.mu.Lock()
	conns := make([]*conn, 0, len(s.trust.agents[agent]))
	for c := range s.trust.agents[agent] {
		conns = append(conns, c)
	}
	s.trust.mu.Unlock()
	for _, c := range conns {
		c.shutdown(CloseRevoked, "agent revoked")
	}
	if len(conns) > 0 {
		s.log.Info("closed the connections of a revoked agent", "agent", agent, "connections", len(conns))
	}
}

// lookupAgent reads an agent's record from this node's state.
func (s *Server) lookupAgent(name string) (*auth.Agent, error) {
	var rec auth.Agent
	var ok bool
	err := s.node.Read(func(tx *bolt.Tx) (err error) {
		rec, ok, err = auth.GetAgent(tx, name)
		return err
	})
	if err != nil || !ok {
		return nil, err
	}
	return &rec, nil
}

// agentKey is the verification key of an agent record.
func (s *Server) agentKey(rec *auth.Agent) (auth.Key, error) {
	switch rec.Alg {
	case auth.AlgEd25519:
		return auth.Key{Alg: auth.AlgEd25519, Public: rec.Public}, nil
	case auth.AlgHMACSHA256:
		ck := s.opt.ClusterKey
		if ck == nil {
			return auth.Key{}, errors.New("this node has no cluster key (--cluster-key-file), so it cannot check hmac-sha256 agents")
		}
		secret, err := ck.Open(rec.Name, rec.Sealed)
		if err != nil {
			return auth.Key{}, fmt.Errorf("the secret of %s was sealed under cluster key %s, this node has %s: %w", rec.Name, rec.SealKey, ck.ID(), err)
		}
		return auth.Key{Alg: auth.AlgHMACSHA256, Secret: secret}, nil
	}
	return auth.Key{}, fmt.Errorf("unknown alg %q", rec.Alg)
}

// authWithKey runs the challenge-response handshake of an agent with an
// identity record.
func (c *conn) authWithKey(r *request, agent, alg string) error {
	sig, err := r.str("sig", true)
	if err != nil {
		return err
	}
	fail := func(code, why string) error {
		c.s.audit.record(c, fsm.AuthEventArgs{Kind: "auth.fail", Agent: agent, Code: code, Detail: why})
		return perr(code, "%s", why)
	}
	rec, err := c.s.lookupAgent(agent)
	if err != nil {
		return err
	}
	if rec == nil {
		return fail("unauthenticated", fmt.Sprintf("agent %q is unknown", agent))
	}
	if !rec.Active() {
		return fail("unauthenticated", fmt.Sprintf("agent %q is revoked", agent))
	}
	if rec.Alg != alg {
		return fail("unauthenticated", fmt.Sprintf("agent %q authenticates with %s, not %s", agent, rec.Alg, alg))
	}
	key, err := c.s.agentKey(rec)
	if err != nil {
		c.s.log.Error("cannot check an agent's signature", "agent", agent, "err", err)
		return fail("unauthenticated", fmt.Sprintf("this node cannot check %s for agent %q; see its log", alg, agent))
	}
	if err := auth.VerifyChallenge(c.nonce, agent, sig, key); err != nil {
		return fail("bad_signature", "the signature of the challenge does not verify")
	}
	c.agent = agent
	c.ident = &identity{rec: rec, key: key}
	c.ident.limit = c.s.track(c, rec.Limits)
	// A revocation applied after the read above closes this connection
	// through track; one applied before it is seen here.
	if again, err := c.s.lookupAgent(agent); err != nil || again == nil || !again.Active() {
		c.s.untrack(c)
		return fail("unauthenticated", fmt.Sprintf("agent %q is revoked", agent))
	}
	return nil
}

// checkEnvelope verifies a parsed envelope for this connection: sender,
// timestamp window and signature. Dev connections get the dev checks.
func (c *conn) checkEnvelope(env *auth.Envelope) error {
	if c.ident == nil || c.ident.rec == nil {
		return env.CheckDev(c.agent, c.s.node.Now(), c.s.opt.SkewMs)
	}
	var err error
	if env.From != c.agent {
		err = fmt.Errorf("%w: msg.from is %q but this connection is %q", auth.ErrWrongSender, env.From, c.agent)
	} else if d := env.TS - c.s.node.Now(); d > c.s.opt.SkewMs || d < -c.s.opt.SkewMs {
		err = fmt.Errorf("%w: msg.ts is %d ms from the server clock", auth.ErrSkew, d)
	} else {
		err = auth.VerifyEnvelope(env, c.ident.key)
	}
	if err != nil {
		code, msg := errorCode(err)
		if code != "bad_request" {
			c.s.audit.record(c, fsm.AuthEventArgs{Kind: code, Agent: c.agent, Subject: env.ID, Code: code, Detail: msg})
		}
	}
	return err
}

// allow checks the connection's ACL for op on name; a denial is audited.
func (c *conn) allow(op, name string) error {
	if c.ident == nil || c.ident.rec == nil || c.ident.rec.ACL.Allows(op, name) {
		return nil
	}
	c.s.audit.record(c, fsm.AuthEventArgs{Kind: "denied", Agent: c.agent, Subject: op + " " + name, Code: "forbidden"})
	return perr("forbidden", "agent %q may not %s %q", c.agent, op, name)
}

// allowQueue checks access to a queue's settings or counts: any grant to
// enqueue to or consume from it.
func (c *conn) allowQueue(name string) error {
	if auth.IsInbox(name) || c.ident == nil || c.ident.rec == nil ||
		c.ident.rec.ACL.Allows(auth.OpEnqueue, name) || c.ident.rec.ACL.Allows(auth.OpConsume, name) {
		return nil
	}
	return c.allow(auth.OpConsume, name)
}

// limited reports whether a request frame of n bytes passes the agent's
// rate limits; a refusal is audited.
func (c *conn) limited(n int) bool {
	if c.ident == nil || c.ident.limit == nil {
		return false
	}
	ok := c.ident.limit.allow(n)
	if !ok {
		c.s.audit.record(c, fsm.AuthEventArgs{Kind: "rate_limited", Agent: c.agent, Code: "rate_limited"})
	}
	return !ok
}

// auditor proposes auth events, at most perWindow of each kind per
// window on this node; the events beyond are counted in the next one
// recorded, or in a summary at the end of the window, so a flood of
// failures costs the log a bounded number of entries.
type auditor struct {
	s         *Server
	mu        sync.Mutex
	kinds     map[string]*auditWindow
	window    time.Duration
	perWindow int
}

type auditWindow struct {
	start      time.Time
	n          int
	suppressed uint64
	summary    bool // a summary is scheduled for the end of the window
}

func (a *auditor) record(c *conn, ev fsm.AuthEventArgs) {
	if c != nil && ev.Kind == "auth.fail" {
		countAuthFailure(a.s.node, transportWebSocket, ev.Code)
	}
	ev.Node = a.s.node.ID()
	if c != nil && c.ws != nil {
		ev.Remote = c.ws.RemoteAddr().String()
	}
	now := time.Now()
	a.mu.Lock()
	if a.kinds == nil {
		a.kinds = map[string]*auditWindow{}
	}
	w := a.kinds[ev.Kind]
	if w == nil {
		w = &auditWindow{start: now}
		a.kinds[ev.Kind] = w
	}
	if now.Sub(w.start) >= a.window {
		w.start, w.n = now, 0
	}
	if w.n >= a.perWindow {
		w.suppressed++
		if !w.summary {
			w.summary = true
			kind := ev.Kind
			time.AfterFunc(a.window-now.Sub(w.start), func() { a.flush(kind) })
		}
		a.mu.Unlock()
		return
	}
	w.n++
	ev.Suppressed, w.suppressed = w.suppressed, 0
	a.mu.Unlock()
	a.propose(ev)
}

// flush records how many events of kind were suppressed in the window
// that just ended.
func (a *auditor) flush(kind string) {
	a.mu.Lock()
	w := a.kinds[kind]
	n := w.suppressed
	w.suppressed, w.summary = 0, false
	a.mu.Unlock()
	if n > 0 {
		a.propose(fsm.AuthEventArgs{Kind: kind, Node: a.s.node.ID(), Detail: "events of this kind not recorded individually", Suppressed: n})
	}
}

func (a *auditor) propose(ev fsm.AuthEventArgs) {
	cmd, err := fsm.NewCommand(fsm.TypeAuthEvent, "", 0, &ev)
	if err != nil {
		return
	}
	cmd.Actor = ev.Agent
	a.s.node.SubmitAsync(cmd, func(err error) {
		if err != nil {
			a.s.log.Debug("auth event not recorded", "kind", ev.Kind, "agent", ev.Agent, "err", err)
		}
	})
}
