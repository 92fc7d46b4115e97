package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/mcpd/mcpd/schedule"
	"github.com/mcpd/mcpd/transport"
)

// runSchedule is `mcpd schedule add|list|pause|resume|delete|history`: the
// battle rhythm, over the node's admin API.
func runSchedule(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd schedule add|list|pause|resume|delete|history ...'"}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		return groupUsage(scheduleHelp)
	case "add":
		return scheduleAdd(args[1:], os.Stdout)
	case "list":
		return scheduleList(args[1:], os.Stdout)
	case "pause", "resume", "delete":
		return scheduleSet(args[0], args[1:], os.Stdout)
	case "history":
		return scheduleHistory(args[1:], os.Stdout)
	}
	return &usageError{fmt.Sprintf("unknown schedule command %q: add, list, pause, resume, delete or history", args[0])}
}

func scheduleAdd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule add", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	expr := fs.String("cron", "", "when it fires: five cron fields, six with seconds first, or @hourly, @daily, @every 30s ...")
	tz := fs.String("tz", "", "time zone of the cron fields, e.g. Europe/Paris (default UTC)")
	queue := fs.String("enqueue", "", "enqueue to this queue at each tick")
	body := fs.String("body", "null", "the message body (JSON) with --enqueue")
	capName := fs.String("task", "", "submit a task of this capability at each tick")
	input := fs.String("input", "null", "the task's input (JSON) with --task")
	misfire := fs.String("misfire", schedule.MisfireSkip, "ticks missed while the cluster could not fire: skip them, or fire once for all of them")
	origin := fs.String("origin", schedule.DefaultOrigin, "the agent its messages and tasks come from")
	name, err := parseOne(fs, args, "schedule NAME")
	if err != nil {
		return err
	}
	if *expr == "" || (*queue == "") == (*capName == "") {
		return &usageError{"schedule add NAME --cron EXPR (--enqueue QUEUE --body JSON | --task CAPABILITY --input JSON)"}
	}
	req := map[string]any{"name": name, "cron": *expr, "tz": *tz, "misfire": *misfire, "origin": *origin}
	if *queue != "" {
		if !json.Valid([]byte(*body)) {
			return &usageError{"--body must be JSON"}
		}
		req["enqueue"] = map[string]any{"queue": *queue, "body": json.RawMessage(*body)}
	} else {
		if !json.Valid([]byte(*input)) {
			return &usageError{"--input must be JSON"}
		}
		req["task"] = map[string]any{"capability": *capName, "input": json.RawMessage(*input)}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var s schedule.Schedule
	if err := c.do("POST", "/v1/schedules", req, &s); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schedule %s added: %s%s, misfire %s\n", s.Name, s.Cron, zone(s.TZ), s.Misfire)
	return nil
}

func zone(tz string) string {
	if tz == "" {
		return " (UTC)"
	}
	return " (" + tz + ")"
}

func scheduleList(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule list", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	raw, err := c.doRaw("GET", "/v1/schedules", nil)
	if err != nil {
		return err
	}
	if *asJSON {
		return printRawJSON(stdout, raw)
	}
	var list []transport.ScheduleView
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCRON\tACTION\tSTATE\tNEXT\tFIRED\tSKIPPED")
	for _, s := range list {
		action := "enqueue " + s.Action.Queue
		if s.Action.Capability != "" {
			action = "task " + s.Action.Capability
		}
		state, next := "running", "-"
		if s.Paused {
			state = "paused"
		} else if s.Next > 0 {
			next = msTime(s.Next)
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%d\t%d\n", s.Name, s.Cron, zone(s.TZ), action, state, next, s.Fired, s.Skipped)
	}
	return tw.Flush()
}

func scheduleSet(what string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule "+what, flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	name, c, err := namedAdmin(fs, &af, args, "schedule NAME")
	if err != nil {
		return err
	}
	path := "/v1/schedules/" + url.PathEscape(name)
	method := "POST"
	if what == "delete" {
		method = "DELETE"
	} else {
		path += "/" + what
	}
	if _, err := c.doRaw(method, path, nil); err != nil {
		return err
	}
	past := map[string]string{"pause": "paused", "resume": "resumed", "delete": "deleted"}[what]
	fmt.Fprintf(stdout, "schedule %s %s\n", name, past)
	return nil
}

func scheduleHistory(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule history", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	limit := fs.Int("limit", 50, "show the newest N firings (0: all kept)")
	asJSON := fs.Bool("json", false, "print JSON")
	name, c, err := namedAdmin(fs, &af, args, "schedule NAME")
	if err != nil {
		return err
	}
	raw, err := c.doRaw("GET", "/v1/schedules/"+url.PathEscape(name)+"/history?limit="+strconv.Itoa(*limit), nil)
	if err != nil {
		return err
	}
	if *asJSON {
		return printRawJSON(stdout, raw)
	}
	var h []schedule.Firing
	if err := json.Unmarshal(raw, &h); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TICK\tFIRED AT\tOUTCOME\tMISSED")
	for _, f := range h {
		outcome := f.Result
		switch {
		case f.Skip:
			outcome = "skipped (misfire)"
		case f.Error != "":
			outcome = "error: " + f.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", msTime(f.Tick), msTime(f.At), outcome, f.Missed)
	}
	return tw.Flush()
}
