package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustNodeCert(t *testing.T, dir, id string, hosts ...string) *Material {
	t.Helper()
	m, err := EnsureNodeCert(dir, id, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// withClock runs fn with the package clock moved by d.
func withClock(t *testing.T, d time.Duration, fn func()) {
	t.Helper()
	now = func() time.Time { return time.Now().Add(d) }
	defer func() { now = time.Now }()
	fn()
}

func Test_EnsureNodeCert_IssuesPerNodeFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	m := mustNodeCert(t, dir, "n1", "10.0.0.1", "n1.example")

	if m.CertFile != filepath.Join(dir, "n1.pem") || m.KeyFile != filepath.Join(dir, "n1-key.pem") {
		t.Fatalf("files %s, %s", m.CertFile, m.KeyFile)
	}
	for path, want := range map[string]fs.FileMode{m.CAFile: 0o644, m.CAKeyFile: 0o600, m.CertFile: 0o644, m.KeyFile: 0o600} {
		if got := mode(t, path); got != want {
			t.Errorf("%s mode = %o, want %o", filepath.Base(path), got, want)
		}
	}
	if m.CA.Subject.CommonName != "mcpd cluster CA" {
		t.Errorf("CA subject %q", m.CA.Subject.CommonName)
	}
	leaf := m.Cert.Leaf
	if leaf.Subject.CommonName != "n1" || m.NodeID != "n1" {
		t.Errorf("subject %q, NodeID %q", leaf.Subject.CommonName, m.NodeID)
	}
	if id, err := NodeIDOf(leaf); err != nil || id != "n1" {
		t.Errorf("NodeIDOf = %q, %v", id, err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "mcpd://node/n1" {
		t.Errorf("URIs %v", leaf.URIs)
	}
	if !hasIP(leaf.IPAddresses, "10.0.0.1") || leaf.VerifyHostname("n1.example") != nil {
		t.Errorf("SANs %v %v", leaf.IPAddresses, leaf.DNSNames)
	}

	// A second node gets its own key and certificate from the same CA; the
	// first node's files stay as they were.
	before := readFile(t, m.CertFile)
	m2 := mustNodeCert(t, dir, "n2", "10.0.0.2")
	if !m2.CA.Equal(m.CA) {
		t.Error("n2 signed by another CA")
	}
	if m2.Cert.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("n2 shares n1's key")
	}
	if string(readFile(t, m.CertFile)) != string(before) {
		t.Error("issuing n2 rewrote n1.pem")
	}
	// Asked again with the same hosts, nothing changes.
	again := mustNodeCert(t, dir, "n1", "10.0.0.1", "n1.example")
	if again.Cert.Leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Error("second call reissued a usable certificate")
	}
	// A new host reissues it.
	wider := mustNodeCert(t, dir, "n1", "10.0.0.1", "n1.example", "10.9.9.9")
	if wider.Cert.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 || !hasIP(wider.Cert.Leaf.IPAddresses, "10.9.9.9") {
		t.Error("a new host did not reissue the certificate")
	}
}

func Test_EnsureNodeCert_UsesTheDevCAOfTheDirectory(t *testing.T) {
	dir := t.TempDir()
	dev, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	n1 := mustNodeCert(t, dir, "n1")
	if !n1.CA.Equal(dev.CA) {
		t.Error("node certificate signed by a new CA, not the directory's")
	}
	// The shared certificate names no node, and stays.
	if id, err := NodeIDOf(dev.Cert.Leaf); err != nil || id != "" {
		t.Errorf("shared certificate names %q, %v", id, err)
	}
	if _, err := os.Stat(dev.CertFile); err != nil {
		t.Error(err)
	}
}

func Test_CheckNodeID(t *testing.T) {
	for _, id := range []string{"n1", "node-1", "a.b_c", "N9", strings.Repeat("x", 64)} {
		if err := CheckNodeID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", "-n1", ".n", "n/1", "../x", "n 1", "ca", "CA", "node", "n1-key", "ca-key", "node-key", "é", strings.Repeat("x", 65)} {
		if err := CheckNodeID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
	if _, err := EnsureNodeCert(t.TempDir(), "ca", nil); err == nil {
		t.Error("EnsureNodeCert accepted the id \"ca\"")
	}
}

func Test_NodeIDOf_RefusesAmbiguousOrMalformed(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		uris    []string
		want    string
		wantErr bool
	}{
		{nil, "", false},
		{[]string{"spiffe://example/x"}, "", false},
		{[]string{"mcpd://node/n1"}, "n1", false},
		{[]string{"mcpd://node/n1", "mcpd://node/n1"}, "n1", false},
		{[]string{"mcpd://node/n1", "mcpd://node/n2"}, "", true},
		{[]string{"mcpd://node/n1/x"}, "", true},
		{[]string{"mcpd://other/n1"}, "", true},
		{[]string{"mcpd://node:1/n1"}, "", true},
		{[]string{"mcpd:n1"}, "", true},
		{[]string{"mcpd://node/n1?x=1"}, "", true},
	} {
		c := &x509.Certificate{}
		for _, s := range tc.uris {
			c.URIs = append(c.URIs, u(s))
		}
		got, err := NodeIDOf(c)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%v: got %q, %v", tc.uris, got, err)
		}
	}
}

func Test_LoadNode(t *testing.T) {
	dir := t.TempDir()
	issued := mustNodeCert(t, dir, "n1", "10.0.0.1")

	t.Run("own certificate without the CA key", func(t *testing.T) {
		node := t.TempDir()
		for _, f := range []string{"ca.pem", "n1.pem", "n1-key.pem"} {
			if err := os.WriteFile(filepath.Join(node, f), readFile(t, filepath.Join(dir, f)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m, err := LoadNode(node, "n1")
		if err != nil {
			t.Fatal(err)
		}
		if m.NodeID != "n1" || m.CAKeyFile != "" || !m.CA.Equal(issued.CA) || m.CertFile != filepath.Join(node, "n1.pem") {
			t.Errorf("material %+v", m)
		}
	})
	t.Run("shared node.pem when there is no ID.pem", func(t *testing.T) {
		shared := t.TempDir()
		dev, err := EnsureDevCA(shared, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := LoadNode(shared, "n7")
		if err != nil {
			t.Fatal(err)
		}
		if m.CertFile != dev.CertFile || m.NodeID != "" {
			t.Errorf("loaded %s naming %q", m.CertFile, m.NodeID)
		}
	})
	t.Run("missing material", func(t *testing.T) {
		_, err := LoadNode(t.TempDir(), "n1")
		if !errors.Is(err, ErrNoNodeMaterial) {
			t.Errorf("empty dir: %v", err)
		}
		noCA := t.TempDir()
		for _, f := range []string{"n1.pem", "n1-key.pem"} {
			os.WriteFile(filepath.Join(noCA, f), readFile(t, filepath.Join(dir, f)), 0o600)
		}
		if _, err := LoadNode(noCA, "n1"); !errors.Is(err, ErrNoNodeMaterial) || !strings.Contains(err.Error(), "ca.pem") {
			t.Errorf("no ca.pem: %v", err)
		}
	})
	t.Run("another node's certificate", func(t *testing.T) {
		mustNodeCert(t, dir, "n2")
		os.WriteFile(filepath.Join(dir, "n3.pem"), readFile(t, filepath.Join(dir, "n2.pem")), 0o644)
		os.WriteFile(filepath.Join(dir, "n3-key.pem"), readFile(t, filepath.Join(dir, "n2-key.pem")), 0o600)
		if _, err := LoadNode(dir, "n3"); err == nil || !strings.Contains(err.Error(), `issued for node "n2"`) {
			t.Errorf("n2's certificate loaded as n3: %v", err)
		}
	})
	t.Run("another CA", func(t *testing.T) {
		other := t.TempDir()
		mustNodeCert(t, other, "n1")
		os.WriteFile(filepath.Join(other, "ca.pem"), readFile(t, filepath.Join(dir, "ca.pem")), 0o644)
		if _, err := LoadNode(other, "n1"); err == nil || !strings.Contains(err.Error(), "not signed by a CA in ca.pem") {
			t.Errorf("foreign certificate loaded: %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		old := t.TempDir()
		withClock(t, -2*365*24*time.Hour, func() { mustNodeCert(t, old, "n1") })
		if _, err := LoadNode(old, "n1"); err == nil || !strings.Contains(err.Error(), "valid only from") {
			t.Errorf("expired certificate loaded: %v", err)
		}
	})
	t.Run("a CA bundle trusts either CA", func(t *testing.T) {
		other := t.TempDir()
		mustNodeCert(t, other, "n1")
		bundle := append(readFile(t, filepath.Join(dir, "ca.pem")), readFile(t, filepath.Join(other, "ca.pem"))...)
		os.WriteFile(filepath.Join(other, "ca.pem"), bundle, 0o644)
		m, err := LoadNode(other, "n1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := issued.Cert.Leaf.Verify(x509.VerifyOptions{Roots: m.CAPool}); err != nil {
			t.Errorf("bundle does not trust the first CA: %v", err)
		}
	})
}

// mutualHandshake runs one handshake between server and client and one
// byte from server to client afterwards (with TLS 1.3 the client learns
// that the server refused its certificate only when it reads). It returns
// both sides' errors.
func mutualHandshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte{1})
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = c.Read(b[:])
		c.Close()
	}
	return <-done, err
}

func Test_PeerTLS_MutualAuthentication(t *testing.T) {
	dir := t.TempDir()
	n1 := mustNodeCert(t, dir, "n1")
	n2 := mustNodeCert(t, dir, "n2")
	foreign := mustNodeCert(t, t.TempDir(), "n2")
	var expired *Material
	withClock(t, -2*365*24*time.Hour, func() { expired = mustNodeCert(t, dir, "n3") })

	if s, c := mutualHandshake(t, n1.PeerServerTLS(), n2.PeerClientTLS()); s != nil || c != nil {
		t.Fatalf("n2 to n1: server %v, client %v", s, c)
	}
	if cfg := n1.PeerServerTLS(); cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server config %+v", cfg)
	}

	// A client the server must refuse, even though the client itself
	// checks nothing.
	rogue := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if len(certs) == 0 {
					return &tls.Certificate{}, nil
				}
				return &certs[0], nil // whatever CAs the server names
			}}
	}
	for _, tc := range []struct {
		name   string
		client *tls.Config
		want   string
	}{
		{"no certificate", rogue(), "certificate"},
		{"another CA", rogue(foreign.Cert), "unknown certificate authority"},
		{"expired", rogue(expired.Cert), "expired certificate"},
	} {
		s, c := mutualHandshake(t, n1.PeerServerTLS(), tc.client)
		if s == nil || c == nil || !strings.Contains(c.Error(), tc.want) {
			t.Errorf("%s: server %v, client %v (want %q)", tc.name, s, c, tc.want)
		}
	}

	// A node refuses a server from another CA, or with an expired
	// certificate, when it dials.
	for name, srv := range map[string]*Material{"another CA": foreign, "expired": expired} {
		if _, c := mutualHandshake(t, srv.PeerServerTLS(), n1.PeerClientTLS()); c == nil {
			t.Errorf("n1 dialed a server with a certificate from %s", name)
		}
	}
}
