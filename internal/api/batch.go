package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/web"
)

// Defaults of Options.MaxBatch and MaxBatchBodyBytes.
const (
	DefaultMaxBatch = 1000
	// DefaultMaxBatchBodyBytes holds a batch of DefaultMaxBatch messages
	// of 12 KiB of ciphertext each, and bounds what one request keeps in
	// memory (its body, then each payload and its envelope) to a size a
	// server affords for several at once.
	DefaultMaxBatchBodyBytes = 16 << 20
)

type batchResponse struct {
	Messages []sendResponse `json:"messages"`
}

// sendBatch is POST /v1/messages/batch: the body holds up to MaxBatch
// messages, each shaped like the body of POST /v1/messages, which the
// Accepter accepts in one commit, or none of them. An error caused by one
// message names its index.
func (s *Server) sendBatch(w http.ResponseWriter, r *http.Request) {
	reqs, e := s.decodeBatch(w, r)
	if e != nil {
		web.WriteError(w, e)
		return
	}
	if len(reqs) == 0 {
		web.WriteError(w, web.Errorf(http.StatusBadRequest, web.CodeInvalidParameter,
			"messages must hold 1 to "+strconv.Itoa(s.o.MaxBatch)+" messages"))
		return
	}
	sender := web.Subject(r.Context())
	msgs := make([]route.Message, len(reqs))
	for i, q := range reqs {
		msgs[i] = route.Message{Sender: sender, Recipient: q.Recipient, Payload: q.Payload, Type: q.Type,
			Ephemeral: q.Ephemeral, IdempotencyKey: q.IdempotencyKey}
	}
	clear(reqs) // the payloads are the messages' from here
	accs, err := s.accept.AcceptBatch(r.Context(), msgs)
	if err != nil {
		web.WriteError(w, route.Answer(err))
		return
	}
	out := batchResponse{Messages: make([]sendResponse, len(accs))}
	for i, a := range accs {
		out.Messages[i] = sendResponse{ID: a.ID, CreatedAt: a.CreatedAt}
	}
	web.WriteJSON(w, http.StatusAccepted, out)
}

// decodeBatch reads a batch's body, {"messages": [...]}, of at most
// MaxBatchBodyBytes, one message at a time: it stops at the first message
// past MaxBatch (413) and names the index of a message that is not a send
// request's shape (400). Other members of the object are ignored, as a
// send request's unknown fields are.
func (s *Server) decodeBatch(w http.ResponseWriter, r *http.Request) ([]sendRequest, *web.Error) {
	if e := CheckJSONContentType(r); e != nil {
		return nil, e
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.o.MaxBatchBodyBytes))
	fail := func(err error, index int) *web.Error {
		var mbe *http.MaxBytesError
		var e *web.Error
		switch {
		case errors.As(err, &mbe):
			return bodyTooLarge(s.o.MaxBatchBodyBytes, "api.max_batch_body_bytes")
		case errors.Is(err, io.EOF):
			e = web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is empty")
		case errors.Is(err, io.ErrUnexpectedEOF):
			// The body is cut short, not the message at fault.
			return web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body ends before its JSON value does")
		default:
			e = web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body is not valid JSON of the expected shape: "+err.Error())
		}
		if index >= 0 {
			e.Index = &index
		}
		return e
	}
	shape := web.Errorf(http.StatusBadRequest, web.CodeBadJSON, `request body must be {"messages": [message, ...]}`)
	if tok, err := dec.Token(); err != nil {
		return nil, fail(err, -1)
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, shape
	}
	var reqs []sendRequest
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fail(err, -1)
		}
		// Members match their names as encoding/json's do: ignoring case.
		if name, _ := tok.(string); !strings.EqualFold(name, "messages") {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fail(err, -1)
			}
			continue
		}
		if seen {
			return nil, web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "messages is given twice")
		}
		seen = true
		tok, err = dec.Token()
		if err != nil {
			return nil, fail(err, -1)
		}
		if tok == nil {
			continue // null: no messages
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return nil, shape
		}
		for dec.More() {
			if len(reqs) == s.o.MaxBatch {
				return nil, web.Errorf(http.StatusRequestEntityTooLarge, web.CodeBatchTooLarge,
					"a batch holds at most "+strconv.Itoa(s.o.MaxBatch)+" messages (api.max_batch)")
			}
			var q sendRequest
			if err := dec.Decode(&q); err != nil {
				return nil, fail(err, len(reqs))
			}
			reqs = append(reqs, q)
		}
		if _, err := dec.Token(); err != nil { // ]
			return nil, fail(err, -1)
		}
	}
	if _, err := dec.Token(); err != nil { // }
		return nil, fail(err, -1)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, bodyTooLarge(s.o.MaxBatchBodyBytes, "api.max_batch_body_bytes")
		}
		return nil, web.Errorf(http.StatusBadRequest, web.CodeBadJSON, "request body has data after the JSON value")
	}
	return reqs, nil
}
