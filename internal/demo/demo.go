// Package demo serves the browser demo at /demo/ and the development tokens
// it signs in with. The composition root mounts it only when asked for
// (demo.enabled, `serve --demo`), in local mode on a loopback listener,
// behind HostGuard: a token endpoint that signs in as anyone has no place
// in production or where other machines or web pages can reach it.
package demo

import (
	"embed"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	jsclient "github.com/go-routing-service/routingservice/clients/js"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/web"
)

//go:embed static
var static embed.FS

// TokenPath is the path of the development token endpoint.
const TokenPath = "/demo/token"

// Options configure the demo.
type Options struct {
	// Secret signs the development tokens (HS256): the service's JWT secret.
	Secret []byte
	// TokenTTL is the lifetime of a development token (default 15 minutes).
	TokenTTL time.Duration
	// WSPort is the port of the WebSocket listener, which the page connects to
	// on the host it was loaded from.
	WSPort string
}

// Router is what Mount routes on.
type Router interface {
	Handle(method, path string, h http.Handler)
}

// Mount routes GET /demo/ (the page and its scripts) and POST /demo/token.
func Mount(rt Router, opts Options) error {
	if len(opts.Secret) == 0 {
		return errors.New("demo: no secret to sign development tokens with")
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 15 * time.Minute
	}
	files := map[string][]byte{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		files["/demo/"+strings.TrimPrefix(p, "static/")] = b
		return err
	})
	if err != nil {
		return err
	}
	js, err := jsclient.FS.ReadFile("src/index.js")
	if err != nil {
		return err
	}
	files["/demo/routing-client.js"] = js
	files["/demo/"] = files["/demo/index.html"]
	for p, b := range files {
		rt.Handle(http.MethodGet, p, serveFile(p, b))
	}
	// The page's address without its slash (its relative links need it).
	rt.Handle(http.MethodGet, "/demo", http.RedirectHandler("/demo/", http.StatusMovedPermanently))
	rt.Handle(http.MethodPost, TokenPath, tokenHandler(opts))
	return nil
}

func serveFile(p string, b []byte) http.Handler {
	ctype := mime.TypeByExtension(path.Ext(p))
	if strings.HasSuffix(p, "/") {
		ctype = "text/html; charset=utf-8"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(b)
		}
	})
}

// TokenRequest is the body of POST /demo/token.
type TokenRequest struct {
	Sub string `json:"sub"`
}

// TokenAnswer is the answer of POST /demo/token.
type TokenAnswer struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	WSPort    string    `json:"ws_port"`
}

func tokenHandler(opts Options) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
			web.WriteError(w, web.Errorf(http.StatusUnsupportedMediaType, web.CodeUnsupportedMedia, "Content-Type must be application/json"))
			return
		}
		var req TokenRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "body must be {\"sub\": URN}"))
			return
		}
		if err := envelope.ValidateURN(req.Sub); err != nil {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "sub: "+err.Error()))
			return
		}
		now := time.Now()
		tok, err := auth.Sign(opts.Secret, req.Sub, opts.TokenTTL, now)
		if err != nil {
			web.WriteError(w, web.Errorf(http.StatusInternalServerError, web.CodeInternal, "cannot sign a token"))
			return
		}
		web.WriteJSON(w, http.StatusOK, TokenAnswer{Token: tok, ExpiresAt: now.Add(opts.TokenTTL).UTC().Truncate(time.Second), WSPort: opts.WSPort})
	}
}
