-- Routed marks: PutMessages stores an envelope with routed = false,
-- MarkRouted sets it to true once the envelope was routed (delivered live
-- or pushed), and the sweep routes the envelopes that stay false (their
-- routing event was never published, or was lost). Rows stored before this
-- migration were routed by the pipeline that stored them, and so are rows
-- inserted by a program that predates it: the default is true (a constant
-- default: no table rewrite), and PutMessages sets false explicitly.
ALTER TABLE messages ADD COLUMN routed boolean NOT NULL DEFAULT true;
-- The sweep's index: only unrouted rows, in store order, so that it is
-- empty (and the sweep costs nothing) when every envelope was routed, and a
-- page of the oldest unrouted ones is read in order without a sort however
-- many wait.
CREATE INDEX messages_unrouted ON messages (seq) WHERE NOT routed;
