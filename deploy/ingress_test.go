package deploy

import (
	"slices"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/config"
)

type ingressSpec struct {
	Rules []struct {
		Host string `json:"host"`
		HTTP struct {
			Paths []struct {
				Path    string `json:"path"`
				Backend struct {
					Service struct {
						Name string `json:"name"`
						Port struct {
							Name   string `json:"name"`
							Number int    `json:"number"`
						} `json:"port"`
					} `json:"service"`
				} `json:"backend"`
			} `json:"paths"`
		} `json:"http"`
	} `json:"rules"`
}

// checkIngressHosts: every host name an Ingress routes to the WebSocket
// port is one of realtime.allowed_hosts, or browsers, whose upgrades carry
// an Origin header, get 403 there.
func checkIngressHosts(t *testing.T, byKind map[string][]object, rt config.Config) {
	t.Helper()
	type servicePort struct {
		name   string
		number int
	}
	var wsPorts = map[string][]servicePort{} // Service name -> its ports that target the WebSocket port
	for _, s := range byKind["Service"] {
		ss := spec[serviceSpec](t, s)
		for _, p := range ss.Ports {
			if p.TargetPort == "ws" || p.TargetPort == float64(port(t, rt.Realtime.Listen)) {
				wsPorts[s.Metadata.Name] = append(wsPorts[s.Metadata.Name], servicePort{p.Name, p.Port})
			}
		}
	}
	for _, ing := range byKind["Ingress"] {
		is := spec[ingressSpec](t, ing)
		for _, r := range is.Rules {
			for _, p := range r.HTTP.Paths {
				b := p.Backend.Service
				if !slices.ContainsFunc(wsPorts[b.Name], func(sp servicePort) bool {
					return b.Port.Name != "" && sp.name == b.Port.Name || b.Port.Number != 0 && sp.number == b.Port.Number
				}) {
					continue
				}
				if r.Host == "" {
					t.Errorf("Ingress %s routes %s to the WebSocket port for any host: name the host and list it in realtime.allowed_hosts", ing.Metadata.Name, p.Path)
					continue
				}
				if !slices.ContainsFunc(rt.Realtime.AllowedHosts, func(h string) bool { return strings.EqualFold(h, r.Host) }) {
					t.Errorf("Ingress %s routes %s%s to the WebSocket port, but %s is not in realtime.allowed_hosts %q: browsers get 403",
						ing.Metadata.Name, r.Host, p.Path, r.Host, rt.Realtime.AllowedHosts)
				}
			}
		}
	}
}
