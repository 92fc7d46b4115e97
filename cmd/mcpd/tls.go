package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/mcpd/mcpd/pki"
)

// runTLS handles "mcpd tls init": a CA and either one node certificate
// covering the given hosts, shared by the nodes of a local cluster, or,
// with --node, the certificate of one node of a cluster.
func runTLS(args []string) error {
	if len(args) > 0 && isHelp(args[0]) {
		return groupUsage(tlsHelp)
	}
	if len(args) == 0 || args[0] != "init" {
		return &usageError{"expected 'mcpd tls init --dir DIR [--node ID] --host HOST...'"}
	}
	fs := flag.NewFlagSet("tls init", flag.ContinueOnError)
	dir := fs.String("dir", "mcpd-tls", "directory for ca.pem and ca-key.pem (created when missing) and the node certificate")
	node := fs.String("node", "", "issue the certificate of this node id as ID.pem and ID-key.pem (default: one shared node.pem and node-key.pem)")
	var hosts stringList
	fs.Var(&hosts, "host", "a host name or IP the node certificate must cover, such as the node's address in --peers (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *node == "" {
		m, err := pki.EnsureDevCA(*dir, hosts)
		if err != nil {
			return err
		}
		fmt.Printf("CA %s\nnode certificate %s (hosts: %s)\n", m.CAFile, m.CertFile, strings.Join(hosts, ", "))
		return nil
	}
	if err := pki.CheckNodeID(*node); err != nil {
		return &usageError{err.Error()}
	}
	m, err := pki.EnsureNodeCert(*dir, *node, hosts)
	if err != nil {
		return err
	}
	fmt.Printf("CA %s\nnode %s certificate %s, key %s (hosts: %s)\n", m.CAFile, *node, m.CertFile, m.KeyFile, strings.Join(hosts, ", "))
	fmt.Printf("node %s needs %s, %s and %s in its --tls-dir; %s stays with the operator\n",
		*node, filepath.Base(m.CAFile), filepath.Base(m.CertFile), filepath.Base(m.KeyFile), filepath.Base(m.CAKeyFile))
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
