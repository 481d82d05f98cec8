package pushtest

import (
	"crypto/x509"
	"encoding/pem"
)

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
