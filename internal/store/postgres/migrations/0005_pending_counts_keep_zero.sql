-- A recipient's count row now stays when its count reaches zero. Deleting
-- it at each last ack and inserting it again at the next send cost every
-- message an index insert, a dead index entry and one more statement, with
-- its row locks, in each ack. The store's sweep deletes the rows at zero
-- (DeleteTombstonesBefore).
CREATE OR REPLACE FUNCTION pending_counts_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	PERFORM 1 FROM pending_counts
		WHERE recipient IN (SELECT recipient FROM old_messages)
		ORDER BY recipient FOR UPDATE;
	UPDATE pending_counts AS c SET pending = c.pending - d.n
		FROM (SELECT recipient, count(*) AS n FROM old_messages GROUP BY recipient) AS d
		WHERE c.recipient = d.recipient;
	RETURN NULL;
END
$$;
