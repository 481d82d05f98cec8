package pushtest

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"

	"github.com/go-routing-service/routingservice/internal/push/egress"
)

// localClient is the production egress client with loopback allowed (as
// push.webpush.allow_local_endpoints configures it), trusting cert.
func localClient(cert *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return egress.NewClient(egress.Options{AllowLoopback: true, RootCAs: pool})
}

// Certificate is the stand-in's TLS certificate (to trust it by configuration).
func (f *FCM) Certificate() *x509.Certificate { return f.srv.Certificate() }

// Certificate is the stand-in's TLS certificate (to trust it by configuration).
func (a *APNs) Certificate() *x509.Certificate { return a.srv.Certificate() }

// Certificate is the stand-in's TLS certificate (to trust it by configuration).
func (p *WebPush) Certificate() *x509.Certificate { return p.srv.Certificate() }

// PEM encodes certificates as a PEM bundle (for a CA file).
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
