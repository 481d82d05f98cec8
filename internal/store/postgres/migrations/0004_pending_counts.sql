-- The number of pending envelopes of each recipient, kept by statement
-- triggers (one per INSERT or DELETE statement, over its transition table)
-- in the transaction that stores or deletes them (puts, acks, retention),
-- so that the per-recipient quota costs one primary-key read per send
-- instead of a COUNT(*). Rows are locked in recipient order. A
-- recipient's row is deleted when its count reaches zero: the table names
-- only recipients with something pending.
CREATE TABLE pending_counts (
	recipient text   PRIMARY KEY,
	pending   bigint NOT NULL
);

INSERT INTO pending_counts (recipient, pending)
	SELECT recipient, count(*) FROM messages GROUP BY recipient;

CREATE FUNCTION pending_counts_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	INSERT INTO pending_counts AS c (recipient, pending)
		SELECT recipient, count(*) FROM new_messages GROUP BY recipient ORDER BY recipient
		ON CONFLICT (recipient) DO UPDATE SET pending = c.pending + EXCLUDED.pending;
	RETURN NULL;
END
$$;

CREATE FUNCTION pending_counts_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	PERFORM 1 FROM pending_counts
		WHERE recipient IN (SELECT recipient FROM old_messages)
		ORDER BY recipient FOR UPDATE;
	UPDATE pending_counts AS c SET pending = c.pending - d.n
		FROM (SELECT recipient, count(*) AS n FROM old_messages GROUP BY recipient) AS d
		WHERE c.recipient = d.recipient;
	DELETE FROM pending_counts AS c
		WHERE c.pending <= 0 AND c.recipient IN (SELECT recipient FROM old_messages);
	RETURN NULL;
END
$$;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
	REFERENCING NEW TABLE AS new_messages
	FOR EACH STATEMENT EXECUTE FUNCTION pending_counts_insert();

CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
	REFERENCING OLD TABLE AS old_messages
	FOR EACH STATEMENT EXECUTE FUNCTION pending_counts_delete();
