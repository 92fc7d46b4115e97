// Package webui serves the operators' web UI on the admin port: the
// pages, embedded in the binary, and the passkey ceremonies that let an
// operator in (github.com/go-webauthn/webauthn). Behind it the admin JSON
// API (transport.Admin) answers a logged-in browser as it answers the
// local socket, naming the operator in the audit log.
//
// Who may do what (docs/ops/ui.md):
//   - An operator enrolls a passkey with a one-time invite code that
//     'mcpd operator invite' printed; the code is stored only as a hash and
//     is spent by the enrollment.
//   - A login is a discoverable passkey assertion; it opens a session,
//     replicated (package operator), whose random token lives in a
//     __Host- cookie: Secure, HttpOnly, SameSite=Strict.
//   - Every state-changing API request of a session carries the session's
//     CSRF token in a header and passes Go's cross-origin protection
//     (Sec-Fetch-Site / Origin).
//   - Approving or denying a held task asks for the passkey again, bound
//     to that task and that decision: a session alone cannot do it.
//   - An API client may instead present the operator token (Bearer), as on
//     an admin port without the UI.
//
// WebAuthn ceremonies (a challenge between its begin and its finish) are
// kept in the memory of the node that began them for five minutes: an
// operator's browser talks to one node's address during a login.
package webui

import (
	"crypto/subtle"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

//go:embed static
var staticFS embed.FS

// Cookie names. The __Host- prefix makes the browser refuse them unless
// they are Secure, for path /, and bound to this host only.
const (
	sessionCookie  = "__Host-mcpd_session"
	ceremonyCookie = "__Host-mcpd_ceremony"
	csrfHeader     = "X-CSRF-Token"
	ceremonyTTL    = 5 * time.Minute
	maxCeremonies  = 4096
	// maxCeremoniesPerClient bounds the ceremonies one remote host has in
	// flight.
	maxCeremoniesPerClient = 64
	maxCeremonyBody        = 64 << 10
)

// Config is the UI's relying-party configuration.
type Config struct {
	// Origins are the URLs operators open the UI at
	// ("https://mcpd.example.com:4436"); a passkey ceremony from any
	// other origin is refused.
	Origins []string
	// RPID is the WebAuthn relying party id: a domain every origin's
	// host is or ends with. Passkeys are bound to it. Empty: the first
	// origin's host.
	RPID string
	// SessionTTL is how long a login lasts.
	SessionTTL time.Duration
	// Token, when not empty, also lets API clients in with
	// "Authorization: Bearer TOKEN".
	Token string
}

// Server is the UI of one node.
type Server struct {
	node   *cluster.Node
	admin  *transport.Admin
	wa     *webauthn.WebAuthn
	cfg    Config
	log    *slog.Logger
	cer    *ceremonies
	mux    *http.ServeMux
	static http.Handler
}

// New returns the UI of node, answering the API through admin.
func New(node *cluster.Node, admin *transport.Admin, cfg Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if len(cfg.Origins) == 0 {
		return nil, fmt.Errorf("the UI needs at least one origin (--ui-origin)")
	}
	for _, o := range cfg.Origins {
		u, err := url.Parse(o)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("UI origin %q: want https://HOST[:PORT]", o)
		}
		if cfg.RPID == "" {
			cfg.RPID = u.Hostname()
		}
		if h := u.Hostname(); h != cfg.RPID && !strings.HasSuffix(h, "."+cfg.RPID) {
			return nil, fmt.Errorf("UI origin %q is not within the relying party id %q: passkeys made for one would not work at the other", o, cfg.RPID)
		}
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if ms := cfg.SessionTTL.Milliseconds(); ms < operator.MinSessionTTLMs || ms > operator.MaxSessionTTLMs {
		return nil, fmt.Errorf("UI session lifetime %v: want 1m to 720h", cfg.SessionTTL)
	}
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          cfg.RPID,
		RPDisplayName: "mcpd",
		RPOrigins:     cfg.Origins,
		AuthenticatorSelection: protocol.AuthenticatorSelection{
			ResidentKey:      protocol.ResidentKeyRequirementRequired,
			UserVerification: protocol.VerificationPreferred,
		},
		AttestationPreference: protocol.PreferNoAttestation,
	})
	if err != nil {
		return nil, fmt.Errorf("webauthn: %w", err)
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	s := &Server{node: node, admin: admin, wa: wa, cfg: cfg, log: log.With("component", "webui"),
		cer: newCeremonies(), mux: http.NewServeMux(), static: http.StripPrefix("/ui", http.FileServerFS(sub))}
	s.routes()
	admin.SetEnrollURLs(s.enrollURLs())
	return s, nil
}

func (s *Server) enrollURLs() []string {
	out := make([]string, len(s.cfg.Origins))
	for i, o := range s.cfg.Origins {
		out[i] = strings.TrimSuffix(o, "/") + "/ui/#/enroll"
	}
	return out
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusFound)
	})
	s.mux.Handle("GET /ui/", s.static)
	s.mux.HandleFunc("POST /ui/api/enroll/begin", s.enrollBegin)
	s.mux.HandleFunc("POST /ui/api/enroll/finish", s.enrollFinish)
	s.mux.HandleFunc("POST /ui/api/login/begin", s.loginBegin)
	s.mux.HandleFunc("POST /ui/api/login/finish", s.loginFinish)
	s.mux.HandleFunc("POST /ui/api/logout", s.logout)
	s.mux.HandleFunc("GET /ui/api/session", s.whoami)
	s.mux.HandleFunc("POST /ui/api/reauth/begin", s.reauthBegin)
	s.mux.HandleFunc("POST /ui/api/tasks/{id}/decide", s.decide)
	s.mux.HandleFunc("/v1/", s.api)
}

// Handler is the admin port's handler: the UI and the API behind it.
func (s *Server) Handler() http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		transport.WriteError(w, http.StatusForbidden, "forbidden", "cross-origin request refused")
	}))
	return cop.Handler(securityHeaders(s.mux))
}

// securityHeaders keeps the pages to their own origin: no framing, no
// script or style but the embedded files, no referrer.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// authed is a request's session: the operator, the token and its hash.
type authed struct {
	name  string
	token string
	hash  [32]byte
}

// session authenticates a request by its session cookie.
func (s *Server) session(r *http.Request) (authed, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 128 {
		return authed{}, false
	}
	a := authed{token: c.Value, hash: operator.HashToken(c.Value)}
	now := time.Now().UnixMilli()
	ok := false
	_ = s.node.Read(func(tx *bolt.Tx) error {
		se, err := operator.GetSession(tx, a.hash)
		if err != nil || se == nil || se.Expires <= now {
			return err
		}
		op, err := operator.Get(tx, se.Operator)
		if err != nil || op == nil {
			return err
		}
		a.name, ok = op.Name, true
		return nil
	})
	return a, ok
}

func unsafeMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// csrfOK checks a session request's anti-forgery header.
func csrfOK(r *http.Request, a authed) bool {
	got := r.Header.Get(csrfHeader)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(operator.CSRFToken(a.token))) == 1
}

// requireSession answers 401 or 403 unless the request has a session
// and, for what changes state, its CSRF token.
func (s *Server) requireSession(w http.ResponseWriter, r *http.Request) (authed, bool) {
	a, ok := s.session(r)
	if !ok {
		transport.WriteError(w, http.StatusUnauthorized, "unauthenticated", "log in with your passkey first")
		return a, false
	}
	if unsafeMethod(r.Method) && !csrfOK(r, a) {
		transport.WriteError(w, http.StatusForbidden, "forbidden", "missing or wrong "+csrfHeader+" header")
		return a, false
	}
	return a, true
}

// api serves the admin JSON API to a session or a token holder.
func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if s.cfg.Token == "" || subtle.ConstantTimeCompare([]byte(bearer), []byte(s.cfg.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mcpd"`)
			transport.WriteError(w, http.StatusUnauthorized, "unauthenticated", "wrong operator token")
			return
		}
		s.admin.Serve(w, r, "operator:token")
		return
	}
	a, ok := s.requireSession(w, r)
	if !ok {
		return
	}
	if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1/tasks/") &&
		(strings.HasSuffix(r.URL.Path, "/approve") || strings.HasSuffix(r.URL.Path, "/deny")) {
		transport.WriteError(w, http.StatusForbidden, "reauth_required",
			"approving or denying a task asks for your passkey again: use POST /ui/api/tasks/{id}/decide")
		return
	}
	s.admin.Serve(w, r, "operator:"+a.name)
}

// whoami answers GET /ui/api/session: the operator and the CSRF token.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	a, ok := s.session(r)
	if !ok {
		transport.WriteError(w, http.StatusUnauthorized, "unauthenticated", "no session")
		return
	}
	transport.WriteJSON(w, http.StatusOK, map[string]any{"operator": a.name, "csrf": operator.CSRFToken(a.token), "rp_id": s.cfg.RPID})
}

func (s *Server) setSession(w http.ResponseWriter, token string) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: token, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.SessionTTL.Seconds())})
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	a, ok := s.requireSession(w, r)
	if !ok {
		return
	}
	if _, err := s.admin.Call(r.Context(), "operator:"+a.name, fsm.TypeOperatorLogout, &fsm.OperatorLogoutArgs{Session: a.hash}); err != nil {
		transport.WriteFail(w, err)
		return
	}
	clearCookie(w, sessionCookie)
	s.log.Info("operator logged out", "operator", a.name)
	w.WriteHeader(http.StatusNoContent)
}
