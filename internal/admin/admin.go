// Package admin is the service's admin endpoint: a small JSON HTTP API, served
// on a Unix domain socket, to inspect, replay and purge the dead-letter
// queues of the bus.
//
// Routes (queue is "ingress" or "delivery"):
//
//	GET  /dlq/{queue}?limit=N     list up to N (default 100) dead messages, oldest first
//	GET  /dlq/{queue}/{id}        one dead message
//	POST /dlq/{queue}/replay      {"ids": [...]} put them back on their topic; absent or empty ids (or "all": true): every one
//	POST /dlq/{queue}/purge       {"ids": [...]} delete them; every one only with {"all": true}
//
// Answers never carry a message's payload, only its size. Errors use the
// JSON error shape of the client API: {"error": {"code": ..., "message": ...}}.
// The socket is the only guard (file mode 0600): whoever can open it is
// trusted, so the handler must never be served on a network listener.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/telemetry"
	"github.com/go-routing-service/routingservice/internal/web"
)

// DefaultLimit and MaxLimit bound the limit of a list request.
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

// maxBody bounds a request body (a list of ids).
const maxBody = 1 << 20

// DeadMessage is one dead-lettered message as the admin endpoint shows it.
type DeadMessage struct {
	// ID identifies the message within its dead-letter queue (the id to
	// pass to show, replay and purge).
	ID string `json:"id"`
	// Queue is "ingress" or "delivery".
	Queue string `json:"queue"`
	// MessageID is the original message's id.
	MessageID string `json:"message_id"`
	// Attributes of the original message (trace context, instance, ...).
	Attributes map[string]string `json:"attributes,omitempty"`
	// Size of the payload in bytes; the payload itself is never shown.
	Size int `json:"size"`
	// Reason says why it was dead-lettered.
	Reason string `json:"reason"`
	// Attempts is how many deliveries were attempted.
	Attempts int `json:"attempts"`
	// DeadAt is when it was dead-lettered (absent when unknown).
	DeadAt time.Time `json:"dead_at,omitzero"`
}

// ListResponse answers GET /dlq/{queue}.
type ListResponse struct {
	Messages []DeadMessage `json:"messages"`
}

// IDsRequest is the body of replay and purge.
type IDsRequest struct {
	IDs []string `json:"ids,omitempty"`
	// All selects every message of the queue (required to purge them all).
	All bool `json:"all,omitempty"`
}

// CountResponse answers replay and purge: how many messages were replayed
// or purged.
type CountResponse struct {
	Count int `json:"count"`
}

// Options configure the handler.
type Options struct {
	// Logger receives one info line per replay or purge; default slog.Default().
	Logger *slog.Logger
	// Metrics, when set, count replays and purges.
	Metrics *telemetry.Metrics
}

// DeadLetters is what the admin endpoint needs of the bus: its dead-letter
// queues, by queue name (bus.QueueIngress or bus.QueueDelivery).
type DeadLetters interface {
	// ListDead returns up to limit dead messages of queue, oldest first.
	ListDead(ctx context.Context, queue string, limit int) ([]bus.DeadMessage, error)
	// GetDead returns one dead message, or bus.ErrNotFound.
	GetDead(ctx context.Context, queue, id string) (bus.DeadMessage, error)
	// ReplayDead publishes the dead messages with these ids (all when ids
	// is nil) back on their topic and removes them from the dead-letter
	// queue. It returns how many were replayed.
	ReplayDead(ctx context.Context, queue string, ids []string) (int, error)
	// PurgeDead deletes the dead messages with these ids (all when ids is
	// nil). It returns how many were deleted.
	PurgeDead(ctx context.Context, queue string, ids []string) (int, error)
}

type handler struct {
	dl  DeadLetters
	log *slog.Logger
	m   *telemetry.Metrics
}

// NewHandler returns the admin HTTP handler over the bus's dead-letter
// queues. See the package doc for its routes.
func NewHandler(dl DeadLetters, o Options) http.Handler {
	h := &handler{dl: dl, log: o.Logger, m: o.Metrics}
	if h.log == nil {
		h.log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/dlq/{queue}", h.queue)
	mux.HandleFunc("/dlq/{queue}/{id}", h.item)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		web.WriteError(w, web.Errorf(http.StatusNotFound, web.CodeNotFound, "no such admin route: "+r.URL.Path))
	})
	return mux
}

func validQueue(w http.ResponseWriter, q string) bool {
	if q == bus.QueueIngress || q == bus.QueueDelivery {
		return true
	}
	web.WriteError(w, web.Errorf(http.StatusNotFound, web.CodeNotFound,
		fmt.Sprintf("unknown queue %q: want %s or %s", q, bus.QueueIngress, bus.QueueDelivery)))
	return false
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	web.WriteError(w, web.Errorf(http.StatusMethodNotAllowed, web.CodeMethodNotAllowed, "method not allowed; use "+allow))
}

// queue serves GET /dlq/{queue}.
func (h *handler) queue(w http.ResponseWriter, r *http.Request) {
	q := r.PathValue("queue")
	if !validQueue(w, q) {
		return
	}
	if r.Method != http.MethodGet {
		methodNotAllowed(w, http.MethodGet)
		return
	}
	limit := DefaultLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter,
				fmt.Sprintf("limit must be an integer from 1 to %d", MaxLimit)))
			return
		}
		limit = n
	}
	msgs, err := h.dl.ListDead(r.Context(), q, limit)
	if err != nil {
		h.backendError(w, "list", q, err)
		return
	}
	out := ListResponse{Messages: make([]DeadMessage, 0, len(msgs))}
	for _, m := range msgs {
		out.Messages = append(out.Messages, toWire(m))
	}
	web.WriteJSON(w, http.StatusOK, out)
}

// item serves GET /dlq/{queue}/{id}, POST /dlq/{queue}/replay and
// POST /dlq/{queue}/purge.
func (h *handler) item(w http.ResponseWriter, r *http.Request) {
	q, id := r.PathValue("queue"), r.PathValue("id")
	if !validQueue(w, q) {
		return
	}
	if r.Method == http.MethodPost && (id == "replay" || id == "purge") {
		h.settle(w, r, q, id)
		return
	}
	if r.Method != http.MethodGet {
		if id == "replay" || id == "purge" {
			methodNotAllowed(w, http.MethodPost)
		} else {
			methodNotAllowed(w, http.MethodGet)
		}
		return
	}
	m, err := h.dl.GetDead(r.Context(), q, id)
	if errors.Is(err, bus.ErrNotFound) {
		web.WriteError(w, web.Errorf(http.StatusNotFound, web.CodeNotFound,
			fmt.Sprintf("no dead message %q in the %s queue", id, q)))
		return
	}
	if err != nil {
		h.backendError(w, "show", q, err)
		return
	}
	web.WriteJSON(w, http.StatusOK, toWire(m))
}

// settle serves replay and purge.
func (h *handler) settle(w http.ResponseWriter, r *http.Request, q, action string) {
	var req IDsRequest
	if r.ContentLength != 0 {
		if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
			web.WriteError(w, web.Errorf(http.StatusUnsupportedMediaType, web.CodeUnsupportedMedia, "the body must be application/json"))
			return
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "body must be {\"ids\": [...]} or {\"all\": true}: "+err.Error()))
			return
		}
	}
	for _, id := range req.IDs {
		if id == "" {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "ids must not contain an empty id"))
			return
		}
	}
	if req.All && len(req.IDs) > 0 {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter, "give ids or all, not both"))
		return
	}
	var ids []string // nil: every message
	if len(req.IDs) > 0 {
		ids = req.IDs
	}
	var (
		n   int
		err error
	)
	switch action {
	case "replay":
		n, err = h.dl.ReplayDead(r.Context(), q, ids)
		if n > 0 && h.m != nil {
			h.m.DeadReplayed.WithLabelValues(q).Add(float64(n))
		}
	case "purge":
		if ids == nil && !req.All {
			web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter,
				"purge needs the ids to delete, or {\"all\": true} to delete every message of the queue"))
			return
		}
		n, err = h.dl.PurgeDead(r.Context(), q, ids)
		if n > 0 && h.m != nil {
			h.m.DeadPurged.WithLabelValues(q).Add(float64(n))
		}
	}
	if n > 0 || err == nil {
		h.log.Info("dead letters "+map[string]string{"replay": "replayed", "purge": "purged"}[action],
			"queue", q, "count", n, "requested", requested(ids))
	}
	if err != nil {
		h.backendError(w, action, q, err)
		return
	}
	web.WriteJSON(w, http.StatusOK, CountResponse{Count: n})
}

// requested describes the selection for the log: a count of ids, or "all".
func requested(ids []string) string {
	if ids == nil {
		return "all"
	}
	return strconv.Itoa(len(ids))
}

func (h *handler) backendError(w http.ResponseWriter, op, q string, err error) {
	h.log.Error("admin dead-letter operation failed", "op", op, "queue", q, "error", err)
	web.WriteError(w, web.Errorf(http.StatusServiceUnavailable, web.CodeBackendUnavailable,
		fmt.Sprintf("%s %s dead letters: %v", op, q, err)))
}

func toWire(m bus.DeadMessage) DeadMessage {
	return DeadMessage{
		ID:         m.ID,
		Queue:      m.Queue,
		MessageID:  m.Message.ID,
		Attributes: m.Message.Attributes,
		Size:       len(m.Message.Data),
		Reason:     m.Reason,
		Attempts:   m.Attempts,
		DeadAt:     m.DeadAt,
	}
}
