-- The roster's references: each a key of the same district, and checked once per statement
-- on the two tables a first roster load fills by the million. A first load of 5,000,000
-- students was bound by PostgreSQL's per-row foreign-key checks (a few microseconds each; an
-- enrollment's check of its student also locks and rewrites that student's row): a student
-- checked its district and school, an enrollment its district, class and student.
--
-- - A class's school is (school_id, district_id) of core.schools: a foreign key, one check
--   that the school exists and is the district's own (the single-column keys never said so).
-- - A student's school and district, and an enrollment's class and student, are checked by a
--   statement trigger over the statement's new rows (a transition table): one join for the
--   whole statement instead of a check a row, and again of the same district. A student's or
--   class's district and id never change and they are never deleted (a record gone from the
--   roster is made inactive), so nothing done to them later can undo what was checked.
-- - Unchanged: a school's, staff member's and enrollment's teacher keys, and every key of the
--   demographic values and runs.
-- See docs/architecture.md, "Keys". The classes' new key checks the classes already there, once;
-- the triggers check what is written from now on.
CREATE UNIQUE INDEX IF NOT EXISTS schools_id_district ON core.schools (school_id, district_id);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'classes_school_of_district'
                   AND conrelid = 'core.classes'::regclass) THEN
        ALTER TABLE core.classes ADD CONSTRAINT classes_school_of_district
            FOREIGN KEY (school_id, district_id) REFERENCES core.schools (school_id, district_id);
    END IF;
END $$;

ALTER TABLE core.students DROP CONSTRAINT IF EXISTS students_district_id_fkey,
    DROP CONSTRAINT IF EXISTS students_school_id_fkey;
ALTER TABLE core.classes DROP CONSTRAINT IF EXISTS classes_district_id_fkey,
    DROP CONSTRAINT IF EXISTS classes_school_id_fkey;
ALTER TABLE core.enrollments DROP CONSTRAINT IF EXISTS enrollments_district_id_fkey,
    DROP CONSTRAINT IF EXISTS enrollments_class_id_fkey,
    DROP CONSTRAINT IF EXISTS enrollments_student_id_fkey;

-- New or changed students: their district exists, and their school (if any) is the district's.
CREATE OR REPLACE FUNCTION core.students_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM new_rows n
               WHERE NOT EXISTS (SELECT FROM core.districts d
                                 WHERE d.district_id = n.district_id))
       OR EXISTS (SELECT FROM new_rows n
                  WHERE n.school_id IS NOT NULL
                    AND NOT EXISTS (SELECT FROM core.schools sc
                                    WHERE sc.school_id = n.school_id
                                      AND sc.district_id = n.district_id)) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'a student''s district does not exist, or its school is another district''s';
    END IF;
    RETURN NULL;
END $$;

-- New or changed enrollments: their class, and their student (if any), are the district's.
CREATE OR REPLACE FUNCTION core.enrollments_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM new_rows n
               WHERE NOT EXISTS (SELECT FROM core.classes c
                                 WHERE c.class_id = n.class_id
                                   AND c.district_id = n.district_id))
       OR EXISTS (SELECT FROM new_rows n
                  WHERE n.student_id IS NOT NULL
                    AND NOT EXISTS (SELECT FROM core.students s
                                    WHERE s.student_id = n.student_id
                                      AND s.district_id = n.district_id)) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'an enrollment''s class or student is not of its district';
    END IF;
    RETURN NULL;
END $$;

-- What those checks rely on: a school, student or class keeps its id and district, and is
-- never deleted, nor truncated.
CREATE OR REPLACE FUNCTION core.roster_record_stays() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'restrict_violation',
        MESSAGE = format('a record of %s is never deleted, nor given another id or district; '
                         'a record gone from the roster is made inactive', TG_TABLE_NAME);
END $$;

DO $$
DECLARE
    kind text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['students', 'enrollments'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_keys_insert AFTER INSERT ON core.%1$s '
                       'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                       'EXECUTE FUNCTION core.%1$s_keys()', kind);
        EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_keys_update AFTER UPDATE ON core.%1$s '
                       'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                       'EXECUTE FUNCTION core.%1$s_keys()', kind);
    END LOOP;
    FOREACH kind IN ARRAY ARRAY['schools:school_id', 'students:student_id', 'classes:class_id']
    LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_stay_delete BEFORE DELETE ON core.%1$s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION core.roster_record_stays()',
                       split_part(kind, ':', 1));
        -- TRUNCATE fires no DELETE trigger, and no foreign key stops it any more.
        EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_stay_truncate BEFORE TRUNCATE '
                       'ON core.%1$s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION core.roster_record_stays()',
                       split_part(kind, ':', 1));
        EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_stay_update BEFORE UPDATE ON core.%1$s '
                       'FOR EACH ROW WHEN (OLD.%2$I IS DISTINCT FROM NEW.%2$I '
                       'OR OLD.district_id IS DISTINCT FROM NEW.district_id) '
                       'EXECUTE FUNCTION core.roster_record_stays()',
                       split_part(kind, ':', 1), split_part(kind, ':', 2));
    END LOOP;
END $$;

-- Room on each page of core.students for a changed student's new version (a HOT update: no
-- new index entries). A nightly roster changes a few students' names or emails; with full
-- pages each such update also wrote three index entries, and the first write to each of
-- those index pages after a checkpoint a whole page of WAL. Applies to pages written from now
-- on (a first load); existing pages keep theirs until the table is rewritten.
ALTER TABLE core.students SET (fillfactor = 90);
