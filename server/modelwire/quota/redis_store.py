"""The counters in Redis, shared by every replica: store.py's algorithm as two Lua scripts, so a
call costs one round trip before (every counter checked and reserved atomically, on the store's
clock) and one after (settled).

Hand-written because no maintained library does this: `limits` and its kin check one limit per
call, cannot take back what a call did not use, and have no concurrent-call places; a call checked
rule by rule would also be charged by the rules that passed when a later one refuses.
(docs/architecture.md says so too.) Keys are computed inside the scripts from the store's clock,
so this needs one Redis (with replicas if wanted), not a Redis Cluster.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from modelwire.core.settings import QuotaSection
from modelwire.quota.counters import Counter
from modelwire.quota.store import RECORD_KEPT_S, WINDOW_GRACE_S, Amounts, Standing, Verdict

# The scripts run TIME, GET, EXISTS, INCRBY, EXPIRE, DEL, HSET, HGETALL, ZADD, ZREM, ZCARD and
# ZREMRANGEBYSCORE, and the client PING, EVALSHA and SCRIPT LOAD: the ACL user of
# docs/operations.md's recipe is given exactly these (its test checks Redis refuses nothing), so
# a script that needs another command needs it there too.
# Every key modelwire writes starts with this: the store may be shared with other applications.
PREFIX = "modelwire:quota:"

# The window of a counter (its key's suffix, and the seconds until the next) from the store's
# clock: minute, day, calendar month (days to a civil date and back: Howard Hinnant's algorithms).
_WINDOWS = """
-- Numbers go back to Redis as %d text: a plain Lua number above 10^14 would be sent as 1e+15.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m > 2 and m - 3 or m + 9) + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
local function window(kind, now)
  if kind == 'm' then
    local w = math.floor(now / 60)
    return ':' .. string.format('%d', w), (w + 1) * 60 - now
  end
  local day = math.floor(now / 86400)
  if kind == 'd' then
    return ':' .. string.format('%d', day), (day + 1) * 86400 - now
  end
  if kind == 'M' then
    local y, m = civil(day)
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return ':' .. string.format('%d', y * 100 + m), days_from_civil(ny, nm) * 86400 - now
  end
  return '', nil
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# ARGV: prefix, call id, lease seconds, tokens, cost, then per counter: unit, window, key, limit.
# Returns {1, used1, resets1, ...} when admitted, {0, retry or -1 (never), index, ...} when not.
_RESERVE = (
    _WINDOWS
    + """
local prefix, call, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local keys, amounts, held, resets = {}, {}, {}, {}
local refused, retry, never = {}, 0, false
local n = (#ARGV - 5) / 4
for i = 1, n do
  local unit, kind = ARGV[2 + 4 * i], ARGV[3 + 4 * i]
  local suffix, reset = window(kind, now)
  local key = prefix .. ARGV[4 + 4 * i] .. suffix
  local limit = tonumber(ARGV[5 + 4 * i])
  local amount, current = 1, 0
  if unit == 't' then amount = tokens elseif unit == '$' then amount = cost end
  if unit == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    current = redis.call('ZCARD', key)
  else
    current = tonumber(redis.call('GET', key) or '0')
  end
  keys[i], amounts[i], held[i], resets[i] = key, amount, current, reset
  if current + amount > limit then
    table.insert(refused, i - 1)
    if amount > limit then never = true end
    if reset ~= nil and reset > retry then retry = reset end
  end
end
if #refused > 0 then
  local answer = {0, never and '-1' or tostring(retry)}
  for _, index in ipairs(refused) do table.insert(answer, index) end
  return answer
end
local answer = {1}
local record = prefix .. 'call:' .. call
for i = 1, n do
  local unit = ARGV[2 + 4 * i]
  if unit == 'c' then
    redis.call('ZADD', keys[i], now + lease, call)
    redis.call('EXPIRE', keys[i], math.ceil(lease))
  else
    redis.call('INCRBY', keys[i], string.format('%%d', amounts[i]))
    redis.call('EXPIRE', keys[i], math.ceil(resets[i]) + %d)
  end
  redis.call('HSET', record, keys[i], unit .. '|' .. ARGV[3 + 4 * i] .. '|'
    .. string.format('%%d', amounts[i]) .. '|' .. ARGV[4 + 4 * i])
  table.insert(answer, held[i] + amounts[i])
  table.insert(answer, resets[i] and tostring(resets[i]) or '')
end
redis.call('EXPIRE', record, math.ceil(lease) + %d)
return answer
"""
    % (WINDOW_GRACE_S, RECORD_KEPT_S)
)

# ARGV: prefix, then per call: call id, tokens, cost, sent (1/0): several calls settled in one
# round trip. Returns how many had a reservation. What a call used beyond its reservation goes
# into the current window (a long stream's excess still limits the minute it is used in); what it
# did not use goes back to the window it reserved in.
_SETTLE = (
    _WINDOWS
    + """
local prefix = ARGV[1]
local now = clock()
local settled = 0
for c = 2, #ARGV, 4 do
  local call = ARGV[c]
  local tokens, cost, sent = tonumber(ARGV[c + 1]), tonumber(ARGV[c + 2]), ARGV[c + 3] == '1'
  local record = prefix .. 'call:' .. call
  local fields = redis.call('HGETALL', record)
  for i = 1, #fields, 2 do
    local key = fields[i]
    local unit, kind, reserved, base = string.match(fields[i + 1], '^(.)|(.)|(%%-?%%d+)|(.*)$')
    reserved = tonumber(reserved)
    if unit == 'c' then
      redis.call('ZREM', key, call)
    elseif unit == 'r' then
      if not sent and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, -1) end
    else
      local actual = tokens
      if unit == '$' then actual = cost end
      local back = reserved - math.min(actual, reserved)
      if back > 0 and redis.call('EXISTS', key) == 1 then
        redis.call('INCRBY', key, string.format('%%d', -back))
      end
      if actual > reserved then
        local suffix, reset = window(kind, now)
        local current = prefix .. base .. suffix
        redis.call('INCRBY', current, string.format('%%d', actual - reserved))
        redis.call('EXPIRE', current, math.ceil(reset) + %d)
      end
    end
  end
  if #fields > 0 then
    redis.call('DEL', record)
    settled = settled + 1
  end
end
return settled
"""
    % WINDOW_GRACE_S
)

# ARGV: prefix, lease seconds, then per place: key, call id. Keeps running calls' places (and
# their records) past their lease.
_RENEW = (
    _WINDOWS
    + """
local now = clock()
local lease = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(lease))
  redis.call('EXPIRE', ARGV[1] .. 'call:' .. ARGV[i + 1], math.ceil(lease) + %d)
end
return 1
"""
    % RECORD_KEPT_S
)

# ARGV: prefix, then per counter: unit, window, key. Returns {used1, resets1, ...}.
_READ = (
    _WINDOWS
    + """
local now = clock()
local answer = {}
for i = 1, (#ARGV - 1) / 3 do
  local unit, kind = ARGV[3 * i - 1], ARGV[3 * i]
  local suffix, reset = window(kind, now)
  local key = ARGV[1] .. ARGV[3 * i + 1] .. suffix
  local used = 0
  if unit == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    used = redis.call('ZCARD', key)
  else
    used = tonumber(redis.call('GET', key) or '0')
  end
  table.insert(answer, used)
  table.insert(answer, reset and tostring(reset) or '')
end
return answer
"""
)


def shown_url(url: str) -> str:
    """The store's URL as logs and errors show it: no user or password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((parts.scheme, f"{host}:{parts.port}", parts.path, "", ""))


class RedisStore:
    """One connection pool to the store; every call's reserve and settle is one script call."""

    def __init__(self, config: QuotaSection, password: str | None) -> None:
        assert config.store is not None
        self.url = shown_url(config.store)
        options: dict[str, Any] = {
            "socket_timeout": config.store_timeout_s,
            "socket_connect_timeout": config.store_timeout_s,
            "health_check_interval": 30,
        }
        if password is not None:
            options["password"] = password
        tls = config.store_tls
        if tls is not None:
            options.update(
                ssl_ca_certs=str(tls.ca_file) if tls.ca_file else None,
                ssl_certfile=str(tls.cert_file) if tls.cert_file else None,
                ssl_keyfile=str(tls.key_file) if tls.key_file else None,
            )
        self._redis = aioredis.from_url(config.store, **options)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._renew = self._redis.register_script(_RENEW)
        self._read = self._redis.register_script(_READ)

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict:
        argv: list[str | int | float] = [PREFIX, call_id, lease_s, amounts.tokens, amounts.cost]
        for counter in counters:
            argv += [counter.unit, counter.window.value, counter.key, counter.limit]
        answer = await self._reserve(args=argv)
        if int(answer[0]) == 0:
            retry = float(answer[1])
            return Verdict(
                False,
                refused=tuple(int(index) for index in answer[2:]),
                retry_after_s=None if retry < 0 else retry,
            )
        values = answer[1:]
        return Verdict(
            True,
            tuple(
                Standing(int(values[i]), float(values[i + 1]) if values[i + 1] else None)
                for i in range(0, len(values), 2)
            ),
        )

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        await self.settle_many([(call_id, used, sent)])

    async def settle_many(self, settles: Sequence[tuple[str, Amounts, bool]]) -> None:
        argv: list[str | int] = [PREFIX]
        for call_id, used, sent in settles:
            argv += [call_id, used.tokens, used.cost, 1 if sent else 0]
        await self._settle(args=argv)

    async def renew(self, places: Sequence[tuple[str, str]], lease_s: float) -> None:
        argv: list[str | float] = [PREFIX, lease_s]
        for key, call_id in places:
            argv += [key, call_id]
        await self._renew(args=argv)

    async def read(self, counters: Sequence[Counter]) -> list[Standing]:
        argv: list[str | int] = [PREFIX]
        for counter in counters:
            argv += [counter.unit, counter.window.value, counter.key]
        values = await self._read(args=argv) if counters else []
        return [
            Standing(int(values[i]), float(values[i + 1]) if values[i + 1] else None)
            for i in range(0, len(values), 2)
        ]

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


# Everything a store's round trip may raise.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
# Replies that say the store cannot serve now, but will: like a lost connection.
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "READONLY", "OOM", "MASTERDOWN", "TRYAGAIN")


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the store is away (a connection, a timeout, a busy or loading
    server), rather than that it refused what was asked (an ACL without a command the scripts
    run, a script error): the one calls for waiting, the other for the operator."""
    if isinstance(error, ResponseError):
        return str(error).startswith(_TRANSIENT_REPLIES)
    return True
