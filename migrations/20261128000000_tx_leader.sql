-- Transaction mode: which instance commits (docs/TRANSACTIONS.md, "One committer").
-- A lease, renewed every second by the committer on a session of its own: another
-- instance takes it over when it ran out (the committer is paused or cut off) or when
-- the committer's session is gone (its process died). Commits stay fenced by
-- redsink.tx_progress.seq whoever believes it leads.
CREATE TABLE IF NOT EXISTS redsink.tx_leader (
    consumer_group text        NOT NULL,
    stream         text        NOT NULL,
    holder         text        NOT NULL,
    consumer       text        NOT NULL,
    pid            integer     NOT NULL,
    lease_until    timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, stream)
);
