ALTER TABLE jobs ADD COLUMN tier TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN retention_ms INTEGER NOT NULL DEFAULT 604800000;
ALTER TABLE jobs ADD COLUMN cleaned_at INTEGER;
DROP INDEX jobs_queue;
CREATE INDEX jobs_queue ON jobs (priority DESC, run_after, id) WHERE state = 'queued';
CREATE INDEX jobs_owner_created ON jobs (owner, created_at);
CREATE INDEX jobs_active ON jobs (owner) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE purged_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX jobs_unclean ON jobs (purged_at) WHERE purged_at IS NOT NULL AND cleaned_at IS NULL;
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    admin       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE request_counts (
    subject      TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (subject, window_start)
) WITHOUT ROWID;
CREATE TABLE signing_secrets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE attempts (
    job_id        TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    owner         TEXT NOT NULL,
    tier          TEXT NOT NULL,
    tool          TEXT NOT NULL,
    tool_version  INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    wall_ms       INTEGER NOT NULL,
    cpu_ms        INTEGER,
    max_rss_bytes INTEGER,
    bytes_in      INTEGER NOT NULL,
    bytes_out     INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX attempts_owner ON attempts (owner, finished_at);
CREATE INDEX attempts_finished ON attempts (finished_at);
