-- The data manager's workflow through the drop: districts added before their first roster,
-- rosters loaded from the drop (recorded as runs of kind 'roster'), and the guard on rosters.

-- An operator adds a district (code, name, first data manager) before any roster exists; the
-- district org's sourcedId is learned from its first roster, and checked on every later one.
ALTER TABLE core.districts ALTER COLUMN sourced_id DROP NOT NULL;

-- The share of a district's active students one roster may deactivate before it is held for
-- a data manager (Clever holds a sync at 10 %). A roster that would leave a school with no
-- active student is held whatever this says.
ALTER TABLE core.district_settings ADD COLUMN IF NOT EXISTS roster_limit numeric(5, 4)
    NOT NULL DEFAULT 0.10 CHECK (roster_limit >= 0 AND roster_limit <= 1);

-- A data manager named when the district was added, before a roster has them as staff: the
-- emails go to them until then, and the first roster that lists an active staff member with
-- this email grants them (an access act) and clears the row.
CREATE TABLE IF NOT EXISTS core.pending_managers (
    district_id bigint NOT NULL REFERENCES core.districts ON DELETE CASCADE,
    email       text NOT NULL,
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (district_id, email)
);

-- A roster taken from the drop is a run like a file's: held, approved, discarded and listed
-- the same way. Its file_sha256 is the SHA-256 of its set of files (see tasks/roster/drop.py).
-- A preview asked for through the drop's preview/ folder is recorded too (kind 'preview',
-- status 'succeeded': it ran; its counts say what a sync would do), and nothing else.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'sync_runs_kind_check'
          AND pg_get_constraintdef(oid) LIKE '%preview%'
    ) THEN
        ALTER TABLE core.sync_runs DROP CONSTRAINT IF EXISTS sync_runs_kind_check;
        ALTER TABLE core.sync_runs ADD CONSTRAINT sync_runs_kind_check
            CHECK (kind IN ('sync', 'undo', 'roster', 'preview'));
    END IF;
END $$;
