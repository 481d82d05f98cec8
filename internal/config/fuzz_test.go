package config

import (
	"os"
	"strings"
	"testing"
)

// Parsing any file never panics; a file that parses either passes Check
// or fails with an error naming a config key.
func FuzzParse(f *testing.F) {
	for _, path := range []string{"../../config.yaml", "../../config/production.yaml"} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("run_mode: production\n"))
	f.Add([]byte("store: {max_pending_per_recipient: -1}\n"))
	f.Add([]byte("api: [1, 2]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Default()
		if err := Parse(b, &c); err != nil {
			return
		}
		c.FillDefaults()
		if err := c.Check(); err != nil && !strings.Contains(err.Error(), "config key ") {
			t.Fatalf("Check failed with an error that names no key: %v", err)
		}
	})
}
