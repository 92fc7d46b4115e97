package main

import (
	"flag"
	"fmt"
	"os"
)

// isHelp reports whether a command group's first argument asks for the
// group's usage.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// groupUsage prints a command group's usage, its subcommands, and returns
// flag.ErrHelp, on which main exits 0 as it does for a command's -h.
func groupUsage(text string) error {
	fmt.Fprint(os.Stderr, text)
	return flag.ErrHelp
}

// adminHelp is the footer of the groups that talk to a node's admin API.
const adminHelp = `
ADMIN selects the node: --data-dir DIR (its admin socket DIR/admin.sock, default mcpd-data),
--admin-socket SOCK, or --admin-url URL --admin-token-file F [--ca CA].
`

// connHelp is the footer of the groups that connect as an agent.
const connHelp = `
CONN connects as an agent: [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME].
`

const agentHelp = `usage:
  mcpd agent add NAME [--cap C ...] [--allow-enqueue Q ...] [--allow-consume Q ...] [--out FILE] [ADMIN]
      create an agent identity with its ACL; prints its credential once (--out: to a new file)
  mcpd agent list [--json] [ADMIN]
      list the agents: algorithm, state, created, capabilities
  mcpd agent show NAME [ADMIN]
      print an agent's record as JSON: its ACL, limits, revocation
  mcpd agent revoke NAME [--reason TEXT] [ADMIN]
      revoke an agent; its connections on every node are closed
` + adminHelp + `
Run 'mcpd agent SUBCOMMAND -h' for its flags.
`

const taskHelp = `usage:
  mcpd task submit FILE.json|- [--json] [CONN]
      submit a graph of tasks described in FILE; prints its root and task ids
  mcpd task get ID [--json] [CONN]
      print a task, or a graph and its tasks
  mcpd task watch ID [--json] [--timeout DUR] [CONN]
      follow a task or graph until every task in it has ended
  mcpd task cancel ID [--reason TEXT] [CONN]
      cancel a task and what was delegated under it
  mcpd task verify ID [CONN]
      check a task's delegation chain hop by hop against the agents' registered keys
  mcpd task list [--state S ...] [--capability C] [--graph ID] [--roots] [--limit N] [--json] [ADMIN]
      list tasks, as the operator
  mcpd task show ID [--json] [ADMIN]
      print a task and its history, as the operator
  mcpd task approve ID [--reason TEXT] [ADMIN]
  mcpd task deny ID [--reason TEXT] [ADMIN]
      let a task held for approval (its capability is sensitive) run, or refuse it
` + connHelp + adminHelp + `
Run 'mcpd task SUBCOMMAND -h' for its flags.
`

const capabilityHelp = `usage:
  mcpd capability sensitive NAME [ADMIN]
      the capability's new tasks wait for an operator's approval ('mcpd task approve ID')
  mcpd capability plain NAME [ADMIN]
      its tasks run without approval again
  mcpd capability list [ADMIN]
      list the capabilities marked sensitive
` + adminHelp + `
Run 'mcpd capability SUBCOMMAND -h' for its flags.
`

const queueHelp = `usage:
  mcpd queue list [--json] [ADMIN]
      list the queues with their ready, inflight, delayed and dead-lettered messages
  mcpd queue peek QUEUE [--limit N] [--timeline] [--json] [ADMIN]
      show a queue's oldest messages (of a dead-letter queue, with their reasons)
  mcpd queue redrive DLQ (--seq N ... | --all [--limit N]) [--to QUEUE] [--json] [ADMIN]
      move dead letters back to the queues they died in, or to QUEUE
  mcpd queue delete QUEUE SEQ [--force] [--json] [ADMIN]
      delete one message; one a consumer holds only with --force
` + adminHelp + `
Run 'mcpd queue SUBCOMMAND -h' for its flags.
`

const scheduleHelp = `usage:
  mcpd schedule add NAME --cron EXPR [--tz ZONE] (--enqueue QUEUE [--body JSON] | --task CAPABILITY [--input JSON]) [ADMIN]
      add a recurring schedule that enqueues a message or submits a task at each tick
  mcpd schedule list [--json] [ADMIN]
      list the schedules: cron, action, state, next tick, ticks fired and skipped
  mcpd schedule pause NAME [ADMIN]
  mcpd schedule resume NAME [ADMIN]
  mcpd schedule delete NAME [ADMIN]
      stop a schedule's ticks, start them again, or remove it
  mcpd schedule history NAME [--limit N] [--json] [ADMIN]
      show a schedule's newest firings and what they did
` + adminHelp + `
Run 'mcpd schedule SUBCOMMAND -h' for its flags.
`

const operatorHelp = `usage:
  mcpd operator invite NAME [--ttl 24h] [--json] [ADMIN]
      print a one-time code with which NAME enrolls a passkey in the web UI
  mcpd operator list [--json] [ADMIN]
      list the operators and the pending invites
  mcpd operator remove NAME [ADMIN]
      remove an operator with their passkeys, sessions and invites
` + adminHelp + `
Run 'mcpd operator SUBCOMMAND -h' for its flags.
`

const tlsHelp = `usage:
  mcpd tls init --dir DIR [--node ID] --host HOST ...
      create a CA in DIR (when missing) and a node certificate covering each --host
      (--node ID: ID.pem and ID-key.pem for that node; default one shared node.pem)

Run 'mcpd tls init -h' for its flags.
`

const clusterHelp = `usage:
  mcpd cluster status [--json] [ADMIN]
      show the cluster's servers: role, leader, term, applied index, health
  mcpd cluster join ID=HOST:PORT [ADMIN]   (or --id ID --addr HOST:PORT)
      add a node started with 'mcpd serve --join' as a voter, at its raft address
  mcpd cluster remove NODE [ADMIN]
      remove a server from the cluster (stop it afterwards)
  mcpd cluster transfer-leadership [NODE] [ADMIN]
      hand leadership to NODE, or to any other voter
  mcpd cluster recover --data-dir DIR --peers ID=HOST:PORT,... [--node-id ID]
      offline, on a stopped node: replace its raft configuration with the surviving servers
` + adminHelp + `
Run 'mcpd cluster SUBCOMMAND -h' for its flags.
`

const keygenHelp = `usage: mcpd keygen FILE

Create the cluster's secret key in FILE (mode 0600; it must not exist).
Give every node a copy and start it with --cluster-key-file FILE: the key
seals hmac-sha256 agent secrets and signs audit checkpoints.
`
