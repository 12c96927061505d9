"""One definition of what a credential looks like, used both to refuse it in params and to hide it in output.

A credential is any user info in a URI (``user:password@``, or a token used as the user name ``token@``) and the
value of a query parameter whose name has a secret word among its parts (split at ``_ - .``): ``?token=``,
``?access_token=``, ``?api_key=``, ``?X-Amz-Signature=``, ``?auth=``, ``?pwd=``…

:func:`install_redaction` hides them in everything a process prints: log records (whichever library makes them
and whichever handler prints them), writes to ``sys.stdout``/``sys.stderr`` (MLflow prints its run links with
``sys.stdout.write``) and the traceback of an uncaught error.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any, Callable, TextIO

__all__ = ["SECRET_WORDS", "has_credentials", "redact", "RedactingFormatter", "RedactingStream",
           "install_redaction"]

# query parameter names (split at _ - .) that carry secrets
SECRET_WORDS = frozenset({"token", "password", "passwd", "pwd", "secret", "key", "apikey", "sig", "signature",
                          "auth", "credential", "credentials"})
_QUERY_PAIR = re.compile(r"(?<![\w.\-])([\w.\-]+)=([^&\s#]+)")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_WORDS & set(re.split(r"[_.\-]", name.lower())))


def _netloc_and_tail(rest: str) -> tuple[str, str]:
    """``host/path?q`` → (``host``, ``/path?q``), split by hand: urlsplit raises on a '[' in a password and
    rewrites URIs without credentials (sqlite:////abs → sqlite://abs)."""
    end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    return rest[:end], rest[end:]


def has_credentials(uri: str) -> bool:
    """Whether ``uri`` has user info before '@' or a secret-looking query value (never echoes either)."""
    _, sep, rest = uri.partition("://")
    if not sep:
        return False
    netloc, tail = _netloc_and_tail(rest)
    if "@" in netloc:
        return True
    query = tail.split("#", 1)[0].partition("?")[2]
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        if value and _is_secret_name(name):
            return True
    return False


def redact(text: str) -> str:
    """Hide credentials: ``user:password@`` → ``user:***@``, ``token@`` → ``***@``, ``?token=x`` → ``?token=***``."""
    def _uri(match: re.Match) -> str:
        scheme, rest = match.group(0).split("://", 1)
        netloc, tail = _netloc_and_tail(rest)
        if "@" not in netloc:
            return match.group(0)
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}{tail}" if ":" in creds else f"{scheme}://***@{host}{tail}"

    def _pair(match: re.Match) -> str:
        return f"{match.group(1)}=***" if _is_secret_name(match.group(1)) else match.group(0)

    # quotes are valid in a password (RFC 3986 sub-delims): only whitespace ends a URI here
    return _QUERY_PAIR.sub(_pair, _URI.sub(_uri, text))


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter and hides credentials in the whole text: message, traceback and stack."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class RedactingStream:
    """A text stream whose writes are redacted; everything else is the wrapped stream's."""

    def __init__(self, inner: TextIO):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install_redaction(streams: tuple[str, ...] = ("stdout", "stderr")) -> None:
    """Redact everything the process prints, whichever library prints it and however.

    ``streams`` names the ``sys`` streams to wrap: a command whose standard output is data (``lora-pipeline
    predict``) leaves ``stdout`` out, so that a text is never changed.

    Root's handlers get a :class:`RedactingFormatter`; a record factory redacts each record's message and
    traceback when it is made, for handlers set up elsewhere (MLflow's own, which does not propagate);
    ``sys.stdout`` and ``sys.stderr`` become :class:`RedactingStream` (MLflow writes its ``View run … at: <uri>``
    lines there directly); the traceback of an uncaught error is redacted as well.
    """
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(factory))
    for name in streams:
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
    sys.excepthook = _redacting_excepthook  # an unexpected error's traceback is part of the stage log too


def _redacting_excepthook(kind: type[BaseException], err: BaseException, tb: Any) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, err, tb))))


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), ()
        except Exception:  # noqa: BLE001 - a malformed call is reported by the handler, as without redaction
            return record
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text instead of formatting again
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory
