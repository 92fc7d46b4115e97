package transport

import (
	"encoding/base64"

	"github.com/mcpd/mcpd/auth"
)

// opAgentKey answers what verifies an agent's envelopes, so that a
// receiver can check the sender of a message itself: the Ed25519 public
// key, or for an hmac-sha256 agent only its algorithm (the secret never
// leaves the cluster; the server checked those signatures before storing).
// Public keys are public: any authenticated agent may ask, and no ACL
// governs it. A revoked agent is answered with "revoked" (unix ms) beside
// its key, so envelopes it signed before stay verifiable. The answer comes
// from this node's applied state, which holds every agent whose envelopes
// this node delivers.
func (c *conn) opAgentKey(r *request) error {
	name, err := r.str("agent", true)
	if err != nil {
		return err
	}
	if !auth.ValidAgentName(name) {
		return badField("agent must be 1 to 64 bytes of [A-Za-z0-9._-]")
	}
	rec, err := c.s.lookupAgent(name)
	if err != nil {
		return err
	}
	if rec == nil {
		return perr("not_found", "agent %q is unknown", name)
	}
	kv := []any{"agent", rec.Name, "alg", rec.Alg}
	if rec.Alg == auth.AlgEd25519 {
		kv = append(kv, "public_key", base64.StdEncoding.EncodeToString(rec.Public))
	}
	if !rec.Active() {
		kv = append(kv, "revoked", rec.Revoked)
	}
	c.sendOK(r.rid, kv...)
	return nil
}
