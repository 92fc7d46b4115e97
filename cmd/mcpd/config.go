package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// A TOML file may hold a command's flags (mcpd serve --config FILE): every
// key is a flag's name and its value the flag's. Flags given on the command
// line win over the file. A table's keys are prefixed with its name and a
// dash ([raft] heartbeat-timeout = "1s" is --raft-heartbeat-timeout),
// except [peers], whose keys are node ids and values raft addresses (the
// --peers list). An array becomes a comma-separated value. A key that is
// not a flag is an error, so a misspelt setting is not silently ignored.

// parseWithConfig adds --config to fs, parses args, then sets every flag
// the file names and the command line did not.
func parseWithConfig(fs *flag.FlagSet, args []string) error {
	path := fs.String("config", "", "a TOML file of this command's flags by name (flags on the command line win)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return nil
	}
	return applyConfigFile(fs, *path)
}

func applyConfigFile(fs *flag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if _, err := toml.Decode(string(raw), &doc); err != nil {
		return &usageError{fmt.Sprintf("config %s: %v", path, err)}
	}
	settings := map[string]string{}
	if err := flattenConfig("", doc, settings); err != nil {
		return &usageError{fmt.Sprintf("config %s: %v", path, err)}
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	names := make([]string, 0, len(settings))
	for name := range settings {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "config" || fs.Lookup(name) == nil {
			return &usageError{fmt.Sprintf("config %s: %q is not a flag of this command", path, name)}
		}
		if onCommandLine[name] {
			continue
		}
		if err := fs.Set(name, settings[name]); err != nil {
			return &usageError{fmt.Sprintf("config %s: %s: %v", path, name, err)}
		}
	}
	return nil
}

// flattenConfig turns the decoded document into flag names and values.
func flattenConfig(prefix string, doc map[string]any, out map[string]string) error {
	for k, v := range doc {
		name := prefix + k
		if t, ok := v.(map[string]any); ok {
			if name == "peers" {
				ids := make([]string, 0, len(t))
				for id := range t {
					ids = append(ids, id)
				}
				sort.Strings(ids)
				var parts []string
				for _, id := range ids {
					addr, ok := t[id].(string)
					if !ok {
						return fmt.Errorf("peers.%s: want a \"host:port\" string", id)
					}
					parts = append(parts, id+"="+addr)
				}
				out[name] = strings.Join(parts, ",")
				continue
			}
			if err := flattenConfig(name+"-", t, out); err != nil {
				return err
			}
			continue
		}
		s, err := configValue(v)
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		if _, dup := out[name]; dup {
			return fmt.Errorf("%s is set twice", name)
		}
		out[name] = s
	}
	return nil
}

func configValue(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			s, err := configValue(e)
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("unsupported value %v (%T)", v, v)
}
