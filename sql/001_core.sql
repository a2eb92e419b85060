-- The store: the roster, the district settings, the demographic values, runs and history.
-- Student demographic values live in exactly two places: core.student_demographics (the
-- current value) and core.demographic_changes (old and new value per change). Never in files.

CREATE SCHEMA IF NOT EXISTS core;

CREATE TABLE IF NOT EXISTS core.districts (
    district_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    sourced_id       text NOT NULL,
    name             text NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    roster_loaded_at timestamptz
);

-- One row per district, created with the district. Limits are shares of rows / students.
CREATE TABLE IF NOT EXISTS core.district_settings (
    district_id             bigint PRIMARY KEY REFERENCES core.districts ON DELETE CASCADE,
    error_limit             numeric(5, 4) NOT NULL DEFAULT 0.20
                            CHECK (error_limit >= 0 AND error_limit <= 1),
    hold_limit              numeric(5, 4) NOT NULL DEFAULT 0.25
                            CHECK (hold_limit >= 0 AND hold_limit <= 1),
    gender_codes            text[] NOT NULL DEFAULT '{M,F}'
                            CHECK (cardinality(gender_codes) > 0),
    notification_recipients text[] NOT NULL DEFAULT '{}',
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS core.schools (
    school_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id bigint NOT NULL REFERENCES core.districts,
    sourced_id  text NOT NULL,
    name        text NOT NULL,
    identifier  text,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, sourced_id)
);

-- Identity only: the demographic values are in the narrow core.student_demographics, so a
-- sync rewrites small rows (HOT updates) and never touches these indexes.
CREATE TABLE IF NOT EXISTS core.students (
    student_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id bigint NOT NULL REFERENCES core.districts,
    sourced_id  text NOT NULL,
    ssid        text,
    email       text,
    given_name  text,
    family_name text,
    school_id   bigint REFERENCES core.schools,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS core.staff (
    staff_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id   bigint NOT NULL REFERENCES core.districts,
    sourced_id    text NOT NULL,
    role          text NOT NULL,
    email         text,
    given_name    text,
    family_name   text,
    identifier    text,
    district_wide boolean NOT NULL DEFAULT false,  -- the district org is among their orgs
    enabled       boolean NOT NULL DEFAULT true,   -- OneRoster enabledUser
    active        boolean NOT NULL DEFAULT true,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS core.staff_schools (
    staff_id  bigint NOT NULL REFERENCES core.staff ON DELETE CASCADE,
    school_id bigint NOT NULL REFERENCES core.schools ON DELETE CASCADE,
    PRIMARY KEY (staff_id, school_id)
);

CREATE TABLE IF NOT EXISTS core.classes (
    class_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id bigint NOT NULL REFERENCES core.districts,
    sourced_id  text NOT NULL,
    title       text NOT NULL,
    school_id   bigint NOT NULL REFERENCES core.schools,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, sourced_id)
);

-- Only student and teacher enrollments are kept: they decide what a teacher may see.
CREATE TABLE IF NOT EXISTS core.enrollments (
    enrollment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id   bigint NOT NULL REFERENCES core.districts,
    sourced_id    text NOT NULL,
    class_id      bigint NOT NULL REFERENCES core.classes,
    role          text NOT NULL CHECK (role IN ('student', 'teacher')),
    student_id    bigint REFERENCES core.students,
    staff_id      bigint REFERENCES core.staff,
    active        boolean NOT NULL DEFAULT true,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, sourced_id),
    CHECK ((role = 'student') = (student_id IS NOT NULL)),
    CHECK ((role = 'teacher') = (staff_id IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS enrollments_class ON core.enrollments (class_id);
CREATE INDEX IF NOT EXISTS enrollments_staff ON core.enrollments (staff_id)
    WHERE staff_id IS NOT NULL;

-- The current values. Narrow, no index but the key, room on each page for HOT updates.
CREATE TABLE IF NOT EXISTS core.student_demographics (
    student_id      bigint PRIMARY KEY REFERENCES core.students,
    gender          text,
    ethnicity       text,
    race            text,
    english_learner boolean,
    migrant         boolean,
    gifted_learner  boolean,
    special_ed      boolean,
    sed             boolean,
    homeless        boolean,
    foster          boolean,
    updated_at      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);

CREATE TABLE IF NOT EXISTS core.sync_runs (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id     bigint NOT NULL REFERENCES core.districts,
    kind            text NOT NULL CHECK (kind IN ('sync', 'undo')),
    status          text NOT NULL
                    CHECK (status IN ('succeeded', 'rejected', 'held', 'failed')),
    file_name       text,
    file_sha256     text,
    file_bytes      bigint,
    requested_by    text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    rows            integer,
    valid_rows      integer,
    error_rows      integer,
    errors          integer,
    warnings        integer,
    matched         integer,
    updated         integer,
    unchanged       integer,
    unmatched       integer,
    values_changed  integer,
    approves_run_id bigint REFERENCES core.sync_runs,  -- the held run this run applied
    same_as_run_id  bigint REFERENCES core.sync_runs,  -- the same file was applied by that run
    undoes_run_id   bigint REFERENCES core.sync_runs,
    undone_by       bigint REFERENCES core.sync_runs,
    resolution      text CHECK (resolution IN ('approved', 'discarded')),  -- of a held run
    resolved_by     text,
    resolved_at     timestamptz,
    message         text  -- why, in words; never a student value
);
CREATE INDEX IF NOT EXISTS sync_runs_district_file ON core.sync_runs (district_id, file_sha256);

-- One row per changed value. Append-only, and written in bulk (one COPY per sync, hundreds of
-- thousands of rows), so it carries no foreign keys (per-row RI triggers), no primary key and
-- no B-tree: each would cost more than the COPY itself. Rows are written only by the sync and
-- the undo, from students they just matched, in the run's transaction, one per student and
-- field per run. run_id grows with insertion order, so a BRIN index finds a run's rows (and
-- the rows of later runs, for undo) at almost no cost to the writes.
CREATE TABLE IF NOT EXISTS core.demographic_changes (
    run_id     bigint NOT NULL,
    student_id bigint NOT NULL,
    field      text NOT NULL,
    old_value  text,
    new_value  text
);
CREATE INDEX IF NOT EXISTS demographic_changes_run
    ON core.demographic_changes USING brin (run_id);
