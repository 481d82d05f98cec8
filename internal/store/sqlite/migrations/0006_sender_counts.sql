-- What each sender has pending: the number of its stored envelopes and the
-- sum of their payload lengths, kept by triggers in the transaction that
-- stores or deletes them (puts, acks, retention), like pending_counts, so
-- that the per-sender quota costs one primary-key read instead of a
-- COUNT(*). A sender's row stays at zero after its last envelope is gone;
-- the store's sweep deletes the rows at zero (DeleteTombstonesBefore).
CREATE TABLE sender_counts (
	sender  TEXT    PRIMARY KEY,
	pending INTEGER NOT NULL,
	bytes   INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO sender_counts (sender, pending, bytes)
	SELECT sender, COUNT(*), SUM(length(payload)) FROM messages GROUP BY sender;

CREATE TRIGGER messages_sender_count_insert AFTER INSERT ON messages
BEGIN
	INSERT INTO sender_counts (sender, pending, bytes) VALUES (NEW.sender, 1, length(NEW.payload))
		ON CONFLICT (sender) DO UPDATE SET pending = pending + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER messages_sender_count_delete AFTER DELETE ON messages
BEGIN
	UPDATE sender_counts SET pending = pending - 1, bytes = bytes - length(OLD.payload)
		WHERE sender = OLD.sender;
END;
