package observability

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// runbookURL is where the alerts' runbook_url annotations point: RUNBOOK.md
// as the repository serves it, with the alert's heading as the anchor.
const runbookURL = "https://github.com/go-routing-service/routingservice/blob/main/deploy/observability/RUNBOOK.md"

// promtool accepts the rules (check rules) and their unit tests pass (test
// rules alerts_test.yaml).
func TestAlertRulesWithPromtool(t *testing.T) {
	promtool := tool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yaml"},
		{"test", "rules", "alerts_test.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// unitTests is alerts_test.yaml, as far as the checks below read it.
type unitTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// Every alert has a severity, a summary, a runbook_url that links to its
// own entry of RUNBOOK.md (and every entry there is an alert's), a unit
// test that fires it and one in which it stays silent, and a row in the
// table of alerts in docs/operations.md.
func TestAlertsHaveRunbookTestsAndDocs(t *testing.T) {
	headings := markdownHeadings(t, "RUNBOOK.md", "## ")
	b, err := os.ReadFile("alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ut unitTests
	if err := yaml.Unmarshal(b, &ut); err != nil {
		t.Fatalf("alerts_test.yaml: %v", err)
	}
	if len(ut.RuleFiles) != 1 || ut.RuleFiles[0] != "alerts.yaml" {
		t.Errorf("alerts_test.yaml tests %v, want alerts.yaml", ut.RuleFiles)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	readme, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" || alerts[name] {
				t.Errorf("group %s: a rule without an alert name, or %q twice", g.Name, name)
				continue
			}
			alerts[name] = true
			if s := r.Labels["severity"]; s != "page" && s != "warning" {
				t.Errorf("%s: severity %q, want page or warning", name, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: no summary or description", name)
			}
			if want := runbookURL + "#" + strings.ToLower(name); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", name, r.Annotations["runbook_url"], want)
			}
			if !headings[name] {
				t.Errorf("%s: RUNBOOK.md has no entry \"## %s\"", name, name)
			}
			if !fires[name] {
				t.Errorf("%s: alerts_test.yaml has no test in which it fires", name)
			}
			if !silent[name] {
				t.Errorf("%s: alerts_test.yaml has no test in which it stays silent", name)
			}
			if !strings.Contains(string(readme), "| `"+name+"` |") {
				t.Errorf("%s: the table of alerts in docs/operations.md has no row for it", name)
			}
		}
	}
	for h := range headings {
		if !alerts[h] {
			t.Errorf("RUNBOOK.md has an entry %q that is no alert of alerts.yaml", h)
		}
	}
}

// markdownHeadings returns the headings of the file that start with prefix.
func markdownHeadings(t *testing.T, path, prefix string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hs := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if h, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			hs[strings.TrimSpace(h)] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return hs
}
