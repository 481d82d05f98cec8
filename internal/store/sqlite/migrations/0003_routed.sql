-- Routed marks: PutMessages stores an envelope with routed = 0, MarkRouted
-- sets it to 1 once the envelope was routed (delivered live or pushed), and
-- the sweep routes the envelopes that stay at 0 (their routing event was
-- never published, or was lost). Rows stored before this migration were
-- routed by the pipeline that stored them, and so are rows inserted by a
-- program that predates it: the default is 1, and PutMessages sets 0
-- explicitly.
ALTER TABLE messages ADD COLUMN routed INTEGER NOT NULL DEFAULT 1;
-- The sweep's index: only unrouted rows, in store order, so that it is
-- empty (and the sweep costs nothing) when every envelope was routed, and a
-- page of the oldest unrouted ones is read in order without a sort however
-- many wait.
CREATE INDEX messages_unrouted ON messages (seq) WHERE routed = 0;
