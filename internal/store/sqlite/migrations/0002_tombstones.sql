-- Tombstones: the ids of envelopes their recipients acknowledged. Ack adds
-- one in the transaction that deletes the envelope; PutMessages never
-- stores an id that has one, so that a copy arriving again (a retried send,
-- a redelivery by the bus) does not come back as pending. The sweep deletes
-- them once the idempotency window after the ack has passed.
CREATE TABLE tombstones (
	id        TEXT    NOT NULL PRIMARY KEY,
	recipient TEXT    NOT NULL,
	acked_at  INTEGER NOT NULL -- Unix milliseconds, UTC
) WITHOUT ROWID;
CREATE INDEX tombstones_acked_at ON tombstones (acked_at);
