package transport_test

import (
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/mcpd/mcpd/auth"
)

func TestAgentKey(t *testing.T) {
	s := startSecure(t, 1)
	edKey := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{}, auth.Limits{})
	s.addAgent("legacy", auth.AlgHMACSHA256, auth.ACL{}, auth.Limits{})
	oldKey := s.addAgent("retired", auth.AlgEd25519, auth.ACL{}, auth.Limits{})
	// An agent without any grant may ask: public keys are public.
	sc := s.login(0, "reader", s.addAgent("reader", auth.AlgHMACSHA256, auth.ACL{}, auth.Limits{}))

	f := sc.ok("agent.key", `"agent":"cipher"`)
	if f.str("agent") != "cipher" || f.str("alg") != auth.AlgEd25519 || f.has("revoked") {
		t.Fatalf("ed25519 agent: %s", f)
	}
	pub, err := base64.StdEncoding.DecodeString(f.str("public_key"))
	if err != nil || string(pub) != string(edKey.Public) {
		t.Fatalf("public_key %q is not the key added (%v)", f.str("public_key"), err)
	}

	// The secret of an hmac-sha256 agent never leaves the cluster.
	f = sc.ok("agent.key", `"agent":"legacy"`)
	if f.str("alg") != auth.AlgHMACSHA256 || f.has("public_key") || len(f) != 4 {
		t.Fatalf("hmac-sha256 agent: %s, want only op, rid, agent and alg", f)
	}

	// A revoked agent keeps its key, so what it signed before stays verifiable.
	if st, out := s.adminCall(0, "POST", "/v1/agents/retired/revoke", nil); st != http.StatusOK {
		t.Fatalf("revoke: %d %v", st, out)
	}
	f = sc.ok("agent.key", `"agent":"retired"`)
	pub, _ = base64.StdEncoding.DecodeString(f.str("public_key"))
	if f.int("revoked") <= 0 || string(pub) != string(oldKey.Public) {
		t.Fatalf("revoked agent: %s", f)
	}

	sc.callErr("not_found", "agent.key", `"agent":"ghost"`)
	sc.callErr("bad_request", "agent.key", `"agent":"no spaces"`)
	sc.callErr("bad_request", "agent.key", `"agent":7`)
	sc.callErr("bad_request", "agent.key", "")

	rc := dialRaw(t, s.c, s.c.Nodes[0].URL)
	rc.callErr("unauthenticated", "agent.key", `"agent":"cipher"`)
}
