-- The operators' audit log: every mutating call through REST or the
-- tyr-server admin subcommands, written in the same transaction as the
-- change it records, so a change without its audit entry cannot commit.
CREATE TABLE audit_log (
    id          UUID PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- Who: the operator's user id (NULL for the local admin subcommands,
    -- which run with the server's own database credentials) and name as
    -- it was at the time of the call.
    actor_id    UUID REFERENCES users (id) ON DELETE SET NULL,
    actor_name  TEXT NOT NULL CHECK (length(actor_name) BETWEEN 1 AND 128),
    -- Where the call came from: the client's address for REST, NULL locally.
    source      INET,
    -- What: a dotted verb such as 'policy.apply' or 'daemon.delete'.
    action      TEXT NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)+$'),
    -- On what: the target's kind and id or name ('policy:base').
    target      TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 512),
    -- Summaries of the target before and after the change (NULL when it
    -- did not exist before / does not exist after).
    before      JSONB,
    after       JSONB
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_name, at DESC);
CREATE INDEX audit_log_target_idx ON audit_log (target, at DESC);

-- Every version of every policy as an operator wrote it, and who wrote it:
-- `tyr policy history`. The current version is also in policies.
CREATE TABLE policy_versions (
    policy_id     UUID NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    version       BIGINT NOT NULL CHECK (version > 0),
    source_yaml   TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    changed_by_id UUID REFERENCES users (id) ON DELETE SET NULL,
    changed_by    TEXT NOT NULL,
    changed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, version)
);

-- When the daemon reported its current applied_policy_version for the first
-- time: how long a push took to apply, as operators see it.
ALTER TABLE daemons ADD COLUMN policy_applied_at TIMESTAMPTZ;
