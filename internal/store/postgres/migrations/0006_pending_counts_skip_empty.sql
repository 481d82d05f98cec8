-- The count triggers return at once when their statement changed no row.
-- Statement-level triggers run for every statement, and every put's
-- tombstone check is a DELETE that almost always deletes nothing: its
-- trigger took a row lock query and an UPDATE for nothing, on every commit.
CREATE OR REPLACE FUNCTION pending_counts_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM old_messages) THEN
		RETURN NULL;
	END IF;
	PERFORM 1 FROM pending_counts
		WHERE recipient IN (SELECT recipient FROM old_messages)
		ORDER BY recipient FOR UPDATE;
	UPDATE pending_counts AS c SET pending = c.pending - d.n
		FROM (SELECT recipient, count(*) AS n FROM old_messages GROUP BY recipient) AS d
		WHERE c.recipient = d.recipient;
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pending_counts_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM new_messages) THEN
		RETURN NULL;
	END IF;
	INSERT INTO pending_counts AS c (recipient, pending)
		SELECT recipient, count(*) FROM new_messages GROUP BY recipient ORDER BY recipient
		ON CONFLICT (recipient) DO UPDATE SET pending = c.pending + EXCLUDED.pending;
	RETURN NULL;
END
$$;
