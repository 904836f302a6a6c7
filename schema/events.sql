-- Tyr's audit trail: one row per event tyrd reported, as the server stored it.
--
-- {retention_days} is replaced by the configured retention (a whole number of
-- days) when `tyr-server schema` applies this file.
--
-- ReplacingMergeTree with event_id in the sorting key: an event replayed after
-- a disconnect collapses into one row at merge time (query with FINAL for an
-- exact view before merges). The sorting key serves per-daemon and per-kind
-- time-range queries. Partitions are days of insertion, not of the event's
-- own time: one insert then writes one part, so it commits or fails whole
-- (the server's per-host seq deduplication relies on that), and a host
-- with a wrong clock cannot spread one insert over many partitions. The
-- TTL still follows the event's time and drops a part once all of it
-- expired.
CREATE TABLE IF NOT EXISTS events
(
    event_id            UUID,
    agent_id            UUID,
    discovered_agent_id UUID,
    agent_type          LowCardinality(String),
    kind                Enum8('EVENT_KIND_UNSPECIFIED' = 0, 'FILE_READ' = 1, 'FILE_WRITE' = 2, 'EXEC' = 3, 'NET_CONNECT' = 4, 'TLS' = 5, 'EXIT' = 6, 'FORK' = 7),
    resource            String,
    verdict             Enum8('VERDICT_UNSPECIFIED' = 0, 'ALLOW' = 1, 'DENY' = 2, 'ALERT' = 3),
    server_verdict      Enum8('VERDICT_UNSPECIFIED' = 0, 'ALLOW' = 1, 'DENY' = 2, 'ALERT' = 3),
    drift_detected      Bool,
    severity            Enum8('SEVERITY_UNSPECIFIED' = 0, 'INFO' = 1, 'LOW' = 2, 'MEDIUM' = 3,
                              'HIGH' = 4, 'CRITICAL' = 5),
    pid                 Int64,
    ppid                Int64,
    process_exe         LowCardinality(String),
    cmdline             String,
    timestamp           DateTime64(9, 'UTC'),
    timestamp_ns        Int64 ALIAS toUnixTimestamp64Nano(timestamp),
    seq                 UInt64,
    policy_version      Int64,
    metadata            Map(LowCardinality(String), String),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX resource_tokens resource TYPE tokenbf_v1(8192, 3, 0) GRANULARITY 4,
    INDEX drift drift_detected TYPE set(2) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(inserted_at)
ORDER BY (agent_id, kind, timestamp, event_id)
TTL toDateTime(timestamp) + toIntervalDay({retention_days})
SETTINGS ttl_only_drop_parts = 1
