package api

import (
	"net/http"
	"slices"
)

// CORS answers preflights and sets CORS headers for allowed origins only.
// With no allowed origins, browsers' cross-origin calls are refused (no CORS
// headers). "*" allows any origin (refused in production by config).
func CORS(allowed []string, h http.Handler) http.Handler {
	if len(allowed) == 0 {
		return h
	}
	any := slices.Contains(allowed, "*")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && (any || slices.Contains(allowed, origin)) {
			hd := w.Header()
			hd.Add("Vary", "Origin")
			hd.Set("Access-Control-Allow-Origin", origin)
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				hd.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
				hd.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
				hd.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
