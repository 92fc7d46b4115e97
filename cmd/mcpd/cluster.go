package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/transport"
)

// runCluster is `mcpd cluster status|join|remove|transfer-leadership|recover`:
// the cluster's membership over the node's admin API, and the offline
// recovery of a cluster that lost its quorum (docs/ops/cluster.md).
func runCluster(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd cluster status|join|remove|transfer-leadership|recover ...'"}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		return groupUsage(clusterHelp)
	case "status":
		return clusterStatus(args[1:], os.Stdout)
	case "join":
		return clusterJoin(args[1:], os.Stdout)
	case "remove":
		return clusterRemove(args[1:], os.Stdout)
	case "transfer-leadership":
		return clusterTransfer(args[1:], os.Stdout)
	case "recover":
		return clusterRecover(args[1:], os.Stdout)
	}
	return &usageError{fmt.Sprintf("unknown cluster command %q: status, join, remove, transfer-leadership or recover", args[0])}
}

// parseOptionalArg parses fs after at most one positional argument,
// which may come before or after the flags.
func parseOptionalArg(fs *flag.FlagSet, args []string) (string, error) {
	var pos string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		if pos != "" || fs.NArg() > 1 {
			return "", &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(fs.NArg()-1))}
		}
		pos = fs.Arg(0)
	}
	return pos, nil
}

func clusterStatus(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster status", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	raw, err := c.doRaw("GET", "/v1/cluster", nil)
	if err != nil {
		return err
	}
	if *asJSON {
		return printRawJSON(stdout, raw)
	}
	var st transport.ClusterStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSUFFRAGE\tROLE\tLEADER\tTERM\tAPPLIED/COMMIT\tLAST CONTACT\tLEVEL\tHEALTH")
	unhealthy := 0
	for _, s := range st.Servers {
		health := "ok"
		switch {
		case s.Error != "":
			health = "unreachable: " + s.Error
		case !s.Healthy:
			health = "not ready: " + s.Reason
		}
		if health != "ok" {
			unhealthy++
		}
		dash := func(v string) string {
			if v == "" {
				return "-"
			}
			return v
		}
		idx := "-"
		if s.Error == "" {
			idx = fmt.Sprintf("%d/%d", s.Applied, s.Commit)
		}
		term := "-"
		if s.Term > 0 {
			term = fmt.Sprint(s.Term)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.Address, s.Suffrage, dash(s.Role), dash(s.Leader), term, idx, dash(s.LastContact), s.Level, health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cluster level %d", st.ClusterLevel)
	if st.ClusterLevel < st.Level {
		fmt.Fprintf(stdout, " (%s runs %d: the leader raises it once every server shows LEVEL %d)", st.Node, st.Level, st.Level)
	}
	fmt.Fprintln(stdout)
	if st.Leader == "" {
		fmt.Fprintf(stdout, "no leader known to %s\n", st.Node)
	}
	return nil
}

func clusterJoin(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster join", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	id := fs.String("id", "", "the new node's id (its --node-id)")
	addr := fs.String("addr", "", "the new node's raft address, host:port, as its certificate covers it")
	setUsage(fs, "usage: mcpd cluster join ID=HOST:PORT [flags]\n   or: mcpd cluster join --id ID --addr HOST:PORT [flags]\n"+
		"add the node ID, started with 'mcpd serve --join', as a voter at its raft address HOST:PORT")
	pos, err := parseOptionalArg(fs, args)
	if err != nil {
		return err
	}
	if pos != "" {
		i, a, ok := strings.Cut(pos, "=")
		if !ok || *id != "" || *addr != "" {
			return &usageError{"cluster join ID=HOST:PORT, or --id ID --addr HOST:PORT"}
		}
		*id, *addr = i, a
	}
	if *id == "" || *addr == "" {
		return &usageError{"cluster join ID=HOST:PORT, or --id ID --addr HOST:PORT"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var out transport.ClusterChanged
	if err := c.do("POST", "/v1/cluster/join", transport.ClusterChange{ID: *id, Addr: *addr}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s at %s is a voter (leader %s)\n", *id, *addr, out.Leader)
	return nil
}

func clusterRemove(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster remove", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	setUsage(fs, "usage: mcpd cluster remove NODE [flags]\nremove the server NODE from the cluster (stop it afterwards)")
	id, err := parseOptionalArg(fs, args)
	if err != nil {
		return err
	}
	if id == "" {
		return &usageError{"cluster remove NODE"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var out transport.ClusterChanged
	if err := c.do("POST", "/v1/cluster/remove", transport.ClusterChange{ID: id}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s removed (leader %s); stop it now\n", id, out.Leader)
	return nil
}

func clusterTransfer(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster transfer-leadership", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	setUsage(fs, "usage: mcpd cluster transfer-leadership [NODE] [flags]\nhand leadership to NODE, or to any other voter")
	id, err := parseOptionalArg(fs, args)
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var out transport.ClusterChanged
	if err := c.do("POST", "/v1/cluster/transfer-leadership", transport.ClusterChange{ID: id}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "leader: %s\n", out.Leader)
	return nil
}

func clusterRecover(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster recover", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "the stopped node's data directory")
	nodeID := fs.String("node-id", "", "this node's id (default: the only one in --peers)")
	peersFlag := fs.String("peers", "", "the surviving servers, id=host:raftport,..., the same on each of them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *dataDir == "" || *peersFlag == "" {
		return &usageError{"cluster recover --data-dir DIR --peers id=host:port,... [--node-id ID]"}
	}
	peers, err := cluster.ParsePeers(*peersFlag)
	if err != nil {
		return &usageError{err.Error()}
	}
	if *nodeID == "" {
		if len(peers) != 1 {
			return &usageError{"--node-id is required when --peers lists more than one server"}
		}
		for id := range peers {
			*nodeID = id
		}
	}
	// A running node answers on its admin socket; its stores are locked
	// as well, which Recover checks too.
	af := adminFlags{dataDir: *dataDir}
	if c, err := af.client(); err == nil {
		if _, err := c.doRaw("GET", "/v1/cluster", nil); err == nil || isAdminAnswer(err) {
			return fmt.Errorf("the node of %s is running (its admin socket answers): stop it first", *dataDir)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	res, err := cluster.Recover(*dataDir, *nodeID, peers, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: raft configuration replaced at index %d by %d voter(s):", filepath.Clean(*dataDir), res.LastIndex, len(res.Servers))
	for _, s := range res.Servers {
		fmt.Fprintf(stdout, " %s=%s", s.ID, s.Address)
	}
	fmt.Fprintf(stdout, "\nstart the node with --peers %s\n", *peersFlag)
	return nil
}

// isAdminAnswer reports whether err is an answer of a node's admin API.
func isAdminAnswer(err error) bool {
	var ae *adminError
	return errors.As(err, &ae)
}
