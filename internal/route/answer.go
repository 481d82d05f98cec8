package route

import (
	"errors"
	"math"
	"net/http"

	"github.com/go-routing-service/routingservice/internal/web"
)

// Answer is the client contract's answer to an error of Accept or
// AcceptBatch: its kind's HTTP status and error code (docs/API.md), its
// message, its Retry-After in whole seconds, and, for an *ItemError, the
// index of the message at fault. POST /v1/messages and POST
// /v1/messages/batch answer with it; a WebSocket send_error carries its
// code, message and retry_after. An error that is not an *Error is an
// internal error (500), which Accept never returns for bad input.
func Answer(err error) *web.Error {
	var re *Error
	if !errors.As(err, &re) {
		return web.Errorf(http.StatusInternalServerError, web.CodeInternal, "the message could not be accepted")
	}
	var e *web.Error
	switch re.Kind {
	case KindInvalid:
		code := web.CodeInvalidParameter
		switch re.Field {
		case FieldRecipient:
			code = web.CodeInvalidRecipient
		case FieldPayload:
			code = web.CodeInvalidPayload
		}
		e = web.Errorf(http.StatusBadRequest, code, re.Message)
	case KindTooLarge:
		e = web.Errorf(http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge, re.Message)
	case KindQueueFull:
		e = web.Errorf(http.StatusTooManyRequests, web.CodeRecipientQueueFull, re.Message)
	case KindSenderQuota:
		e = web.Errorf(http.StatusTooManyRequests, web.CodeSenderQuotaExceeded, re.Message)
	case KindKeyReused:
		e = web.Errorf(http.StatusConflict, web.CodeIdempotencyKeyReused, re.Message)
	case KindUnavailable, KindOverloaded:
		e = web.Errorf(http.StatusServiceUnavailable, web.CodeBackendUnavailable, re.Message)
	default:
		e = web.Errorf(http.StatusInternalServerError, web.CodeInternal, "the message could not be accepted")
	}
	if re.RetryAfter > 0 {
		e.RetryAfter = int(math.Ceil(re.RetryAfter.Seconds()))
	}
	var ie *ItemError
	if errors.As(err, &ie) {
		i := ie.Index
		e.Index = &i
	}
	return e
}
