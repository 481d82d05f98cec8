package main

import (
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/push/webpush"
)

func TestVapidPrintsAUsablePair(t *testing.T) {
	var out strings.Builder
	if err := run([]string{"vapid"}, &out, &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	var pub, priv string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "public_key":
			pub = v
		case "private_key":
			priv = v
		}
	}
	_, derived, err := webpush.ParseVAPIDPrivateKey(priv)
	if err != nil || derived != pub {
		t.Fatalf("printed pair does not match: %v (%s vs %s)", err, derived, pub)
	}
}
