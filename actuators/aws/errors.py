"""How AWS errors become forescale errors (one table, :func:`map_aws_error`).

- throttling, 5xx, ``ScalingActivityInProgress``, ``ResourceContention``,
  connection failures and timeouts -> :class:`TransientActuatorError`
  (retried);
- quota and capacity codes, and an Auto Scaling ``ValidationError`` about
  MinSize/MaxSize -> :class:`LimitExceeded`;
- every other service error (``ValidationError``, ``AccessDenied``,
  ``UnauthorizedOperation``, ``InvalidInstanceID.NotFound``, ...) and
  missing credentials -> :class:`PermanentActuatorError` (not retried).

Errors carry the provider's request ids. Credentials are never logged or put
in an error message.
"""

from __future__ import annotations

import re
from typing import Sequence

from engine.core.errors import (
    ActuatorError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)

#: Error codes that say "try again later". Sources: the AWS SDKs' standard
#: retry mode (botocore/retries/standard.py THROTTLING_ERROR_CODES and
#: TRANSIENT_ERROR_CODES), plus the Auto Scaling faults documented as
#: retryable (ScalingActivityInProgress, ResourceContention).
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
    "ServiceUnavailable", "Unavailable", "InternalFailure", "InternalError",
    "InternalServerError", "ScalingActivityInProgress", "ResourceContention",
})

#: Codes that mean the request is outside the platform's (or the account's)
#: own limits: retrying will not help, raising a limit or choosing another
#: capacity will.
LIMIT_CODES = frozenset({
    "LimitExceeded", "InstanceLimitExceeded", "VcpuLimitExceeded",
    "InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported",
})

# Auto Scaling answers a desired capacity outside MinSize..MaxSize with a
# ValidationError "New SetDesiredCapacity value 9 is above max value 5 ...".
_LIMIT_MESSAGE = re.compile(r"\b(above|below) (max|min)\b|\bMaxSize\b|\bMinSize\b", re.I)

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "name a profile in the actuator's 'profile' field, or run with an instance/task role"
)


def map_aws_error(exc: BaseException, operation: str) -> ActuatorError | None:
    """The forescale error for a botocore exception raised by ``operation``
    (``None``: not an AWS error, let it propagate)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(error.get("Code", "") or "")
        message = str(error.get("Message", "") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        rid = meta.get("RequestId") or ""
        ids = (rid,) if rid else ()
        text = f"{operation} failed: {code or f'HTTP {status}'}: {message}".rstrip(": ")
        if rid:
            text += f" (request id {rid})"
        if code in TRANSIENT_CODES or status >= 500:
            return TransientActuatorError(text, request_ids=ids)
        if code in LIMIT_CODES or (code == "ValidationError" and _LIMIT_MESSAGE.search(message)):
            return LimitExceeded(text, request_ids=ids)
        if code in {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException"}:
            return PermanentActuatorError(f"{text}; check the AWS credentials", request_ids=ids)
        return PermanentActuatorError(text, request_ids=ids)
    if isinstance(exc, bx.NoCredentialsError):
        return PermanentActuatorError(f"{operation}: {NO_CREDENTIALS}")
    if isinstance(exc, (bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        # the message names the provider and the missing variable, never a secret
        return PermanentActuatorError(f"{operation}: AWS credentials are incomplete: {exc}")
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
        return TransientActuatorError(f"{operation}: cannot reach the AWS endpoint: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return PermanentActuatorError(f"{operation}: {exc}")
    return None



def with_ids(exc: ActuatorError, message: str, ids: Sequence[str]) -> ActuatorError:
    """``exc``'s class with a longer message and every request id so far."""
    merged = tuple(dict.fromkeys([*ids, *exc.request_ids]))
    return type(exc)(message, request_ids=merged)
