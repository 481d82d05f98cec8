package app

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/apns"
	"github.com/go-routing-service/routingservice/internal/push/egress"
	"github.com/go-routing-service/routingservice/internal/push/fcm"
	"github.com/go-routing-service/routingservice/internal/push/webpush"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// pushRole wakes offline recipients' devices through the configured providers.
type pushRole struct {
	d        *push.Dispatcher
	validate push.ValidateOptions
	vapidPub string
}

func newPushRole(ctx context.Context, cfg config.Config, st store.Store, m *telemetry.Metrics, log *slog.Logger, tp trace.TracerProvider) (*pushRole, error) {
	pc := cfg.Push
	roots, err := pushRoots(pc.CAFile)
	if err != nil {
		return nil, err
	}
	// Every provider is reached through the egress client: connections to
	// addresses that are not public unicast are refused when they are made
	// (Web Push endpoints are chosen by users), redirects are not followed,
	// response bodies are bounded, public addresses are reached on
	// push.allowed_ports only. allow_local_endpoints (refused in
	// production) lets local setups reach stand-ins on loopback, on any
	// port.
	ports := make([]uint16, len(pc.AllowedPorts))
	for i, p := range pc.AllowedPorts {
		ports[i] = uint16(p) // 1-65535: config.Check
	}
	hc := egress.NewClient(egress.Options{
		AllowLoopback:       pc.WebPush.AllowLocalEndpoints,
		AllowedPorts:        ports,
		RootCAs:             roots,
		Timeout:             pc.Timeout,
		MaxIdleConnsPerHost: pc.Concurrency,
	})
	p := &pushRole{validate: push.ValidateOptions{AllowInsecureLocalEndpoints: pc.WebPush.AllowLocalEndpoints}}
	var senders []push.Sender
	if pc.FCM.Enabled {
		s, err := fcm.New(fcm.Config{
			FCM:        pc.FCM,
			MaxRetries: pc.MaxRetries,
			HTTPClient: hc,
		})
		if err != nil {
			return nil, fmt.Errorf("push.fcm: %w", err)
		}
		senders = append(senders, s)
	}
	if pc.APNs.Enabled {
		s, err := apns.New(apns.Config{
			APNs:       pc.APNs,
			MaxRetries: pc.MaxRetries,
			RootCAs:    roots,
			HTTPClient: hc,
		})
		if err != nil {
			return nil, fmt.Errorf("push.apns: %w", err)
		}
		senders = append(senders, s)
	}
	if pc.WebPush.Enabled {
		pub, priv, err := vapidKeys(cfg)
		if err != nil {
			return nil, err
		}
		s, err := webpush.New(webpush.Config{
			Subject:         pc.WebPush.Subject,
			VAPIDPrivateKey: priv,
			TTL:             pc.WebPush.TTL,
			Urgency:         pc.WebPush.Urgency,
			MaxRetries:      pc.MaxRetries,
			HTTPClient:      hc,
		})
		if err != nil {
			return nil, fmt.Errorf("push.webpush: %w", err)
		}
		senders = append(senders, s)
		p.vapidPub = pub
	}
	p.d = push.NewDispatcher(st, senders, push.DispatcherOptions{
		CoalesceWindow: pc.CoalesceWindow,
		Concurrency:    pc.Concurrency,
		Timeout:        pc.Timeout,
		Logger:         log.With("role", "push"),
		Registerer:     m.Registry,
		TracerProvider: tp,
	})
	names := make([]string, 0, len(senders))
	for _, s := range senders {
		names = append(names, s.Platforms()...)
	}
	log.Info("push", "platforms", names)
	return p, nil
}

// vapidKeys returns the Web Push VAPID key pair: from the configured private
// key file, or, in local mode without one, generated once into the data dir.
func vapidKeys(cfg config.Config) (pub, priv string, err error) {
	wp := cfg.Push.WebPush
	if wp.VAPIDPrivateKeyFile == "" {
		pub, priv, err = webpush.LoadOrCreateVAPID(cfg.DataDir)
		if err != nil {
			return "", "", fmt.Errorf("push.webpush: %w", err)
		}
	} else {
		b, err := os.ReadFile(wp.VAPIDPrivateKeyFile)
		if err != nil {
			return "", "", &config.KeyError{Key: "push.webpush.vapid_private_key_file", Err: err}
		}
		priv = strings.TrimSpace(string(b))
		if _, pub, err = webpush.ParseVAPIDPrivateKey(priv); err != nil {
			return "", "", &config.KeyError{Key: "push.webpush.vapid_private_key_file", Err: err}
		}
	}
	if wp.VAPIDPublicKey != "" && wp.VAPIDPublicKey != pub {
		return "", "", &config.KeyError{Key: "push.webpush.vapid_public_key", Msg: "does not match the private key"}
	}
	return pub, priv, nil
}

// pushRoots is the system roots plus the certificates of caFile (nil: the
// system roots alone).
func pushRoots(caFile string) (*x509.CertPool, error) {
	if caFile == "" {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, &config.KeyError{Key: "push.ca_file", Err: err}
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, &config.KeyError{Key: "push.ca_file", Msg: "no PEM certificate in " + caFile}
	}
	return pool, nil
}

func (p *pushRole) Notify(n push.Notification)          { p.d.Notify(n) }
func (p *pushRole) run(ctx context.Context) error       { return p.d.Run(ctx) }
func (p *pushRole) validateTarget(t store.Target) error { return p.validate.Validate(t) }
func (p *pushRole) vapidPublicKey() string              { return p.vapidPub }
