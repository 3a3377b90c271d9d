CREATE TABLE job_events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    at               INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    progress         TEXT,
    error            TEXT,
    cancel_requested INTEGER NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
INSERT INTO job_events (job_id, kind, at, state, attempt, progress, error, cancel_requested)
    SELECT id, 'state', COALESCE(finished_at, started_at, created_at), state, attempt,
           progress, error, cancel_requested
    FROM jobs WHERE purged_at IS NULL ORDER BY created_at, id;
CREATE TRIGGER job_events_created AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_events (job_id, kind, at, state, attempt, progress, error, cancel_requested)
    VALUES (NEW.id, 'state', NEW.created_at, NEW.state, NEW.attempt, NEW.progress, NEW.error,
            NEW.cancel_requested);
END;
CREATE TRIGGER job_events_changed AFTER UPDATE OF state, attempt, progress, cancel_requested ON jobs
WHEN NEW.state IS NOT OLD.state OR NEW.attempt IS NOT OLD.attempt
  OR NEW.progress IS NOT OLD.progress OR NEW.cancel_requested IS NOT OLD.cancel_requested
BEGIN
    INSERT INTO job_events (job_id, kind, at, state, attempt, progress, error, cancel_requested)
    VALUES (NEW.id,
            CASE WHEN NEW.state IS NOT OLD.state OR NEW.attempt IS NOT OLD.attempt THEN 'state'
                 WHEN NEW.cancel_requested IS NOT OLD.cancel_requested THEN 'cancel-requested'
                 ELSE 'progress' END,
            CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER),
            NEW.state, NEW.attempt, NEW.progress, NEW.error, NEW.cancel_requested);
END;
CREATE TRIGGER job_events_purged AFTER UPDATE OF purged_at ON jobs
WHEN OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL
BEGIN
    DELETE FROM job_events WHERE job_id = NEW.id;
END;
