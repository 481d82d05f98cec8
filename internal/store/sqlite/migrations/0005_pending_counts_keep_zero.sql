-- A recipient's count row now stays when its count reaches zero, so that a
-- message does not cost a row delete at its ack and a row insert at the
-- next send. The store's sweep deletes the rows at zero
-- (DeleteTombstonesBefore).
DROP TRIGGER messages_count_delete;

CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
BEGIN
	UPDATE pending_counts SET pending = pending - 1 WHERE recipient = OLD.recipient;
END;
