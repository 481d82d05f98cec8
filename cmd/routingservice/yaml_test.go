package main

import (
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// mergeYAML returns the YAML documents merged in order: a later document's
// keys replace an earlier one's, mappings merging key by key.
func mergeYAML(t *testing.T, docs ...string) string {
	t.Helper()
	merged := map[string]any{}
	for _, d := range docs {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("%v in\n%s", err, d)
		}
		mergeMaps(merged, m)
	}
	b, err := yaml.Marshal(merged)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mergeMaps(dst, src map[string]any) {
	for k, v := range src {
		sm, ok1 := v.(map[string]any)
		dm, ok2 := dst[k].(map[string]any)
		if ok1 && ok2 {
			mergeMaps(dm, sm)
			continue
		}
		dst[k] = v
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMergeYAML(t *testing.T) {
	got := mergeYAML(t, "a: {b: 1, c: [x]}\nd: 2\n", "a: {c: [y]}\ne: 3\n")
	want := "a:\n    b: 1\n    c:\n        - \"y\"\nd: 2\ne: 3\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
