package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/mcpd/mcpd/transport"
)

// auditPrune handles "mcpd audit prune --through SEQ": the start of a
// running cluster's audit log, up to SEQ, is removed from every node
// (POST /v1/audit/prune). SEQ must be before the latest checkpoint;
// export the entries first ('mcpd audit export --node'), as nothing
// else keeps them.
func auditPrune(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit prune", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	through := fs.Uint64("through", 0, "remove the entries up to this seq (the last one of your export); it must be before the latest checkpoint")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case *through == 0:
		return &usageError{"--through SEQ is required: the last entry to remove, as exported"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var res transport.AuditPruneResult
	if err := c.do("POST", "/v1/audit/prune", map[string]uint64{"through": *through}, &res); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "audit log pruned: %d removed; it now starts after seq %d\n", res.Removed, res.Base)
	return nil
}
