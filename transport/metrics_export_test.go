package transport

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mcpd/mcpd/cluster"
)

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames lists the names of every mcpd_ metric node's registry
// describes, whether or not it has a sample yet.
func MetricNames(node *cluster.Node) map[string]bool {
	cs := append(statsOf(node).collectors(), &stateCollector{node: node}, raftMetrics())
	ch := make(chan *prometheus.Desc, 256)
	go func() {
		for _, c := range cs {
			c.Describe(ch)
		}
		close(ch)
	}()
	names := map[string]bool{}
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	return names
}
