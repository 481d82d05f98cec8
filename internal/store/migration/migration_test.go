package migration_test

import (
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/go-routing-service/routingservice/internal/store/migration"
)

func TestLoadOrdersByVersion(t *testing.T) {
	fsys := fstest.MapFS{
		"m/0010_ten.sql":   {Data: []byte("SELECT 10")},
		"m/0002_two.sql":   {Data: []byte("SELECT 2")},
		"m/0001_init.sql":  {Data: []byte("SELECT 1")},
		"other/0003_x.sql": {Data: []byte("not loaded")},
	}
	got, err := migration.Load(fsys, "m")
	if err != nil {
		t.Fatal(err)
	}
	want := []migration.Migration{
		{Version: 1, Name: "0001_init.sql", SQL: "SELECT 1"},
		{Version: 2, Name: "0002_two.sql", SQL: "SELECT 2"},
		{Version: 10, Name: "0010_ten.sql", SQL: "SELECT 10"},
	}
	if len(got) != len(want) {
		t.Fatalf("loaded %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("migration %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestLoadRejects(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"no number":      {"m/init.sql": {}},
		"zero":           {"m/0000_init.sql": {}},
		"not a number":   {"m/00x1_init.sql": {}},
		"shared version": {"m/0001_a.sql": {}, "m/1_b.sql": {}},
		"empty":          {"m": {Mode: fs.ModeDir | 0o755}},
		"missing dir":    {"n/0001_a.sql": {}},
	} {
		if got, err := migration.Load(fsys, "m"); err == nil {
			t.Errorf("%s: loaded %v, want an error", name, got)
		}
	}
}
