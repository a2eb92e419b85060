"""What a step may raise or return: failures whose text holds no student value, and a
person's refused request as a value, never an exception.

Prefect records a failed task's message and traceback, and logs a raised exception with its
traceback: so every step is wrapped in `safe_step`, and the ones that answer a person's
request in `refusing` too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import psycopg

from tasks import access, store
from tasks.db import DatabaseUnavailable, describe_error
from tasks.errors import DemographicsError
from tasks.process.rules import Refused

P = ParamSpec("P")
R = TypeVar("R")

# A person asked for something the service will not do: told, not failed. None of these
# messages names the person refused (they may have typed a student's email).
REFUSALS = (store.UnknownDistrict, store.NotHeld, access.AccessRefused, access.InvalidField)


class StepFailed(DemographicsError):
    """A step could not finish; the message says why and carries no student value."""


def _clean(exc: BaseException) -> BaseException:
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc


def safe_step(func: Callable[P, R]) -> Callable[P, R]:
    """Re-raise failures as exceptions whose text (and traceback) hold no student value."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DemographicsError as exc:  # StepFailed among them: the message is safe
            raise _clean(exc) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"the database cannot be reached ({describe_error(exc)})"
            ) from None
        except psycopg.Error as exc:
            raise StepFailed(f"a database statement failed ({describe_error(exc)})") from None
        except Exception as exc:
            raise StepFailed(f"{func.__name__} failed ({type(exc).__name__})") from None

    return wrapper


def refusing(func: Callable[P, R]) -> Callable[P, R | Refused]:
    """A refusal (REFUSALS) is returned as Refused, never raised: Prefect would log it with a
    traceback, and it is the person's answer, not a failure."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Refused:
        try:
            return func(*args, **kwargs)
        except REFUSALS as exc:
            return Refused(str(exc))

    return wrapper
