// Package pki owns mcpd's TLS material: a cluster certificate authority,
// the node certificates it signs, and the tls.Config values built from them
// for client-facing ports and for mutual TLS between cluster nodes
// (node.go).
//
// Key material is ECDSA P-256, stored as PEM files. Certificates go in
// "CERTIFICATE" blocks and private keys in PKCS#8 "PRIVATE KEY" blocks.
// Every file is written atomically (temporary file, then rename) so a crash
// never leaves a truncated certificate or key behind.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names inside a TLS directory.
const (
	caCertName   = "ca.pem"
	caKeyName    = "ca-key.pem"
	nodeCertName = "node.pem"
	nodeKeyName  = "node-key.pem"
)

// Lifetimes and renewal policy.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	nodeValidity = 365 * 24 * time.Hour
	// renewBefore is how close to expiry a node certificate may get before
	// EnsureDevCA replaces it.
	renewBefore = 7 * 24 * time.Hour
	// backdate moves NotBefore into the past to tolerate small clock skew
	// between the node and its clients.
	backdate = time.Hour
)

const (
	devCACommonName     = "mcpd dev CA"
	clusterCACommonName = "mcpd cluster CA"
)

// now is the clock used for validity decisions; tests may replace it.
var now = time.Now

// Material is the TLS material of one mcpd node: the CA it trusts and the
// certificate it presents. Values are created by this package; the exported
// fields are informational and must not be modified.
//
// The same type serves a single-node dev setup (EnsureDevCA), the operator
// issuing node certificates (EnsureNodeCert), and cluster members (LoadNode),
// which hold their own certificate and the cluster CA certificate but not
// the CA private key.
type Material struct {
	// Dir is the directory the material was loaded from.
	Dir string
	// CAFile is the PEM file holding the CA certificate; clients pass it
	// as --ca.
	CAFile string
	// CAKeyFile is the PEM file holding the CA private key, or "" when
	// this node does not hold the CA key.
	CAKeyFile string
	// CertFile and KeyFile hold the node certificate and its private key.
	CertFile string
	KeyFile  string

	// CA is the parsed CA certificate and CAPool a pool containing it.
	CA     *x509.Certificate
	CAPool *x509.CertPool
	// Cert is the node certificate with its private key; Cert.Leaf is set.
	Cert tls.Certificate
	// NodeID is the node id the certificate was issued for, or "" for a
	// certificate shared by every node (EnsureDevCA).
	NodeID string
}

// ServerTLS returns a server configuration presenting the node certificate,
// for mcpd's client-facing listeners. It does not ask clients for
// certificates. Each call returns a new Config the caller may modify.
func (m *Material) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{m.Cert},
	}
}

// ClientTLS returns a client configuration that trusts only the CA. The
// server name is left empty so that tls.Dial derives it from the address
// being dialed. Each call returns a new Config the caller may modify.
func (m *Material) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    m.CAPool,
	}
}

// EnsureDevCA prepares the TLS material for `mcpd serve --dev`, normally in
// <data-dir>/tls.
//
// If dir holds ca.pem and ca-key.pem they are loaded; if it holds neither, a
// self-signed CA is created. A directory holding only one of the two is an
// error, because silently replacing a CA would break every client that
// already trusts it.
//
// It then makes sure node.pem and node-key.pem hold a certificate signed by
// that CA, usable for both server and client authentication, valid for more
// than another seven days, and listing every entry of hosts as a subject
// alternative name. Otherwise a new key and certificate are issued. IP
// addresses become IP SANs and anything else a DNS SAN; 127.0.0.1, ::1 and
// localhost are always included. A host may carry a port ("node1:7400") or
// brackets ("[::1]"), which are stripped; empty hosts and unspecified
// addresses such as 0.0.0.0 are ignored, since no client dials them by name.
//
// The directory is restricted to mode 0700, private keys are written 0600
// and certificates 0644.
//
// EnsureDevCA is not safe to run concurrently on the same directory from
// several processes.
func EnsureDevCA(dir string, hosts []string) (*Material, error) {
	return ensure(dir, nodeCertName, nodeKeyName, "", devCACommonName, hosts)
}

// ensure loads or creates the CA in dir, then keeps or (re)issues the node
// certificate certName/keyName for node id (none when "") and hosts.
func ensure(dir, certName, keyName, id, caName string, hosts []string) (*Material, error) {
	names, ips, err := sanList(hosts)
	if err != nil {
		return nil, err
	}
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	m := &Material{
		Dir:       dir,
		CAFile:    filepath.Join(dir, caCertName),
		CAKeyFile: filepath.Join(dir, caKeyName),
		CertFile:  filepath.Join(dir, certName),
		KeyFile:   filepath.Join(dir, keyName),
		NodeID:    id,
	}

	ca, caKey, err := loadOrCreateCA(m.CAFile, m.CAKeyFile, caName)
	if err != nil {
		return nil, err
	}
	t := now()
	if !t.Add(renewBefore).Before(ca.NotAfter) {
		return nil, fmt.Errorf("pki: CA in %s expires at %s; remove %s and %s to create a new one (clients must then trust the new ca.pem)",
			dir, ca.NotAfter.Format(time.RFC3339), m.CAFile, m.CAKeyFile)
	}
	m.CA = ca
	m.CAPool = x509.NewCertPool()
	m.CAPool.AddCert(ca)

	cert, err := loadNodeCert(m.CertFile, m.KeyFile)
	if err == nil && nodeCertUsable(cert.Leaf, ca, id, names, ips, t) {
		m.Cert = cert
		return m, nil
	}
	// Missing, unreadable, mismatched, expiring or too narrow: issue anew.
	cert, err = issueNodeCert(m.CertFile, m.KeyFile, ca, caKey, id, names, ips)
	if err != nil {
		return nil, err
	}
	m.Cert = cert
	return m, nil
}

// LoadCAPool reads a PEM file of one or more CA certificates, as given to
// mcpd clients with --ca, and returns a pool holding them. It fails if the
// file contains no certificate or a certificate that does not parse.
func LoadCAPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA file: %w", err)
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", file, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("pki: %s: no PEM certificates found", file)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// sanList normalises the requested hosts into DNS names and IP addresses,
// always including the loopback names, without duplicates and in a stable
// order.
func sanList(hosts []string) ([]string, []net.IP, error) {
	var names []string
	var addrs []netip.Addr
	add := func(h string) error {
		h = strings.TrimSpace(h)
		if hp, _, err := net.SplitHostPort(h); err == nil {
			h = hp
		}
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if h == "" {
			return nil
		}
		if a, err := netip.ParseAddr(h); err == nil {
			a = a.WithZone("").Unmap()
			if a.IsUnspecified() {
				return nil
			}
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
			return nil
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if h == "" || strings.ContainsAny(h, " \t/\\@") {
			return fmt.Errorf("pki: invalid host %q", h)
		}
		if !slices.Contains(names, h) {
			names = append(names, h)
		}
		return nil
	}
	for _, h := range append([]string{"127.0.0.1", "::1", "localhost"}, hosts...) {
		if err := add(h); err != nil {
			return nil, nil, err
		}
	}
	ips := make([]net.IP, len(addrs))
	for i, a := range addrs {
		ips[i] = net.IP(a.AsSlice())
	}
	return names, ips, nil
}

// ensureDir creates dir if needed and restricts it to its owner, since it
// holds private keys.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create TLS directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pki: restrict TLS directory: %w", err)
	}
	return nil
}

// loadOrCreateCA loads the CA certificate and key, or creates a new
// self-signed CA when neither file exists.
func loadOrCreateCA(certFile, keyFile, commonName string) (*x509.Certificate, crypto.Signer, error) {
	certOK, err := exists(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyOK, err := exists(keyFile)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case certOK && keyOK:
		return loadCA(certFile, keyFile)
	case certOK != keyOK:
		present, missing := certFile, keyFile
		if keyOK {
			present, missing = keyFile, certFile
		}
		return nil, nil, fmt.Errorf("pki: %s exists but %s does not; restore it, or remove both to create a new CA", present, missing)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"mcpd"}},
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which loadOrCreateCA reports rather than overwrites.
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(certFile, encodeCert(der), 0o644); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// loadCA reads an existing CA and checks that the key belongs to the
// certificate and that the certificate may sign others.
func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s: %w", certFile, err)
	}
	if len(certs) != 1 {
		return nil, nil, fmt.Errorf("pki: %s: want exactly one certificate, found %d", certFile, len(certs))
	}
	ca := certs[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("pki: %s is not a CA certificate", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	key, err := decodeKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s: %w", keyFile, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("pki: %s does not match %s", keyFile, certFile)
	}
	return ca, key, nil
}

// loadNodeCert reads the node certificate and key, checking that they match.
func loadNodeCert(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return tls.Certificate{}, err
		}
		cert.Leaf = leaf
	}
	return cert, nil
}

// nodeCertUsable reports whether leaf is signed by ca, is valid now and for
// longer than renewBefore, allows server and client authentication, names
// node id (or no node, when id is ""), and lists every wanted name and
// address.
func nodeCertUsable(leaf, ca *x509.Certificate, id string, names []string, ips []net.IP, t time.Time) bool {
	if !bytes.Equal(leaf.RawIssuer, ca.RawSubject) || leaf.CheckSignatureFrom(ca) != nil {
		return false
	}
	if got, err := NodeIDOf(leaf); err != nil || got != id {
		return false
	}
	if t.Before(leaf.NotBefore) || !t.Add(renewBefore).Before(leaf.NotAfter) {
		return false
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return false
	}
	for _, n := range names {
		if !slices.ContainsFunc(leaf.DNSNames, func(d string) bool { return strings.EqualFold(d, n) }) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// issueNodeCert creates a fresh node key and a certificate for it signed by
// the CA, writes both, and returns them ready for use. A non-empty id is
// recorded as the node the certificate belongs to (NodeURI) and becomes its
// common name.
func issueNodeCert(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, id string, names []string, ips []net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: generate node key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	t := now()
	notAfter := t.Add(nodeValidity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	// The node id, else the first non-loopback name, makes the subject
	// readable; only the URI SAN is authoritative (NodeIDOf).
	cn := "mcpd node"
	if i := slices.IndexFunc(names, func(n string) bool { return n != "localhost" }); i >= 0 {
		cn = names[i]
	}
	var uris []*url.URL
	if id != "" {
		cn = id
		uris = []*url.URL{NodeURI(id)}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"mcpd"}},
		NotBefore:    t.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     names,
		IPAddresses:  ips,
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: create node certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: parse new node certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeAtomic(certFile, encodeCert(der), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil // never zero
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decodeKey reads the first private key block, accepting PKCS#8 as well as
// the SEC 1 "EC PRIVATE KEY" form.
func decodeKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse private key: %w", err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return signer, nil
	}
}

// parseCerts returns every CERTIFICATE block in data, ignoring other blocks.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("pki: %w", err)
	}
}

// writeAtomic writes data to a temporary file in the target directory with
// the given mode, syncs it, and renames it over path.
func writeAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("pki: write %s: %w", path, err)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	// Persist the rename itself; failure here does not undo the write.
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
