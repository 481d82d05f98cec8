-- Tombstones: the ids of envelopes their recipients acknowledged. Ack adds
-- one in the statement that deletes the envelope; PutMessages never
-- stores an id that has one, so that a copy arriving again (a retried send,
-- a redelivery by the bus) does not come back as pending. The sweep deletes
-- them once the idempotency window after the ack has passed.
CREATE TABLE tombstones (
	id        text        PRIMARY KEY,
	recipient text        NOT NULL,
	acked_at  timestamptz NOT NULL -- whole milliseconds
);
CREATE INDEX tombstones_acked_at ON tombstones (acked_at);
