package kv

import "strings"

// The HELP subcommand of the container commands that mcpd's keyspace
// implements: a list of status lines naming each subcommand it supports
// and what it does. It runs nowhere near the log: the transport answers it
// where it finds it (Help), also inside MULTI.

var helpText = map[string][]string{
	"xgroup": {
		"XGROUP <subcommand> [<arg> ...]. Subcommands supported here:",
		"CREATE <key> <group> <id|$> [MKSTREAM] [ENTRIESREAD <n>]",
		"    Create a consumer group on a stream, reading after <id> ($: its last entry).",
		"    MKSTREAM creates the stream when it does not exist.",
		"SETID <key> <group> <id|$> [ENTRIESREAD <n>]",
		"    Set the last id the group has read.",
		"DESTROY <key> <group>",
		"    Remove a consumer group and its pending entries.",
		"CREATECONSUMER <key> <group> <consumer>",
		"    Add a consumer to a group.",
		"DELCONSUMER <key> <group> <consumer>",
		"    Remove a consumer from a group, and its pending entries.",
		"HELP",
		"    Print this list.",
	},
	"xinfo": {
		"XINFO <subcommand> [<arg> ...]. Subcommands supported here:",
		"STREAM <key> [FULL [COUNT <n>]]",
		"    Show a stream: its length, first and last entries and groups; FULL adds",
		"    its entries, groups, consumers and pending entries (COUNT of each, 10 by default).",
		"GROUPS <key>",
		"    Show a stream's consumer groups.",
		"CONSUMERS <key> <group>",
		"    Show a group's consumers.",
		"HELP",
		"    Print this list.",
	},
}

// Help answers `NAME HELP` for the container commands whose help the
// keyspace gives; ok is false for any other command.
func Help(args [][]byte) (v Value, ok bool) {
	if len(args) != 2 || !strings.EqualFold(string(args[1]), "help") {
		return Value{}, false
	}
	lines, ok := helpText[strings.ToLower(string(args[0]))]
	if !ok {
		return Value{}, false
	}
	out := make([]Value, len(lines))
	for i, l := range lines {
		out[i] = Str(l)
	}
	return ArrayOf(out...), true
}
