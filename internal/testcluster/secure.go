package testcluster

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/transport"
)

// newClusterKey returns a fresh random cluster key.
func newClusterKey(t interface{ Fatal(...any) }) *auth.ClusterKey {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := auth.NewClusterKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startAdmin serves the admin API of a Secure cluster's node over plain
// HTTP, as its unix socket serves it (actor "operator:local"); the server
// outlives restarts and reaches the node's current incarnation.
func (c *Cluster) startAdmin(nd *Node) {
	nd.admin.Store(transport.NewAdmin(nd.Node, c.Key, c.opt.Logger.With("node", nd.ID)))
	if nd.adminSrv != nil {
		return
	}
	nd.adminSrv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nd.admin.Load().LocalHandler().ServeHTTP(w, r)
	}))
	c.t.Cleanup(nd.adminSrv.Close)
}

// AdminURL is the base URL of the node's admin API (Secure clusters).
func (nd *Node) AdminURL() string { return nd.adminSrv.URL }

// AddAgent adds an agent identity through the first node's admin API and
// returns its key, private half included.
func (c *Cluster) AddAgent(name, alg string, acl auth.ACL, limits auth.Limits) auth.Key {
	c.t.Helper()
	req := transport.AdminAgentRequest{Name: name, Alg: alg, ACL: acl, Limits: limits}
	key := auth.Key{Alg: alg}
	switch alg {
	case auth.AlgEd25519:
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			c.t.Fatal(err)
		}
		req.PublicKey, key.Public, key.Signer = pub, pub, priv
	default:
		key.Secret = make([]byte, 32)
		if _, err := rand.Read(key.Secret); err != nil {
			c.t.Fatal(err)
		}
		req.Secret = key.Secret
	}
	body, _ := json.Marshal(req)
	// An election may answer 503 (unavailable: nothing was done, or the
	// outcome is unknown): the request goes again. After an unknown
	// outcome, "already exists" is this request's own doing when the
	// stored identity has the key it sent (an HMAC secret is not shown:
	// the name, fresh in a test, has to do).
	unknown := false
	for attempt := 0; ; attempt++ {
		resp, err := http.Post(c.Nodes[0].AdminURL()+"/v1/agents", "application/json", bytes.NewReader(body))
		if err != nil {
			c.t.Fatal(err)
		}
		var e transport.AdminError
		if resp.StatusCode != http.StatusCreated {
			_ = json.NewDecoder(resp.Body).Decode(&e)
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusCreated:
			return key
		case resp.StatusCode == http.StatusServiceUnavailable && attempt < 20:
			unknown = unknown || strings.Contains(e.Error, "outcome unknown")
			continue
		case resp.StatusCode == http.StatusConflict && unknown && c.storedKey(name, key):
			return key
		}
		c.t.Fatalf("add agent %s: HTTP %d %s: %s", name, resp.StatusCode, e.Code, e.Error)
	}
}

// storedKey reports whether the identity stored under name has key's
// public key (any key for an HMAC identity, whose secret is not shown).
func (c *Cluster) storedKey(name string, key auth.Key) bool {
	resp, err := http.Get(c.Nodes[0].AdminURL() + "/v1/agents/" + name)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var a auth.Agent
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&a) != nil {
		return false
	}
	return a.Alg == key.Alg && bytes.Equal(a.Public, key.Public)
}
