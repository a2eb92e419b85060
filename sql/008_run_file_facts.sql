-- What a file's report said that a later upload of the very same bytes repeats without
-- reading the file again (tasks/sync/run.py): the encoding it was read in and how many rows
-- had warnings. Runs recorded before this file have neither, and such a file is read again.
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS file_encoding text;
ALTER TABLE core.sync_runs ADD COLUMN IF NOT EXISTS warning_rows integer;
