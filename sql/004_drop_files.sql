-- What the service has seen in each district's drop, so a file's age is judged from when it
-- was first seen unchanged, not from its modification time: upload tools that keep the
-- original time (WinSCP's default, `sftp -p`, `rsync -t`) would otherwise make a fresh upload
-- look a week old and have it deleted unsynced. Also remembers which refused entries the
-- data managers were already told about, so the notice is sent once, not every night.
-- Holds names, sizes and times only, never contents.
CREATE TABLE IF NOT EXISTS core.drop_files (
    district_id    bigint NOT NULL REFERENCES core.districts ON DELETE CASCADE,
    name           text NOT NULL,
    size           bigint NOT NULL,
    modified       timestamptz NOT NULL,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    refused_reason text,          -- set for an entry the drop refuses (link, unsafe name, ...)
    notified_at    timestamptz,   -- when the data managers were told about the refusal
    PRIMARY KEY (district_id, name)
);
