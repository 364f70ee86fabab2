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

-- Tables created by the earlier sidecar lack the columns this product adds; bring them up to date.
-- (No-ops on tables created above.)
ALTER TABLE "USER" ADD COLUMN IF NOT EXISTS username VARCHAR;
ALTER TABLE "USER" ADD COLUMN IF NOT EXISTS created_dts TIMESTAMP_NTZ;
ALTER TABLE "USER" ADD COLUMN IF NOT EXISTS updated_dts TIMESTAMP_NTZ;
ALTER TABLE "USER" ADD COLUMN IF NOT EXISTS last_entry_id VARCHAR(41);
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS username VARCHAR;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS page_name VARCHAR;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS query_row_count NUMBER(38,0);
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS track_title VARCHAR;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS track_type VARCHAR;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS track_url VARCHAR;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS visited_count NUMBER(38,0) DEFAULT 0;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS visited_dts TIMESTAMP_NTZ;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS saved NUMBER(1,0) DEFAULT 0;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS saved_dts TIMESTAMP_NTZ;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS deleted_dts TIMESTAMP_NTZ;
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS last_entry_id VARCHAR(64);
ALTER TABLE TRACKED ADD COLUMN IF NOT EXISTS updated_dts TIMESTAMP_NTZ;
