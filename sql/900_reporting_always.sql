-- The reporting view and every grant around it (access-model.md, "The reporting view").
-- Re-applied whenever this text changes (the `_always` suffix), and by `apply_access_views`;
-- every statement is idempotent, and the view is replaced in place (never dropped), so people
-- querying it see the old or the new definition, never an error.
--
-- Requirements on the role that applies this file (the application's database user):
-- * CREATEROLE, to create the NOLOGIN group role below once, and later the login roles of
--   `demographics access sql-login` (PostgreSQL 16+: a CREATEROLE role gets ADMIN OPTION on
--   the roles it creates, which is what granting the group and dropping a login need).
-- * Ownership of the database (or superuser), for the database-wide revokes at the end, and
--   superuser for the large-object revokes. What could not be done here is skipped (a NOTICE
--   only); `apply_access_views` (and so `demographics db upgrade`) then checks the privileges
--   themselves and returns each statement left for the owner or a superuser to run.
--
-- How identity and scope work:
-- * The caller is `current_user`, looked up in core.sql_logins. No GUC, no session variable:
--   `SET app.user = ...` changes nothing. Login roles are members of nothing but the group
--   role, and of that WITH INHERIT TRUE, SET FALSE: they use its privileges directly and
--   cannot `SET ROLE` to it or to anyone else. (Were it possible, the group role maps to no
--   person, so it would see no rows.)
-- * The view runs with its owner's rights (security_invoker = false): callers hold no right
--   on any base table. Row-level security on the base tables would add nothing: the view's
--   owner owns the tables and so bypasses it; the scope is the view's own WHERE.
-- * security_barrier = true: the view's own conditions run before any condition of the
--   caller that is not LEAKPROOF (only a superuser can mark a function LEAKPROOF), so a
--   function of the caller's in WHERE only ever sees rows, and masked values, of their scope.
-- * A LEAKPROOF condition (text and timestamp comparisons are) would still be pushed down to
--   the base tables, below the scope check: EXPLAIN ANALYZE's row counts would then tell
--   whether some student of any district has, say, an SSID >= '5'; and its row estimates,
--   made from the base tables' statistics (histograms of every district's SSIDs, emails,
--   names), would tell as much. So a school admin's and a teacher's scoped, masked rows are a
--   MATERIALIZED CTE (`scoped`): no condition of the caller's is ever pushed into it, and the
--   planner has no column statistics for a CTE's output. Their conditions run on `scoped`.
-- * A district admin's rows are not materialized (that read the whole district for a lookup of
--   one SSID): the view's second part reads them from the base tables, and those of their
--   conditions PostgreSQL deems LEAKPROOF are pushed down there, into the scans and joins of
--   those tables, where they are ordered among the view's own conditions by cost alone. That
--   is no guarantee: an expression with no function call in it (CASE, ARRAY[...], IS NULL,
--   IS TRUE) counts as leakproof, yet `ARRAY[ARRAY[x], ARRAY[x, x]]` raises when evaluated (and
--   a large ARRAY takes time), so `CASE WHEN ssid = '...' THEN <that> IS NULL ELSE false END`
--   raises exactly when it meets a matching row. And whether a caller's condition or the
--   district test runs first on a row is the planner's choice, which moves with settings any
--   login may change (enable_*, cpu_operator_cost, random_page_cost, parallel plans): with the
--   district test generated late, from the equivalence class, a one-operator condition ran
--   first on every district's rows in a seq scan, and told whether any active student of any
--   district had a given SSID (or prefix). So this part never relies on that order:
--   - The scope is one expression of the student's row, `in_scope`: `st.active AND
--     st.district_id = (SELECT district_id FROM their_district)`. The district is a constant
--     before any row is read (an InitPlan over `caller`, run once; NULL for anyone but a
--     district admin, who are also kept out of this part by a one-time filter). It cannot fail
--     and costs one comparison. (PostgreSQL copies the expression, InitPlan included, to each
--     place it is used: the plan shows one InitPlan per use, each run once per query on the
--     one row of `their_district`, all giving the same value.)
--   - Every column of this part is `CASE WHEN st.in_scope THEN <column> END`, never a bare
--     column, those of schools, values and districts too. A caller's condition can only name
--     the view's columns, so wherever and in whatever order the planner evaluates it (in the
--     Filter of core.students before the district test, in a join, in a parallel worker,
--     compiled by JIT), on a row out of scope it sees NULL in every column: it computes the
--     same thing on every such row, whatever the row holds. Planner settings decide where and
--     when an expression is evaluated, never what it evaluates to, so none of them opens this.
--     What the caller can still learn is how many rows out of scope their condition met (by
--     its time, or an error on all-NULL columns), which is the plan's doing and the table's
--     size: the figures below, that a plan shows anyway.
--   - The WHERE is `st.in_scope` itself, a condition on core.students alone, checked in its
--     scan (index condition or Filter). No index has the CASE expressions, so a caller's
--     condition is never an index condition (which would find rows out of scope before the
--     scope check removes them); and there are no statistics on them: the caller's conditions
--     are estimated with the planner's fixed defaults, never with a base table's histogram.
--   - A condition that is not LEAKPROOF (a function of the caller's) stays above the barrier,
--     as for everyone. Hence: never index these expressions or CREATE STATISTICS on them, and
--     keep every column of this part `CASE WHEN st.in_scope THEN ... END` (tests/test_access.py
--     probes every column, as each kind of caller, under settings that reorder conditions).
--   What a district admin's plan still shows of the base tables are figures no condition of
--   theirs moves: table sizes, and the estimated share of one district and of active students
--   (the materialized plan showed those too).
-- * `scoped` is built starting from the caller's scope (the students of the admin's schools;
--   those of the teacher's classes), one branch per scope, so a teacher of 15 students reads
--   15 students, not the district. The conditions that narrow it are the
--   view's own, never the caller's, and they are all inside `scoped`: starting from the scope
--   only applies the scope check earlier, the caller's conditions still run on `scoped` alone,
--   and the argument above holds unchanged. (The caller's row and the fields they see are
--   decided once per query, not per student; indexes: 005_reporting_indexes.sql.)
-- * Scope and masking are read from the roster and core.teacher_access at query time: a roster
--   reload or a teacher-field change applies to the next query, with no re-sync.
-- * Roster rules the scope follows (README, "Access"): an administrator whose orgs include the
--   district org is a district admin (core.staff.district_wide), whatever schools are listed
--   too; any other administrator is a school admin of their listed schools that are active.
--   A student belongs to one school, the first school among their orgs in the roster
--   (core.students.school_id): a school admin sees them only through that school. A teacher
--   sees the students of their active classes at active schools.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demographics_reporting') THEN
        CREATE ROLE demographics_reporting NOLOGIN NOINHERIT;
    ELSIF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demographics_reporting'
                  AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolcreatedb
                       OR rolbypassrls)) THEN
        RAISE EXCEPTION 'the role demographics_reporting exists with more than NOLOGIN';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by another database's upgrade on the same server
END
$$;

CREATE SCHEMA IF NOT EXISTS reporting;

CREATE OR REPLACE VIEW reporting.student_demographics
    WITH (security_barrier = true, security_invoker = false) AS
WITH caller AS MATERIALIZED (  -- one row at most, read once (see `scoped`)
    -- The one person behind current_user, if their login is open and they are active,
    -- enabled staff of an active district; with their scope and the fields they may see.
    SELECT sf.staff_id,
           sf.district_id,
           CASE
               WHEN sf.role = 'administrator' AND sf.district_wide THEN 'district'
               WHEN sf.role = 'administrator' THEN 'school'
               WHEN sf.role = 'teacher' THEN 'teacher'
           END AS scope,
           CASE
               WHEN sf.role = 'administrator' THEN
                   ARRAY['gender', 'ethnicity', 'race', 'english_learner', 'migrant',
                         'gifted_learner', 'special_ed', 'sed', 'homeless', 'foster']::text[]
               WHEN sf.role = 'teacher' THEN coalesce(ta.fields, '{}'::text[])
               ELSE '{}'::text[]
           END AS fields
    FROM core.sql_logins l
    JOIN core.staff sf ON sf.staff_id = l.staff_id AND sf.district_id = l.district_id
    JOIN core.districts dd ON dd.district_id = l.district_id
    LEFT JOIN core.teacher_access ta ON ta.district_id = l.district_id
    WHERE l.role_name = current_user::text
      AND l.revoked_at IS NULL
      AND sf.active AND sf.enabled AND dd.active
),
sees AS MATERIALIZED (
    -- Which fields the caller sees, decided once per query rather than once per student
    -- (ten array searches per row were most of the cost of a district's million rows).
    -- One row per caller row, carrying its staff_id: `scoped` joins it to that row only.
    SELECT c.staff_id,
           'gender' = ANY (c.fields) AS gender,
           'ethnicity' = ANY (c.fields) AS ethnicity,
           'race' = ANY (c.fields) AS race,
           'english_learner' = ANY (c.fields) AS english_learner,
           'migrant' = ANY (c.fields) AS migrant,
           'gifted_learner' = ANY (c.fields) AS gifted_learner,
           'special_ed' = ANY (c.fields) AS special_ed,
           'sed' = ANY (c.fields) AS sed,
           'homeless' = ANY (c.fields) AS homeless,
           'foster' = ANY (c.fields) AS foster,
           -- When any value changed, shown only to those who see every field: to the others
           -- a change in a field hidden from them would show here.
           c.fields @> ARRAY['gender', 'ethnicity', 'race', 'english_learner', 'migrant',
                             'gifted_learner', 'special_ed', 'sed', 'homeless',
                             'foster']::text[] AS every_field
    FROM caller c
),
student_row AS NOT MATERIALIZED (
    -- A student's row as the view shows it, before masking. Never read on its own: it is
    -- inlined into each branch of the scope in `scoped` (NOT MATERIALIZED), where the
    -- branch's conditions restrict it, so each branch is planned for its own size (a
    -- teacher's few students by their keys, a district's every student by hash or merge
    -- joins) rather than for the sum of all three.
    SELECT st.student_id,
           st.district_id,
           st.active,
           st.school_id,
           sc.sourced_id AS school_sourced_id,
           st.sourced_id AS student_sourced_id,
           st.ssid,
           st.email,
           st.given_name,
           st.family_name,
           v.gender,
           v.ethnicity,
           v.race,
           v.english_learner,
           v.migrant,
           v.gifted_learner,
           v.special_ed,
           v.sed,
           v.homeless,
           v.foster,
           v.updated_at
    FROM core.students st
    LEFT JOIN core.schools sc ON sc.school_id = st.school_id
    LEFT JOIN core.student_demographics v ON v.student_id = st.student_id
),
scoped AS MATERIALIZED (  -- never inline this: see "A LEAKPROOF condition" above
    SELECT d.code AS district_code,
           r.school_sourced_id,
           r.student_sourced_id,
           r.ssid,
           r.email,
           r.given_name,
           r.family_name,
           CASE WHEN m.gender THEN r.gender END AS gender,
           CASE WHEN m.ethnicity THEN r.ethnicity END AS ethnicity,
           CASE WHEN m.race THEN r.race END AS race,
           CASE WHEN m.english_learner THEN r.english_learner END AS english_learner,
           CASE WHEN m.migrant THEN r.migrant END AS migrant,
           CASE WHEN m.gifted_learner THEN r.gifted_learner END AS gifted_learner,
           CASE WHEN m.special_ed THEN r.special_ed END AS special_ed,
           CASE WHEN m.sed THEN r.sed END AS sed,
           CASE WHEN m.homeless THEN r.homeless END AS homeless,
           CASE WHEN m.foster THEN r.foster END AS foster,
           CASE WHEN m.every_field THEN r.updated_at END AS demographics_updated_at
    FROM caller c
    JOIN sees m ON m.staff_id = c.staff_id
    JOIN core.districts d ON d.district_id = c.district_id
    CROSS JOIN LATERAL (
        -- The caller's students, found from the caller's scope (their district; their
        -- schools; their classes) rather than by reading every student of the district and
        -- testing each one. One branch per scope, each holding the view's own conditions and
        -- nothing of the caller's query: starting from the scope only does earlier what the
        -- scope check did after, all of it inside this CTE, so no condition of the caller's
        -- reaches these base tables and "A LEAKPROOF condition" above holds as it did.
        -- Each branch tests the caller's scope before reading anything (a one-time filter),
        -- so only the caller's branch runs, and it yields each student once: UNION ALL,
        -- with DISTINCT where a student can be reached twice. A district admin's students are
        -- not here but in the view's second part ("The whole district" below).
        --
        -- A school admin: the active students of the district whose (first) school is one
        -- of their listed schools that is active (core.staff_schools has one row per person
        -- and school).
        SELECT r.*
        FROM core.staff_schools ss
        JOIN core.schools s ON s.school_id = ss.school_id AND s.active
        JOIN student_row r ON r.school_id = s.school_id
        WHERE c.scope = 'school' AND ss.staff_id = c.staff_id
          AND r.district_id = c.district_id AND r.active
        UNION ALL
        -- A teacher with at least one field enabled (with none they see no rows, as the
        -- WHERE below says for everyone): the active students of the district with an active
        -- student enrollment in an active class, at an active school, in which the teacher
        -- has an active teacher enrollment. DISTINCT: a student can be in two of their classes.
        SELECT r.*
        FROM (
            SELECT DISTINCT se.student_id
            FROM core.enrollments te
            JOIN core.classes cl ON cl.class_id = te.class_id AND cl.active
            JOIN core.schools cs ON cs.school_id = cl.school_id AND cs.active
            JOIN core.enrollments se
                ON se.class_id = te.class_id AND se.role = 'student' AND se.active
            WHERE c.scope = 'teacher' AND cardinality(c.fields) > 0
              AND te.staff_id = c.staff_id AND te.role = 'teacher' AND te.active
        ) taught
        JOIN student_row r ON r.student_id = taught.student_id
        WHERE r.district_id = c.district_id AND r.active
    ) r
    WHERE cardinality(c.fields) > 0  -- a teacher with no field enabled sees no rows
)
-- One row per student the caller may see, from one of two parts: a school admin's or teacher's
-- materialized rows, or a district admin's read from the base tables. A plain SELECT over the
-- two (not the UNION ALL itself), so that the planner drops the columns a query does not use
-- and, with them, the joins that only feed them: a district admin's count(*) reads
-- core.students alone.
SELECT district_code, school_sourced_id, student_sourced_id, ssid, email, given_name,
       family_name, gender, ethnicity, race, english_learner, migrant, gifted_learner,
       special_ed, sed, homeless, foster, demographics_updated_at
FROM (
    SELECT district_code, school_sourced_id, student_sourced_id, ssid, email, given_name,
           family_name, gender, ethnicity, race, english_learner, migrant, gifted_learner,
           special_ed, sed, homeless, foster, demographics_updated_at
    FROM scoped
    UNION ALL
    -- The whole district: a district admin's rows, read from the base tables with the caller's
    -- leakproof conditions pushed down to them, every column NULL out of scope (why that leaks
    -- nothing, under any planner setting: "A district admin's rows" above). All ten fields, no masking: a district admin sees every field. The test of the
    -- caller's scope (a one-time filter) stands outside `district`, which the planner keeps a
    -- subquery of its own (it has a WITH), so that it runs before anything inside: a parallel
    -- plan's workers are started for a district admin only, never for a teacher's lookup.
    SELECT *
    FROM (
        WITH their_district AS MATERIALIZED (  -- none unless the caller is a district admin
            SELECT c.district_id FROM caller c WHERE c.scope = 'district'
        )
        SELECT CASE WHEN st.in_scope THEN d.code END AS district_code,
               CASE WHEN st.in_scope THEN sc.sourced_id END AS school_sourced_id,
               CASE WHEN st.in_scope THEN st.sourced_id END AS student_sourced_id,
               CASE WHEN st.in_scope THEN st.ssid END AS ssid,
               CASE WHEN st.in_scope THEN st.email END AS email,
               CASE WHEN st.in_scope THEN st.given_name END AS given_name,
               CASE WHEN st.in_scope THEN st.family_name END AS family_name,
               CASE WHEN st.in_scope THEN v.gender END AS gender,
               CASE WHEN st.in_scope THEN v.ethnicity END AS ethnicity,
               CASE WHEN st.in_scope THEN v.race END AS race,
               CASE WHEN st.in_scope THEN v.english_learner END AS english_learner,
               CASE WHEN st.in_scope THEN v.migrant END AS migrant,
               CASE WHEN st.in_scope THEN v.gifted_learner END AS gifted_learner,
               CASE WHEN st.in_scope THEN v.special_ed END AS special_ed,
               CASE WHEN st.in_scope THEN v.sed END AS sed,
               CASE WHEN st.in_scope THEN v.homeless END AS homeless,
               CASE WHEN st.in_scope THEN v.foster END AS foster,
               CASE WHEN st.in_scope THEN v.updated_at END AS demographics_updated_at
        FROM (
            -- The test of the scope, once: the WHERE below, and the guard of every column.
            SELECT s.*, s.active AND s.district_id = (SELECT t.district_id FROM their_district t)
                        AS in_scope
            FROM core.students s
        ) st
        JOIN core.districts d ON d.district_id = st.district_id
        LEFT JOIN core.schools sc ON sc.school_id = st.school_id
        LEFT JOIN core.student_demographics v ON v.student_id = st.student_id
        WHERE st.in_scope
    ) district
    WHERE EXISTS (SELECT FROM caller c WHERE c.scope = 'district')
) seen;

COMMENT ON VIEW reporting.student_demographics IS
    'Students the caller (current_user, a login of demographics access sql-login) may see; '
    'demographic columns they may not see read as NULL.';

-- The group: USAGE on reporting and SELECT on the view, nothing else.
REVOKE ALL ON SCHEMA reporting FROM PUBLIC;
GRANT USAGE ON SCHEMA reporting TO demographics_reporting;
REVOKE ALL ON reporting.student_demographics FROM PUBLIC;
GRANT SELECT ON reporting.student_demographics TO demographics_reporting;

-- The store is the application's alone.
REVOKE ALL ON SCHEMA core FROM PUBLIC, demographics_reporting;
REVOKE ALL ON ALL TABLES IN SCHEMA core FROM PUBLIC, demographics_reporting;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA core FROM PUBLIC, demographics_reporting;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA core FROM PUBLIC, demographics_reporting;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA reporting FROM PUBLIC, demographics_reporting;
-- Functions the application's user creates from now on (in this database) are not callable
-- by PUBLIC. (Global on purpose: per-schema default privileges cannot revoke the global ones.)
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Database-wide: no CREATE in schema public, and no TEMP for anyone but the owner.
--
-- TEMP is PostgreSQL's default for PUBLIC, and it is what lets a caller define a function in
-- pg_temp. We revoke it: "no CREATE anywhere" holds without exception, a caller cannot fill
-- temporary files, and the barrier is then a second line of defence rather than the only one.
-- The barrier still holds with TEMP (the tests grant TEMP to one login and prove it), so a
-- server where this revoke could not run is not open. The application itself keeps TEMP
-- (its roster load uses temporary tables): it is the owner, or a superuser, or the revoke is
-- skipped. CONNECT stays granted to PUBLIC (a server-wide policy is the operator's), and is
-- granted to the group as well, so revoking CONNECT from PUBLIC later keeps logins working.
-- Other databases of the server are not ours to change: where PUBLIC keeps CONNECT and TEMP
-- (`postgres`, by default), a login could connect and create temporary tables there. The
-- operator restricts `+demographics_reporting` to this database in pg_hba.conf (README).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper)
       OR EXISTS (SELECT 1 FROM pg_database
                  WHERE datname = current_database()
                    AND pg_has_role(current_user, datdba, 'USAGE')) THEN
        EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO demographics_reporting',
                       current_database());
        IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public') THEN
            REVOKE ALL ON SCHEMA public FROM PUBLIC;
        END IF;
    ELSE
        RAISE NOTICE 'not the database owner: run as its owner: REVOKE TEMPORARY ON DATABASE '
                     '% FROM PUBLIC; GRANT CONNECT ON DATABASE % TO demographics_reporting; '
                     'REVOKE ALL ON SCHEMA public FROM PUBLIC;',
                     current_database(), current_database();
    END IF;
END
$$;

-- Large objects are the one thing a caller could still create in this database with no
-- CREATE or TEMP privilege (`lo_create(0)`, `lo_from_bytea`, a client's lo_import): these
-- functions are executable by PUBLIC. Revoking EXECUTE on a built-in function takes a
-- superuser; function privileges are kept per database, so this changes this database only.
-- The application uses no large objects.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
        REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer),
            pg_catalog.lo_from_bytea(oid, bytea), pg_catalog.lo_import(text),
            pg_catalog.lo_import(text, oid)
            FROM PUBLIC;
    ELSE
        RAISE NOTICE 'not a superuser: run as a superuser: REVOKE EXECUTE ON FUNCTION '
                     'lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea), '
                     'lo_import(text), lo_import(text, oid) FROM PUBLIC;';
    END IF;
END
$$;
