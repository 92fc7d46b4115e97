package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/transport"
	"github.com/mcpd/mcpd/webui"
)

// trustFlags are serve's identity and admin settings.
type trustFlags struct {
	clusterKeyFile string
	adminTokenFile string
	auditEvery     time.Duration
}

func (t *trustFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.clusterKeyFile, "cluster-key-file", "", "the cluster's secret key, the same file on every node: seals hmac-sha256 agent secrets and signs audit checkpoints (create with 'mcpd keygen FILE'; --dev creates DATA-DIR/cluster.key)")
	fs.DurationVar(&t.auditEvery, "audit-checkpoint-every", cluster.DefaultAuditCheckpointEvery, "how often the leader signs the audit log's head (needs --cluster-key-file)")
	fs.StringVar(&t.adminTokenFile, "admin-token-file", "", "serve the admin API on --admin-port over HTTPS to holders of the token in this file")
}

// loadClusterKey loads --cluster-key-file, creating DATA-DIR/cluster.key
// in dev mode when none is given.
func loadClusterKey(f *serveFlags, log *slog.Logger) (*auth.ClusterKey, error) {
	path := f.trust.clusterKeyFile
	if path == "" && f.dev {
		path = filepath.Join(f.dataDir, "cluster.key")
		if err := auth.CreateClusterKeyFile(path); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create dev cluster key: %w", err)
		}
	}
	if path == "" {
		log.Warn("no --cluster-key-file: hmac-sha256 agents cannot be added or authenticated here, and audit checkpoints are not signed")
		return nil, nil
	}
	k, err := auth.LoadClusterKey(path)
	if err != nil {
		return nil, fmt.Errorf("--cluster-key-file: %w", err)
	}
	log.Info("cluster key loaded", "id", k.ID())
	return k, nil
}

// adminServers are the admin API's listeners: the unix socket always, the
// admin port when a token is configured.
type adminServers struct {
	sock, port *http.Server
	sockPath   string
}

func startAdmin(f *serveFlags, node *cluster.Node, key *auth.ClusterKey, tlsConf *tls.Config, log *slog.Logger, errc chan<- error) (*adminServers, *transport.Admin, error) {
	admin := transport.NewAdmin(node, key, log)
	s := &adminServers{sockPath: filepath.Join(f.dataDir, adminSocketName)}
	if len(s.sockPath) > 100 {
		return nil, nil, fmt.Errorf("admin socket path %s is too long for a unix socket; use a shorter --data-dir", s.sockPath)
	}
	// A socket left by a process that is gone is in the way; a running
	// node on the same data dir holds the Raft files' locks and fails
	// before this.
	if err := os.Remove(s.sockPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	ln, err := net.Listen("unix", s.sockPath)
	if err != nil {
		return nil, nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(s.sockPath, 0o600); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("admin socket: %w", err)
	}
	s.sock = &http.Server{Handler: admin.LocalHandler(), ReadHeaderTimeout: 5 * time.Second}
	go serveHTTP(s.sock, ln, errc)
	token := ""
	if f.trust.adminTokenFile != "" {
		b, err := os.ReadFile(f.trust.adminTokenFile)
		if err != nil {
			s.close()
			return nil, nil, fmt.Errorf("--admin-token-file: %w", err)
		}
		if token = strings.TrimSpace(string(b)); len(token) < 16 {
			s.close()
			return nil, nil, fmt.Errorf("--admin-token-file: the token must be at least 16 characters")
		}
	}
	if f.adminPort == 0 || (token == "" && !f.ui.on) {
		return s, admin, nil
	}
	var h http.Handler
	if f.ui.on {
		origins, err := f.ui.originList(f.adminPort)
		if err != nil {
			s.close()
			return nil, nil, err
		}
		ui, err := webui.New(node, admin, webui.Config{Origins: origins, RPID: f.ui.rpID, SessionTTL: f.ui.sessionTTL, Token: token}, log)
		if err != nil {
			s.close()
			return nil, nil, err
		}
		h = ui.Handler()
		log.Info("web UI: invite an operator with 'mcpd operator invite NAME', then open the enrollment page", "url", origins[0]+"/ui/")
	} else {
		h = admin.TokenHandler(token)
	}
	pln, err := net.Listen("tcp", net.JoinHostPort(f.bind, strconv.Itoa(f.adminPort)))
	if err != nil {
		s.close()
		return nil, nil, fmt.Errorf("listen for admin: %w", err)
	}
	s.port = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go serveHTTP(s.port, tls.NewListener(pln, tlsConf), errc)
	return s, admin, nil
}

func serveHTTP(s *http.Server, ln net.Listener, errc chan<- error) {
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		errc <- err
	}
}

func (s *adminServers) close() {
	if s.sock != nil {
		s.sock.Close()
	}
	if s.port != nil {
		s.port.Close()
	}
	os.Remove(s.sockPath)
}

// runKeygen handles "mcpd keygen FILE": a new cluster key file, mode 0600.
func runKeygen(args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), keygenHelp) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return &usageError{"expected 'mcpd keygen FILE'"}
	}
	path := fs.Arg(0)
	if err := auth.CreateClusterKeyFile(path); err != nil {
		return err
	}
	k, err := auth.LoadClusterKey(path)
	if err != nil {
		return err
	}
	fmt.Printf("cluster key %s written to %s; give every node a copy (mode 0600) with --cluster-key-file\n", k.ID(), path)
	return nil
}

// startCheckpoints runs the audit checkpoints when the node has the
// cluster key; the function it returns stops them.
func startCheckpoints(f *serveFlags, node *cluster.Node, key *auth.ClusterKey) func() {
	if key == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		node.RunAuditCheckpoints(key.AuditKey(), f.trust.auditEvery, stop)
	}()
	return func() {
		close(stop)
		<-done
	}
}
