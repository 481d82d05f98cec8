-- What each sender has pending: the number of its stored envelopes and the
-- sum of their payload lengths, kept by statement triggers (one per INSERT
-- or DELETE statement, over its transition table) in the transaction that
-- stores or deletes them (puts, acks, retention), like pending_counts, so
-- that the per-sender quota costs one primary-key read instead of a
-- COUNT(*). Rows are locked in sender order. A sender's row stays at zero
-- after its last envelope is gone; the store's sweep deletes the rows at
-- zero (DeleteTombstonesBefore).
--
-- The lock first: no instance running beside this migration stores or
-- deletes an envelope between the initial count and the triggers.
-- octet_length of a stored payload reads its size, not its bytes.
LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE sender_counts (
	sender  text   PRIMARY KEY,
	pending bigint NOT NULL,
	bytes   bigint NOT NULL
);

INSERT INTO sender_counts (sender, pending, bytes)
	SELECT sender, count(*), sum(octet_length(payload)) FROM messages GROUP BY sender;

CREATE FUNCTION sender_counts_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM new_messages) THEN
		RETURN NULL;
	END IF;
	INSERT INTO sender_counts AS c (sender, pending, bytes)
		SELECT sender, count(*), sum(octet_length(payload)) FROM new_messages GROUP BY sender ORDER BY sender
		ON CONFLICT (sender) DO UPDATE SET pending = c.pending + EXCLUDED.pending, bytes = c.bytes + EXCLUDED.bytes;
	RETURN NULL;
END
$$;

CREATE FUNCTION sender_counts_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM old_messages) THEN
		RETURN NULL;
	END IF;
	PERFORM 1 FROM sender_counts
		WHERE sender IN (SELECT sender FROM old_messages)
		ORDER BY sender FOR UPDATE;
	UPDATE sender_counts AS c SET pending = c.pending - d.n, bytes = c.bytes - d.b
		FROM (SELECT sender, count(*) AS n, sum(octet_length(payload)) AS b FROM old_messages GROUP BY sender) AS d
		WHERE c.sender = d.sender;
	RETURN NULL;
END
$$;

CREATE TRIGGER messages_sender_count_insert AFTER INSERT ON messages
	REFERENCING NEW TABLE AS new_messages
	FOR EACH STATEMENT EXECUTE FUNCTION sender_counts_insert();

CREATE TRIGGER messages_sender_count_delete AFTER DELETE ON messages
	REFERENCING OLD TABLE AS old_messages
	FOR EACH STATEMENT EXECUTE FUNCTION sender_counts_delete();
