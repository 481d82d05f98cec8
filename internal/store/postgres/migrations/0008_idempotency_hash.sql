-- Idempotency records without the message: a record now holds the answer
-- given for its key (id, created_at), whether the message was accepted
-- (published) and request_hash, the SHA-256 of the request (recipient,
-- type, ephemeral flag, payload; see store.RequestHash), so that a retry
-- is recognised as the same message without the store keeping its
-- payload, recipient or type for the idempotency window (an ephemeral
-- message with a key left its payload on disk for that long).
--
-- Records written from now on leave recipient and payload NULL (dropping
-- NOT NULL rewrites nothing). A program before this migration that reads
-- such a record (a retry that reaches it during a rolling upgrade) fails
-- on the NULL recipient and answers 503: it never accepts an empty
-- message under the key's id. Records written before keep their envelope
-- and no hash: the store computes their hash from it until the sweep
-- deletes them at the end of the window.
ALTER TABLE idempotency ADD COLUMN request_hash bytea;
ALTER TABLE idempotency ALTER COLUMN recipient DROP NOT NULL;
ALTER TABLE idempotency ALTER COLUMN payload DROP NOT NULL;
