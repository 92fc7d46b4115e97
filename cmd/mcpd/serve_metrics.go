package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/transport"
)

// prepareMetrics starts collecting hashicorp/raft's metrics when
// --metrics-port is on; it runs before the node starts, so the first
// election is counted too.
func prepareMetrics(f *serveFlags) {
	if f.metricsPort != 0 {
		transport.InstallRaftMetrics()
	}
}

// startMetrics serves Prometheus /metrics on --metrics-port (plain HTTP,
// like the health port; 0 turns it off) until the returned stop is called.
func startMetrics(f *serveFlags, node *cluster.Node, ws *transport.Server, log *slog.Logger, errc chan<- error) (stop func(), err error) {
	if f.metricsPort == 0 {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(f.bind, strconv.Itoa(f.metricsPort)))
	if err != nil {
		return nil, fmt.Errorf("listen for metrics: %w", err)
	}
	srv := &http.Server{Handler: transport.NewMetricsHandler(node, ws), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	log.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { srv.Close() }, nil
}
