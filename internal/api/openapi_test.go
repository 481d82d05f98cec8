package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/go-routing-service/routingservice/internal/realtime"
	"github.com/go-routing-service/routingservice/internal/web"
)

const specPath = "../../api/openapi.yaml"

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadSpec(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatalf("read spec: %v", err)
	}
	var spec map[string]any
	if err := yaml.Unmarshal(b, &spec); err != nil {
		t.Fatalf("parse %s: %v", specPath, err)
	}
	return spec
}

func obj(t *testing.T, v any, what string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: want a mapping, got %T", what, v)
	}
	return m
}

// specOperations returns the spec's paths with their methods, upper case and sorted.
func specOperations(t *testing.T, spec map[string]any) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for path, item := range obj(t, spec["paths"], "paths") {
		var ms []string
		for k := range obj(t, item, "paths."+path) {
			if slices.Contains(httpMethods, k) {
				ms = append(ms, strings.ToUpper(k))
			}
		}
		slices.Sort(ms)
		out[path] = ms
	}
	return out
}

// mountedRoutes mounts the API, the WebSocket endpoint and the operations
// endpoints as the composition root does and returns their routes, without
// the HEAD the router adds to every GET.
func mountedRoutes() map[string][]string {
	rt := NewRouter(nil, nil)
	New(Options{}, nil, nil, nil).Mount(rt)
	realtime.New(realtime.Options{}, nil, nil, nil).Mount(rt)
	MountOps(rt, Ops{Metrics: http.NotFoundHandler()})
	out := map[string][]string{}
	for path, ms := range rt.Routes() {
		if slices.Contains(ms, http.MethodGet) {
			ms = slices.DeleteFunc(ms, func(m string) bool { return m == http.MethodHead })
		}
		out[path] = ms
	}
	return out
}

func TestOpenAPIVersion(t *testing.T) {
	spec := loadSpec(t)
	v, _ := spec["openapi"].(string)
	if !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi = %q, want 3.1.x", v)
	}
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	spec := specOperations(t, loadSpec(t))
	mounted := mountedRoutes()
	for _, p := range []string{"/v1/messages", "/v1/devices", "/v1/connect", "/healthz", "/metrics"} {
		if _, ok := mounted[p]; !ok {
			t.Fatalf("router reports no route %s: Routes() does not see what is mounted", p)
		}
	}
	for path, want := range mounted {
		got, ok := spec[path]
		if !ok {
			t.Errorf("route %s %v is not in the spec", path, want)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: spec documents %v, server serves %v", path, got, want)
		}
	}
	for path := range spec {
		if _, ok := mounted[path]; !ok {
			t.Errorf("spec documents %s, which no server mounts", path)
		}
	}
}

// errorsFile declares the Code* constants of the JSON error shape.
const errorsFile = "../web/errors.go"

// errorCodes returns the values of the Code* constants declared in errorsFile.
func errorCodes(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), errorsFile, nil, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", errorsFile, err)
	}
	codes := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s is not a string literal", name.Name)
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatalf("%s: %v", name.Name, err)
				}
				codes[name.Name] = v
			}
		}
	}
	return codes
}

func TestOpenAPIErrorCodes(t *testing.T) {
	spec := loadSpec(t)
	codes := errorCodes(t)
	if codes["CodeTooManyDevices"] != web.CodeTooManyDevices || codes["CodeBackendUnavailable"] != web.CodeBackendUnavailable {
		t.Fatalf("reading %s found %v, which misses known constants", errorsFile, codes)
	}
	schemas := obj(t, obj(t, spec["components"], "components")["schemas"], "components.schemas")
	ec := obj(t, schemas["ErrorCode"], "components.schemas.ErrorCode")
	raw, _ := ec["enum"].([]any)
	enum := map[string]bool{}
	for _, v := range raw {
		s, _ := v.(string)
		enum[s] = true
	}
	desc, _ := ec["description"].(string)
	values := map[string]bool{}
	for name, code := range codes {
		values[code] = true
		if !enum[code] {
			t.Errorf("%s = %q is not in ErrorCode.enum", name, code)
		}
		if !strings.Contains(desc, "`"+code+"`") {
			t.Errorf("%s = %q is not explained in ErrorCode.description", name, code)
		}
	}
	for code := range enum {
		if !values[code] {
			t.Errorf("ErrorCode.enum has %q, which %s does not declare", code, errorsFile)
		}
	}
}

// resolve follows a local JSON pointer ref ("#/a/b") in spec.
func resolve(spec map[string]any, ref string) (any, bool) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, false
	}
	var cur any = spec
	for _, part := range strings.Split(ref[2:], "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func TestOpenAPIRefsResolve(t *testing.T) {
	spec := loadSpec(t)
	n := 0
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if k == "$ref" {
					n++
					ref, _ := c.(string)
					if _, ok := resolve(spec, ref); !ok {
						t.Errorf("%s: $ref %q does not resolve", at, ref)
					}
					continue
				}
				walk(c, at+"/"+k)
			}
		case []any:
			for i, c := range v {
				walk(c, at+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(spec, "#")
	if n == 0 {
		t.Fatal("the spec has no $ref at all")
	}
}

// deref returns v, or what its $ref points to.
func deref(t *testing.T, spec map[string]any, v any, what string) map[string]any {
	t.Helper()
	m := obj(t, v, what)
	if ref, ok := m["$ref"].(string); ok {
		r, ok := resolve(spec, ref)
		if !ok {
			t.Fatalf("%s: $ref %q does not resolve", what, ref)
		}
		return obj(t, r, ref)
	}
	return m
}

// plainTextAnswers are answers written by the WebSocket library's handshake
// check, not in the JSON error shape.
var plainTextAnswers = map[string]bool{"GET /v1/connect 400": true, "GET /v1/connect 426": true}

func TestOpenAPIErrorResponsesUseErrorShape(t *testing.T) {
	spec := loadSpec(t)
	checked := 0
	for path, item := range obj(t, spec["paths"], "paths") {
		if !strings.HasPrefix(path, "/v1/") {
			continue // /readyz answers a readiness report, not an error.
		}
		for method, op := range obj(t, item, path) {
			if !slices.Contains(httpMethods, method) {
				continue
			}
			name := strings.ToUpper(method) + " " + path
			responses := obj(t, obj(t, op, name)["responses"], name+" responses")
			if _, ok := responses["401"]; !ok {
				t.Errorf("%s: no 401 response", name)
			}
			for status, r := range responses {
				code, err := strconv.Atoi(status)
				if err != nil {
					t.Errorf("%s: response %q is not a status code", name, status)
					continue
				}
				if code < 400 || plainTextAnswers[name+" "+status] {
					continue
				}
				resp := deref(t, spec, r, name+" "+status)
				content, _ := resp["content"].(map[string]any)
				js, _ := content["application/json"].(map[string]any)
				schema, _ := js["schema"].(map[string]any)
				if schema["$ref"] != "#/components/schemas/Error" {
					t.Errorf("%s %s: body is not the Error schema", name, status)
				}
				if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
					headers, _ := resp["headers"].(map[string]any)
					if _, ok := headers["Retry-After"]; !ok {
						t.Errorf("%s %s: no Retry-After header", name, status)
					}
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no error response checked")
	}
}

func TestOpenAPIServersAndSecurity(t *testing.T) {
	spec := loadSpec(t)
	var ports []string
	for _, listen := range []string{DefaultConfig().Listen, realtime.DefaultConfig().Listen} {
		_, port, err := net.SplitHostPort(listen)
		if err != nil {
			t.Fatalf("default listen %q: %v", listen, err)
		}
		ports = append(ports, port)
	}
	servers, _ := spec["servers"].([]any)
	var got []string
	for i, s := range servers {
		vars := obj(t, obj(t, s, "servers")["variables"], "servers["+strconv.Itoa(i)+"].variables")
		p := obj(t, vars["port"], "port variable")
		got = append(got, p["default"].(string))
	}
	if !slices.Equal(got, ports) {
		t.Errorf("servers' default ports = %v, want %v (api.listen, realtime.listen)", got, ports)
	}

	schemes := obj(t, obj(t, spec["components"], "components")["securitySchemes"], "securitySchemes")
	bearer := obj(t, schemes["bearerAuth"], "bearerAuth")
	if bearer["type"] != "http" || bearer["scheme"] != "bearer" || bearer["bearerFormat"] != "JWT" {
		t.Errorf("bearerAuth = %v, want an http bearer JWT scheme", bearer)
	}
	query := obj(t, schemes["accessToken"], "accessToken")
	if query["type"] != "apiKey" || query["in"] != "query" || query["name"] != "access_token" {
		t.Errorf("accessToken = %v, want the access_token query parameter", query)
	}

	global, _ := spec["security"].([]any)
	for path, item := range obj(t, spec["paths"], "paths") {
		for method, op := range obj(t, item, path) {
			if !slices.Contains(httpMethods, method) {
				continue
			}
			sec, own := obj(t, op, path)["security"].([]any)
			if !own {
				sec = global
			}
			var names []string
			for _, req := range sec {
				for name := range obj(t, req, path+" security") {
					names = append(names, name)
				}
			}
			slices.Sort(names)
			var want []string
			switch {
			case path == "/v1/connect":
				want = []string{"accessToken", "bearerAuth"}
			case strings.HasPrefix(path, "/v1/"):
				want = []string{"bearerAuth"}
			}
			if !slices.Equal(names, want) {
				t.Errorf("%s %s: security %v, want %v", strings.ToUpper(method), path, names, want)
			}
		}
	}
}
