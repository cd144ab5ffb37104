-- Transaction mode ([transactions], docs/TRANSACTIONS.md).

-- Events of source transactions, staged by the instance that read them (and acked after
-- that commit) until the committer applies their whole transaction. `fields` holds the
-- entry's fields (length-prefixed name/value pairs); NULL marks an event that was
-- dead-lettered when staged: it counts towards its transaction's completeness.
CREATE TABLE IF NOT EXISTS redsink.tx_events (
    consumer_group text        NOT NULL,
    stream         text        NOT NULL,
    entry_id       text        NOT NULL,
    tx_id          text        NOT NULL,
    total_order    bigint      NOT NULL,
    fields         bytea,
    staged_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, stream, entry_id)
);
CREATE INDEX IF NOT EXISTS tx_events_by_tx ON redsink.tx_events (consumer_group, tx_id);

-- The committer's place in the transaction stream: the END last applied, and, while a
-- transaction larger than max_events is applied in pieces, that transaction and how many
-- of its events are applied. `seq` grows with every commit: a committer's commit
-- succeeds only if no other committer's came between (redsink.tx_fence).
CREATE TABLE IF NOT EXISTS redsink.tx_progress (
    consumer_group text        NOT NULL,
    stream         text        NOT NULL,
    end_id         text        NOT NULL,
    seq            bigint      NOT NULL DEFAULT 0,
    piece_tx       text,
    piece_done     bigint      NOT NULL DEFAULT 0,
    applied        bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, stream)
);

-- Transactions applied before all their events arrived (`wait` ran out): events of
-- theirs staged later are applied on their own.
CREATE TABLE IF NOT EXISTS redsink.tx_late (
    consumer_group text        NOT NULL,
    tx_id          text        NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, tx_id)
);

-- Locks the committer's progress row for the rest of the transaction, and fails
-- (SQLSTATE RS409) when another committer has committed since `expected_seq` was read.
CREATE OR REPLACE FUNCTION redsink.tx_fence(g text, s text, expected_seq bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_seq bigint;
BEGIN
    SELECT seq INTO current_seq FROM redsink.tx_progress
        WHERE consumer_group = g AND stream = s FOR UPDATE;
    IF current_seq IS DISTINCT FROM expected_seq THEN
        RAISE EXCEPTION 'transaction stream % of group %: another committer applied transactions meanwhile (commit % expected, % found)',
            s, g, expected_seq, current_seq USING ERRCODE = 'RS409';
    END IF;
END
$$;
