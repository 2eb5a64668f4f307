"""The one error tree of allmende; every deployable raises these and translates foreign errors."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AllmendeError",
    "AuditUnavailable",
    "BackboneError",
    "BrokerError",
    "ConfigError",
    "DatasetNotFound",
    "IdentityError",
    "ImportFileError",
    "InvalidRequest",
    "NotOwner",
    "PeerUnavailable",
    "PolicyDenied",
    "PolicyError",
    "QuotaExceeded",
    "StoreError",
]


class AllmendeError(Exception):
    """Root of every error allmende raises on purpose.

    ``grpc_code`` names the gRPC status code (by its name in ``grpc.StatusCode``) the gateway
    answers with; ``reason`` is the machine-readable reason sent in the status details;
    ``retriable`` tells a caller whether trying again later may succeed.
    """

    grpc_code: str = "INTERNAL"
    reason: str = "INTERNAL"
    retriable: bool = False


class ConfigError(AllmendeError):
    """A configuration file or environment variable is wrong; ``problems`` lists every one."""

    reason = "BAD_CONFIG"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


class IdentityError(AllmendeError):
    """A certificate, key or SPIFFE ID is missing, malformed or not trusted."""

    grpc_code = "UNAUTHENTICATED"
    reason = "BAD_IDENTITY"


class ImportFileError(AllmendeError):
    """A source file cannot be imported; names the file, the line or feature, and why."""

    reason = "BAD_SOURCE_FILE"

    def __init__(self, path: str, where: str, problem: str) -> None:
        self.path = path
        self.where = where
        self.problem = problem
        location = f"{path}, {where}" if where else path
        super().__init__(f"{location}: {problem}")


class StoreError(AllmendeError):
    """The town's SQLite store cannot be read or written."""

    grpc_code = "UNAVAILABLE"
    reason = "STORE_UNAVAILABLE"
    retriable = True


class DatasetNotFound(AllmendeError):
    """No dataset with that owner and id is known."""

    grpc_code = "NOT_FOUND"
    reason = "DATASET_NOT_FOUND"

    def __init__(self, owner: str, dataset: str) -> None:
        self.owner = owner
        self.dataset = dataset
        super().__init__(f"dataset {owner}/{dataset} is not in the catalog")


class InvalidRequest(AllmendeError):
    """A request is malformed: an unknown field, a bad filter value, a bad page token."""

    grpc_code = "INVALID_ARGUMENT"
    reason = "INVALID_REQUEST"

    def __init__(self, message: str, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class PolicyError(AllmendeError):
    """A policy or agreement cannot be loaded, compiled or evaluated."""

    reason = "POLICY_ERROR"


class PolicyDenied(AllmendeError):
    """The owner's policy denied the request; ``reasons`` says why, in the policy's words."""

    grpc_code = "PERMISSION_DENIED"
    reason = "POLICY_DENIED"

    def __init__(
        self,
        reasons: Sequence[str],
        policy_version: str = "",
        *,
        subject_member: str = "",
        owner: str = "",
        dataset: str = "",
    ) -> None:
        self.reasons = sorted(reasons) or ["no rule allows this request"]
        self.policy_version = policy_version
        self.subject_member = subject_member
        self.owner = owner
        self.dataset = dataset
        super().__init__("denied by policy: " + "; ".join(self.reasons))


class QuotaExceeded(AllmendeError):
    """A consumer asked more often than its agreement allows (requests per minute)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "QUOTA_EXCEEDED"
    retriable = True

    def __init__(
        self, member: str, agreements: Sequence[str], per_minute: int, retry_after_s: float
    ) -> None:
        self.member = member
        self.agreements = list(agreements)
        self.per_minute = per_minute
        self.retry_after_s = retry_after_s
        names = ", ".join(self.agreements) or "the owner's policy"
        super().__init__(
            f"quota exceeded: {names} allows {member} {per_minute} request(s) per minute; "
            f"try again in {retry_after_s:.1f} s"
        )


class AuditUnavailable(AllmendeError):
    """The owner's audit log cannot be written, so the gateway refuses to serve (fail closed)."""

    grpc_code = "UNAVAILABLE"
    reason = "AUDIT_UNAVAILABLE"
    retriable = True


class NotOwner(AllmendeError):
    """A gateway was asked for a dataset it does not own by a caller that is not its own town's."""

    grpc_code = "PERMISSION_DENIED"
    reason = "NOT_OWNER"


class PeerUnavailable(AllmendeError):
    """The owner's gateway cannot be reached (or is not known)."""

    grpc_code = "UNAVAILABLE"
    reason = "OWNER_UNAVAILABLE"
    retriable = True


class BackboneError(AllmendeError):
    """The Kafka backbone cannot be reached or refused a request."""

    grpc_code = "UNAVAILABLE"
    reason = "BACKBONE_UNAVAILABLE"
    retriable = True


class BrokerError(BackboneError):
    """The embedded broker could not be started or did not become ready."""

    reason = "BROKER_FAILED"
