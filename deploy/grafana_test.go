package deploy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// dashboard is the Grafana dashboard of the edge's metrics.
const dashboard = "grafana/natter-edge.json"

// TestGrafanaDashboard checks deploy/grafana/natter-edge.json against the
// /metrics of a real edge process: every query (panel targets and template
// variables) parses with Prometheus's own PromQL parser, and every metric,
// label and literal label value it selects is one the edge exports.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	exp, err := parseExposition(scrapeEdge(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"natter_edge_connections", "natter_edge_rpc_duration_seconds_bucket", "natter_nats_connected", "go_goroutines"} {
		if exp[name] == nil {
			t.Fatalf("the edge's /metrics has no %s: the scrape is not what this test thinks", name)
		}
	}
	for _, p := range checkDashboard(raw, exp) {
		t.Error(p)
	}
}

// TestGrafanaDashboardCheck shows that checkDashboard reports what it is
// for: a dashboard with no query, a query that does not parse, and unknown
// metrics, labels, label values and variables.
func TestGrafanaDashboardCheck(t *testing.T) {
	t.Parallel()
	exp, err := parseExposition(strings.NewReader(`# TYPE natter_edge_connections gauge
natter_edge_connections 3
# TYPE natter_edge_transport_connections gauge
natter_edge_transport_connections{transport="sse"} 1
natter_edge_transport_connections{transport="websocket"} 2
# TYPE natter_edge_rpc_duration_seconds histogram
natter_edge_rpc_duration_seconds_bucket{le="0.1"} 1
natter_edge_rpc_duration_seconds_bucket{le="+Inf"} 1
natter_edge_rpc_duration_seconds_sum 0.05
natter_edge_rpc_duration_seconds_count 1
`))
	if err != nil {
		t.Fatal(err)
	}
	panel := func(exprs ...string) string {
		var targets []string
		for _, e := range exprs {
			b, _ := json.Marshal(e)
			targets = append(targets, `{"datasource":{"type":"prometheus","uid":"${datasource}"},"refId":"A","expr":`+string(b)+`}`)
		}
		return `{"templating":{"list":[{"name":"datasource","type":"datasource","query":"prometheus"},
			{"name":"instance","type":"query","query":"label_values(natter_edge_connections, instance)"}]},
			"panels":[{"id":1,"type":"row","title":"r","panels":[]},
			{"id":2,"type":"timeseries","title":"p","datasource":{"type":"prometheus","uid":"${datasource}"},"targets":[` + strings.Join(targets, ",") + `]}]}`
	}
	for _, tc := range []struct {
		name string
		dash string
		want []string // substrings of the problems, in order; none: no problem
	}{
		{"good", panel(
			`sum by (transport) (natter_edge_transport_connections{instance=~"$instance", transport="sse"})`,
			`histogram_quantile(0.99, sum by (le) (rate(natter_edge_rpc_duration_seconds_bucket{instance=~"${instance:regex}"}[$__rate_interval])))`,
			`{__name__="natter_edge_rpc_duration_seconds_count"} / ignoring() natter_edge_rpc_duration_seconds_sum`,
			`sum(up{job=~".+"})`), nil},
		{"no queries", `{"templating":{"list":[{"name":"datasource","type":"datasource","query":"prometheus"}]},"panels":[{"id":1,"type":"row","title":"r"}]}`,
			[]string{"no queries"}},
		{"not JSON", `{"panels":`, []string{"not a Grafana dashboard"}},
		{"bad query", panel(`sum(rate(natter_edge_connections[5m])`), []string{`does not parse`}},
		{"unknown metric", panel(`rate(natter_edge_connectoins_total[5m])`), []string{`unknown metric "natter_edge_connectoins_total"`}},
		{"unknown __name__", panel(`{__name__="natter_edge_nope"}`), []string{`unknown metric "natter_edge_nope"`}},
		{"__name__ regex matching nothing", panel(`{__name__=~"natter_nope_.*"}`), []string{`matches no exported metric`}},
		{"histogram family name", panel(`rate(natter_edge_rpc_duration_seconds[5m])`), []string{`unknown metric "natter_edge_rpc_duration_seconds"`}},
		{"unknown label", panel(`natter_edge_transport_connections{transports="sse"}`), []string{`no label "transports"`}},
		{"unknown label value", panel(`natter_edge_transport_connections{transport="carrier_pigeon"}`), []string{`no series with transport="carrier_pigeon"`}},
		{"variable in an equality matcher", panel(`natter_edge_connections{instance="$instance"}`), []string{`use =~`}},
		{"unknown variable", panel(`natter_edge_connections{instance=~"$edge"}`), []string{`undefined variable $edge`}},
		{"no datasource variable", `{"panels":[{"id":1,"type":"stat","title":"p","targets":[{"refId":"A","expr":"natter_edge_connections"}]}]}`,
			[]string{`no datasource variable`, `datasource is not ${datasource}`, `datasource is not ${datasource}`}},
		{"duplicate id", `{"templating":{"list":[{"name":"datasource","type":"datasource","query":"prometheus"}]},"panels":[
			{"id":1,"type":"stat","title":"a","datasource":{"uid":"${datasource}"},"targets":[{"datasource":{"uid":"${datasource}"},"refId":"A","expr":"natter_edge_connections"}]},
			{"id":1,"type":"stat","title":"b","datasource":{"uid":"${datasource}"},"targets":[{"datasource":{"uid":"${datasource}"},"refId":"A","expr":"natter_edge_connections"}]}]}`,
			[]string{`panel id 1 used twice`}},
		{"panel without query", `{"templating":{"list":[{"name":"datasource","type":"datasource","query":"prometheus"}]},"panels":[
			{"id":1,"type":"stat","title":"a","datasource":{"uid":"${datasource}"},"targets":[{"datasource":{"uid":"${datasource}"},"refId":"A","expr":"natter_edge_connections"}]},
			{"id":2,"type":"stat","title":"b","datasource":{"uid":"${datasource}"},"targets":[]}]}`,
			[]string{`panel "b": no query`}},
		{"unknown metric in a variable", strings.Replace(panel(`natter_edge_connections`), `label_values(natter_edge_connections, instance)`, `label_values(natter_edge_gone, instance)`, 1),
			[]string{`variable instance: natter_edge_gone: unknown metric "natter_edge_gone"`}},
		{"unknown label in a variable", strings.Replace(panel(`natter_edge_connections`), `label_values(natter_edge_connections, instance)`, `label_values(natter_edge_transport_connections, transprt)`, 1),
			[]string{`variable instance: natter_edge_transport_connections has no label "transprt"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkDashboard([]byte(tc.dash), exp)
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d: %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
}

// scrapeEdge starts the edge binary (the tests' shared build) in
// single-binary mode with an admin listener and returns its /metrics once
// the edge's and the NATS connection's collectors are in it.
func scrapeEdge(t *testing.T) io.Reader {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "edge.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(bins(t, "commands"), "edge"),
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(dir, "data"), "--log-format", "json")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, io.Discard, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("edge log:\n%s", b)
		}
	})

	adminRe := regexp.MustCompile(`"msg":"admin listening","addr":"([^"]+)"`)
	deadline := time.Now().Add(time.Minute)
	var admin string
	for {
		select {
		case <-exited:
			t.Fatal("the edge exited")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge's /metrics did not show its collectors within a minute")
		}
		if admin == "" {
			b, _ := os.ReadFile(logPath)
			if m := adminRe.FindSubmatch(b); m != nil {
				admin = "http://" + string(m[1])
			}
		}
		if admin != "" {
			if body, err := get(admin + "/metrics"); err == nil &&
				strings.Contains(body, "\nnatter_edge_connections ") && strings.Contains(body, "\nnatter_nats_connected ") {
				return strings.NewReader(body)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// exported maps each series name a scrape gives Prometheus to its label
// names and the values each takes. A histogram family x gives x_bucket (with
// le), x_sum and x_count; a summary x gives x (with quantile), x_sum and
// x_count.
type exported map[string]map[string]map[string]bool

// targetLabels are the labels Prometheus adds to every series of a target.
var targetLabels = map[string]bool{"job": true, "instance": true}

// scrapeSeries are the series Prometheus writes itself for every scrape;
// up is what tells a dead edge from an idle one.
var scrapeSeries = []string{"up"}

// parseExposition reads the Prometheus text format.
func parseExposition(r io.Reader) (exported, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	exp := exported{}
	add := func(name string, lbls map[string]string) {
		if exp[name] == nil {
			exp[name] = map[string]map[string]bool{}
		}
		for k, v := range lbls {
			if exp[name][k] == nil {
				exp[name][k] = map[string]bool{}
			}
			exp[name][k][v] = true
		}
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			lbls := map[string]string{}
			for _, l := range m.GetLabel() {
				lbls[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_sum", lbls)
				add(name+"_count", lbls)
				add(name+"_bucket", lbls)
				for _, b := range m.GetHistogram().GetBucket() {
					add(name+"_bucket", map[string]string{"le": model.FloatString(b.GetUpperBound()).String()})
				}
				add(name+"_bucket", map[string]string{"le": "+Inf"})
			case dto.MetricType_SUMMARY:
				add(name+"_sum", lbls)
				add(name+"_count", lbls)
				add(name, lbls)
				for _, q := range m.GetSummary().GetQuantile() {
					add(name, map[string]string{"quantile": model.FloatString(q.GetQuantile()).String()})
				}
			default:
				add(name, lbls)
			}
		}
	}
	for _, name := range scrapeSeries {
		add(name, nil)
	}
	return exp, nil
}

// grafanaDashboard is the part of Grafana's dashboard JSON model the check
// reads.
type grafanaDashboard struct {
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"` // a string, or {"query": "..."}
		} `json:"list"`
	} `json:"templating"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []struct {
		RefID      string             `json:"refId"`
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

type grafanaDatasource struct {
	UID string `json:"uid"`
}

// dsVar is the datasource every panel and target uses: the dashboard's
// Prometheus datasource variable, chosen on import.
const dsVar = "${datasource}"

// Grafana's variables in a query: $name, ${name}, ${name:format}, [[name]].
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// builtinVars are Grafana's interval variables, replaced by a duration.
var builtinVars = map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}

// varValue stands for a dashboard variable's value: a regular expression
// (a multi-value variable expands to one, (a|b)), so it belongs in =~ or !~.
const varValue = ".+"

var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*(\w+)\s*\)\s*$`)

// checkDashboard returns the problems of a Grafana dashboard whose queries
// run on the series exp lists: none for a good one.
func checkDashboard(raw []byte, exp exported) []string {
	var d grafanaDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return []string{fmt.Sprintf("not a Grafana dashboard: %v", err)}
	}
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	vars := map[string]bool{}
	hasDS := false
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		hasDS = hasDS || (v.Type == "datasource" && v.Name == "datasource" && string(v.Query) == `"prometheus"`)
	}
	if !hasDS {
		report("no datasource variable: templating needs {\"name\":\"datasource\",\"type\":\"datasource\",\"query\":\"prometheus\"}")
	}
	queries := 0
	// expand replaces the variables of q with values that parse (a
	// duration, or a regular expression matching anything), or reports
	// one the dashboard does not define.
	expand := func(where, q string) (string, bool) {
		ok := true
		q = grafanaVar.ReplaceAllStringFunc(q, func(s string) string {
			m := grafanaVar.FindStringSubmatch(s)
			name := m[1] + m[2] + m[3]
			switch {
			case builtinVars[name]:
				return "5m"
			case vars[name]:
				return varValue
			}
			report("%s: undefined variable $%s", where, name)
			ok = false
			return s
		})
		return q, ok
	}
	pql := parser.NewParser(parser.Options{})
	// check parses a query and checks its selectors; it returns them.
	check := func(where, q string) []*parser.VectorSelector {
		queries++
		q, ok := expand(where, q)
		if !ok {
			return nil
		}
		expr, err := pql.ParseExpr(q)
		if err != nil {
			report("%s: %q does not parse: %v", where, q, err)
			return nil
		}
		var selectors []*parser.VectorSelector
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				selectors = append(selectors, vs)
				problems = append(problems, checkSelector(where, vs, exp)...)
			}
			return nil
		})
		return selectors
	}

	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct{ Query string }
			_ = json.Unmarshal(v.Query, &obj)
			q = obj.Query
		}
		where := "variable " + v.Name
		if m := labelValues.FindStringSubmatch(q); m != nil {
			// label_values(selector, label): a selector, and one of its
			// series' labels.
			for _, vs := range check(where, m[1]) {
				if series, ok := exp[vs.Name]; ok && !targetLabels[m[2]] && series[m[2]] == nil {
					report("%s: %s has no label %q", where, vs.Name, m[2])
				}
			}
		} else {
			check(where, q)
		}
	}

	ids := map[int]bool{}
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			if ids[p.ID] {
				report("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			where := fmt.Sprintf("panel %q", p.Title)
			if p.Datasource == nil || p.Datasource.UID != dsVar {
				report("%s: datasource is not %s", where, dsVar)
			}
			n := 0
			for _, tg := range p.Targets {
				if tg.Datasource == nil || tg.Datasource.UID != dsVar {
					report("%s %s: datasource is not %s", where, tg.RefID, dsVar)
				}
				if strings.TrimSpace(tg.Expr) != "" {
					n++
					check(where+" "+tg.RefID, tg.Expr)
				}
			}
			if n == 0 {
				report("%s: no query", where)
			}
		}
	}
	walk(d.Panels)
	if queries == 0 {
		report("no queries: the dashboard checks nothing")
	}
	return problems
}

// checkSelector checks that a selector names exported series, with labels
// they have and, for an equality matcher, a value one of them has.
func checkSelector(where string, vs *parser.VectorSelector, exp exported) []string {
	var problems []string
	report := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: %s: ", where, vs)+fmt.Sprintf(format, args...))
	}
	name := vs.Name
	for _, m := range vs.LabelMatchers {
		if m.Name != labels.MetricName || name != "" {
			continue
		}
		if m.Type == labels.MatchEqual {
			name = m.Value
			continue
		}
		matched := false
		for n := range exp {
			matched = matched || m.Matches(n)
		}
		if !matched {
			report("%s matches no exported metric", m)
		}
		return problems
	}
	series, ok := exp[name]
	if !ok {
		report("unknown metric %q: the edge does not export it", name)
		return problems
	}
	for _, m := range vs.LabelMatchers {
		if m.Type == labels.MatchEqual && m.Value == varValue {
			report("%s: a variable in an equality matcher; use =~ (a multi-value variable is a regular expression)", m)
			continue
		}
		if m.Name == labels.MetricName || targetLabels[m.Name] {
			continue
		}
		values, ok := series[m.Name]
		if !ok {
			report("%s has no label %q (it has %q)", name, m.Name, slices.Sorted(maps.Keys(series)))
			continue
		}
		if m.Type == labels.MatchEqual && !values[m.Value] {
			report("%s has no series with %s=%q (values %q)", name, m.Name, m.Value, slices.Sorted(maps.Keys(values)))
		}
	}
	return problems
}
