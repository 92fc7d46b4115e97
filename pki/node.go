package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Node certificates of a cluster.
//
// A cluster has one CA. The operator keeps its key (ca-key.pem) and issues
// every node a certificate of its own (EnsureNodeCert, `mcpd tls init
// --node ID`): ID.pem and ID-key.pem, valid for server and client
// authentication, recording the node id as the URI SAN mcpd://node/ID. A
// node needs only ca.pem and its own pair (LoadNode). Between nodes that
// certificate is used in both directions (PeerServerTLS, PeerClientTLS):
// each side must present a certificate chaining to the cluster CA, so a
// process without one (or with an expired one, or one from another CA)
// takes no part in the cluster.

const (
	nodeURIScheme = "mcpd"
	nodeURIHost   = "node"
	maxNodeIDLen  = 64
)

// ErrNoNodeMaterial means the TLS directory lacks the CA certificate or the
// node's certificate or key.
var ErrNoNodeMaterial = errors.New("no node TLS material")

// NodeURI is the subject alternative name that records node id in its
// certificate: mcpd://node/ID.
func NodeURI(id string) *url.URL {
	return &url.URL{Scheme: nodeURIScheme, Host: nodeURIHost, Path: "/" + id}
}

// NodeIDOf returns the node id cert was issued for, or "" when it names no
// node (a certificate shared by every node, as EnsureDevCA issues). A
// certificate naming two different nodes, or carrying a malformed mcpd:
// URI, is an error: it must not be taken for any node.
func NodeIDOf(cert *x509.Certificate) (string, error) {
	id := ""
	for _, u := range cert.URIs {
		if u.Scheme != nodeURIScheme {
			continue
		}
		got, ok := strings.CutPrefix(u.Path, "/")
		if u.Host != nodeURIHost || !ok || u.User != nil || u.RawQuery != "" || u.Fragment != "" || CheckNodeID(got) != nil {
			return "", fmt.Errorf("pki: certificate %q has a malformed node URI %q", cert.Subject.CommonName, u.String())
		}
		if id != "" && got != id {
			return "", fmt.Errorf("pki: certificate %q names two nodes, %q and %q", cert.Subject.CommonName, id, got)
		}
		id = got
	}
	return id, nil
}

// CheckNodeID reports whether id can be recorded in a node certificate and
// name its files in a TLS directory: 1 to 64 letters, digits, '.', '_' or
// '-', starting with a letter or a digit. "ca", "node" and ids ending in
// "-key" are refused, since ID.pem and ID-key.pem would then be another
// file of the directory (ca.pem, node.pem or a key).
func CheckNodeID(id string) error {
	if id == "" || len(id) > maxNodeIDLen {
		return fmt.Errorf("pki: node id %q must be 1 to %d characters", id, maxNodeIDLen)
	}
	for i, r := range id {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || (r != '.' && r != '_' && r != '-')) {
			return fmt.Errorf("pki: node id %q may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit", id)
		}
	}
	lower := strings.ToLower(id)
	if lower == "ca" || lower == "node" || strings.HasSuffix(lower, "-key") {
		return fmt.Errorf("pki: node id %q would name another file of the TLS directory; choose another", id)
	}
	return nil
}

// EnsureNodeCert prepares node id's certificate in dir, for `mcpd tls init
// --node ID`. It loads the CA from ca.pem and ca-key.pem, creating one when
// neither exists (a directory holding only one of them is an error), and
// makes sure ID.pem and ID-key.pem hold a certificate signed by it, usable
// for server and client authentication, recording id (NodeURI), valid for
// more than another seven days and listing every host as EnsureDevCA does.
// Otherwise it issues a new key and certificate. Keys are written 0600.
//
// It is not safe to run concurrently on the same directory.
func EnsureNodeCert(dir, id string, hosts []string) (*Material, error) {
	if err := CheckNodeID(id); err != nil {
		return nil, err
	}
	return ensure(dir, id+".pem", id+"-key.pem", id, clusterCACommonName, hosts)
}

// LoadNode loads what node id needs for mutual TLS with its peers, and
// creates nothing: dir/ca.pem and the node's own certificate, ID.pem with
// ID-key.pem, or, when there is no ID.pem, the shared node.pem with
// node-key.pem. The CA key is not needed. ca.pem may hold several CA
// certificates (while a CA is being replaced); peers chaining to any of
// them are trusted.
//
// The certificate must chain to a CA of ca.pem, be valid now, allow server
// and client authentication, and name node id or no node at all. A missing
// file is reported as ErrNoNodeMaterial.
func LoadNode(dir, id string) (*Material, error) {
	if err := CheckNodeID(id); err != nil {
		return nil, err
	}
	m := &Material{
		Dir:      dir,
		CAFile:   filepath.Join(dir, caCertName),
		CertFile: filepath.Join(dir, id+".pem"),
		KeyFile:  filepath.Join(dir, id+"-key.pem"),
	}
	own, err := exists(m.CertFile)
	if err != nil {
		return nil, err
	}
	if !own {
		shared, err := exists(filepath.Join(dir, nodeCertName))
		if err != nil {
			return nil, err
		}
		if !shared {
			return nil, fmt.Errorf("%w for node %q in %s: neither %s nor %s exists", ErrNoNodeMaterial, id, dir, id+".pem", nodeCertName)
		}
		m.CertFile, m.KeyFile = filepath.Join(dir, nodeCertName), filepath.Join(dir, nodeKeyName)
	}
	for _, f := range []string{m.CAFile, m.KeyFile} {
		ok, err := exists(f)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%w for node %q in %s: %s does not exist", ErrNoNodeMaterial, id, dir, filepath.Base(f))
		}
	}
	if ok, _ := exists(filepath.Join(dir, caKeyName)); ok {
		m.CAKeyFile = filepath.Join(dir, caKeyName)
	}

	data, err := os.ReadFile(m.CAFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	cas, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", m.CAFile, err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("pki: %s: no PEM certificates found", m.CAFile)
	}
	m.CAPool = x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("pki: %s holds %q, which is not a CA certificate", m.CAFile, ca.Subject.CommonName)
		}
		m.CAPool.AddCert(ca)
	}

	cert, err := loadNodeCert(m.CertFile, m.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: %s with %s: %w", m.CertFile, m.KeyFile, err)
	}
	leaf := cert.Leaf
	opts := x509.VerifyOptions{Roots: m.CAPool, CurrentTime: now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, fmt.Errorf("pki: %s cannot identify node %q: %s", m.CertFile, id, verifyFailure(err, leaf))
	}
	opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if _, err := leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("pki: %s cannot identify node %q to its peers: %s", m.CertFile, id, verifyFailure(err, leaf))
	}
	got, err := NodeIDOf(leaf)
	if err != nil {
		return nil, err
	}
	if got != "" && got != id {
		return nil, fmt.Errorf("pki: %s was issued for node %q, not %q", m.CertFile, got, id)
	}
	m.CA = chains[0][len(chains[0])-1]
	m.Cert = cert
	m.NodeID = got
	return m, nil
}

// verifyFailure says in a few words why leaf failed verification.
func verifyFailure(err error, leaf *x509.Certificate) string {
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return fmt.Sprintf("it is valid only from %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return "it does not allow both server and client authentication"
	case errors.As(err, &unknown):
		return "it is not signed by a CA in ca.pem"
	}
	return err.Error()
}

// PeerServerTLS returns the configuration of a node's Raft port: it
// presents the node certificate and requires every peer to present one
// that chains to the cluster CA and allows client authentication. TLS 1.3
// only. Each call returns a new Config the caller may modify.
func (m *Material) PeerServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.CAPool,
	}
}

// PeerClientTLS returns the configuration a node dials its peers with: it
// presents the node certificate and trusts only the cluster CA. The server
// name is left empty for the dialer to set to the host it dials. TLS 1.3
// only. Each call returns a new Config the caller may modify.
func (m *Material) PeerClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.Cert},
		RootCAs:      m.CAPool,
	}
}
