-- core.access_acts is append-only. 003_access.sql refuses UPDATE and DELETE row by row, but a
-- TRUNCATE fires no row trigger: the table's owner (the application's own user) could still
-- empty the record, directly or by a `TRUNCATE ... CASCADE` of a table it references
-- (core.districts, core.staff). A statement-level trigger refuses that too, with the same
-- function and error (insufficient_privilege). What remains is a deliberate change of the
-- table itself (DROP TRIGGER, ALTER TABLE ... DISABLE TRIGGER), never a statement on its rows.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'access_acts_no_truncate'
                   AND tgrelid = 'core.access_acts'::regclass) THEN
        CREATE TRIGGER access_acts_no_truncate BEFORE TRUNCATE ON core.access_acts
            FOR EACH STATEMENT EXECUTE FUNCTION core.access_acts_append_only();
    END IF;
END
$$;
