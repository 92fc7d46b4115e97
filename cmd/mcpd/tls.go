package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/mcpd/mcpd/pki"
)

// runTLS handles "mcpd tls init": a CA and one node certificate covering
// the given hosts, shared by the nodes of a local cluster.
func runTLS(args []string) error {
	if len(args) == 0 || args[0] != "init" {
		return &usageError{"expected 'mcpd tls init --dir DIR --host HOST...'"}
	}
	fs := flag.NewFlagSet("tls init", flag.ContinueOnError)
	dir := fs.String("dir", "mcpd-tls", "directory for ca.pem, ca-key.pem, node.pem, node-key.pem")
	var hosts stringList
	fs.Var(&hosts, "host", "a host name or IP the node certificate must cover (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	m, err := pki.EnsureDevCA(*dir, hosts)
	if err != nil {
		return err
	}
	fmt.Printf("CA %s\nnode certificate %s (hosts: %s)\n", m.CAFile, m.CertFile, strings.Join(hosts, ", "))
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
