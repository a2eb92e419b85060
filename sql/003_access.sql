-- Who may do what (access-model.md): data managers, the teacher field setting, the SQL logins
-- mapped to roster users, and an append-only record of every access act. No student value is
-- ever stored here; names of fields and roles, emails of staff, who and when.

-- Data managers of a district, granted by the operator. A revoke closes the grant (history is
-- kept); at most one open grant per person and district.
CREATE TABLE IF NOT EXISTS core.data_managers (
    grant_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id bigint NOT NULL REFERENCES core.districts,
    staff_id    bigint NOT NULL REFERENCES core.staff,
    granted_by  text NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text,
    revoked_at  timestamptz,
    CHECK ((revoked_by IS NULL) = (revoked_at IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS data_managers_open
    ON core.data_managers (district_id, staff_id) WHERE revoked_at IS NULL;

-- The demographic fields teachers of a district may see in the reporting view. No row, or an
-- empty array (the default), means none: teachers then see no rows at all.
CREATE TABLE IF NOT EXISTS core.teacher_access (
    district_id bigint PRIMARY KEY REFERENCES core.districts,
    fields      text[] NOT NULL DEFAULT '{}'
                CHECK (fields <@ ARRAY['gender', 'ethnicity', 'race', 'english_learner',
                                       'migrant', 'gifted_learner', 'special_ed', 'sed',
                                       'homeless', 'foster']::text[]),
    changed_by  text NOT NULL,                         -- the data manager's email
    changed_at  timestamptz NOT NULL DEFAULT now()
);

-- A PostgreSQL login role per person who queries SQL, mapped to their roster record. The
-- reporting view knows the caller only through this table, by `current_user`. A revoked login
-- keeps its row (revoked_by/at) and its role is dropped.
CREATE TABLE IF NOT EXISTS core.sql_logins (
    login_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    role_name   text NOT NULL CHECK (role_name ~ '^ds_[a-z0-9_]{1,60}$'),
    district_id bigint NOT NULL REFERENCES core.districts,
    staff_id    bigint NOT NULL REFERENCES core.staff,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_by  text,
    rotated_at  timestamptz,
    revoked_by  text,
    revoked_at  timestamptz,
    CHECK ((revoked_by IS NULL) = (revoked_at IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS sql_logins_open_role
    ON core.sql_logins (role_name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sql_logins_open_staff
    ON core.sql_logins (staff_id) WHERE revoked_at IS NULL;

-- Every access act: who (an operator such as `cli:alice`, or a data manager's email), when,
-- what, about whom. Never a password and never a student value.
CREATE TABLE IF NOT EXISTS core.access_acts (
    act_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    district_id      bigint NOT NULL REFERENCES core.districts,
    act              text NOT NULL CHECK (act IN (
                         'grant_manager', 'revoke_manager', 'teacher_fields',
                         'sql_login_create', 'sql_login_rotate', 'sql_login_revoke',
                         'approve_held_sync', 'discard_held_sync')),
    actor            text NOT NULL,
    actor_staff_id   bigint REFERENCES core.staff,     -- when the actor is a data manager
    subject_staff_id bigint REFERENCES core.staff,     -- the person the act is about
    detail           jsonb NOT NULL DEFAULT '{}'       -- field names, role name, run id
);
CREATE INDEX IF NOT EXISTS access_acts_district ON core.access_acts (district_id, at);

-- Append-only: a row, once written, is never changed or deleted.
CREATE OR REPLACE FUNCTION core.access_acts_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'core.access_acts is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
REVOKE ALL ON FUNCTION core.access_acts_append_only() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'access_acts_append_only'
                   AND tgrelid = 'core.access_acts'::regclass) THEN
        CREATE TRIGGER access_acts_append_only BEFORE UPDATE OR DELETE ON core.access_acts
            FOR EACH ROW EXECUTE FUNCTION core.access_acts_append_only();
    END IF;
END
$$;
