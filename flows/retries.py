"""Which failures are worth another try, and the retry loop with exponential backoff.

A transient failure (the network, a timeout, a tracking server that is restarting, a locked SQLite store)
may pass on the next attempt; a deterministic one (bad data, bad config, a bug) fails the same way again,
so it is raised at once. `with_retries` retries MLflow calls that are safe to repeat, `send_once` sends the
others once (a timeout does not say whether the server did it); `retry_transient` is the Prefect
`retry_condition_fn` of the stage tasks.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

# MLflow error codes a later attempt can clear; RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE, ... cannot.
_TRANSIENT_MLFLOW_CODES = {
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "DEADLINE_EXCEEDED",
    "ABORTED",
}
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EAGAIN,
    errno.EBUSY,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
}


class TransientError(RuntimeError):
    """Raised by a stage for a failure that may pass on its own (a resource briefly unavailable)."""


class TrackingUnavailable(ConnectionError):
    """The tracking server did not answer after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_seconds: float = 1.0  # before the second attempt; doubled after each failure
    max_backoff_seconds: float = 30.0


def is_transient(err: BaseException) -> bool:
    if isinstance(err, (TransientError, ConnectionError, TimeoutError)):
        return True
    if type(err).__name__ == "MlflowException":
        return getattr(err, "error_code", "") in _TRANSIENT_MLFLOW_CODES
    if type(err).__name__ == "OperationalError":  # sqlalchemy / sqlite3: "database is locked"
        return "locked" in str(err) or "timeout" in str(err).lower()
    if isinstance(err, OSError):
        return err.errno in _TRANSIENT_ERRNOS or type(err).__module__.startswith(("requests", "urllib3"))
    return False


def short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def with_retries(call: Callable[[], T], policy: RetryPolicy, what: str, where: str) -> T:
    """`call()`, retried on transient errors with exponential backoff; TrackingUnavailable when every
    attempt failed. Deterministic errors are raised at once."""
    delay, waited = policy.backoff_seconds, 0.0
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified just below
            if not is_transient(err):
                raise
            if attempt == policy.attempts:
                raise TrackingUnavailable(
                    f"{where} did not answer {what} after {attempt} attempts over {waited:.0f} s ({short(err)})"
                ) from err
            print(
                f"  tracking: {what} failed ({short(err, 120)}); attempt {attempt + 1}/{policy.attempts} in "
                f"{delay:.1f} s",
                flush=True,
            )
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, policy.max_backoff_seconds)
    raise AssertionError("unreachable")


def send_once(call: Callable[[], T], what: str, where: str) -> T:
    """`call()` for a call that is not safe to repeat: TrackingUnavailable on a transient error, without
    another attempt (the server may have done it before the answer was lost)."""
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - classified just below
        if not is_transient(err):
            raise
        raise TrackingUnavailable(
            f"{where} did not answer {what} ({short(err)}); not sent again, as a second {what} could be done twice"
        ) from err


def retry_transient(task, task_run, state) -> bool:
    """Prefect's retry condition for a stage task: retry only what may pass on another attempt."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001
        if is_transient(err):
            print(f"  {task_run.name}: transient failure ({short(err, 120)}): retrying", flush=True)
            return True
        return False
    return False
