-- Idempotency records without the message: a record now holds the answer
-- given for its key (id, created_at), whether the message was accepted
-- (published) and request_hash, the SHA-256 of the request (recipient,
-- type, ephemeral flag, payload; see store.RequestHash), so that a retry
-- is recognised as the same message without the store keeping its
-- payload, recipient or type for the idempotency window (an ephemeral
-- message with a key left its payload on disk for that long).
--
-- Records written from now on leave recipient and payload NULL. The
-- columns become nullable, which SQLite only does by copying the table.
-- A program before this migration that reads such a record (a retry that
-- reaches it during an upgrade) fails on the NULL recipient and answers
-- 503: it never accepts an empty message under the key's id. Records
-- written before keep their envelope and no hash: the store computes
-- their hash from it until the sweep deletes them at the end of the
-- window.
CREATE TABLE idempotency_v2 (
	sender       TEXT    NOT NULL,
	key          TEXT    NOT NULL,
	id           TEXT    NOT NULL,
	recipient    TEXT,
	type         TEXT    NOT NULL DEFAULT '',
	payload      BLOB,
	ephemeral    INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL, -- Unix milliseconds, UTC
	published    INTEGER NOT NULL DEFAULT 0,
	request_hash BLOB,
	PRIMARY KEY (sender, key)
) WITHOUT ROWID;

INSERT INTO idempotency_v2 (sender, key, id, recipient, type, payload, ephemeral, created_at, published)
	SELECT sender, key, id, recipient, type, payload, ephemeral, created_at, published FROM idempotency;

DROP TABLE idempotency;
ALTER TABLE idempotency_v2 RENAME TO idempotency;
CREATE INDEX idempotency_created_at ON idempotency (created_at);
