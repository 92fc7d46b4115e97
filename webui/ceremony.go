package webui

import (
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"
)

// A ceremony is what a node keeps between the begin and the finish of a
// passkey ceremony: the challenge (in data) and what it was for.
type ceremony struct {
	kind    string // enroll, login, reauth
	data    webauthn.SessionData
	expires time.Time
	client  string // the remote host that began it
	// enroll
	codeHash [32]byte
	name     string
	handle   []byte
	// reauth: the session that asked, and the action it is bound to.
	session [32]byte
	action  string
}

// ceremonies are a node's ceremonies in flight, under random ids the
// browser holds in a cookie. Each is used once.
type ceremonies struct {
	mu       sync.Mutex
	m        map[string]*ceremony
	byClient map[string]int
}

func newCeremonies() *ceremonies {
	return &ceremonies{m: make(map[string]*ceremony), byClient: make(map[string]int)}
}

// put stores c and answers its id; false when too many are in flight,
// in all or from c's client (the expired ones are dropped first). The
// bound per client keeps one host from filling the node's table and
// locking every operator out.
func (cs *ceremonies) put(c *ceremony, now time.Time) (string, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.m) >= maxCeremonies || cs.byClient[c.client] >= maxCeremoniesPerClient {
		for id, x := range cs.m {
			if !now.Before(x.expires) {
				cs.drop(id, x)
			}
		}
		if len(cs.m) >= maxCeremonies || cs.byClient[c.client] >= maxCeremoniesPerClient {
			return "", false
		}
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	c.expires = now.Add(ceremonyTTL)
	cs.m[id] = c
	cs.byClient[c.client]++
	return id, true
}

func (cs *ceremonies) drop(id string, c *ceremony) {
	delete(cs.m, id)
	if cs.byClient[c.client]--; cs.byClient[c.client] <= 0 {
		delete(cs.byClient, c.client)
	}
}

// take removes and answers the ceremony id names, if it is of kind and
// has not expired.
func (cs *ceremonies) take(id, kind string, now time.Time) (*ceremony, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c, ok := cs.m[id]
	if !ok {
		return nil, false
	}
	cs.drop(id, c)
	return c, c.kind == kind && now.Before(c.expires)
}

// begin stores a ceremony of r's client and sets its cookie.
func (s *Server) begin(w http.ResponseWriter, r *http.Request, c *ceremony) bool {
	c.client = r.RemoteAddr
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		c.client = host
	}
	id, ok := s.cer.put(c, time.Now())
	if !ok {
		return false
	}
	http.SetCookie(w, &http.Cookie{Name: ceremonyCookie, Value: id, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(ceremonyTTL.Seconds())})
	return true
}

// finish takes the ceremony of kind the request's cookie names and
// clears the cookie.
func (s *Server) finish(w http.ResponseWriter, r *http.Request, kind string) (*ceremony, bool) {
	ck, err := r.Cookie(ceremonyCookie)
	if err != nil {
		return nil, false
	}
	clearCookie(w, ceremonyCookie)
	return s.cer.take(ck.Value, kind, time.Now())
}
