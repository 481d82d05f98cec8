-- The number of pending envelopes of each recipient, kept by triggers in
-- the transaction that stores or deletes them (puts, acks, retention), so
-- that the per-recipient quota costs one primary-key read per send instead
-- of a COUNT(*). A recipient's row is deleted when its count reaches zero:
-- the table names only recipients with something pending.
CREATE TABLE pending_counts (
	recipient TEXT    PRIMARY KEY,
	pending   INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO pending_counts (recipient, pending)
	SELECT recipient, COUNT(*) FROM messages GROUP BY recipient;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
BEGIN
	INSERT INTO pending_counts (recipient, pending) VALUES (NEW.recipient, 1)
		ON CONFLICT (recipient) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
BEGIN
	UPDATE pending_counts SET pending = pending - 1 WHERE recipient = OLD.recipient;
	DELETE FROM pending_counts WHERE recipient = OLD.recipient AND pending <= 0;
END;
