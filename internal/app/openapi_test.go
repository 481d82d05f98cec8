package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// outageStore fails every call a request makes while down (the pipeline's
// calls too: nothing is accepted meanwhile), and only the writes of
// messages and the release of idempotency keys while writesDown (a send
// with a key then fails and leaves its key reserved).
type outageStore struct {
	store.Store
	down       atomic.Bool
	writesDown atomic.Bool
}

func (s *outageStore) PutMessages(ctx context.Context, envs []*envelope.Envelope) ([]bool, error) {
	if s.down.Load() || s.writesDown.Load() {
		return nil, errOutage
	}
	return s.Store.PutMessages(ctx, envs)
}

func (s *outageStore) PutNew(ctx context.Context, msgs []store.NewMessage) ([]bool, error) {
	if s.down.Load() || s.writesDown.Load() {
		return nil, errOutage
	}
	return s.Store.PutNew(ctx, msgs)
}

func (s *outageStore) ReleaseIdempotency(ctx context.Context, sender, key string) error {
	if s.down.Load() || s.writesDown.Load() {
		return errOutage
	}
	return s.Store.ReleaseIdempotency(ctx, sender, key)
}

var errOutage = errors.New("store outage (test)")

func (s *outageStore) Pending(ctx context.Context, r, c string, n int) (store.Page, error) {
	if s.down.Load() {
		return store.Page{}, errOutage
	}
	return s.Store.Pending(ctx, r, c, n)
}

func (s *outageStore) PendingWithin(ctx context.Context, r, c string, n, b int) (store.Page, error) {
	if s.down.Load() {
		return store.Page{}, errOutage
	}
	return s.Store.PendingWithin(ctx, r, c, n, b)
}

func (s *outageStore) Ack(ctx context.Context, r string, ids []string) (int, error) {
	if s.down.Load() {
		return 0, errOutage
	}
	return s.Store.Ack(ctx, r, ids)
}

func (s *outageStore) ReserveIdempotency(ctx context.Context, rec store.Idempotency) (store.Idempotency, bool, error) {
	if s.down.Load() {
		return store.Idempotency{}, false, errOutage
	}
	return s.Store.ReserveIdempotency(ctx, rec)
}

func (s *outageStore) PutTarget(ctx context.Context, u string, t store.Target, max int) error {
	if s.down.Load() {
		return errOutage
	}
	return s.Store.PutTarget(ctx, u, t, max)
}

func (s *outageStore) DeleteTarget(ctx context.Context, u string, t store.Target) error {
	if s.down.Load() {
		return errOutage
	}
	return s.Store.DeleteTarget(ctx, u, t)
}

func (s *outageStore) Ping(ctx context.Context) error {
	if s.down.Load() {
		return errOutage
	}
	return s.Store.Ping(ctx)
}

// exchange is one real request to a running instance.
type exchange struct {
	name    string
	on      *testApp // default: the main instance
	ws      bool     // sent to the WebSocket listener
	ops     bool     // sent to the operations listener
	method  string
	path    string // with the query
	header  map[string]string
	body    string
	outage  bool // the store is down while it runs
	want    int
	noToken bool

	// writesDown: the store's message writes and key releases fail while it runs.
	writesDown bool
	// bodyHas, when not "", must be in the answer's body.
	bodyHas string
}

// Every endpoint of api/openapi.yaml is called on a running instance with
// requests that provoke each documented answer; each request and each
// answer is validated against the spec (status, headers, body schema).
// Every documented status must be provoked, except 500 (a server bug) and
// the WebSocket's 503 (answered only while an instance shuts down).
func TestOpenAPIAgainstRunningService(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("spec is not valid: %v", err)
	}
	// Match on paths only, whatever the listeners' addresses.
	doc.Servers = nil
	for _, item := range doc.Paths.Map() {
		item.Servers = nil
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}

	outage := &outageStore{}
	main := startAppWith(t, func(c *config.Config) {
		c.Push.WebPush.Enabled = true
		c.Push.MaxTargetsPerUser = 1
		c.Realtime.MaxConnsPerUser = 1
		c.API.MaxBodyBytes = 4096
		c.API.MaxPayloadBytes = 1024
		c.API.MaxBatch = 8
		c.API.MaxBatchBodyBytes = 8192
		c.Store.MaxPendingPerRecipient = 4
	}, app.Options{WrapStore: func(s store.Store) store.Store { outage.Store = s; return outage }})
	limited := startApp(t, func(c *config.Config) { c.API.RateLimit = 0.001; c.API.RateBurst = 1 })
	noPush := startApp(t, nil) // Web Push off: no VAPID key

	tok := func(ta *testApp, sub string) string {
		s, err := auth.Sign([]byte(ta.cfg.JWTSecret), sub, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// A valid Web Push subscription: the service's own VAPID key is a valid P-256 point.
	var vapid struct {
		PublicKey string `json:"public_key"`
	}
	{
		req, _ := http.NewRequest(http.MethodGet, main.apiURL+"/v1/push/vapid-public-key", nil)
		req.Header.Set("Authorization", "Bearer "+tok(main, "urn:sm:user:bob"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&vapid)
		resp.Body.Close()
	}
	sub := func(n int) string {
		return fmt.Sprintf(`{"platform":"webpush","subscription":{"endpoint":"https://push.example.test/%d","keys":{"p256dh":%q,"auth":"AAAAAAAAAAAAAAAAAAAAAA"}}}`, n, vapid.PublicKey)
	}
	big := `{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 5000) + `"}`
	bigPayload := `{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 2000) + `"}`
	upgrade := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{}
		for a, b := range h {
			out[a] = b
		}
		out[k] = v
		return out
	}
	msg := `{"recipient":"urn:sm:user:bob","payload":"aGk="}`
	batch := func(items ...string) string { return `{"messages":[` + strings.Join(items, ",") + `]}` }
	to := func(who string) string { return `{"recipient":"urn:sm:user:` + who + `","payload":"aGk="}` }
	bigItem := `{"recipient":"urn:sm:user:carol","payload":"` + strings.Repeat("A", 1200) + `"}`

	cases := []exchange{
		{name: "send", method: "POST", path: "/v1/messages", body: msg, want: 202},
		{name: "send bad recipient", method: "POST", path: "/v1/messages", body: `{"recipient":"bob","payload":"aGk="}`, want: 400},
		{name: "send malformed", method: "POST", path: "/v1/messages", body: `{"recipient":`, want: 400},
		{name: "send no token", method: "POST", path: "/v1/messages", body: msg, noToken: true, want: 401},
		{name: "send body too large", method: "POST", path: "/v1/messages", body: big, want: 413},
		{name: "send payload too large", method: "POST", path: "/v1/messages", body: bigPayload, want: 413},
		{name: "send not json", method: "POST", path: "/v1/messages", body: msg, header: map[string]string{"Content-Type": "text/plain"}, want: 415},
		{name: "send store down", method: "POST", path: "/v1/messages", body: `{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"k1"}`, outage: true, want: 503},
		{name: "send leaves its key held", method: "POST", path: "/v1/messages", body: `{"recipient":"urn:sm:user:bob","payload":"aGk=","idempotency_key":"held"}`, writesDown: true, want: 503},
		{name: "send another message with a held key", method: "POST", path: "/v1/messages", body: `{"recipient":"urn:sm:user:bob","payload":"b3RoZXI=","idempotency_key":"held"}`, want: 409},
		{name: "send rate limited 1", on: limited, method: "POST", path: "/v1/messages", body: msg, want: 202},
		{name: "send rate limited 2", on: limited, method: "POST", path: "/v1/messages", body: msg, want: 429},

		{name: "batch", method: "POST", path: "/v1/messages/batch", body: batch(to("carol"), `{"recipient":"urn:sm:user:dave","payload":"aGk=","type":"chat","idempotency_key":"b1"}`), want: 202},
		{name: "batch bad message", method: "POST", path: "/v1/messages/batch", body: batch(to("carol"), to("dave"), to("bob:x")), want: 400, bodyHas: `"index":2`},
		{name: "batch no token", method: "POST", path: "/v1/messages/batch", body: batch(to("carol")), noToken: true, want: 401},
		{name: "batch body too large", method: "POST", path: "/v1/messages/batch", body: batch(bigItem, bigItem, bigItem, bigItem, bigItem, bigItem, bigItem), want: 413, bodyHas: `"body_too_large"`},
		{name: "batch too many", method: "POST", path: "/v1/messages/batch", body: batch(to("a"), to("b"), to("c"), to("d"), to("e"), to("f"), to("g"), to("h"), to("i")), want: 413, bodyHas: `"batch_too_large"`},
		{name: "batch not json", method: "POST", path: "/v1/messages/batch", body: batch(to("carol")), header: map[string]string{"Content-Type": "text/plain"}, want: 415},
		{name: "batch queue full", method: "POST", path: "/v1/messages/batch", body: batch(to("carol"), to("full"), to("full"), to("full"), to("full"), to("full")), want: 429, bodyHas: `"index":1`},
		{name: "batch key reused", method: "POST", path: "/v1/messages/batch", body: batch(to("carol"), `{"recipient":"urn:sm:user:bob","payload":"b3RoZXI=","idempotency_key":"held"}`), want: 409, bodyHas: `"index":1`},
		{name: "batch store down", method: "POST", path: "/v1/messages/batch", body: batch(to("carol"), to("dave")), outage: true, want: 503},
		{name: "batch rate limited", on: limited, method: "POST", path: "/v1/messages/batch", body: batch(to("carol")), want: 429},

		{name: "fetch", method: "GET", path: "/v1/messages?limit=10", want: 200},
		{name: "fetch bad limit", method: "GET", path: "/v1/messages?limit=0", want: 400},
		{name: "fetch no token", method: "GET", path: "/v1/messages", noToken: true, want: 401},
		{name: "fetch store down", method: "GET", path: "/v1/messages", outage: true, want: 503},
		{name: "fetch rate limited", on: limited, method: "GET", path: "/v1/messages", want: 429},

		{name: "ack", method: "POST", path: "/v1/messages/ack", body: `{"ids":["01J9Z3ABCDEFGHJKMNPQRSTVWX"]}`, want: 204},
		{name: "ack empty", method: "POST", path: "/v1/messages/ack", body: `{"ids":[]}`, want: 400},
		{name: "ack no token", method: "POST", path: "/v1/messages/ack", body: `{"ids":["a"]}`, noToken: true, want: 401},
		{name: "ack too large", method: "POST", path: "/v1/messages/ack", body: `{"ids":["` + strings.Repeat("a", 5000) + `"]}`, want: 413},
		{name: "ack not json", method: "POST", path: "/v1/messages/ack", body: `{"ids":["a"]}`, header: map[string]string{"Content-Type": "text/plain"}, want: 415},
		{name: "ack store down", method: "POST", path: "/v1/messages/ack", body: `{"ids":["01J9Z3ABCDEFGHJKMNPQRSTVWX"]}`, outage: true, want: 503},
		{name: "ack rate limited", on: limited, method: "POST", path: "/v1/messages/ack", body: `{"ids":["a"]}`, want: 429},

		{name: "put device", method: "PUT", path: "/v1/devices", body: sub(1), want: 204},
		{name: "put device again", method: "PUT", path: "/v1/devices", body: sub(1), want: 204},
		{name: "put device over the limit", method: "PUT", path: "/v1/devices", body: sub(2), want: 409},
		{name: "put device bad", method: "PUT", path: "/v1/devices", body: `{"platform":"pager"}`, want: 400},
		{name: "put device no token", method: "PUT", path: "/v1/devices", body: sub(1), noToken: true, want: 401},
		{name: "put device too large", method: "PUT", path: "/v1/devices", body: big, want: 413},
		{name: "put device not json", method: "PUT", path: "/v1/devices", body: sub(1), header: map[string]string{"Content-Type": "text/plain"}, want: 415},
		{name: "put device store down", method: "PUT", path: "/v1/devices", body: sub(3), outage: true, want: 503},
		{name: "put device rate limited", on: limited, method: "PUT", path: "/v1/devices", body: sub(1), want: 429},

		{name: "delete device", method: "DELETE", path: "/v1/devices", body: sub(1), want: 204},
		{name: "delete device bad", method: "DELETE", path: "/v1/devices", body: `{"platform":"pager"}`, want: 400},
		{name: "delete device no token", method: "DELETE", path: "/v1/devices", body: sub(1), noToken: true, want: 401},
		{name: "delete device too large", method: "DELETE", path: "/v1/devices", body: big, want: 413},
		{name: "delete device not json", method: "DELETE", path: "/v1/devices", body: sub(1), header: map[string]string{"Content-Type": "text/plain"}, want: 415},
		{name: "delete device store down", method: "DELETE", path: "/v1/devices", body: sub(1), outage: true, want: 503},
		{name: "delete device rate limited", on: limited, method: "DELETE", path: "/v1/devices", body: sub(1), want: 429},

		{name: "vapid key", method: "GET", path: "/v1/push/vapid-public-key", want: 200},
		{name: "vapid no token", method: "GET", path: "/v1/push/vapid-public-key", noToken: true, want: 401},
		{name: "vapid without web push", on: noPush, method: "GET", path: "/v1/push/vapid-public-key", want: 404},
		{name: "vapid rate limited", on: limited, method: "GET", path: "/v1/push/vapid-public-key", want: 429},

		{name: "connect bad version", ws: true, method: "GET", path: "/v1/connect", header: with(upgrade, "Sec-WebSocket-Version", "12"), want: 400},
		{name: "connect without upgrade", ws: true, method: "GET", path: "/v1/connect", want: 426},
		{name: "connect bad origin", ws: true, method: "GET", path: "/v1/connect", header: with(upgrade, "Origin", "https://evil.example"), want: 403},
		{name: "connect", ws: true, method: "GET", path: "/v1/connect", header: upgrade, want: 101},
		{name: "connect second connection", ws: true, method: "GET", path: "/v1/connect", header: upgrade, want: 429},
		{name: "connect no token", ws: true, method: "GET", path: "/v1/connect", header: upgrade, noToken: true, want: 401},

		{name: "healthz", ops: true, method: "GET", path: "/healthz", noToken: true, want: 200},
		{name: "readyz", ops: true, method: "GET", path: "/readyz", noToken: true, want: 200},
		{name: "readyz store down", ops: true, method: "GET", path: "/readyz", noToken: true, outage: true, want: 503},
		{name: "metrics", ops: true, method: "GET", path: "/metrics", noToken: true, want: 200},
	}

	covered := map[string]bool{}
	var open []io.Closer
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for _, tc := range cases {
		ta := tc.on
		if ta == nil {
			ta = main
		}
		base := ta.apiURL
		if tc.ws {
			base = "http" + strings.TrimPrefix(ta.wsURL, "ws")
		}
		if tc.ops {
			base = ta.opsURL
		}
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		req, err := http.NewRequest(tc.method, base+tc.path, body)
		if err != nil {
			t.Fatal(err)
		}
		if tc.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if !tc.noToken {
			req.Header.Set("Authorization", "Bearer "+tok(ta, "urn:sm:user:alice"))
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}

		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Errorf("%s: %s %s is not in the spec: %v", tc.name, tc.method, tc.path, err)
			continue
		}
		in := &openapi3filter.RequestValidationInput{
			Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		}
		// Requests meant to be refused need not be valid; the others must be.
		if tc.want < 300 || tc.want == 101 {
			if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
				t.Errorf("%s: request does not match the spec: %v", tc.name, err)
			}
			if req.Body != nil {
				// ValidateRequest read the body (and may rewrite it with defaults): send the original.
				req.Body = io.NopCloser(strings.NewReader(tc.body))
				req.ContentLength = int64(len(tc.body))
			}
		}

		if tc.outage {
			outage.down.Store(true)
		}
		if tc.writesDown {
			outage.writesDown.Store(true)
		}
		resp, err := http.DefaultClient.Do(req)
		outage.down.Store(false)
		outage.writesDown.Store(false)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var respBody []byte
		if resp.StatusCode == http.StatusSwitchingProtocols {
			open = append(open, resp.Body) // keep the connection: the next case needs it held
		} else {
			respBody, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d: %s", tc.name, resp.StatusCode, tc.want, respBody)
			continue
		}
		if tc.bodyHas != "" && !bytes.Contains(respBody, []byte(tc.bodyHas)) {
			t.Errorf("%s: answer %s, want it to hold %s", tc.name, respBody, tc.bodyHas)
		}
		out := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in,
			Status:                 resp.StatusCode,
			Header:                 resp.Header,
			Options:                &openapi3filter.Options{IncludeResponseStatus: true},
		}
		out.SetBodyBytes(respBody)
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			t.Errorf("%s: %d answer does not match the spec: %v\nbody: %s", tc.name, resp.StatusCode, err, truncateBytes(respBody))
		}
		covered[route.Path+" "+tc.method+" "+fmt.Sprint(tc.want)] = true
	}

	// Every documented answer was provoked.
	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				key := path + " " + method + " " + status
				if covered[key] || status == "500" || key == "/v1/connect GET 503" {
					continue
				}
				missing = append(missing, key)
			}
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("documented answers no request provoked: %v", missing)
	}

	// Unknown paths and wrong methods answer the documented error shape.
	for _, tc := range []struct {
		method, path, component string
		want                    int
	}{
		{"GET", "/v1/nowhere", "NotFound", 404},
		{"PATCH", "/v1/messages", "MethodNotAllowed", 405},
	} {
		req, _ := http.NewRequest(tc.method, main.apiURL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+tok(main, "urn:sm:user:alice"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
			continue
		}
		r := doc.Components.Responses[tc.component]
		if r == nil || r.Value == nil {
			t.Fatalf("spec has no response component %s", tc.component)
		}
		mt := r.Value.Content.Get("application/json")
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("%s %s: body is not JSON: %s", tc.method, tc.path, b)
			continue
		}
		if err := mt.Schema.Value.VisitJSON(v); err != nil {
			t.Errorf("%s %s: body does not match %s: %v", tc.method, tc.path, tc.component, err)
		}
	}
}

func truncateBytes(b []byte) string {
	if len(b) > 300 {
		return string(bytes.ToValidUTF8(b[:300], nil)) + "..."
	}
	return string(b)
}
