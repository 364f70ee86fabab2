-- redis-writebehind schema. Idempotent: safe to run on every start and by hand.
--
-- Effectively-once: every row remembers the newest stream entry applied to it (last_entry_id, the
-- entry ID as a fixed-width sortable text "<ms:20 digits>-<seq:20 digits>"). Each batch MERGE only
-- applies events newer than that, in the same atomic statement, so a replayed entry (after a crash,
-- a retry or a failover) never changes a row twice.

CREATE TABLE IF NOT EXISTS "USER" (
    user_email     VARCHAR NOT NULL,
    username       VARCHAR,
    created_dts    TIMESTAMP_NTZ,
    updated_dts    TIMESTAMP_NTZ,
    last_entry_id  VARCHAR(41)
);

CREATE TABLE IF NOT EXISTS TRACKED (
    tracked_id       VARCHAR NOT NULL,
    track_id         VARCHAR NOT NULL,
    username         VARCHAR,
    page_name        VARCHAR,
    query_row_count  NUMBER(38,0),
    track_title      VARCHAR,
    track_type       VARCHAR,
    track_url        VARCHAR,
    visited_count    NUMBER(38,0) DEFAULT 0,
    visited_dts      TIMESTAMP_NTZ,
    saved            NUMBER(1,0) DEFAULT 0,
    saved_dts        TIMESTAMP_NTZ,
    deleted_dts      TIMESTAMP_NTZ,
    last_entry_id    VARCHAR(64),
    updated_dts      TIMESTAMP_NTZ
);
