"""Failures of the local stack that the developer can fix; printed without a traceback."""


class DevStackError(RuntimeError):
    pass
