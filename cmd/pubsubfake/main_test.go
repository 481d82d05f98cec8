package main

import (
	"strings"
	"testing"
)

func TestRunRefusesAddressesOffLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8681", "10.1.2.3:8681", "example.com:8681", "127.0.0.1", "127.0.0.1:port"} {
		err := run(addr)
		if err == nil || !strings.Contains(err.Error(), "-addr") {
			t.Errorf("run(%q) = %v, want an error naming -addr", addr, err)
		}
	}
}
