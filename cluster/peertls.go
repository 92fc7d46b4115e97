package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mcpd/mcpd/pki"
)

// Mutual TLS on the Raft port. When Config.PeerTLS is set, the mux wraps
// every accepted connection in TLS before it reads the protocol byte, and
// every connection this node opens to a peer (raft RPCs, forwarded
// commands, clock probes, membership requests) is TLS too. Both sides must
// present a certificate that chains to the cluster CA; a certificate that
// records a node id (pki.NodeIDOf) must name a member, and when dialing a
// configured peer, that peer. Nothing plaintext is accepted.

// PeerTLS is the mutual TLS of the Raft port. pki.Material's PeerServerTLS
// and PeerClientTLS build both halves.
type PeerTLS struct {
	// Server configures the Raft listener. It must require and verify
	// client certificates (tls.RequireAndVerifyClientCert) against a CA
	// pool of its own (ClientCAs).
	Server *tls.Config
	// Client configures connections to peers. It must present a
	// certificate and trust a CA pool of its own (RootCAs). ServerName is
	// set per connection to the host dialed.
	Client *tls.Config
}

// check refuses a configuration that would let a peer in without a
// certificate from the cluster CA.
func (p *PeerTLS) check() error {
	s, c := p.Server, p.Client
	var why string
	switch {
	case s == nil || c == nil:
		why = "needs a server and a client configuration"
	case s.ClientAuth != tls.RequireAndVerifyClientCert:
		why = "server must require and verify client certificates"
	case s.ClientCAs == nil:
		why = "server must trust the cluster CA (ClientCAs); nil would trust the system's CAs"
	case s.GetConfigForClient != nil:
		why = "server GetConfigForClient is not supported"
	case len(s.Certificates) == 0 && s.GetCertificate == nil:
		why = "server has no certificate"
	case c.InsecureSkipVerify:
		why = "client must verify its peers"
	case c.RootCAs == nil:
		why = "client must trust the cluster CA (RootCAs); nil would trust the system's CAs"
	case len(c.Certificates) == 0 && c.GetClientCertificate == nil:
		why = "client has no certificate"
	default:
		return nil
	}
	return fmt.Errorf("cluster: PeerTLS: %s", why)
}

// peerAuth is the mux's side of PeerTLS.
type peerAuth struct {
	server *tls.Config // PeerTLS.Server checking the node id too
	client *tls.Config
	// members are the node ids a certificate may name: the peers and this
	// node. byAddr maps a configured peer's address to its id.
	members map[string]bool
	byAddr  map[string]string
	// isMember and idAt consult the latest Raft configuration, for the
	// servers an operator added after start (membership.go); nil in tests
	// of the mux alone.
	isMember func(id string) bool
	idAt     func(addr string) string
}

func newPeerAuth(p *PeerTLS, self string, peers map[string]string) *peerAuth {
	a := &peerAuth{members: map[string]bool{self: true}, byAddr: map[string]string{}}
	for id, addr := range peers {
		a.members[id] = true
		if _, dup := a.byAddr[addr]; dup {
			a.byAddr[addr] = "" // two ids at one address: expect neither
		} else {
			a.byAddr[addr] = id
		}
	}
	a.server = p.Server.Clone()
	a.server.VerifyConnection = chainVerify(p.Server.VerifyConnection, func(cs tls.ConnectionState) error {
		_, err := a.peerID(cs, "")
		return err
	})
	a.client = p.Client.Clone()
	return a
}

// clientFor is the client configuration for dialing addr: the server
// name is its host, and a certificate recording a node id must be that of
// the peer configured at addr.
func (a *peerAuth) clientFor(addr string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	want, static := a.byAddr[addr]
	if !static && a.idAt != nil {
		want = a.idAt(addr)
	}
	cfg := a.client.Clone()
	cfg.ServerName = host
	cfg.VerifyConnection = chainVerify(a.client.VerifyConnection, func(cs tls.ConnectionState) error {
		_, err := a.peerID(cs, want)
		return err
	})
	return cfg, nil
}

// peerID checks the node id in a peer's verified certificate: none (a
// certificate shared by every node) or a member, and want when want is
// not "". It returns the id.
func (a *peerAuth) peerID(cs tls.ConnectionState, want string) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("peer presented no certificate")
	}
	id, err := pki.NodeIDOf(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return "", err
	case id == "":
		return "", nil
	case !a.members[id] && (a.isMember == nil || !a.isMember(id)):
		return "", fmt.Errorf("certificate of node %q, which is not a member of this cluster", id)
	case want != "" && id != want:
		return "", fmt.Errorf("expected node %q, got the certificate of node %q", want, id)
	}
	return id, nil
}

// certNodeID is the node id recorded in the certificate the peer on c
// presented, "" when c is not TLS or the certificate names no node.
func certNodeID(c net.Conn) string {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return ""
	}
	cs := tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	id, _ := pki.NodeIDOf(cs.PeerCertificates[0]) // checked in the handshake
	return id
}

func chainVerify(first, then func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	if first == nil {
		return then
	}
	return func(cs tls.ConnectionState) error {
		if err := first(cs); err != nil {
			return err
		}
		return then(cs)
	}
}

// Refused handshakes are logged at most once per remote host per
// refusalLogEvery, with the number left unlogged since, so that a
// misconfigured node or a scanner cannot flood the log.
const (
	refusalLogEvery = time.Minute
	maxRefusalHosts = 1024
)

// refusals decides which refusals get a log line.
type refusals struct {
	every time.Duration
	mu    sync.Mutex
	hosts map[string]*refusalRec
}

type refusalRec struct {
	logged  time.Time
	skipped int
}

// note records a refusal concerning key at t. It reports whether to log
// it and how many refusals of key went unlogged before it.
func (r *refusals) note(key string, t time.Time) (log bool, skipped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil {
		r.hosts = map[string]*refusalRec{}
	}
	rec, ok := r.hosts[key]
	if !ok && len(r.hosts) >= maxRefusalHosts {
		for k, x := range r.hosts {
			if t.Sub(x.logged) >= r.every {
				delete(r.hosts, k)
			}
		}
		if len(r.hosts) >= maxRefusalHosts {
			key = "*" // too many at once: they share one line per interval
			rec, ok = r.hosts[key]
		}
	}
	if !ok {
		r.hosts[key] = &refusalRec{logged: t}
		return true, 0
	}
	if t.Sub(rec.logged) < r.every {
		rec.skipped++
		return false, 0
	}
	skipped = rec.skipped
	rec.logged, rec.skipped = t, 0
	return true, skipped
}
