package route

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/web"
)

// Each kind of error of the core answers with the status and code of
// docs/API.md, its message, Retry-After in whole seconds when it has one,
// and the index of the message at fault for an error of one message of a
// batch: the one mapping that POST /v1/messages, POST /v1/messages/batch
// and the WebSocket's send_error use.
func TestAnswerMapsKindsToTheContract(t *testing.T) {
	cases := []struct {
		err        error
		status     int
		code       string
		retryAfter int
		index      int // -1: none
	}{
		{&Error{Kind: KindInvalid, Field: FieldRecipient, Message: "m"}, http.StatusBadRequest, web.CodeInvalidRecipient, 0, -1},
		{&Error{Kind: KindInvalid, Field: FieldPayload, Message: "m"}, http.StatusBadRequest, web.CodeInvalidPayload, 0, -1},
		{&Error{Kind: KindInvalid, Field: FieldType, Message: "m"}, http.StatusBadRequest, web.CodeInvalidParameter, 0, -1},
		{&Error{Kind: KindInvalid, Field: FieldIdempotencyKey, Message: "m"}, http.StatusBadRequest, web.CodeInvalidParameter, 0, -1},
		{&Error{Kind: KindTooLarge, Message: "m"}, http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge, 0, -1},
		{&Error{Kind: KindQueueFull, Message: "m"}, http.StatusTooManyRequests, web.CodeRecipientQueueFull, 0, -1},
		{&Error{Kind: KindSenderQuota, Message: "m"}, http.StatusTooManyRequests, web.CodeSenderQuotaExceeded, 0, -1},
		{&Error{Kind: KindKeyReused, Message: "m", RetryAfter: time.Second}, http.StatusConflict, web.CodeIdempotencyKeyReused, 1, -1},
		{&Error{Kind: KindUnavailable, Backend: "store", Message: "m", RetryAfter: time.Second}, http.StatusServiceUnavailable, web.CodeBackendUnavailable, 1, -1},
		{&Error{Kind: KindOverloaded, Message: "m", RetryAfter: 1500 * time.Millisecond}, http.StatusServiceUnavailable, web.CodeBackendUnavailable, 2, -1},
		{errors.New("not the core's"), http.StatusInternalServerError, web.CodeInternal, 0, -1},
		{&ItemError{Index: 7, Err: &Error{Kind: KindInvalid, Field: FieldRecipient, Message: "m"}}, http.StatusBadRequest, web.CodeInvalidRecipient, 0, 7},
		{&ItemError{Index: 0, Err: &Error{Kind: KindQueueFull, Message: "m"}}, http.StatusTooManyRequests, web.CodeRecipientQueueFull, 0, 0},
		{fmt.Errorf("wrapped: %w", &ItemError{Index: 3, Err: &Error{Kind: KindTooLarge, Message: "m"}}), http.StatusRequestEntityTooLarge, web.CodePayloadTooLarge, 0, 3},
	}
	for _, tc := range cases {
		e := Answer(tc.err)
		if e.Status != tc.status || e.Code != tc.code || e.RetryAfter != tc.retryAfter {
			t.Errorf("%v: %d %s Retry-After %d, want %d %s %d", tc.err, e.Status, e.Code, e.RetryAfter, tc.status, tc.code, tc.retryAfter)
		}
		switch {
		case tc.index < 0 && e.Index != nil:
			t.Errorf("%v: index %d, want none", tc.err, *e.Index)
		case tc.index >= 0 && (e.Index == nil || *e.Index != tc.index):
			t.Errorf("%v: index %v, want %d", tc.err, e.Index, tc.index)
		}
		var re *Error
		if errors.As(tc.err, &re) && e.Message != re.Message {
			t.Errorf("%v: message %q, want the core's", tc.err, e.Message)
		}
	}
}
