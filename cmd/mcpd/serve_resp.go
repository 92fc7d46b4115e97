package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/transport"
)

// startRESP serves the Redis protocol on --redis-port: plaintext in --dev
// (for redis-cli and redis-benchmark as they are), TLS otherwise.
func startRESP(f *serveFlags, node *cluster.Node, ws *transport.Server, tlsConf *tls.Config, log *slog.Logger, errc chan<- error) (*transport.RESPServer, error) {
	if f.respPort == 0 {
		return nil, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(f.bind, strconv.Itoa(f.respPort)))
	if err != nil {
		return nil, fmt.Errorf("listen for Redis clients: %w", err)
	}
	if !f.dev {
		ln = tls.NewListener(ln, tlsConf)
	}
	srv := transport.NewRESPServer(node, transport.RESPOptions{Dev: f.dev || f.authNone, Audit: ws.RecordAuthEvent, MaxCommand: f.maxFrame, Logger: log})
	ws.OnRevoke(srv.Revoke)
	ws.OnNodeEffect(srv.Touch)
	go func() {
		if err := srv.Serve(ln); err != nil {
			errc <- err
		}
	}()
	return srv, nil
}
