// Package web holds the HTTP pieces that the service's public servers share:
// the JSON error shape of the client contract, bearer-token authentication
// and the WebSocket origin check. It imports nothing of the service's own.
package web

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes of the JSON error shape {"error": {"code": ..., "message": ...}}.
const (
	CodeBadJSON            = "malformed_json"
	CodeBadRequest         = "bad_request"
	CodeInvalidRecipient   = "invalid_recipient"
	CodeInvalidPayload     = "invalid_payload"
	CodeInvalidParameter   = "invalid_parameter"
	CodeInvalidDevice      = "invalid_device"
	CodeUnauthorized       = "unauthorized"
	CodeForbidden          = "forbidden"
	CodeOriginNotAllowed   = "origin_not_allowed"
	CodeHostNotAllowed     = "host_not_allowed"
	CodeNotFound           = "not_found"
	CodeMethodNotAllowed   = "method_not_allowed"
	CodeBodyTooLarge       = "body_too_large"
	CodePayloadTooLarge    = "payload_too_large"
	CodeUnsupportedMedia   = "unsupported_media_type"
	CodeTooManyDevices     = "too_many_devices"
	CodeRateLimited        = "rate_limited"
	CodeRecipientQueueFull = "recipient_queue_full"
	CodeBackendUnavailable = "backend_unavailable"
	CodeInternal           = "internal_error"
)

// Error codes of sends refused for what the sender did before.
const (
	// CodeSenderQuotaExceeded: the sender has as many messages, or as many
	// payload bytes, pending as a sender may have (429, no Retry-After).
	CodeSenderQuotaExceeded = "sender_quota_exceeded"
	// CodeIdempotencyKeyReused: the idempotency key is held by another
	// message whose acceptance has not finished (409, Retry-After).
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	// CodeBatchTooLarge: a batch holds more messages than api.max_batch
	// (413).
	CodeBatchTooLarge = "batch_too_large"
)

// Error is an API error: an HTTP status, a snake_case code and a message that
// says what to fix.
type Error struct {
	Status  int
	Code    string
	Message string
	// RetryAfter, when positive, is sent as the Retry-After header (seconds).
	RetryAfter int
	// Index, when not nil, is the position of the item of a batch at
	// fault (0-based), sent as "index" in the error object.
	Index *int
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf makes an *Error.
func Errorf(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Index   *int   `json:"index,omitempty"`
}

// WriteError writes e in the JSON error shape of the client contract.
func WriteError(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: errorDetail{Code: e.Code, Message: e.Message, Index: e.Index}})
}

// WriteJSON writes v as a JSON response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, Errorf(http.StatusInternalServerError, CodeInternal, "could not encode the response"))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
