"""What every stage script shares: logging setup and turning known errors into clean exits."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, Callable

from lora_pipeline.errors import ConfigError, PipelineError
from lora_pipeline.tracking import log_stage_run, redact

# log_stage_run lives in lora_pipeline.tracking; re-exported here until ingest/validate/split import it from there
__all__ = ["EXIT_USER_ERROR", "run_stage", "install_redaction", "RedactingFormatter", "log_stage_run"]

EXIT_USER_ERROR = 2


def run_stage(name: str, body: Callable[[], None]) -> int:
    """Run a stage body; a known error becomes one clear message and exit code 2, not a traceback."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    install_redaction()
    for noisy in ("urllib3", "filelock", "great_expectations", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        body()
    except (ConfigError, PipelineError) as err:
        logging.getLogger(name).error("%s", err)
        print(f"\n{name} failed: {redact(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter and hides credentials in the whole text: message, traceback and stack."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def install_redaction() -> None:
    """Redact every log record of the process, whichever library logs it and whichever handler prints it.

    Root's handlers get a :class:`RedactingFormatter`; a record factory redacts each record's message and
    traceback when it is made, for handlers set up elsewhere (MLflow's own, which does not propagate); the
    traceback of an uncaught error is redacted as well.
    """
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(factory))
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
