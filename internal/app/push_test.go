package app_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// An offline recipient with targets on FCM (android and ios), APNs and Web
// Push gets exactly one push on each per coalescing window, carrying no
// payload; an online one gets none.
func TestPushEndToEnd(t *testing.T) {
	fcmSrv, apnsSrv, wpSrv := pushtest.NewFCM(t), pushtest.NewAPNs(t), pushtest.NewWebPush(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pushtest.PEM(fcmSrv.Certificate(), apnsSrv.Certificate(), wpSrv.Certificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	vapidFile := filepath.Join(dir, "vapid.key")
	if err := os.WriteFile(vapidFile, []byte(wpSrv.Config().VAPIDPrivateKey), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, ac := fcmSrv.Config(), apnsSrv.Config()
	const window = 2 * time.Second
	ta := startApp(t, func(c *config.Config) {
		c.Push.CoalesceWindow = window
		c.Push.CAFile = caFile
		c.Push.FCM = push.FCM{Enabled: true, ProjectID: fc.ProjectID, CredentialsFile: fc.CredentialsFile, Endpoint: fc.Endpoint}
		c.Push.APNs = push.APNs{Enabled: true, KeyFile: ac.KeyFile, KeyID: ac.KeyID, TeamID: ac.TeamID, Topic: ac.Topic,
			Endpoint: ac.Endpoint, PushType: "background", Priority: 5}
		c.Push.WebPush.Enabled = true
		c.Push.WebPush.VAPIDPrivateKeyFile = vapidFile
		c.Push.WebPush.AllowLocalEndpoints = true
	})
	alice := ta.client(t, "urn:sm:user:alice")
	judy := ta.client(t, "urn:sm:user:judy")

	// Browsers get the VAPID public key of the configured pair.
	req, _ := http.NewRequest(http.MethodGet, ta.apiURL+"/v1/push/vapid-public-key", nil)
	req.Header.Set("Authorization", "Bearer "+judy.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var key struct {
		PublicKey string `json:"public_key"`
	}
	err = json.NewDecoder(resp.Body).Decode(&key)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || key.PublicKey != wpSrv.VAPIDPublicKey() {
		t.Fatalf("vapid public key: %d %q %v, want %q", resp.StatusCode, key.PublicKey, err, wpSrv.VAPIDPublicKey())
	}

	sub := wpSrv.NewSubscription()
	devices := []client.Device{
		{Platform: "android", Token: "android-token-1"},
		{Platform: "ios", Token: "ios-token-1"},
		{Platform: "apns", Token: pushtest.NewAPNsToken()},
		{Platform: "webpush", Subscription: &client.Subscription{Endpoint: sub.Token}},
	}
	devices[3].Subscription.Keys.P256DH, devices[3].Subscription.Keys.Auth = sub.P256DH, sub.Auth
	for _, d := range devices {
		if err := judy.PutDevice(ctxT(t), d); err != nil {
			t.Fatalf("put %s: %v", d.Platform, err)
		}
		if err := judy.PutDevice(ctxT(t), d); err != nil { // a no-op
			t.Fatalf("put %s again: %v", d.Platform, err)
		}
	}

	// Offline: a burst of messages inside one window. The first wakes every
	// device at once; the rest are coalesced into one trailing push of the
	// latest when the window closes (which opens the next window): one push
	// per target per window, never one per message.
	start := time.Now()
	var ids []string
	for i := 0; i < 5; i++ {
		acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:judy", Payload: []byte("secret"), Type: "chat"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, acc.ID)
	}
	first, last := ids[0], ids[len(ids)-1]
	fr := fcmSrv.WaitDelivered(t, 4)
	ar := apnsSrv.WaitDelivered(t, 2)
	wr := wpSrv.WaitDelivered(t, 2)
	if elapsed := time.Since(start); elapsed < window {
		t.Fatalf("second push after %v, inside the %v window", elapsed, window)
	}
	perPlatform := map[string][]string{}
	for _, r := range fr {
		perPlatform[r.Platform] = append(perPlatform[r.Platform], r.MessageID)
		if r.Type != "chat" {
			t.Fatalf("fcm push %+v: want the message type", r)
		}
	}
	perPlatform["apns"] = []string{ar[0].MessageID, ar[1].MessageID}
	perPlatform["webpush"] = []string{wr[0].MessageID, wr[1].MessageID}
	for _, p := range []string{"android", "ios", "apns", "webpush"} {
		if got := perPlatform[p]; len(got) != 2 || got[0] != first || got[1] != last {
			t.Fatalf("%s pushes %v, want [%s %s] (first, then the coalesced latest)", p, got, first, last)
		}
	}
	if ar[0].PushType != "background" || wr[0].Urgency != "high" {
		t.Fatalf("apns %+v webpush %+v", ar[0], wr[0])
	}
	before := [3]int{len(fcmSrv.Delivered()), len(apnsSrv.Delivered()), len(wpSrv.Delivered())}

	// Online: no push.
	idle(t, ta)
	conn, err := judy.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	var live string
	for {
		env := next(t, conn) // backlog first
		if err := conn.Ack(ctxT(t), env.ID); err != nil {
			t.Fatal(err)
		}
		if live != "" && env.ID == live {
			break
		}
		if live == "" {
			acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:judy", Payload: []byte("online")})
			if err != nil {
				t.Fatal(err)
			}
			live = acc.ID
		}
	}
	after := [3]int{len(fcmSrv.Delivered()), len(apnsSrv.Delivered()), len(wpSrv.Delivered())}
	if after != before {
		t.Fatalf("pushes sent to an online recipient: before %v after %v", before, after)
	}
}

// A message delivered live to a connection that never acknowledges it
// gets a push push.unacked_after later, for that message.
func TestPushForUnacknowledgedLiveMessage(t *testing.T) {
	wpSrv := pushtest.NewWebPush(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pushtest.PEM(wpSrv.Certificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	vapidFile := filepath.Join(dir, "vapid.key")
	if err := os.WriteFile(vapidFile, []byte(wpSrv.Config().VAPIDPrivateKey), 0o600); err != nil {
		t.Fatal(err)
	}
	ta := startApp(t, func(c *config.Config) {
		c.Push.UnackedAfter = 300 * time.Millisecond
		c.Push.CAFile = caFile
		c.Push.WebPush.Enabled = true
		c.Push.WebPush.VAPIDPrivateKeyFile = vapidFile
		c.Push.WebPush.AllowLocalEndpoints = true
	})
	alice := ta.client(t, "urn:sm:user:alice")
	judy := ta.client(t, "urn:sm:user:judy")
	sub := wpSrv.NewSubscription()
	d := client.Device{Platform: "webpush", Subscription: &client.Subscription{Endpoint: sub.Token}}
	d.Subscription.Keys.P256DH, d.Subscription.Keys.Auth = sub.P256DH, sub.Auth
	if err := judy.PutDevice(ctxT(t), d); err != nil {
		t.Fatal(err)
	}
	conn, err := judy.Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected(t, ta, 1)
	acc, err := alice.Send(ctxT(t), client.Message{Recipient: "urn:sm:user:judy", Payload: []byte("live"), Type: "chat"})
	if err != nil {
		t.Fatal(err)
	}
	if env := next(t, conn); env.ID != acc.ID { // delivered live, never acknowledged
		t.Fatalf("live frame %s, want %s", env.ID, acc.ID)
	}
	if got := wpSrv.WaitDelivered(t, 1); got[0].MessageID != acc.ID {
		t.Fatalf("push %+v, want one for %s", got[0], acc.ID)
	}
	if n := testutil.ToFloat64(ta.app.Metrics().PushUnacked); n != 1 {
		t.Fatalf("routing_push_unacked_total = %v, want 1", n)
	}
}
