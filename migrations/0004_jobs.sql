-- limner schema v4: durable job records. A job is written on every transition (admitted,
-- started, finished; progress at most a few times a second), so after a crash or kill -9 every
-- job id still answers: finished jobs with their result, unfinished ones as failed "server
-- restarted" (see the README's "Jobs" section). IF NOT EXISTS: an in-memory job store applies
-- this file by itself.
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY NOT NULL,
    owner       TEXT,
    kind        TEXT NOT NULL,
    label       TEXT NOT NULL,
    -- The validated request as JSON (never image bytes).
    request     TEXT NOT NULL DEFAULT 'null',
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    step        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    -- JSON: what the job recorded as its result (a reference such as a portrait id), or its
    -- failure {kind, message, field?}.
    result      TEXT,
    error       TEXT,
    -- Admission order (first come, first served), continued across restarts.
    seq         INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
-- Start-up finds the unfinished jobs, and a node claiming work would take the oldest queued one.
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs(state, seq);
-- Retention deletes by finish time.
CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs(finished_at) WHERE finished_at IS NOT NULL;
