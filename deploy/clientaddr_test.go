package deploy

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/web"
)

// The realtime pods see the client address the load balancer in front of
// them names, not one a client made up: behind Google's external
// Application Load Balancer (the gcp overlay, config/production.yaml) the
// front end connects from Google's ranges with X-Forwarded-For
// "<what the client sent>, <client>, <balancer>"; in the base, with no
// balancer, the peer is the client whatever the header says.
func TestClientAddressBehindTheLoadBalancer(t *testing.T) {
	const (
		client    = "198.51.100.7"
		gcpHeader = "6.6.6.6, " + client + ", 34.120.1.1"
	)
	overlay := func(dir string) []byte {
		for _, o := range render(t, dir) {
			if o.Kind == "ConfigMap" {
				return []byte(o.Data["config.yaml"])
			}
		}
		t.Fatalf("%s: no ConfigMap", dir)
		return nil
	}
	production, err := os.ReadFile(filepath.Join(repoRoot, "config", "production.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		raw         []byte
		remote, xff string
		want        string
	}{
		{"gcp overlay", overlay("kubernetes/overlays/gcp"), "35.191.20.5:40000", gcpHeader, client},
		{"gcp overlay, second front-end range", overlay("kubernetes/overlays/gcp"), "130.211.1.9:40000", gcpHeader, client},
		{"gcp overlay, a peer that is not the balancer", overlay("kubernetes/overlays/gcp"), "10.4.0.3:40000", gcpHeader, "10.4.0.3"},
		{"config/production.yaml", production, "35.191.20.5:40000", gcpHeader, client},
		{"base", overlay("kubernetes/base"), "10.4.0.3:40000", gcpHeader, "10.4.0.3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			if err := config.Parse(tc.raw, &cfg); err != nil {
				t.Fatal(err)
			}
			p := web.Proxies{Hops: cfg.Realtime.TrustedProxyHops}
			for _, c := range cfg.Realtime.TrustedProxies {
				p.Trusted = append(p.Trusted, netip.MustParsePrefix(c))
			}
			r := httptest.NewRequest(http.MethodGet, "/v1/connect", nil)
			r.RemoteAddr = tc.remote
			r.Header.Set("X-Forwarded-For", tc.xff)
			if got, _ := p.ClientAddr(r); got.String() != tc.want {
				t.Fatalf("client address %v, want %s", got, tc.want)
			}
		})
	}
}
