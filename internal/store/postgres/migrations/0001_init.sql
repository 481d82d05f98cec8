-- Pending envelopes. seq is the store order that Pending pages by; id is
-- the envelope id that PutMessages is idempotent on.
CREATE TABLE messages (
	seq        bigserial   PRIMARY KEY,
	id         text        NOT NULL UNIQUE,
	sender     text        NOT NULL,
	recipient  text        NOT NULL,
	type       text        NOT NULL DEFAULT '',
	payload    bytea       NOT NULL,
	ephemeral  boolean     NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL -- whole milliseconds
);
CREATE INDEX messages_recipient_seq ON messages (recipient, seq);
CREATE INDEX messages_created_at ON messages (created_at);

-- Idempotency records: one per (sender, key), holding the accepted envelope.
CREATE TABLE idempotency (
	sender     text        NOT NULL,
	key        text        NOT NULL,
	id         text        NOT NULL,
	recipient  text        NOT NULL,
	type       text        NOT NULL DEFAULT '',
	payload    bytea       NOT NULL,
	ephemeral  boolean     NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL,
	published  boolean     NOT NULL DEFAULT false,
	PRIMARY KEY (sender, key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);

-- Push targets, unique per (owner, platform, token).
CREATE TABLE targets (
	seq      bigserial PRIMARY KEY,
	owner    text NOT NULL,
	platform text NOT NULL,
	token    text NOT NULL,
	p256dh   text NOT NULL DEFAULT '',
	auth     text NOT NULL DEFAULT '',
	UNIQUE (owner, platform, token)
);
