package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/pki"
)

// certExpiryWarning is how close to its expiry a node certificate gets a
// warning at start.
const certExpiryWarning = 30 * 24 * time.Hour

// nodeTLS resolves serve's TLS: the configuration of the client ports, the
// CA file their clients trust (for the start line), and the mutual TLS of
// the Raft port.
//
// With --dev, both come from the dev CA in --tls-dir (pki.EnsureDevCA,
// created when missing), so a dev node runs the same code path as a
// cluster node. Outside --dev the material must exist: ca.pem and this
// node's certificate in --tls-dir, ID.pem and ID-key.pem or the shared
// node.pem and node-key.pem (pki.LoadNode); serve creates none, so that
// nodes that made CAs of their own never talk to each other. The
// certificate must cover the node's address in --peers, which its peers
// check when they dial it. --tls-cert and --tls-key replace the
// certificate of the client ports only.
func nodeTLS(f *serveFlags, peers map[string]string, log *slog.Logger) (*tls.Config, string, *cluster.PeerTLS, error) {
	dir := f.tlsDir
	if dir == "" {
		dir = filepath.Join(f.dataDir, "tls")
	}
	var m *pki.Material
	if f.dev {
		hosts := []string{f.bind}
		if h, err := os.Hostname(); err == nil {
			hosts = append(hosts, h)
		}
		var err error
		if m, err = pki.EnsureDevCA(dir, hosts); err != nil {
			return nil, "", nil, fmt.Errorf("TLS material in %s: %w", dir, err)
		}
	} else {
		var err error
		if m, err = loadPeerMaterial(dir, f.nodeID, peers[f.nodeID]); err != nil {
			return nil, "", nil, err
		}
		if left := time.Until(m.Cert.Leaf.NotAfter); left < certExpiryWarning {
			log.Warn("node certificate expires soon; issue a new one with 'mcpd tls init --node' and restart",
				"cert", m.CertFile, "expires", m.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		log.Info("raft port: mutual TLS with the cluster CA", "cert", m.CertFile, "ca", m.CAFile, "shared_cert", m.NodeID == "")
	}
	peer := &cluster.PeerTLS{Server: m.PeerServerTLS(), Client: m.PeerClientTLS()}

	if f.tlsCert != "" || f.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, "", nil, fmt.Errorf("load --tls-cert/--tls-key: %w", err)
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, "", peer, nil
	}
	return m.ServerTLS(), m.CAFile, peer, nil
}

// loadPeerMaterial loads node id's certificate from dir and checks that it
// covers addr, the node's address in --peers. Its errors tell the operator
// what to run.
func loadPeerMaterial(dir, id, addr string) (*pki.Material, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--peers address %q of %s: %w", addr, id, err)
	}
	issue := fmt.Sprintf("mcpd tls init --dir CA-DIR --node %s --host %s", id, host)
	m, err := pki.LoadNode(dir, id)
	if errors.Is(err, pki.ErrNoNodeMaterial) {
		return nil, fmt.Errorf("%w\nRaft between nodes runs over mutual TLS: every node needs the cluster CA certificate and a certificate of its own. "+
			"Where the CA key is kept, run\n  %s\nthen copy ca.pem, %s.pem and %s-key.pem from CA-DIR to %s (or point --tls-dir at them)", err, issue, id, id, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%w\nissue a new certificate with\n  %s", err, issue)
	}
	if err := m.Cert.Leaf.VerifyHostname(host); err != nil {
		return nil, fmt.Errorf("%s does not cover %s, the address of %s in --peers, so its peers would refuse it (%v); issue a new certificate with\n  %s",
			m.CertFile, host, id, err, issue)
	}
	return m, nil
}
