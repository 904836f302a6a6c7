-- The fleet link: what the server learns from each daemon's stream, the
-- effective policy versions it pushed, and delivery bookkeeping.

-- Live state reported by the daemon (heartbeats) and kept by ingest.
ALTER TABLE daemons
    -- Last heartbeat's drop counters, as JSON (DropCounters).
    ADD COLUMN drops             JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Events waiting in the daemon's disk spool at its last heartbeat.
    ADD COLUMN spooled_events    BIGINT NOT NULL DEFAULT 0 CHECK (spooled_events >= 0),
    -- Highest per-host sequence number stored in ClickHouse.
    ADD COLUMN stored_seq        BIGINT NOT NULL DEFAULT 0 CHECK (stored_seq >= 0),
    -- Sequence numbers the server never received (evicted or lost on the host).
    ADD COLUMN seq_gap_events    BIGINT NOT NULL DEFAULT 0 CHECK (seq_gap_events >= 0);

-- Every effective policy the server computed for a daemon, by version. A
-- version is drawn from policy_version_seq only when the inputs (policy
-- sources, assignments, unregistered-agents mode) change, so versions are
-- monotonic per daemon and stable across server restarts. Drift evaluation
-- treats a version not listed here for the daemon as not sent.
CREATE TABLE effective_policies (
    daemon_id    UUID NOT NULL REFERENCES daemons (id) ON DELETE CASCADE,
    version      BIGINT NOT NULL CHECK (version > 0),
    -- SHA-256 (hex) of the inputs the version was computed from.
    inputs_hash  TEXT NOT NULL CHECK (inputs_hash ~ '^[0-9a-f]{64}$'),
    -- The effective document (YAML) and its Cedar text, as pushed.
    policy_yaml  TEXT NOT NULL,
    cedar_text   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (daemon_id, version)
);
-- Daemons whose effective policies have the same inputs share a version.
CREATE INDEX effective_policies_inputs_idx ON effective_policies (inputs_hash, version);
