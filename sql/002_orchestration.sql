-- What the orchestration adds to a run: the results email and the source file's fate.
-- A send failure is recorded here and never undoes the sync; `file_deleted_at` says the
-- source file left the drop after the outcome was committed.
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS email_status text;
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS email_detail text;  -- never message contents
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS emailed_at timestamptz;
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS file_deleted_at timestamptz;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'sync_runs_email_status_check') THEN
        ALTER TABLE core.sync_runs ADD CONSTRAINT sync_runs_email_status_check
            CHECK (email_status IN ('sent', 'written', 'failed', 'skipped'));
    END IF;
END
$$;

-- Held runs waiting for a decision are looked up by district and file on every nightly run.
CREATE INDEX IF NOT EXISTS sync_runs_waiting
    ON core.sync_runs (district_id, file_name) WHERE status = 'held' AND resolution IS NULL;
