CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    tool             TEXT NOT NULL,
    tool_version     INTEGER NOT NULL,
    state            TEXT NOT NULL,
    params           TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    expires_at       INTEGER,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_until      INTEGER,
    run_after        INTEGER NOT NULL,
    progress         TEXT,
    error            TEXT,
    outputs          TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    request_hash     TEXT,
    purged_at        INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (run_after, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_history ON jobs (owner, id);
CREATE INDEX IF NOT EXISTS jobs_runs ON jobs (tool, tool_version, finished_at) WHERE state = 'succeeded';
