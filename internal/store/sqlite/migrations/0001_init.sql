-- Pending envelopes. seq is the store order that Pending pages by; id is
-- the envelope id that PutMessages is idempotent on.
CREATE TABLE messages (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         TEXT    NOT NULL UNIQUE,
	sender     TEXT    NOT NULL,
	recipient  TEXT    NOT NULL,
	type       TEXT    NOT NULL DEFAULT '',
	payload    BLOB    NOT NULL,
	ephemeral  INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL -- Unix milliseconds, UTC
);
CREATE INDEX messages_recipient_seq ON messages (recipient, seq);
CREATE INDEX messages_created_at ON messages (created_at);

-- Idempotency records: one per (sender, key), holding the accepted envelope.
CREATE TABLE idempotency (
	sender     TEXT    NOT NULL,
	key        TEXT    NOT NULL,
	id         TEXT    NOT NULL,
	recipient  TEXT    NOT NULL,
	type       TEXT    NOT NULL DEFAULT '',
	payload    BLOB    NOT NULL,
	ephemeral  INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL, -- Unix milliseconds, UTC
	published  INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (sender, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created_at ON idempotency (created_at);

-- Push targets, unique per (owner, platform, token).
CREATE TABLE targets (
	seq      INTEGER PRIMARY KEY AUTOINCREMENT,
	owner    TEXT NOT NULL,
	platform TEXT NOT NULL,
	token    TEXT NOT NULL,
	p256dh   TEXT NOT NULL DEFAULT '',
	auth     TEXT NOT NULL DEFAULT '',
	UNIQUE (owner, platform, token)
);
