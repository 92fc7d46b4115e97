package testcluster

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"

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
	resp, err := http.Post(c.Nodes[0].AdminURL()+"/v1/agents", "application/json", bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		var e transport.AdminError
		_ = json.NewDecoder(resp.Body).Decode(&e)
		c.t.Fatalf("add agent %s: HTTP %d %s: %s", name, resp.StatusCode, e.Code, e.Error)
	}
	return key
}
