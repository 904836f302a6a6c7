-- Tyr control data: operators, enrollment, daemons, policies and where they
-- apply, and the AI agents tyrd discovers. Events are not here: they live in
-- ClickHouse (see schema/).

-- Operators of the REST API.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL,
    -- argon2id PHC string (m=19456, t=2, p=1); never the password itself.
    password_hash TEXT NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    role          TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'viewer')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at   TIMESTAMPTZ,
    CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$')
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- One-time (or N-time) secrets that let a fresh tyrd register. The token a
-- user holds names its row by id; only an argon2id hash of its secret part
-- is stored.
CREATE TABLE enrollment_tokens (
    id          UUID PRIMARY KEY,
    secret_hash TEXT NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
    description TEXT NOT NULL DEFAULT '',
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    max_uses    INTEGER NOT NULL CHECK (max_uses > 0),
    uses        INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT enrollment_tokens_uses_bounded CHECK (uses >= 0 AND uses <= max_uses),
    CONSTRAINT enrollment_tokens_expiry_after_creation CHECK (expires_at > created_at)
);

-- Enrolled hosts running tyrd. Deleting a row revokes the daemon: its
-- certificate no longer maps to a daemon and its next stream is refused.
CREATE TABLE daemons (
    id                     UUID PRIMARY KEY,
    name                   TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    kernel_version         TEXT NOT NULL,
    arch                   TEXT NOT NULL CHECK (arch IN ('x86_64', 'aarch64')),
    -- Serial of the client certificate the server CA issued (hex).
    cert_serial            TEXT NOT NULL UNIQUE CHECK (cert_serial ~ '^[0-9a-f]{2,64}$'),
    cert_not_after         TIMESTAMPTZ NOT NULL,
    enrolled_with          UUID REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    enrolled_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at           TIMESTAMPTZ,
    -- Last CapabilityReport, as JSON.
    capabilities           JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Policy version the daemon reported as installed in its kernel maps.
    applied_policy_version BIGINT NOT NULL DEFAULT 0 CHECK (applied_policy_version >= 0),
    unregistered_agents    TEXT NOT NULL DEFAULT 'audit'
        CHECK (unregistered_agents IN ('audit', 'quarantine', 'deny'))
);
CREATE INDEX daemons_name_idx ON daemons (name);

-- Every policy change draws a new version from this sequence, so versions
-- are monotonic across the whole fleet and across server replicas.
CREATE SEQUENCE policy_version_seq START WITH 1;

-- Policies as operators wrote them (YAML), with the version of their last change.
CREATE TABLE policies (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    description TEXT NOT NULL DEFAULT '',
    source_yaml TEXT NOT NULL,
    version     BIGINT NOT NULL DEFAULT nextval('policy_version_seq') CHECK (version > 0),
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where a policy applies: as the base policy or as an overlay for one agent
-- type, either fleet-wide (daemon_id NULL) or on one daemon.
CREATE TABLE policy_assignments (
    id         UUID PRIMARY KEY,
    policy_id  UUID NOT NULL REFERENCES policies (id) ON DELETE RESTRICT,
    daemon_id  UUID REFERENCES daemons (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL CHECK (scope IN ('base', 'overlay')),
    agent_type TEXT CHECK (agent_type ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT policy_assignments_overlay_names_type
        CHECK ((scope = 'overlay') = (agent_type IS NOT NULL))
);
-- At most one base policy per target, and one overlay per agent type.
CREATE UNIQUE INDEX policy_assignments_one_base
    ON policy_assignments (COALESCE(daemon_id, '00000000-0000-0000-0000-000000000000'::uuid))
    WHERE scope = 'base';
CREATE UNIQUE INDEX policy_assignments_one_overlay_per_type
    ON policy_assignments (COALESCE(daemon_id, '00000000-0000-0000-0000-000000000000'::uuid), agent_type)
    WHERE scope = 'overlay';
CREATE INDEX policy_assignments_policy_idx ON policy_assignments (policy_id);

-- AI agents tyrd recognised on a host. The id is tyrd's discovered_agent_id,
-- stable per (host, agent type, executable identity).
CREATE TABLE discovered_agents (
    id            UUID PRIMARY KEY,
    daemon_id     UUID NOT NULL REFERENCES daemons (id) ON DELETE CASCADE,
    agent_type    TEXT NOT NULL CHECK (agent_type ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    exe_path      TEXT NOT NULL,
    exe_sha256    TEXT NOT NULL CHECK (exe_sha256 ~ '^[0-9a-f]{64}$'),
    -- The evidence and confidence of the classification, as JSON.
    evidence      JSONB NOT NULL DEFAULT '[]'::jsonb,
    -- Admin overrides.
    display_name  TEXT,
    reclassified_as TEXT CHECK (reclassified_as ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    merged_into   UUID REFERENCES discovered_agents (id) ON DELETE SET NULL,
    archived_at   TIMESTAMPTZ,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT discovered_agents_identity UNIQUE (daemon_id, agent_type, exe_sha256),
    CONSTRAINT discovered_agents_not_merged_into_self CHECK (merged_into IS DISTINCT FROM id),
    CONSTRAINT discovered_agents_seen_order CHECK (last_seen_at >= first_seen_at)
);
CREATE INDEX discovered_agents_type_idx ON discovered_agents (agent_type);
