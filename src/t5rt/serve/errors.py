"""Errors only the HTTP service raises; each is a `T5rtError`, so its name is the JSON error type.

The runtime's own errors (InvalidInputError, InvalidOptionError, the service core's overload and
timeout errors) keep their names on the wire; these cover what only HTTP can get wrong.
"""

from __future__ import annotations

from ..errors import T5rtError


class AuthenticationError(T5rtError, PermissionError):
    """The server has an API key and the request did not carry `Authorization: Bearer KEY`."""


class NotFoundError(T5rtError, LookupError):
    """No such HTTP route."""


class MethodNotAllowedError(T5rtError, ValueError):
    """The route exists but not for this HTTP method."""


class ServiceUnavailableError(T5rtError, RuntimeError):
    """No model replica could take the request (all dead or restarting); retry after a moment."""
