//go:build unix

package main

import (
	"log/slog"
	"syscall"

	"github.com/mcpd/mcpd/transport"
)

// fdReserve is what a node needs besides client connections: listeners,
// Raft peers and forwarding, bbolt and log files, health requests.
const fdReserve = 256

// checkFileLimit raises the soft limit on open files to the hard limit if
// it is lower (the Go runtime normally has done so already) and logs it.
// It returns the connection limit to use: maxConns as given, warning when
// it does not fit in the open-file limit; for 0 (the default) 20,000, or
// fewer when the open-file limit allows fewer.
func checkFileLimit(maxConns int, log *slog.Logger) int {
	auto := maxConns <= 0
	if auto {
		maxConns = transport.DefaultMaxConns
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-file limit", "err", err)
		return maxConns
	}
	if lim.Cur < lim.Max {
		old := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("cannot raise the open-file limit", "soft", old, "hard", lim.Max, "err", err)
			lim.Cur = old
		} else {
			log.Info("raised the open-file limit", "from", old, "to", lim.Cur)
		}
	}
	need := uint64(maxConns) + fdReserve
	switch {
	case lim.Cur >= need:
	case auto && lim.Cur > 2*fdReserve:
		maxConns = int(lim.Cur - fdReserve)
		log.Warn("the open-file limit lowers the default --max-conns; raise the hard limit (ulimit -Hn, systemd LimitNOFILE) for more",
			"max_conns", maxConns, "open_file_limit", lim.Cur)
	default:
		log.Warn("--max-conns does not fit the open-file limit: connections beyond it fail at accept instead of getting a clear refusal; lower --max-conns or raise the hard limit (ulimit -Hn, systemd LimitNOFILE)",
			"max_conns", maxConns, "needs", need, "open_file_limit", lim.Cur)
	}
	log.Info("connection limit", "max_conns", maxConns, "open_file_limit", lim.Cur)
	return maxConns
}
