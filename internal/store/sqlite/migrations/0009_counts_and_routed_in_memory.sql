-- The pending counts and the routed marks move into the store's memory.
-- An SQLite file is served by one process only (Open locks it), whose
-- single writer makes every write: it knows from each commit what it
-- stored and deleted, so it keeps the counts per recipient and per sender
-- and the set of messages not routed yet itself, exactly, instead of
-- writing them per message (count triggers on two tables spread by
-- recipient and sender, a routed mark per message and the partial index
-- that the mark maintains). At Open the counts are rebuilt with one
-- GROUP BY over messages.
--
-- What stays on disk of the routed marks is a watermark: routed_watermark
-- holds seq such that every message stored with a seq at or below it was
-- routed (or is gone). The store writes it in the transaction of its
-- writes when it moves. At Open, the messages above it that a program
-- before this migration did not mark routed (routed = 1: marked, or
-- stored before 0003) are the unrouted ones; the store stores every
-- message with routed = 0, so all of those it stored above the watermark
-- count. A crash leaves at most what was stored after the watermark it
-- last wrote to the sweep, which routes it again (delivery is at least
-- once; ids let clients deduplicate).
--
-- The watermark starts below the oldest unrouted message (the partial
-- index finds it), or at the newest message when every one is routed.
--
-- A program before this migration refuses to open the database (its
-- schema version is newer than the program's): no older program runs
-- beside this one on the file, so dropping what it wrote is safe.
CREATE TABLE routed_watermark (
	id  INTEGER PRIMARY KEY CHECK (id = 1),
	seq INTEGER NOT NULL
);

INSERT INTO routed_watermark (id, seq) VALUES (1, COALESCE(
	(SELECT MIN(seq) FROM messages INDEXED BY messages_unrouted WHERE routed = 0) - 1,
	(SELECT MAX(seq) FROM messages),
	0));

DROP INDEX messages_unrouted;

DROP TRIGGER messages_count_insert;
DROP TRIGGER messages_count_delete;
DROP TRIGGER messages_sender_count_insert;
DROP TRIGGER messages_sender_count_delete;
DROP TABLE pending_counts;
DROP TABLE sender_counts;
