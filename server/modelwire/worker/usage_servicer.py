"""The UsageAdmin gRPC edge: what tenants have used against the worker's [quota] rules
(quota/limiter.py `Limiter.usage`), as protobuf. Its permission, `read_usage`, is checked before
it runs (rpc/auth.py `worker_calls`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.settings import identity_problem
from modelwire.quota.limiter import Limiter
from modelwire.quota.report import LimitKind, LimitUsage, UsageReport
from modelwire.rpc.status import CallScope
from modelwire.v1 import usage_pb2 as pb

_KINDS: dict[LimitKind, pb.LimitKind] = {
    LimitKind.REQUESTS_PER_MINUTE: pb.LIMIT_KIND_REQUESTS_PER_MINUTE,
    LimitKind.TOKENS_PER_MINUTE: pb.LIMIT_KIND_TOKENS_PER_MINUTE,
    LimitKind.CONCURRENT_CALLS: pb.LIMIT_KIND_CONCURRENT_CALLS,
    LimitKind.BUDGET_PER_DAY: pb.LIMIT_KIND_BUDGET_PER_DAY,
    LimitKind.BUDGET_PER_MONTH: pb.LIMIT_KIND_BUDGET_PER_MONTH,
}


def limit_to_pb(limit: LimitUsage) -> pb.LimitUsage:
    message = pb.LimitUsage(kind=_KINDS[limit.kind], used=limit.used, limit=limit.limit)
    # Unset, not zero, for a counter without a window (concurrent calls): zero would say "now".
    if limit.resets_in_s is not None:
        message.resets_in.FromNanoseconds(round(max(0.0, limit.resets_in_s) * 1e9))
    return message


def usage_to_pb(report: UsageReport) -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        rules=[
            pb.RuleUsage(
                rule=rule.rule,
                tenant=rule.tenant,
                model=rule.model,
                limits=[limit_to_pb(limit) for limit in rule.limits],
            )
            for rule in report.rules
        ],
        store=report.store,
        store_available=report.store_available,
    )


class UsageAdminServicer:
    """Not a subclass of the generated UsageAdminServicer (gRPC only looks the methods up): its
    base would be untyped."""

    def __init__(self, limiter: Limiter, known_tenants: Callable[[], Iterable[str]]) -> None:
        """`known_tenants()`: the tenants of the worker's tokens, asked at each call (a reload
        changes them); empty without [auth]."""
        self._limiter = limiter
        self._known_tenants = known_tenants

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        async with CallScope(context):
            tenant = request.tenant or None
            problem = identity_problem(tenant) if tenant is not None else None
            if problem is not None:
                raise InvalidRequest([FieldViolation("tenant", f"{problem}: not a tenant's name")])
            report = await self._limiter.usage(tenant, self._known_tenants())
            return usage_to_pb(report)
