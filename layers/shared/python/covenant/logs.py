"""The shared layer's log lines (`covenant.*`: database reconnects, a lost outbox wake-up,
migrations, SnapStart hooks) written as the calling function's own: JSON through its
Powertools logger, with its service name and the request's correlation id.

Left alone they would go to the root logger: plain text in Lambda, no correlation id. Called
at the start of every invocation rather than once at import, because a process may host more
than one function (the local gateway, the tests): each invocation claims the lines for the
function that runs it.
"""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

SHARED_LOGGER = "covenant"


def adopt_shared_logs(source: Logger) -> None:
    # Once per process and function in practice: a warm invocation finds them adopted already.
    if logging.getLogger(SHARED_LOGGER).handlers == source.handlers:
        return
    copy_config_to_registered_loggers(source_logger=source, include={SHARED_LOGGER})
