-- Discovered agents as tyrd reports them, and the operators' overrides.
--
-- tyrd's discovered_agent_id is a UUIDv5 of (agent type, executable
-- identity) under the host's id, where the identity of an interpreted agent
-- includes its script: two agents can run the same interpreter binary, so
-- (daemon, type, sha256) does not identify one and the id alone does.
ALTER TABLE discovered_agents DROP CONSTRAINT discovered_agents_identity;

-- The executable is hashed off tyrd's hot path: the first report of an
-- agent may come before its hash (NULL until then).
ALTER TABLE discovered_agents ALTER COLUMN exe_sha256 DROP NOT NULL;

ALTER TABLE discovered_agents
    -- Sum of the classification's signal weights (tyrd caps it at 100;
    -- confident from 60). `evidence` holds the signals as a JSON array of
    -- {"signal", "detail", "weight"} objects.
    ADD COLUMN confidence INTEGER NOT NULL DEFAULT 0 CHECK (confidence BETWEEN 0 AND 1000),
    ADD CONSTRAINT discovered_agents_evidence_is_array CHECK (jsonb_typeof(evidence) = 'array'),
    ADD CONSTRAINT discovered_agents_exe_path_length CHECK (length(exe_path) <= 4096),
    -- An operator's name for the agent: printable, 1 to 128 characters.
    ADD CONSTRAINT discovered_agents_display_name_format
        CHECK (display_name IS NULL OR (length(display_name) BETWEEN 1 AND 128 AND display_name !~ '[[:cntrl:]]'));
-- Merges keep no chains: what was merged into an agent moves with it when
-- that agent is merged in turn, so merged_into always names a survivor on
-- the same daemon (the merge function locks the rows it changes).

-- Lists are per daemon, by state, in id order (the cursor).
CREATE INDEX discovered_agents_daemon_idx ON discovered_agents (daemon_id, id);
-- The merged agents of a survivor (merged_ids, effective types).
CREATE INDEX discovered_agents_merged_into_idx ON discovered_agents (merged_into) WHERE merged_into IS NOT NULL;
-- Active agents (neither merged nor archived), the default view.
CREATE INDEX discovered_agents_active_idx ON discovered_agents (id) WHERE merged_into IS NULL AND archived_at IS NULL;
-- Overrides of one daemon, as sent to it.
CREATE INDEX discovered_agents_overridden_idx ON discovered_agents (daemon_id)
    WHERE reclassified_as IS NOT NULL OR merged_into IS NOT NULL;
