"""structlog set-up shared by every process.

JSON when stdout is not a terminal, console output when it is. Library logs (grpc,
temporalio, asyncpg) go through the same processors via the standard-library bridge.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from typing import Any

import asyncpg
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from services.common.config import Settings

# The RPC in progress, on every line logged while it runs (method, request_id, peer,
# subject). One context variable, set once per call in the call's own task, in place of
# structlog.contextvars: binding each key apart, clearing them and merging them by walking
# the whole context cost several microseconds a call.
_call_log: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "call_log", default=None
)


def start_call_log(**values: Any) -> None:
    """What every line logged during this call says of it (the call's task only)."""
    _call_log.set(values)


def add_to_call_log(**values: Any) -> None:
    context = _call_log.get()
    if context is not None:
        context.update(values)


def merge_call_log(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    context = _call_log.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def add_temporal_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add workflow and activity ids; drop events emitted while a workflow replays, so
    a replayed history does not log its side effects a second time."""
    from temporalio import activity, workflow

    if workflow.in_workflow():
        if workflow.unsafe.is_replaying():
            raise structlog.DropEvent
        info = workflow.info()
        event_dict.setdefault("workflow_id", info.workflow_id)
        event_dict.setdefault("workflow_type", info.workflow_type)
    elif activity.in_activity():
        a_info = activity.info()
        event_dict.setdefault("workflow_id", a_info.workflow_id)
        event_dict.setdefault("activity_id", a_info.activity_id)
        event_dict.setdefault("activity_type", a_info.activity_type)
    return event_dict


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The current OpenTelemetry span's ids, when tracing is on and a span is open."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


ROW_DATA_LEFT_OUT = "(left out of the logs: it may quote the row's personal data)"


def format_exception_without_row_data(exc_info: Any) -> str:
    """A traceback as the standard library prints it, less each PostgreSQL error's DETAIL:
    a refused write's detail quotes the row ("Failing row contains (srv-..., saatli,
    female, ...)", "Key (survivor_id)=(...) already exists"), and logs keep no personal
    data."""
    text = "".join(traceback.format_exception(*exc_info))
    error, seen = exc_info[1], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        detail = getattr(error, "detail", None)
        if isinstance(error, asyncpg.PostgresError) and detail:
            text = text.replace(detail, ROW_DATA_LEFT_OUT)
        error = error.__cause__ or error.__context__
    return text


def _shared_processors() -> list[Processor]:
    return [
        merge_call_log,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_temporal_context,
        add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(settings: Settings, *, process: str) -> None:
    """Configure structlog and the standard-library root logger once per process."""
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stdout.isatty()
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    level = getattr(logging, settings.log_level.upper())
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(format_exception_without_row_data),
            _bind_process(process),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries stay at WARNING unless we are debugging them.
    for name in ("grpc", "temporalio", "asyncpg"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _bind_process(process: str) -> Processor:
    def add_process(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("process", process)
        return event_dict

    return add_process


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
