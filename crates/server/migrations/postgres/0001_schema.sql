CREATE TABLE jobs (
    id               UUID PRIMARY KEY,
    owner            TEXT NOT NULL,
    tier             TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    retention_ms     BIGINT NOT NULL,
    tool             TEXT NOT NULL,
    tool_version     BIGINT NOT NULL,
    state            TEXT NOT NULL,
    params           JSONB NOT NULL,
    inputs           JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    expires_at       TIMESTAMPTZ,
    attempt          BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    lease_until      TIMESTAMPTZ,
    run_after        TIMESTAMPTZ NOT NULL,
    progress         JSONB,
    error            JSONB,
    outputs          JSONB NOT NULL DEFAULT '[]',
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key  TEXT,
    request_hash     TEXT,
    purged_at        TIMESTAMPTZ,
    cleaned_at       TIMESTAMPTZ
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs (priority DESC, run_after, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_history ON jobs (owner, id);
CREATE INDEX jobs_runs ON jobs (tool, tool_version, finished_at) WHERE state = 'succeeded';
CREATE INDEX jobs_owner_created ON jobs (owner, created_at);
CREATE INDEX jobs_active ON jobs (owner) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE purged_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX jobs_unclean ON jobs (purged_at) WHERE purged_at IS NOT NULL AND cleaned_at IS NULL;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    admin       BOOLEAN NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE TABLE request_counts (
    subject      TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (subject, window_start)
);
CREATE TABLE signing_secrets (
    id          BIGSERIAL PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE attempts (
    job_id        UUID NOT NULL,
    attempt       BIGINT NOT NULL,
    owner         TEXT NOT NULL,
    tier          TEXT NOT NULL,
    tool          TEXT NOT NULL,
    tool_version  BIGINT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL,
    outcome       TEXT NOT NULL,
    wall_ms       BIGINT NOT NULL,
    cpu_ms        BIGINT,
    max_rss_bytes BIGINT,
    bytes_in      BIGINT NOT NULL,
    bytes_out     BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX attempts_owner ON attempts (owner, finished_at);
CREATE INDEX attempts_finished ON attempts (finished_at);

-- The event log. A job's row lock orders its changes, so its events' `seq` follow commit
-- order (readers resume after the last `seq` they saw, per job).
CREATE TABLE job_events (
    seq              BIGSERIAL PRIMARY KEY,
    job_id           UUID NOT NULL,
    kind             TEXT NOT NULL,
    at               TIMESTAMPTZ NOT NULL,
    state            TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    progress         JSONB,
    error            JSONB,
    cancel_requested BOOLEAN NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

-- Payload: the job id, then `q` when it is (again) claimable.
CREATE FUNCTION batchgate_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_kind TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        event_kind := 'state';
    ELSIF NEW.purged_at IS NOT NULL AND OLD.purged_at IS NULL THEN
        DELETE FROM job_events WHERE job_id = NEW.id;
        PERFORM pg_notify('batchgate_changes', NEW.id::text);
        RETURN NULL;
    ELSIF NEW.state IS DISTINCT FROM OLD.state OR NEW.attempt IS DISTINCT FROM OLD.attempt THEN
        event_kind := 'state';
    ELSIF NEW.cancel_requested IS DISTINCT FROM OLD.cancel_requested THEN
        event_kind := 'cancel-requested';
    ELSIF NEW.progress IS DISTINCT FROM OLD.progress THEN
        event_kind := 'progress';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO job_events (job_id, kind, at, state, attempt, progress, error, cancel_requested)
    VALUES (NEW.id, event_kind,
            CASE WHEN TG_OP = 'INSERT' THEN NEW.created_at ELSE clock_timestamp() END,
            NEW.state, NEW.attempt, NEW.progress, NEW.error, NEW.cancel_requested);
    PERFORM pg_notify('batchgate_changes',
                      NEW.id::text || CASE WHEN NEW.state = 'queued' THEN ' q' ELSE '' END);
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_changed AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION batchgate_job_changed();
