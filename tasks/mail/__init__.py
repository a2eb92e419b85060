"""The results email and drop notices: build them (`compose`), then send them over SMTP or
into the outbox (`send`).

A message shows counts, issue codes, messages, row numbers and the offending values the report
already holds, never anything else from a file. Values come from district uploads and may hold
markup or formulas: the HTML part is rendered with autoescape on, the text part shows control
characters escaped, and the CSV attachment neutralises spreadsheet formulas.

Nothing here logs a message's contents, and a `MailError` names the server and what went wrong,
never the message or the password; its `transient` says whether trying again later may help.
"""

from tasks.mail.compose import (
    ATTACHMENT_NAME,
    DEFAULT_MAX_ISSUES,
    DISTRICT_HEADER,
    build_notice_message,
    build_results_message,
    issues_csv,
    next_steps,
    results_subject,
    shown,
)
from tasks.mail.send import SMTP_TIMEOUT_SECONDS, Delivery, MailError, send_message

__all__ = [
    "ATTACHMENT_NAME",
    "DEFAULT_MAX_ISSUES",
    "DISTRICT_HEADER",
    "SMTP_TIMEOUT_SECONDS",
    "Delivery",
    "MailError",
    "build_notice_message",
    "build_results_message",
    "issues_csv",
    "next_steps",
    "results_subject",
    "send_message",
    "shown",
]
