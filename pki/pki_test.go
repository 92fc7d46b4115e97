package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func hasIP(ips []net.IP, s string) bool {
	return slices.ContainsFunc(ips, net.ParseIP(s).Equal)
}

func Test_EnsureDevCA_FreshDirCreatesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "tls")
	m, err := EnsureDevCA(dir, []string{"node1.example", "10.1.2.3", "[fd00::7]:7400", "0.0.0.0", ""})
	if err != nil {
		t.Fatal(err)
	}

	if got := mode(t, dir); got != 0o700 {
		t.Errorf("dir mode = %o, want 700", got)
	}
	for path, want := range map[string]fs.FileMode{
		m.CAFile:    0o644,
		m.CAKeyFile: 0o600,
		m.CertFile:  0o644,
		m.KeyFile:   0o600,
	} {
		if filepath.Dir(path) != dir {
			t.Errorf("%s not in %s", path, dir)
		}
		if got := mode(t, path); got != want {
			t.Errorf("%s mode = %o, want %o", filepath.Base(path), got, want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("dir holds %d entries, want 4 (temp files left behind?)", len(entries))
	}

	if m.CA.Subject.CommonName != "mcpd dev CA" || !m.CA.IsCA {
		t.Errorf("CA subject %q IsCA=%v", m.CA.Subject.CommonName, m.CA.IsCA)
	}
	if d := m.CA.NotAfter.Sub(m.CA.NotBefore); d < 10*365*24*time.Hour {
		t.Errorf("CA validity %v, want 10 years", d)
	}

	leaf := m.Cert.Leaf
	if leaf == nil {
		t.Fatal("Cert.Leaf not set")
	}
	if err := leaf.CheckSignatureFrom(m.CA); err != nil {
		t.Errorf("node cert not signed by CA: %v", err)
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3", "fd00::7"} {
		if !hasIP(leaf.IPAddresses, ip) {
			t.Errorf("IP SANs %v lack %s", leaf.IPAddresses, ip)
		}
	}
	if hasIP(leaf.IPAddresses, "0.0.0.0") {
		t.Errorf("IP SANs %v include the unspecified address", leaf.IPAddresses)
	}
	for _, n := range []string{"localhost", "node1.example"} {
		if !slices.Contains(leaf.DNSNames, n) {
			t.Errorf("DNS SANs %v lack %s", leaf.DNSNames, n)
		}
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			t.Errorf("ExtKeyUsage %v lacks %v", leaf.ExtKeyUsage, u)
		}
	}
	if d := leaf.NotAfter.Sub(time.Now()); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("node cert valid for %v more, want about one year", d)
	}
}

func Test_EnsureDevCA_SecondCallReuses(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"node1.example", "10.1.2.3"}
	m1, err := EnsureDevCA(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{m1.CAFile, m1.CAKeyFile, m1.CertFile, m1.KeyFile}
	before := make([][]byte, len(files))
	for i, f := range files {
		before[i] = readFile(t, f)
	}

	// Same hosts in another order and spelling must not force a new cert.
	m2, err := EnsureDevCA(dir, []string{"10.1.2.3", "NODE1.example.", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		if !bytes.Equal(before[i], readFile(t, f)) {
			t.Errorf("%s changed on second call", filepath.Base(f))
		}
	}
	if !m1.CA.Equal(m2.CA) {
		t.Error("CA differs between calls")
	}
	if !m1.Cert.Leaf.Equal(m2.Cert.Leaf) {
		t.Error("node certificate differs between calls")
	}
}

func Test_EnsureDevCA_NewHostRegeneratesNodeCert(t *testing.T) {
	dir := t.TempDir()
	m1, err := EnsureDevCA(dir, []string{"node1.example"})
	if err != nil {
		t.Fatal(err)
	}
	caBefore := readFile(t, m1.CAFile)
	caKeyBefore := readFile(t, m1.CAKeyFile)
	nodeBefore := readFile(t, m1.CertFile)

	m2, err := EnsureDevCA(dir, []string{"node1.example", "192.0.2.10", "node2.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caBefore, readFile(t, m2.CAFile)) || !bytes.Equal(caKeyBefore, readFile(t, m2.CAKeyFile)) {
		t.Error("CA changed when only the node cert needed regenerating")
	}
	if bytes.Equal(nodeBefore, readFile(t, m2.CertFile)) {
		t.Fatal("node cert not regenerated for new hosts")
	}
	leaf := m2.Cert.Leaf
	if !hasIP(leaf.IPAddresses, "192.0.2.10") || !slices.Contains(leaf.DNSNames, "node2.example") {
		t.Errorf("new cert SANs %v %v lack requested hosts", leaf.DNSNames, leaf.IPAddresses)
	}
	if err := leaf.CheckSignatureFrom(m1.CA); err != nil {
		t.Errorf("new node cert not signed by the original CA: %v", err)
	}
	// What was written is what was returned.
	onDisk, err := tls.LoadX509KeyPair(m2.CertFile, m2.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk.Certificate[0], m2.Cert.Certificate[0]) {
		t.Error("returned node cert differs from node.pem")
	}
}

func Test_EnsureDevCA_ExpiringNodeCertRenewed(t *testing.T) {
	dir := t.TempDir()
	m1, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	caBefore := readFile(t, m1.CAFile)

	t.Cleanup(func() { now = time.Now })
	now = func() time.Time { return m1.Cert.Leaf.NotAfter.Add(-6 * 24 * time.Hour) }
	m2, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Cert.Leaf.Equal(m1.Cert.Leaf) {
		t.Error("node cert expiring within 7 days was not renewed")
	}
	if !bytes.Equal(caBefore, readFile(t, m2.CAFile)) {
		t.Error("CA changed on node cert renewal")
	}
}

func Test_EnsureDevCA_HalfCAIsError(t *testing.T) {
	dir := t.TempDir()
	m, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.CAKeyFile); err != nil {
		t.Fatal(err)
	}
	caBefore := readFile(t, m.CAFile)
	if _, err := EnsureDevCA(dir, nil); err == nil {
		t.Fatal("EnsureDevCA succeeded with ca.pem but no ca-key.pem")
	}
	if !bytes.Equal(caBefore, readFile(t, m.CAFile)) {
		t.Error("ca.pem overwritten")
	}
}

func Test_EnsureDevCA_MismatchedNodeKeyRegenerates(t *testing.T) {
	dir := t.TempDir()
	m1, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A node key that does not belong to node.pem must not be used.
	if err := os.WriteFile(m1.KeyFile, readFile(t, m1.CAKeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	m2, err := EnsureDevCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(m2.CertFile, m2.KeyFile); err != nil {
		t.Errorf("node pair still mismatched: %v", err)
	}
}

// handshake runs one TLS handshake over a loopback listener and returns the
// client-side error.
func handshake(t *testing.T, network, addr string, server, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen(network, addr, server)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	defer ln.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.(*tls.Conn).Handshake() // the client's verdict is what the tests check
	}()

	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, network, ln.Addr().String(), client)
	if err == nil {
		c.Close()
	}
	<-done
	return err
}

func Test_TLS_Handshake_TrustedCA(t *testing.T) {
	m, err := EnsureDevCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadCAPool(m.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	client := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if err := handshake(t, "tcp4", "127.0.0.1:0", m.ServerTLS(), client); err != nil {
		t.Errorf("127.0.0.1 with --ca pool: %v", err)
	}
	if err := handshake(t, "tcp4", "127.0.0.1:0", m.ServerTLS(), m.ClientTLS()); err != nil {
		t.Errorf("127.0.0.1 with ClientTLS: %v", err)
	}
	byName := m.ClientTLS()
	byName.ServerName = "localhost"
	if err := handshake(t, "tcp4", "127.0.0.1:0", m.ServerTLS(), byName); err != nil {
		t.Errorf("localhost: %v", err)
	}
	t.Run("ipv6", func(t *testing.T) {
		if err := handshake(t, "tcp6", "[::1]:0", m.ServerTLS(), m.ClientTLS()); err != nil {
			t.Errorf("::1: %v", err)
		}
	})
}

func Test_TLS_Handshake_OtherCAFails(t *testing.T) {
	m, err := EnsureDevCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := EnsureDevCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadCAPool(other.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	client := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	err = handshake(t, "tcp4", "127.0.0.1:0", m.ServerTLS(), client)
	if err == nil {
		t.Fatal("handshake succeeded against a different CA")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("error = %v, want x509.UnknownAuthorityError", err)
	}
}

func Test_TLS_Handshake_UncoveredHostFails(t *testing.T) {
	m, err := EnsureDevCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	client := m.ClientTLS()
	client.ServerName = "not-requested.example"
	var hostErr x509.HostnameError
	if err := handshake(t, "tcp4", "127.0.0.1:0", m.ServerTLS(), client); !errors.As(err, &hostErr) {
		t.Errorf("error = %v, want x509.HostnameError", err)
	}
}

func Test_LoadCAPool_Errors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCAPool(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing file: no error")
	}
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not pem\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCAPool(empty); err == nil {
		t.Error("file without certificates: no error")
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCAPool(bad); err == nil {
		t.Error("corrupt certificate: no error")
	}
}

func Test_ServerTLS_FreshConfigs(t *testing.T) {
	m, err := EnsureDevCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := m.ServerTLS(), m.ServerTLS()
	if a == b {
		t.Error("ServerTLS returned a shared Config")
	}
	if a.MinVersion != tls.VersionTLS12 || m.ClientTLS().MinVersion != tls.VersionTLS12 {
		t.Error("MinVersion below TLS 1.2")
	}
}
