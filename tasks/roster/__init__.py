"""Read, check and load a district's OneRoster 1.1 CSV roster (a full snapshot).

A snapshot replaces what the district had: records in it are added or updated, records gone
from it become inactive (never deleted: their history stays), and `status=tobedeleted` also
means inactive. A roster with any error loads nothing: a half-loaded snapshot would deactivate
people who are still there. Messages never quote a value; the row and column say where.

`read` reads the four files, `rules` checks them (a table of rules), `load` writes them.
"""

from tasks.roster.load import ENTITIES, RosterRefused, load_roster
from tasks.roster.read import RosterSnapshot, read_roster

__all__ = ["ENTITIES", "RosterRefused", "RosterSnapshot", "load_roster", "read_roster"]
