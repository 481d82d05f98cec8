-- Storage parameters of the tables that every message writes. They turn
-- over their rows many times a second while staying small: at the
-- server's defaults (a table vacuumed once 20% of its rows are dead, at
-- most once a minute, throttled), they collect tens of thousands of dead
-- rows between passes and every statement that walks them slows down.
--
-- messages: vacuumed, and its statistics renewed, after a fixed number of
-- dead or inserted rows however large the table, without the cost delay.
-- A row is inserted once, marked routed at most once and deleted once.
ALTER TABLE messages SET (
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 5000,
	autovacuum_vacuum_insert_scale_factor = 0,
	autovacuum_vacuum_insert_threshold = 5000,
	autovacuum_analyze_scale_factor = 0,
	autovacuum_analyze_threshold = 5000,
	autovacuum_vacuum_cost_delay = 0
);
-- The count rows are updated in place by every commit that stores or
-- deletes messages of their recipient or sender: half of each page is kept
-- free so that the new version lands on the same page (a HOT update, no
-- index entry) and the page prunes its dead versions by itself.
ALTER TABLE pending_counts SET (
	fillfactor = 50,
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 2000,
	autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE sender_counts SET (
	fillfactor = 50,
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 2000,
	autovacuum_vacuum_cost_delay = 0
);
-- Idempotency records are inserted, marked published in place (an
-- unindexed column: HOT with room on the page) and deleted by the sweep.
ALTER TABLE idempotency SET (
	fillfactor = 80,
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 5000,
	autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE tombstones SET (
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 5000,
	autovacuum_vacuum_cost_delay = 0
);
