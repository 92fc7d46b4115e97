package webui

import (
	"crypto/rand"
	"encoding/base64"
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
	mu sync.Mutex
	m  map[string]*ceremony
}

func newCeremonies() *ceremonies { return &ceremonies{m: make(map[string]*ceremony)} }

// put stores c and answers its id; false when too many are in flight
// (the expired ones are dropped first).
func (cs *ceremonies) put(c *ceremony, now time.Time) (string, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.m) >= maxCeremonies {
		for id, x := range cs.m {
			if !now.Before(x.expires) {
				delete(cs.m, id)
			}
		}
		if len(cs.m) >= maxCeremonies {
			return "", false
		}
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	c.expires = now.Add(ceremonyTTL)
	cs.m[id] = c
	return id, true
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
	delete(cs.m, id)
	return c, c.kind == kind && now.Before(c.expires)
}

func (cs *ceremonies) len() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.m)
}

// begin stores a ceremony and sets its cookie.
func (s *Server) begin(w http.ResponseWriter, c *ceremony) bool {
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
