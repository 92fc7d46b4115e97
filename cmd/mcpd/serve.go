package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/transport"
)

type serveFlags struct {
	dev, authNone                    bool
	nodeID, dataDir, bind, peers     string
	tlsDir, tlsCert, tlsKey          string
	port, healthPort, raftPort       int
	metricsPort, adminPort, respPort int
	maxFrame, maxConns               int
	heartbeat, election, clockOffset time.Duration
	snapEvery                        uint64
	nodeDownAfter                    time.Duration
	logLevel, logFormat              string
	pprof                            bool
	noSync                           bool // --test-unsafe-no-fsync
	join                             bool // --join (docs/ops/cluster.md)
	trust                            trustFlags
	ui                               uiFlags
	tasks                            taskFlags
}

// flagSet is serve's flag set, filling f.
func (f *serveFlags) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.BoolVar(&f.dev, "dev", false, "one self-bootstrapping node with dev authentication (alg \"none\")")
	fs.StringVar(&f.nodeID, "node-id", "", "this node's id (default n1 with --dev)")
	fs.StringVar(&f.dataDir, "data-dir", "mcpd-data", "directory for state.db, the Raft log and snapshots, and dev TLS material")
	fs.StringVar(&f.bind, "bind", "127.0.0.1", "host every listener binds")
	fs.StringVar(&f.peers, "peers", "", "every voter as id=host:raftport, comma-separated, the same on every node")
	fs.BoolVar(&f.join, "join", false, "new to a running cluster: never bootstrap, wait to be added by 'mcpd cluster join' (--peers: the cluster's servers and this node)")
	fs.IntVar(&f.port, "port", 4433, "MCP over WebSocket (TLS)")
	fs.IntVar(&f.healthPort, "health-port", 4434, "HTTP /healthz and /readyz")
	fs.IntVar(&f.metricsPort, "metrics-port", 4435, "Prometheus /metrics, plain HTTP (0: off; docs/ops/metrics.md)")
	fs.IntVar(&f.adminPort, "admin-port", 4436, "admin API and web UI over HTTPS, when --ui or --admin-token-file asks for them (0: off; docs/ops/ui.md)")
	fs.IntVar(&f.respPort, "redis-port", 4437, "Redis protocol (RESP2/RESP3; plaintext in --dev, TLS otherwise; 0: off)")
	fs.IntVar(&f.raftPort, "raft-port", 4438, "Raft and leader forwarding between nodes")
	fs.StringVar(&f.tlsDir, "tls-dir", "", "directory with ca.pem and this node's certificate, ID.pem/ID-key.pem or node.pem/node-key.pem (from 'mcpd tls init'), for the client ports and mutual TLS between nodes (default DATA-DIR/tls; generated only with --dev)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "certificate for the client ports (PEM), instead of --tls-dir")
	fs.StringVar(&f.tlsKey, "tls-key", "", "key of --tls-cert (PEM)")
	fs.BoolVar(&f.authNone, "insecure-auth-none", false, "accept alg \"none\" (agents without identities, unrestricted by ACLs) outside --dev: for test clusters only")
	fs.IntVar(&f.maxFrame, "max-frame", 1<<20, "largest accepted WebSocket frame in bytes")
	fs.IntVar(&f.maxConns, "max-conns", 0, "most WebSocket connections open at once, more are refused with HTTP 503 (default 20000, fewer if the open-file limit is lower)")
	fs.DurationVar(&f.heartbeat, "raft-heartbeat-timeout", time.Second, "Raft heartbeat timeout")
	fs.DurationVar(&f.election, "raft-election-timeout", time.Second, "Raft election timeout")
	fs.DurationVar(&f.nodeDownAfter, "node-down-after", 15*time.Second, "how long a leader waits on an unreachable peer before ending its clients' consumers and leases")
	fs.DurationVar(&f.clockOffset, "test-clock-offset", 0, "shift this node's clock (fault-injection tests only)")
	f.tasks.register(fs)
	fs.Uint64Var(&f.snapEvery, "test-snapshot-threshold", 0, "snapshot every this many entries, checked every second, keeping as many (tests only)")
	fs.BoolVar(&f.noSync, "test-unsafe-no-fsync", false, "never fsync the Raft log or state.db: loses acknowledged messages on power loss (the fault suite's self-test only)")
	f.trust.register(fs)
	f.ui.register(fs)
	fs.BoolVar(&f.pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on the health port")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	return fs
}

func runServe(args []string) error {
	var f serveFlags
	fs := f.flagSet()
	if err := parseWithConfig(fs, args); err != nil { // --config FILE (config.go)
		return err
	}
	f.ui.resolve(fs, f.dev, f.adminPort)
	if err := f.tasks.check(); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return &usageError{err.Error()}
	}
	peers, err := cluster.ParsePeers(f.peers)
	if err != nil {
		return &usageError{err.Error()}
	}
	switch {
	case f.dev && len(peers) > 0:
		return &usageError{"--dev runs one node; for a cluster give --peers and --insecure-auth-none instead"}
	case f.dev && f.nodeID == "":
		f.nodeID = "n1"
	case !f.dev && f.nodeID == "":
		return &usageError{"--node-id is required (or use --dev)"}
	case !f.dev && len(peers) == 0:
		return &usageError{"--peers is required outside --dev, e.g. --peers n1=127.0.0.1:4438,n2=127.0.0.2:4438,n3=127.0.0.3:4438"}
	}
	if _, ok := peers[f.nodeID]; !ok && len(peers) > 0 {
		return &usageError{fmt.Sprintf("--peers does not list this node %q", f.nodeID)}
	}
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return err
	}
	tlsConf, caFile, peerTLS, err := nodeTLS(&f, peers, log)
	if err != nil {
		return err
	}
	clusterKey, err := loadClusterKey(&f, log)
	if err != nil {
		return err
	}

	prepareMetrics(&f)
	node, err := cluster.New(cluster.Config{
		NodeID:           f.nodeID,
		DataDir:          f.dataDir,
		RaftBind:         net.JoinHostPort(f.bind, strconv.Itoa(f.raftPort)),
		Peers:            peers,
		Join:             f.join,
		HeartbeatTimeout: f.heartbeat,
		ElectionTimeout:  f.election,
		ClockOffset:      f.clockOffset,
		SnapshotEvery:    f.snapEvery,
		UnsafeNoSync:     f.noSync,
		NodeDownAfter:    f.nodeDownAfter,
		PeerTLS:          peerTLS,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	f.maxConns = checkFileLimit(f.maxConns, log)
	ws := transport.NewServer(node, transport.Options{Dev: f.dev || f.authNone, ClusterKey: clusterKey, MaxFrame: f.maxFrame, MaxConns: f.maxConns, TaskLimits: f.tasks.limits, Logger: log})
	wsLn, err := net.Listen("tcp", net.JoinHostPort(f.bind, strconv.Itoa(f.port)))
	if err != nil {
		node.Shutdown()
		return fmt.Errorf("listen for clients: %w", err)
	}
	healthLn, err := net.Listen("tcp", net.JoinHostPort(f.bind, strconv.Itoa(f.healthPort)))
	if err != nil {
		wsLn.Close()
		node.Shutdown()
		return fmt.Errorf("listen for health: %w", err)
	}
	healthMux := http.NewServeMux()
	healthMux.Handle("/", ws.HealthHandler())
	if f.pprof {
		healthMux.HandleFunc("/debug/pprof/", pprof.Index)
		healthMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	health := &http.Server{Handler: healthMux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 4)
	admin, _, err := startAdmin(&f, node, clusterKey, tlsConf, log, errc)
	if err != nil {
		wsLn.Close()
		healthLn.Close()
		node.Shutdown()
		return err
	}
	defer admin.close()
	stopCheckpoints := startCheckpoints(&f, node, clusterKey)
	defer stopCheckpoints()
	stopDuties := startLeaderDuties(&f, node)
	defer stopDuties()
	resp, err := startRESP(&f, node, ws, tlsConf, log, errc)
	if err != nil {
		wsLn.Close()
		healthLn.Close()
		node.Shutdown()
		return err
	}
	if resp != nil {
		defer resp.Close()
	}
	stopMetrics, err := startMetrics(&f, node, ws, log, errc)
	if err != nil {
		wsLn.Close()
		healthLn.Close()
		node.Shutdown()
		return err
	}
	defer stopMetrics()
	go func() { errc <- ws.Serve(tls.NewListener(wsLn, tlsConf)) }()
	go func() {
		if err := health.Serve(healthLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	log.Info("mcpd serving", "node", f.nodeID, "ws", fmt.Sprintf("wss://%s/v1", wsLn.Addr()),
		"health", "http://"+healthLn.Addr().String(), "raft", net.JoinHostPort(f.bind, strconv.Itoa(f.raftPort)), "ca", caFile, "dev", f.dev)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var serveErr error
	select {
	case s := <-sig:
		log.Info("shutting down", "signal", s.String())
	case serveErr = <-errc:
		log.Error("listener failed; shutting down", "err", serveErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wsLn.Close()
	ws.Shutdown(ctx)
	if err := node.Shutdown(); err != nil {
		log.Warn("raft shutdown", "err", err)
	}
	health.Close()
	log.Info("stopped", "node", f.nodeID)
	return serveErr
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json")
}
