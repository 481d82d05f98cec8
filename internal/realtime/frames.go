package realtime

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/web"
)

// This file holds the client's frames as the server reads them (ack and
// send) and the answers to a send (sent, send_error).

// frameKind is what a client frame asks for.
type frameKind uint8

const (
	frameOther frameKind = iota // not an ack or a send: answered with an error event
	frameAck
	frameSend
)

// maxRefRunes bounds a send frame's ref (1-64 characters).
const maxRefRunes = 64

// clientMsg is a decoded client frame. With code set it is refused: an
// ack or another frame with an error event, a send with a send_error
// carrying ref (when the frame's ref was valid, else none).
type clientMsg struct {
	kind      frameKind
	ids       []string    // ack
	ref       string      // send
	send      sendMessage // send
	code, msg string
}

// sendMessage is a send frame's message: the body of POST /v1/messages.
type sendMessage struct {
	Recipient      string `json:"recipient"`
	Payload        string `json:"payload"`
	Type           string `json:"type"`
	Ephemeral      bool   `json:"ephemeral"`
	IdempotencyKey string `json:"idempotency_key"`
}

// clientFrame is every member a client frame may have, of its type.
type clientFrame struct {
	Type    string       `json:"type"`
	IDs     []string     `json:"ids"`
	Ref     string       `json:"ref"`
	Message *sendMessage `json:"message"`
}

// decodeClientFrame decodes a client text frame (valid UTF-8). A frame
// that is not JSON, has no string type, or is an ack of the wrong shape
// answers malformed_json; a send frame that is malformed (its ref, its
// message) answers bad_request as a send_error; an unknown type
// bad_request.
func decodeClientFrame(data []byte) clientMsg {
	var in clientFrame
	if err := json.Unmarshal(data, &in); err != nil {
		return decodeOddFrame(data)
	}
	switch in.Type {
	case "ack":
		if err := envelope.ValidateAckIDs(in.IDs); err != nil {
			return clientMsg{kind: frameAck, code: web.CodeInvalidParameter, msg: err.Error()}
		}
		return clientMsg{kind: frameAck, ids: in.IDs}
	case "send":
		if !validRef(in.Ref) {
			return clientMsg{kind: frameSend, code: web.CodeBadRequest, msg: "a send frame needs a ref of 1-" + strconv.Itoa(maxRefRunes) + " characters"}
		}
		if in.Message == nil {
			return clientMsg{kind: frameSend, ref: in.Ref, code: web.CodeBadRequest, msg: "a send frame needs a message: {recipient, payload, type?, ephemeral?, idempotency_key?}"}
		}
		return clientMsg{kind: frameSend, ref: in.Ref, send: *in.Message}
	}
	return clientMsg{code: web.CodeBadRequest, msg: `unknown frame type (expected "ack" or "send")`}
}

// decodeOddFrame decodes a frame that does not fit clientFrame: not
// JSON, or a member of another type than its frame type's. Members that
// do not belong to the frame's type are ignored, as unknown members are.
func decodeOddFrame(data []byte) clientMsg {
	var head struct {
		Type    string          `json:"type"`
		IDs     json.RawMessage `json:"ids"`
		Ref     json.RawMessage `json:"ref"`
		Message json.RawMessage `json:"message"`
	}
	malformed := clientMsg{code: web.CodeBadJSON, msg: "frame is not valid JSON of the expected shape"}
	if err := json.Unmarshal(data, &head); err != nil {
		return malformed
	}
	switch head.Type {
	case "ack":
		var ids []string
		if len(head.IDs) > 0 && json.Unmarshal(head.IDs, &ids) != nil {
			malformed.kind = frameAck
			return malformed
		}
		if err := envelope.ValidateAckIDs(ids); err != nil {
			return clientMsg{kind: frameAck, code: web.CodeInvalidParameter, msg: err.Error()}
		}
		return clientMsg{kind: frameAck, ids: ids}
	case "send":
		var ref string
		if len(head.Ref) == 0 || json.Unmarshal(head.Ref, &ref) != nil || !validRef(ref) {
			return clientMsg{kind: frameSend, code: web.CodeBadRequest, msg: "a send frame needs a ref of 1-" + strconv.Itoa(maxRefRunes) + " characters"}
		}
		var m sendMessage
		if len(head.Message) == 0 || json.Unmarshal(head.Message, &m) != nil {
			return clientMsg{kind: frameSend, ref: ref, code: web.CodeBadRequest,
				msg: "message must be an object {recipient, payload, type?, ephemeral?, idempotency_key?} of strings (ephemeral a boolean)"}
		}
		return clientMsg{kind: frameSend, ref: ref, send: m}
	}
	return clientMsg{code: web.CodeBadRequest, msg: `unknown frame type (expected "ack" or "send")`}
}

// validRef reports whether ref is 1-64 characters.
func validRef(ref string) bool {
	return ref != "" && len(ref) <= 4*maxRefRunes && utf8.RuneCountInString(ref) <= maxRefRunes
}

// encodeSent returns the frame of a sent event: the send of ref was
// accepted as id at createdAt.
func encodeSent(ref, id string, createdAt time.Time) []byte {
	b := make([]byte, 0, ws.MaxHeaderSize+96+len(ref)+len(id))
	b = append(b, `{"type":"sent","ref":`...)
	b = appendJSONString(b, ref)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"created_at":"`...)
	b = createdAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `"}`...)
	return serverFrame(ws.OpText, b)
}

// sendErrorFrame is a send_error event.
type sendErrorFrame struct {
	Type       string      `json:"type"`
	Ref        string      `json:"ref,omitempty"`
	Error      errorDetail `json:"error"`
	RetryAfter int         `json:"retry_after,omitempty"`
}

// encodeSendError returns the frame of a send_error event: the send of
// ref (none: "") was refused with code and message; retryAfter, when
// positive, is the seconds to wait before sending again.
func encodeSendError(ref, code, message string, retryAfter int) []byte {
	b, _ := json.Marshal(sendErrorFrame{Type: "send_error", Ref: ref, Error: errorDetail{Code: code, Message: message}, RetryAfter: retryAfter})
	return serverFrame(ws.OpText, b)
}

// appendJSONString appends s as a JSON string as encoding/json writes it;
// plain ASCII is copied as it is.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
