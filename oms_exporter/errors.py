"""Every way a listing can fail, as one exception type each.

Each `OmsError` subclass's `reason` is a label value of `oms_scrape_errors_total`; messages
never hold credentials.
"""

from __future__ import annotations


class OmsError(Exception):
    reason = "network"


class Timeout(OmsError):
    reason = "timeout"


class RequestTimeout(Timeout):
    """One request took longer than --oms.request-timeout, before the scrape's deadline: retried."""


class Throttled(OmsError):
    reason = "throttled"


class AuthFailed(OmsError):
    """The credentials were refused (by OMS or IAM): a verdict on them, which pauses the target."""

    reason = "auth"


class ServerError(OmsError):
    reason = "http_5xx"


class RequestRejected(OmsError):
    reason = "http_4xx"

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # the answer's error code (OMS.0064, APIGW.0101, ...), when it had one


class BadPayload(OmsError):
    reason = "bad_payload"


class Redirected(OmsError):
    """A 3xx: not followed (credentials must not travel to another location), and no answer."""

    reason = "http_3xx"


class NetworkError(OmsError):
    reason = "network"


class TooLarge(Exception):
    """An answer beyond --oms.max-response-size (a BadPayload once counted)."""


class Incomplete(OmsError):
    reason = "incomplete"


class InternalError(OmsError):
    reason = "internal"
