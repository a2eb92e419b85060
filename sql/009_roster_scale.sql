-- The roster's references as keys that also say "of the same district", and one check per row
-- where there were two. A first roster load of millions was bound by PostgreSQL's per-row
-- foreign-key checks (each costs a few microseconds whatever the table's size): a student
-- checked its district and its school, an enrollment its district, its class and its student.
--
-- - A student's or class's school is (school_id, district_id) of core.schools, and an
--   enrollment's class is (class_id, district_id) of core.classes: one check that the school or
--   class exists and is the district's own, which the separate keys never said.
-- - A class's and an enrollment's district is therefore checked through that key (their
--   school_id and class_id are NOT NULL). A student with no school has no key on its district:
--   students are written only by the roster load, for the district it holds locked, and
--   nothing deletes a district (docs/architecture.md, "Keys").
-- - Unchanged: an enrollment's student and teacher, a staff member's district, and every key of
--   the demographic values and runs.
-- Adding a key checks the rows already there, once, in this file's transaction.
CREATE UNIQUE INDEX IF NOT EXISTS schools_id_district ON core.schools (school_id, district_id);
CREATE UNIQUE INDEX IF NOT EXISTS classes_id_district ON core.classes (class_id, district_id);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'students_school_of_district'
                   AND conrelid = 'core.students'::regclass) THEN
        ALTER TABLE core.students ADD CONSTRAINT students_school_of_district
            FOREIGN KEY (school_id, district_id) REFERENCES core.schools (school_id, district_id);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'classes_school_of_district'
                   AND conrelid = 'core.classes'::regclass) THEN
        ALTER TABLE core.classes ADD CONSTRAINT classes_school_of_district
            FOREIGN KEY (school_id, district_id) REFERENCES core.schools (school_id, district_id);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'enrollments_class_of_district'
                   AND conrelid = 'core.enrollments'::regclass) THEN
        ALTER TABLE core.enrollments ADD CONSTRAINT enrollments_class_of_district
            FOREIGN KEY (class_id, district_id) REFERENCES core.classes (class_id, district_id);
    END IF;
END $$;

ALTER TABLE core.students DROP CONSTRAINT IF EXISTS students_district_id_fkey,
    DROP CONSTRAINT IF EXISTS students_school_id_fkey;
ALTER TABLE core.classes DROP CONSTRAINT IF EXISTS classes_district_id_fkey,
    DROP CONSTRAINT IF EXISTS classes_school_id_fkey;
ALTER TABLE core.enrollments DROP CONSTRAINT IF EXISTS enrollments_district_id_fkey,
    DROP CONSTRAINT IF EXISTS enrollments_class_id_fkey;

-- Room on each page of core.students for a changed student's new version (a HOT update: no
-- new index entries). A nightly roster changes a few students' names or emails; with full
-- pages each such update also wrote three index entries, and the first write to each of
-- those index pages after a checkpoint a whole page of WAL. Applies to pages written from now
-- on (a first load); existing pages keep theirs until the table is rewritten.
ALTER TABLE core.students SET (fillfactor = 90);
