package auth

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateVectors = flag.Bool("update-vectors", false, "rewrite testdata/signing/vectors.json")

// The keys of the vectors: fixed, public, for tests only.
var (
	vecSecret = mustHex("6d6370642d746573742d686d61632d7365637265742d6e6f742d666f722d757365")
	vecSeed   = mustHex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func vecKeys() map[string]Key {
	priv := ed25519.NewKeyFromSeed(vecSeed)
	return map[string]Key{
		AlgHMACSHA256: {Alg: AlgHMACSHA256, Secret: vecSecret},
		AlgEd25519:    {Alg: AlgEd25519, Public: priv.Public().(ed25519.PublicKey), Signer: priv},
	}
}

// vectorFile is testdata/signing/vectors.json: what a client in any
// language needs to prove its signer (docs/signing.md).
type vectorFile struct {
	Comment string `json:"comment"`
	Keys    struct {
		HMACSecretHex    string `json:"hmac_sha256_secret_hex"`
		Ed25519SeedHex   string `json:"ed25519_seed_hex"`
		Ed25519PublicB64 string `json:"ed25519_public_base64"`
	} `json:"keys"`
	Envelopes  []envelopeVector  `json:"envelopes"`
	Invalid    []invalidVector   `json:"invalid"`
	Challenges []challengeVector `json:"challenges"`
}

type envelopeVector struct {
	Name      string `json:"name"`
	Alg       string `json:"alg"`
	Unsigned  string `json:"unsigned"`  // the envelope before signing
	Canonical string `json:"canonical"` // the bytes the signature covers
	Sig       string `json:"sig"`       // sig.v
	Signed    string `json:"signed"`    // the envelope as sent
}

type invalidVector struct {
	Name     string `json:"name"`
	Alg      string `json:"alg"` // the sender's key
	Envelope string `json:"envelope"`
	Error    string `json:"error"` // protocol code
}

type challengeVector struct {
	Alg   string `json:"alg"`
	Nonce string `json:"nonce"`
	Agent string `json:"agent"`
	Bytes string `json:"bytes"`
	Sig   string `json:"sig"`
}

var unsignedEnvelopes = []struct{ name, raw string }{
	{"minimal", `{"id":"01JD0Z8V4Q3ZK7Y2M5N8P1R6TA","from":"cipher","ts":1764000000000}`},
	{"full", `{"id":"01JD0Z8V4Q3ZK7Y2M5N8P1R6TB","from":"cipher","ts":1764000000001,"intent":"analyze firmware of device_x for the weekly review","parent":"01JD0Z7AAAAAAAAAAAAAAAAAAA","body":{"task":"analyze_firmware","target":"device_x","priority":3}}`},
	{"members out of order and spaced", "{ \"ts\" : 1764000000002 ,\n \"body\": {\"b\": [1, 2, {\"z\": null, \"a\": true}], \"a\": \"x\"},\n \"from\": \"cipher\", \"id\": \"m-3\" }"},
	{"unicode and escapes", `{"id":"m-4","from":"cipher","ts":1764000000003,"body":{"text":"caf\u00e9 \u20ac \ud83d\ude00 <tag> & \"quoted\"\n","emoji":"😀"}}`},
	{"numbers", `{"id":"m-5","from":"cipher","ts":1764000000004,"body":{"int":42,"neg":-7,"exp":1e3,"frac":0.5,"big":12345678901234567890,"zero":-0}}`},
	{"old signature replaced", `{"id":"m-6","from":"cipher","ts":1764000000005,"body":null,"sig":{"alg":"none","kid":"cipher"}}`},
}

func errCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, ErrBadEnvelope):
		return "bad_request"
	default:
		return "internal: " + err.Error()
	}
}

func buildVectors(t *testing.T) vectorFile {
	t.Helper()
	keys := vecKeys()
	var f vectorFile
	f.Comment = "mcpd envelope and authentication signing vectors; see docs/signing.md. Keys are public test keys."
	f.Keys.HMACSecretHex = hex.EncodeToString(vecSecret)
	f.Keys.Ed25519SeedHex = hex.EncodeToString(vecSeed)
	pub, _ := json.Marshal([]byte(keys[AlgEd25519].Public))
	f.Keys.Ed25519PublicB64 = strings.Trim(string(pub), `"`)
	for _, u := range unsignedEnvelopes {
		for _, alg := range []string{AlgHMACSHA256, AlgEd25519} {
			signed, err := SignEnvelope([]byte(u.raw), "cipher", keys[alg])
			if err != nil {
				t.Fatalf("%s/%s: %v", u.name, alg, err)
			}
			canon, err := SigningBytes([]byte(u.raw))
			if err != nil {
				t.Fatal(err)
			}
			e, err := ParseEnvelope(signed)
			if err != nil {
				t.Fatal(err)
			}
			var s Sig
			json.Unmarshal(e.Sig, &s)
			f.Envelopes = append(f.Envelopes, envelopeVector{
				Name: u.name, Alg: alg, Unsigned: u.raw, Canonical: string(canon), Sig: s.V, Signed: string(signed),
			})
		}
	}
	good := func(alg string) string {
		for _, v := range f.Envelopes {
			if v.Name == "full" && v.Alg == alg {
				return v.Signed
			}
		}
		t.Fatal("no full vector")
		return ""
	}
	for _, alg := range []string{AlgHMACSHA256, AlgEd25519} {
		g := good(alg)
		f.Invalid = append(f.Invalid,
			invalidVector{"body changed after signing", alg, strings.Replace(g, `"priority":3`, `"priority":4`, 1), "bad_signature"},
			invalidVector{"intent changed after signing", alg, strings.Replace(g, "weekly", "daily", 1), "bad_signature"},
			invalidVector{"kid is another agent", alg, strings.Replace(g, `"kid":"cipher"`, `"kid":"oracle"`, 1), "bad_signature"},
			invalidVector{"no signature", alg, `{"id":"m-7","from":"cipher","ts":1764000000006}`, "bad_signature"},
			invalidVector{"member repeated", alg, strings.Replace(g, `"from":"cipher"`, `"from":"cipher","from":"cipher"`, 1), "bad_request"},
		)
	}
	hm := good(AlgHMACSHA256)
	f.Invalid = append(f.Invalid,
		invalidVector{"hmac in uppercase hex", AlgHMACSHA256, upperSig(t, hm), "bad_signature"},
		invalidVector{"signed with hmac, sender holds ed25519", AlgEd25519, hm, "bad_signature"},
		invalidVector{"ed25519 signature truncated", AlgEd25519, truncSig(t, good(AlgEd25519)), "bad_signature"},
	)
	for _, alg := range []string{AlgHMACSHA256, AlgEd25519} {
		nonce := "q1ZkNVp4S2dzYjJ3a2ZmR1h6c0FVeVhQTnRjZlF4aGs="
		sig, err := SignChallenge(nonce, "cipher", keys[alg])
		if err != nil {
			t.Fatal(err)
		}
		f.Challenges = append(f.Challenges, challengeVector{Alg: alg, Nonce: nonce, Agent: "cipher", Bytes: string(ChallengeBytes(nonce, "cipher")), Sig: sig})
	}
	return f
}

func upperSig(t *testing.T, signed string) string {
	e, err := ParseEnvelope([]byte(signed))
	if err != nil {
		t.Fatal(err)
	}
	var s Sig
	json.Unmarshal(e.Sig, &s)
	return strings.Replace(signed, s.V, strings.ToUpper(s.V), 1)
}

func truncSig(t *testing.T, signed string) string {
	e, err := ParseEnvelope([]byte(signed))
	if err != nil {
		t.Fatal(err)
	}
	var s Sig
	json.Unmarshal(e.Sig, &s)
	return strings.Replace(signed, s.V, s.V[:len(s.V)-8], 1)
}

// The committed vectors are what the code produces and verifies: a change
// to canonicalization or signing shows up here, and -update-vectors
// rewrites the file deliberately.
func TestSigningVectors(t *testing.T) {
	path := filepath.Join("testdata", "signing", "vectors.json")
	built := buildVectors(t)
	if *updateVectors {
		b, _ := json.MarshalIndent(built, "", "  ")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./auth -run TestSigningVectors -update-vectors)", err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	keys := vecKeys()
	for _, v := range f.Envelopes {
		canon, err := SigningBytes([]byte(v.Signed))
		if err != nil || string(canon) != v.Canonical {
			t.Errorf("%s/%s: signing bytes of the signed envelope %q (%v), want %q", v.Name, v.Alg, canon, err, v.Canonical)
		}
		e, err := ParseEnvelope([]byte(v.Signed))
		if err != nil {
			t.Errorf("%s/%s: %v", v.Name, v.Alg, err)
			continue
		}
		if err := VerifyEnvelope(e, keys[v.Alg]); err != nil {
			t.Errorf("%s/%s: %v", v.Name, v.Alg, err)
		}
		resigned, err := SignEnvelope([]byte(v.Unsigned), "cipher", keys[v.Alg])
		if err != nil || string(resigned) != v.Signed {
			t.Errorf("%s/%s: signing again gives %s (%v), want %s", v.Name, v.Alg, resigned, err, v.Signed)
		}
	}
	for _, v := range f.Invalid {
		var got error
		if e, err := ParseEnvelope([]byte(v.Envelope)); err != nil {
			got = err
		} else {
			got = VerifyEnvelope(e, keys[v.Alg])
			if got == nil {
				// Parsing alone accepts a repeated member; signing does not.
				_, got = SigningBytes(e.Raw)
			}
		}
		if errCode(got) != v.Error {
			t.Errorf("invalid %q (%s): got %v, want %s", v.Name, v.Alg, got, v.Error)
		}
	}
	for _, v := range f.Challenges {
		if err := VerifyChallenge(v.Nonce, v.Agent, v.Sig, keys[v.Alg]); err != nil {
			t.Errorf("challenge %s: %v", v.Alg, err)
		}
		if err := VerifyChallenge(v.Nonce, "oracle", v.Sig, keys[v.Alg]); !errors.Is(err, ErrBadSignature) {
			t.Errorf("challenge %s for another agent: %v", v.Alg, err)
		}
	}
	if !*updateVectors && len(f.Envelopes) != len(built.Envelopes) {
		t.Errorf("the file has %d envelope vectors, the code builds %d: rerun with -update-vectors", len(f.Envelopes), len(built.Envelopes))
	}
}
