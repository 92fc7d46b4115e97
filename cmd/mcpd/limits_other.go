//go:build !unix

package main

import (
	"log/slog"

	"github.com/mcpd/mcpd/transport"
)

// checkFileLimit returns the connection limit to use; there is no
// RLIMIT_NOFILE to check here.
func checkFileLimit(maxConns int, _ *slog.Logger) int {
	if maxConns <= 0 {
		return transport.DefaultMaxConns
	}
	return maxConns
}
