package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// pemSeeds are a CA certificate, its PKCS#8 and SEC 1 keys, and broken
// variants of them, as an operator's --ca file or --tls-dir could hold.
func pemSeeds(tb testing.TB) [][]byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz CA"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert := encodeCert(der)
	pkcs8, err := encodeKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	sec1der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1der})
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ed, err := encodeKey(edKey)
	if err != nil {
		tb.Fatal(err)
	}
	flipped := bytes.Clone(cert)
	flipped[len(flipped)/2] ^= 1
	return [][]byte{
		cert, pkcs8, sec1, ed,
		append(append(bytes.Clone(cert), pkcs8...), cert...),
		cert[:len(cert)/2], pkcs8[:len(pkcs8)-30], flipped,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff}}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x00}}),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("x")}),
		[]byte("-----BEGIN CERTIFICATE-----\n\x00\xff\n-----END CERTIFICATE-----\n"),
		{},
	}
}

// FuzzParseCerts reads PEM as LoadCAPool and loadCA do: no panic, and
// every certificate returned comes from a CERTIFICATE block.
func FuzzParseCerts(f *testing.F) {
	for _, s := range pemSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseCerts(data)
		if err != nil {
			return
		}
		n := 0
		for rest := data; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				n++
			}
		}
		if len(certs) != n {
			t.Fatalf("%d certificates from %d CERTIFICATE blocks", len(certs), n)
		}
	})
}

// FuzzDecodeKey reads PEM as loadCA reads the CA key: no panic, and an
// accepted key encodes and decodes again to the same public key.
func FuzzDecodeKey(f *testing.F) {
	for _, s := range pemSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := decodeKey(data)
		if err != nil {
			return
		}
		again, err := encodeKey(key)
		if err != nil {
			return // a key type PKCS#8 cannot hold
		}
		key2, err := decodeKey(again)
		if err != nil {
			t.Fatalf("re-encoded key rejected: %v", err)
		}
		pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pub.Equal(key2.Public()) {
			t.Fatalf("key changed in a round trip: %T", key)
		}
	})
}
