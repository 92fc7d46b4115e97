// Command mcpd is the Minimal Coordination Protocol broker: one binary that
// serves a node (serve) and the operator and agent tools around it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

type command struct {
	name  string
	run   func(args []string) error
	usage string
}

var commands = []command{
	{"serve", runServe, "run a node (--dev for a one-node dev broker)"},
	{"send", runSend, "enqueue messages and print their seq"},
	{"recv", runRecv, "consume messages and print them as JSON lines"},
	{"bench", runBench, "measure enqueue and consume throughput and latency"},
	{"agent", runAgent, "add, list, show or revoke agent identities (add prints the credential once)"},
	{"agents", runAgents, "list the agents that registered capabilities: online, load, recent outcomes"},
	{"task", runTask, "submit, get, watch or cancel delegated tasks; approve, deny or show them as the operator"},
	{"capability", runCapability, "mark a capability sensitive (its tasks wait for approval) or plain"},
	{"queue", runQueue, "list the queues, peek at a queue's messages (dead letters with their reasons), redrive dead letters, delete a message"},
	{"schedule", runSchedule, "add, list, pause, resume or delete recurring schedules, and show their history"},
	{"operator", runOperator, "invite operators to the web UI (a one-time code to enroll a passkey), list or remove them"},
	{"keygen", runKeygen, "create a cluster key file (--cluster-key-file)"},
	{"tls", runTLS, "create TLS material (tls init)"},
	{"check", runCheck, "verify a stopped node's data directory (checksums of log, snapshots, state.db)"},
	{"cluster", runCluster, "show the cluster's servers; join, remove or hand leadership to one; recover a lost quorum offline"},
	{"audit", runAudit, "verify, export, search, tail or prune the audit log of a running node; verify and export also offline (a stopped node's data directory, a snapshot)"},
	{"snapshot", runSnapshot, "save a running cluster's state to a file, inspect and check one, restore it (snapshot save|inspect|restore)"},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mcpd <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'mcpd <command> -h' for a command's flags.")
}

// usageError is a mistake in the command line; main prints it with a hint.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func main() {
	os.Exit(runMain(os.Args[1:]))
}

// runMain runs the command line args (without the program name) and returns
// the exit status: 0, 1 for a failure, 2 for a mistake in the command line.
func runMain(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	name := args[0]
	for _, c := range commands {
		if c.name != name {
			continue
		}
		err := c.run(args[1:])
		var ue *usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(os.Stderr, "mcpd %s: %v\nRun 'mcpd %s -h' for usage.\n", name, err, name)
			return 2
		default:
			fmt.Fprintf(os.Stderr, "mcpd %s: %v\n", name, err)
			return 1
		}
	}
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return 0
	}
	fmt.Fprintf(os.Stderr, "mcpd: unknown command %q\n\n", name)
	usage()
	return 2
}
