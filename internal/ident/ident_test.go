package ident

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for s, want := range map[string]bool{
		"a": true, "routing-ingress": true, "pod_1-A9": true, strings.Repeat("x", MaxLen): true,
		"": false, strings.Repeat("x", MaxLen+1): false, "a b": false, "a.b": false, "a/b": false, "é": false, "a*": false, "a>": false,
	} {
		if got := Valid(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
	}
}
