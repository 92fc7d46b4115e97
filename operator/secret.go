package operator

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// codeEnc is Crockford's base32: no I, L, O or U, and HashCode reads
// the letters people confuse with digits as those digits.
var codeEnc = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// NewCode returns a one-time invite code: 120 random bits as 24
// characters in groups of four, easy to read out and type.
func NewCode() string {
	b := make([]byte, 15)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	s := codeEnc.EncodeToString(b)
	var out strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			out.WriteByte('-')
		}
		out.WriteString(s[i:min(i+4, len(s))])
	}
	return out.String()
}

// HashCode is what an invite is stored under: the SHA-256 of the code
// with case, spaces and dashes ignored.
func HashCode(code string) [32]byte {
	c := strings.NewReplacer("-", "", " ", "", "O", "0", "I", "1", "L", "1").Replace(strings.ToUpper(code))
	return sha256.Sum256([]byte("mcpd-invite\x00" + c))
}

// NewToken returns a session token for a cookie: 256 random bits.
func NewToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// HashToken is what a session is stored under.
func HashToken(token string) [32]byte {
	return sha256.Sum256([]byte("mcpd-session\x00" + token))
}

// CSRFToken is the anti-forgery token of a session: the browser reads it
// from the session endpoint and sends it back in a header; a page of
// another site can neither read it nor derive it from the cookie, which
// it never sees.
func CSRFToken(token string) string {
	h := sha256.Sum256([]byte("mcpd-csrf\x00" + token))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// GetInvite reads the invite stored under a code hash; nil when none. The
// caller compares Expires with its clock.
func GetInvite(tx *bolt.Tx, codeHash [32]byte) (*Invite, error) {
	return get[Invite](tx.Bucket(bInvites), codeHash[:])
}
