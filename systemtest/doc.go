// Package systemtest runs whole mcpd processes: it builds the real binary,
// starts nodes on loopback addresses with random ports, and checks what only
// separate processes can show — crashes with SIGKILL, restarts on the same
// data directory, failover under load and graceful shutdown on SIGTERM.
//
// The tests need Linux for the three-node cluster (127.0.0.2 and 127.0.0.3
// must route to loopback) and are skipped with -short.
package systemtest
