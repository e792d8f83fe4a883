"""The Lua scripts of the Redis job layout (see `saq_queue.py` for the layout itself).

Each script is one atomic step of a job's life, so two processes can never both take a job,
finish it or recover it. Job keys are built from a prefix inside the scripts: this layout runs
on one Redis server or a Sentinel-managed master, not on Redis Cluster.
"""

from __future__ import annotations

from ..redis_pipeline import Script

# KEYS: job, waiting, wake. ARGV: job record, id.
ENQUEUE = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], 0, 'w')
  return 1
end
return 0
"""
)

# Takes up to ARGV[1] waiting jobs for worker ARGV[2] unless the queue is paused.
# KEYS: waiting, running, paused, wake. ARGV: count, worker id, job prefix, now (ms).
# Returns {started_ms, ids, records}; the running entry "<worker> <started_ms>" is the claim.
CLAIM = Script(
    """
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local claim = ARGV[2] .. ' ' .. ARGV[4]
local entries, keys = {}, {}
for i, id in ipairs(ids) do
  entries[2 * i - 1] = id
  entries[2 * i] = claim
  keys[i] = ARGV[3] .. id
end
redis.call('HSET', KEYS[2], unpack(entries))
local records = redis.call('MGET', unpack(keys))
-- A full batch may have left work behind: wake another idle worker to look.
if #ids == tonumber(ARGV[1]) then redis.call('ZADD', KEYS[4], 0, 'w') end
return {ARGV[4], ids, records}
"""
)

# Stores the outcome of a claimed attempt, if the claim is still this caller's.
# KEYS: job, running, progress, waiting, delayed, completed (list, newest first), failed (zset),
#       wake.
# ARGV: id, claim, outcome (completed|failed|delayed|waiting), record, delay ms or finish ms,
#       keep count (-1: no limit), trim slack, job prefix.
# Returns 1 when stored (or already stored by this very call, resent after a lost reply),
# 0 when the claim was lost (the job was recovered from a stall and belongs to another run).
SETTLE = Script(
    """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner ~= ARGV[2] then
  if not owner and redis.call('GET', KEYS[1]) == ARGV[4] then return 1 end
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[4])
local outcome = ARGV[3]
local keep = tonumber(ARGV[6])
if outcome == 'waiting' then
  redis.call('LPUSH', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[8], 0, 'w')
elseif outcome == 'delayed' then
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[5], due, ARGV[1])
elseif outcome == 'completed' then
  local size = redis.call('LPUSH', KEYS[6], ARGV[1])
  if keep >= 0 and size > keep then
    local drop = math.min(size, size - keep + tonumber(ARGV[7]))
    local ids = redis.call('LRANGE', KEYS[6], -drop, -1)
    local keys = {}
    for i, id in ipairs(ids) do keys[i] = ARGV[8] .. id end
    redis.call('DEL', unpack(keys))
    redis.call('LTRIM', KEYS[6], 0, size - drop - 1)
  end
else
  redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
  if keep >= 0 then
    local size = redis.call('ZCARD', KEYS[7])
    if size > keep then
      local drop = math.min(size, size - keep + tonumber(ARGV[7]))
      local ids = redis.call('ZRANGE', KEYS[7], 0, drop - 1)
      local keys = {}
      for i, id in ipairs(ids) do keys[i] = ARGV[8] .. id end
      redis.call('DEL', unpack(keys))
      redis.call('ZREMRANGEBYRANK', KEYS[7], 0, drop - 1)
    end
  end
end
return 1
"""
)

# KEYS: job, running, progress, delayed. ARGV: id.
GET = Script(
    """
return {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], ARGV[1]),
        redis.call('HGET', KEYS[3], ARGV[1]), redis.call('ZSCORE', KEYS[4], ARGV[1])}
"""
)

# The same for many ids, flattened four by four. KEYS: running, progress, delayed.
# ARGV: job prefix, ids...
GET_MANY = Script(
    """
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  out[#out + 1] = redis.call('GET', ARGV[1] .. id)
  out[#out + 1] = redis.call('HGET', KEYS[1], id)
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
  out[#out + 1] = redis.call('ZSCORE', KEYS[3], id)
end
return out
"""
)

# Moves delayed jobs whose time has come to the end of the waiting list.
# KEYS: delayed, waiting, wake. Returns {moved, ms until the next one is due or -1}.
PROMOTE_DUE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  redis.call('RPUSH', KEYS[2], unpack(due))
  redis.call('ZADD', KEYS[3], 0, 'w')
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, tonumber(nxt[2]) - now} end
return {#due, -1}
"""
)

# Worker heartbeat: each served queue's worker set scores the worker with its expiry.
# KEYS: the worker sets. ARGV: worker id, ttl ms.
HEARTBEAT = Script(
    """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for _, key in ipairs(KEYS) do redis.call('ZADD', key, expiry, ARGV[1]) end
return expiry
"""
)

# KEYS: worker set. Counts live workers (expiry in the future, by the server's clock).
LIVE_WORKERS = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# Stalled jobs: running entries whose worker's heartbeat expired (or never existed) are
# re-claimed for worker ARGV[1], which then restarts or fails them.
# KEYS: running, workers. ARGV: worker id, full scan (1) or only when a worker died (0).
# Returns {claim, ids}.
FIND_STALLED = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZCOUNT', KEYS[2], '-inf', now)
if dead == 0 and ARGV[2] == '0' then return {} end
local live = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do live[w] = true end
local entries = redis.call('HGETALL', KEYS[1])
local claim = ARGV[1] .. ' ' .. now
local stalled = {}
for i = 1, #entries, 2 do
  local owner = string.match(entries[i + 1], '^(%S+)')
  if not live[owner] then
    redis.call('HSET', KEYS[1], entries[i], claim)
    stalled[#stalled + 1] = entries[i]
  end
end
if dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
return {claim, stalled}
"""
)

# Puts back jobs claimed by worker ARGV[1] that it does not hold (a claim whose reply was lost
# to a broken connection). KEYS: running, waiting, wake. ARGV: worker id, held ids...
RECONCILE = Script(
    """
local held = {}
for i = 2, #ARGV do held[ARGV[i]] = true end
local entries = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1] .. ' '
local back = 0
for i = 1, #entries, 2 do
  if string.sub(entries[i + 1], 1, #prefix) == prefix and not held[entries[i]] then
    redis.call('HDEL', KEYS[1], entries[i])
    redis.call('LPUSH', KEYS[2], entries[i])
    back = back + 1
  end
end
if back > 0 then redis.call('ZADD', KEYS[3], 0, 'w') end
return back
"""
)

# Completed jobs that finished at or before a cutoff leave, oldest first. The completed list
# is in completion order, so the walk from its old end stops at the first younger job.
# Defined once, used by STATS (retention by age) and REMOVE_COMPLETED_BEFORE (clean).
_COMPLETED_BEFORE = """
local function completed_before(list, prefix, cutoff, limit)
  local removed = 0
  while removed < limit do
    local id = redis.call('LINDEX', list, -1)
    if not id then break end
    local record = redis.call('GET', prefix .. id)
    local finished = record and tonumber(string.match(record, '"completed":(%d+)'))
    if record and finished and finished > cutoff then break end
    redis.call('RPOP', list)
    if record then redis.call('DEL', prefix .. id) end
    removed = removed + 1
  end
  return removed
end
"""

# Retention by age, then the counts. KEYS: completed, failed, waiting, running, delayed.
# ARGV: job prefix, completed cutoff ms, failed cutoff ms.
STATS = Script(
    _COMPLETED_BEFORE
    + """
completed_before(KEYS[1], ARGV[1], tonumber(ARGV[2]), 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 1000)
if #ids > 0 then
  local keys = {}
  for j, id in ipairs(ids) do keys[j] = ARGV[1] .. id end
  redis.call('DEL', unpack(keys))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return {redis.call('LLEN', KEYS[3]), redis.call('HLEN', KEYS[4]), redis.call('ZCARD', KEYS[5]),
        redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"""
)

# KEYS: completed list. ARGV: job prefix, cutoff ms, limit. Returns how many left.
REMOVE_COMPLETED_BEFORE = Script(
    _COMPLETED_BEFORE
    + """
return completed_before(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
"""
)

# KEYS: failed zset. ARGV: job prefix, cutoff ms, limit. Returns how many left.
REMOVE_FAILED_BEFORE = Script(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return 0 end
local keys = {}
for j, id in ipairs(ids) do keys[j] = ARGV[1] .. id end
redis.call('DEL', unpack(keys))
redis.call('ZREM', KEYS[1], unpack(ids))
return #ids
"""
)

# Removes one job that is not running. KEYS: job, running, waiting, delayed, completed, failed,
# progress. ARGV: id. Returns 1 removed, 0 no such job, -1 running.
REMOVE = Script(
    """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('LREM', KEYS[5], 0, ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""
)

# Removes waiting (or delayed) jobs still in that state. KEYS: waiting or delayed.
# ARGV: job prefix, 'list' or 'zset', ids... Returns how many.
REMOVE_IF_IN = Script(
    """
local removed = 0
for i = 3, #ARGV do
  local gone
  if ARGV[2] == 'list' then gone = redis.call('LREM', KEYS[1], 1, ARGV[i])
  else gone = redis.call('ZREM', KEYS[1], ARGV[i]) end
  if gone > 0 then
    redis.call('DEL', ARGV[1] .. ARGV[i])
    removed = removed + 1
  end
end
return removed
"""
)

# A delayed job becomes waiting now. KEYS: delayed, waiting, wake, job. ARGV: id.
# Returns 1 promoted, 0 no such job, -1 not delayed.
PROMOTE = Script(
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], 0, 'w')
  return 1
end
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
return 0
"""
)

# A failed job goes back to waiting with its new record. KEYS: failed, job, waiting, wake.
# ARGV: id, record. Returns 1 retried, 0 no such job, -1 not failed.
RETRY = Script(
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], 0, 'w')
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return 0
"""
)

# KEYS: waiting. The oldest waiting job's record.
OLDEST_WAITING = Script(
    """
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
"""
)

ALL = [
    ENQUEUE,
    CLAIM,
    SETTLE,
    GET,
    GET_MANY,
    PROMOTE_DUE,
    HEARTBEAT,
    LIVE_WORKERS,
    FIND_STALLED,
    RECONCILE,
    STATS,
    REMOVE_COMPLETED_BEFORE,
    REMOVE_FAILED_BEFORE,
    REMOVE,
    REMOVE_IF_IN,
    PROMOTE,
    RETRY,
    OLDEST_WAITING,
]
