package main

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/pki"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func Test_NodeTLS_ClusterNodeNeedsItsMaterial(t *testing.T) {
	data := t.TempDir()
	peers := map[string]string{"n1": "10.0.0.1:4438", "n2": "10.0.0.2:4438"}
	f := &serveFlags{nodeID: "n1", dataDir: data, bind: "10.0.0.1"}

	// Nothing there: no material is made, and the error says what to run.
	_, _, _, err := nodeTLS(f, peers, quietLog)
	if !errors.Is(err, pki.ErrNoNodeMaterial) || !strings.Contains(err.Error(), "mcpd tls init --dir CA-DIR --node n1 --host 10.0.0.1") {
		t.Fatalf("no material: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "tls", "ca.pem")); err == nil {
		t.Fatal("serve created a CA outside --dev")
	}

	// A certificate that does not cover the node's --peers address.
	ca := t.TempDir()
	if _, err := pki.EnsureNodeCert(ca, "n1", []string{"10.9.9.9"}); err != nil {
		t.Fatal(err)
	}
	f.tlsDir = ca
	if _, _, _, err := nodeTLS(f, peers, quietLog); err == nil || !strings.Contains(err.Error(), "does not cover 10.0.0.1") {
		t.Fatalf("uncovered address: %v", err)
	}

	// The right one: mutual TLS for the Raft port, the node certificate on
	// the client ports.
	m, err := pki.EnsureNodeCert(ca, "n1", []string{"10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	client, caFile, peer, err := nodeTLS(f, peers, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if peer == nil || peer.Server.ClientAuth != tls.RequireAndVerifyClientCert || peer.Client.RootCAs == nil {
		t.Fatalf("peer TLS %+v", peer)
	}
	if caFile != m.CAFile || len(client.Certificates) != 1 || !client.Certificates[0].Leaf.Equal(m.Cert.Leaf) {
		t.Errorf("client ports: CA %s, certificates %d", caFile, len(client.Certificates))
	}
}

func Test_NodeTLS_DevCreatesItsCA(t *testing.T) {
	f := &serveFlags{dev: true, nodeID: "n1", dataDir: t.TempDir(), bind: "127.0.0.1"}
	_, caFile, peer, err := nodeTLS(f, nil, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if caFile != filepath.Join(f.dataDir, "tls", "ca.pem") || peer == nil || peer.Server.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("dev: CA %s, peer TLS %+v", caFile, peer)
	}
}
