package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/mcpd/mcpd/cluster"
)

// A node checks raft.db before it opens it, in a child process running
// "mcpd check --raft-db PATH": a fault inside bbolt on a damaged page
// then kills the check, not the node, and counts as a verdict.
func init() {
	if exe, err := os.Executable(); err == nil {
		cluster.RaftDBChecker = cluster.ChildRaftDBChecker(exe, "check", "--json", "--raft-db")
	}
}

// runCheck verifies a data directory's stores without changing them: the
// checksum of every Raft log entry and stable value, bbolt's page check
// of raft.db, each snapshot's CRC, and state.db against the checksum of
// its last clean close. Exit status 0: all good; 1: something is damaged.
// Run it on a stopped node (a node runs it itself at every start).
func runCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "mcpd-data", "the node's data directory")
	raftDB := fs.String("raft-db", "", "check only this raft.db file (what a starting node runs)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *raftDB != "" {
		path := *raftDB
		c := cluster.CheckRaftDB(path)
		if err := printReport(c, *asJSON); err != nil {
			return err
		}
		if !c.OK {
			os.Exit(1)
		}
		return nil
	}
	r, err := cluster.CheckDataDir(*dataDir, cluster.CheckRaftDB)
	if err != nil {
		return err
	}
	if err := printReport(r, *asJSON); err != nil {
		return err
	}
	if !r.OK {
		os.Exit(1)
	}
	return nil
}

func printReport(v any, asJSON bool) error {
	return encodeJSON(os.Stdout, v, !asJSON)
}
