"""The Lua scripts behind `queue.BioagentsQueue`: each is one of SAQ's queue operations, or one
of the operations SAQ lacks, done atomically in one round trip on SAQ's own keys.

SAQ's layout (`saq/queue/redis.py`), which every script keeps meaning what it means there:

    saq:job:<queue>:<key>    string  the job record: `Job.to_dict()` serialised by the queue's dump
    saq:<queue>:incomplete   zset    job id → scheduled epoch seconds (0: ready); queued, active
                                     and scheduled jobs (a score > 0 and not in `queued`: delayed)
    saq:<queue>:queued       list    job ids ready to run; workers take from the left
    saq:<queue>:active       list    job ids being processed
    saq:<queue>:stats        zset    live workers' info keys → expiry (ms); `worker_info:<id>`
    saq:abort:<key>          string  set by abort() while the worker is told to stop the job
    channel saq:job:<queue>:<key>    the job's status after every change (Queue.listen)

What we add next to them, in the same namespace:

    saq:<queue>:claims       hash    job id → claim token "<dequeued ms>:<random>" of the attempt a
                                     worker holds (set by dequeue, cleared by retry/finish)
    saq:<queue>:completed    zset    job id → finish ms: the completed listing, newest last
    saq:<queue>:failed       zset    job id → finish ms: failed and aborted (cancelled) jobs
    saq:<queue>:paused       string  present while the queue is paused; dequeue takes nothing
    saq:<queue>:progress     hash    job id → the running attempt's latest stage {"stage","percent"}
                                     (each stage, cheaply; SAQ's record gets it at each heartbeat)
    saq:<queue>:about        hash    job id → what search reads: "<user>\x1f<error>\x1f<question>",
                                     case-folded (`queue.about`), kept while the job is listed

A claim token guards a worker's writes: a worker whose attempt was recovered from a stall (its
claim cleared) can no longer finish, retry or update the job. Writes without a token (SAQ's own
calls outside a worker, the API's actions) are not guarded, exactly as in SAQ.
Job keys are built from ids passed in: this runs on one Redis server or a Sentinel-managed
master, not on Redis Cluster.
"""

from __future__ import annotations

from .pipeline import Script

# SAQ's enqueue script, plus: a re-enqueued finished job leaves the finished listings, and the
# job's search entry is stored.
# KEYS: incomplete, job id, queued, abort id, completed, failed, about.
# ARGV: record, scheduled, search entry.
ENQUEUE = Script(
    """
if not redis.call('ZSCORE', KEYS[1], KEYS[2]) and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[1], ARGV[2], KEYS[2])
  if ARGV[2] == '0' then redis.call('RPUSH', KEYS[3], KEYS[2]) end
  redis.call('ZREM', KEYS[5], KEYS[2])
  redis.call('ZREM', KEYS[6], KEYS[2])
  redis.call('HSET', KEYS[7], KEYS[2], ARGV[3])
  return 1
end
return 0
"""
)

# SAQ's dequeue (queued → active, then the record) as one step, unless the queue is paused.
# KEYS: queued, active, paused, claims. ARGV: claim token.
# Returns {0} when paused, {} when nothing is queued, {1, id, record} otherwise.
DEQUEUE = Script(
    """
if redis.call('EXISTS', KEYS[3]) == 1 then return {0} end
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if not id then return {} end
redis.call('HSET', KEYS[4], id, ARGV[1])
return {1, id, redis.call('GET', id)}
"""
)

# After a blocking BLMOVE took `id` into active: claim it, or give it back to the front of the
# queue when the queue was paused meanwhile or this worker is stopping (ARGV[3] = '1').
# A job a sweep put back meanwhile (no longer in active) is not taken.
# KEYS: queued, active, paused, claims, id. ARGV: claim token, id, stopping.
# Returns {0} given back or lost, {1, id, record} claimed.
CLAIM_MOVED = Script(
    """
if not redis.call('LPOS', KEYS[2], ARGV[2]) then return {0} end
if ARGV[3] == '1' or redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('LREM', KEYS[2], -1, ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('LPUSH', KEYS[1], ARGV[2]) end
  return {0}
end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
return {1, ARGV[2], redis.call('GET', KEYS[5])}
"""
)

# SAQ's _update (store the record, publish its status) in one step, with two guards: a stale
# claim writes nothing, and a status is never silently overwritten — with mode 'keep' (SAQ's
# update without a status) the stored status must still be the one we serialised, and no
# status replaces a stored aborting/aborted one (an abort racing a heartbeat or a progress
# write). On a mismatch nothing is written and the stored status (and error: an abort's
# reason) is returned, for the caller to serialise again with them.
# KEYS: job id, claims. ARGV: record, status, mode ('keep'|'set'), claim token or ''.
# Returns {1} stored, {0, stored status, stored error or false} mismatch, {-1} stale claim.
UPDATE = Script(
    """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[4] then return {-1} end
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, old = pcall(cjson.decode, stored)
  if ok and type(old) == 'table' then
    local status = old['status']
    if type(status) ~= 'string' then status = 'new' end
    if status ~= ARGV[2] then
      if ARGV[3] == 'keep' or status == 'aborting' or status == 'aborted' then
        local error = old['error']
        if type(error) ~= 'string' then error = false end
        return {0, status, error}
      end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[2])
return {1}
"""
)

# SAQ's _retry in one step: out of active and queued, into incomplete with its score, pushed to
# the queue when ready now (to the front for a job put back unspent), record stored, published.
# KEYS: job id, queued, active, incomplete, claims, progress.
# ARGV: record, claim token or '', score, push ('0' no, '1' back, '2' front).
# Returns 1 stored, 0 stale claim.
RETRY = Script(
    """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[5], KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[5], KEYS[1])
redis.call('HDEL', KEYS[6], KEYS[1])
redis.call('LREM', KEYS[3], 1, KEYS[1])
redis.call('LREM', KEYS[2], 1, KEYS[1])
redis.call('ZADD', KEYS[4], ARGV[3], KEYS[1])
if ARGV[4] == '1' then redis.call('RPUSH', KEYS[2], KEYS[1])
elseif ARGV[4] == '2' then redis.call('LPUSH', KEYS[2], KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[1], 'queued')
return 1
"""
)

# SAQ's _finish in one step (out of active and incomplete; record kept for `ttl` ms, kept for
# ever at 0, deleted below 0; status published), plus the finished listings: the job enters
# `index` (and leaves `other`), which is trimmed to its retention by age and count. The records
# of jobs trimmed by count are deleted with them (trimmed by age, they expire by their own ttl);
# the search entries of trimmed jobs go too, and the job's own is replaced when one is given.
# KEYS: job id, active, incomplete, claims, index, other index, about, progress.
# ARGV: record, claim token or '', ttl ms, status, now ms, keep age ms (-1: none),
#       keep count (-1: none), search entry or ''.
# Returns 1 stored, 0 stale claim, 2 already finished with that status (nothing changed: SAQ's
# worker finishes an aborted job twice, once in process() and once in abort()).
FINISH = Script(
    """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[4], KEYS[1]) ~= ARGV[2] then return 0 end
local stored = redis.call('GET', KEYS[1])
if stored and (ARGV[4] == 'complete' or ARGV[4] == 'failed' or ARGV[4] == 'aborted') then
  local ok, old = pcall(cjson.decode, stored)
  if ok and type(old) == 'table' and old['status'] == ARGV[4] then return 2 end
end
redis.call('HDEL', KEYS[4], KEYS[1])
redis.call('HDEL', KEYS[8], KEYS[1])
redis.call('LREM', KEYS[2], 1, KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[6], KEYS[1])
local ttl = tonumber(ARGV[3])
if ttl < 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[5], KEYS[1])
  redis.call('HDEL', KEYS[7], KEYS[1])
else
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[7], KEYS[1], ARGV[8]) end
  local now = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[5], now, KEYS[1])
  local age = tonumber(ARGV[6])
  if age >= 0 then
    local cutoff = '(' .. (now - age)
    local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', cutoff, 'LIMIT', 0, 1000)
    if #expired > 0 then
      redis.call('ZREM', KEYS[5], unpack(expired))
      redis.call('HDEL', KEYS[7], unpack(expired))
    end
  end
  local keep = tonumber(ARGV[7])
  if keep >= 0 then
    local excess = redis.call('ZCARD', KEYS[5]) - keep
    if excess > 0 then
      local old = redis.call('ZRANGE', KEYS[5], 0, excess - 1)
      redis.call('DEL', unpack(old))
      redis.call('HDEL', KEYS[7], unpack(old))
      redis.call('ZREMRANGEBYRANK', KEYS[5], 0, excess - 1)
    end
  end
end
redis.call('PUBLISH', KEYS[1], ARGV[4])
return 1
"""
)

# SAQ's abort in one step: the job leaves queued and incomplete, is stored as aborting with the
# abort key set, and leaves active. Returns 1 when it had not started (it was queued, or
# scheduled/delayed: SAQ misses that case and leaves such a job aborting for ever), so the caller
# finishes it as aborted at once; 0 when a worker holds it (its worker stops it and finishes it).
# KEYS: job id, queued, incomplete, active, abort id. ARGV: record, error, abort key ttl ms.
ABORT = Script(
    """
local removed = redis.call('LREM', KEYS[2], 0, KEYS[1])
local score = redis.call('ZSCORE', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', KEYS[1], 'aborting')
if removed > 0 or (score and tonumber(score) > 0) then return 1 end
redis.call('LREM', KEYS[4], 0, KEYS[1])
return 0
"""
)

# SAQ's schedule script without its lock: scheduled jobs whose time has come (score in
# [1, now]) become ready. Used to start a retry at the exact end of its backoff.
# KEYS: incomplete, queued. ARGV: now (epoch seconds).
PROMOTE_DUE = Script(
    """
local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], 1, ARGV[1])
for _, id in ipairs(jobs) do
  redis.call('ZADD', KEYS[1], 0, id)
  redis.call('RPUSH', KEYS[2], id)
end
return jobs
"""
)

# The sweep's look at what workers hold, once per lock period across all workers: the active
# list and the claims (an aborting job has left active but is still held), with their records.
# A held job without a claim (taken by BLMOVE, its claim not yet written) gets a placeholder
# claim stamped now, so the next sweep can tell how long it has been held; it is returned
# without a token this time.
# KEYS: sweep lock, active, claims. ARGV: lock ms, placeholder token.
# Returns {} when another process holds the lock, else {ids, records, claim tokens}.
SWEEP_SCAN = Script(
    """
if not redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then return {} end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local seen = {}
for _, id in ipairs(ids) do seen[id] = true end
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not seen[id] then ids[#ids + 1] = id end
end
local records, claims = {}, {}
for i, id in ipairs(ids) do
  records[i] = redis.call('GET', id)
  claims[i] = redis.call('HGET', KEYS[3], id)
  if not claims[i] and records[i] then redis.call('HSET', KEYS[3], id, ARGV[2]) end
end
return {ids, records, claims}
"""
)

# Forget a held job whose record is gone (SAQ's "Sweeping missing job").
# KEYS: active, incomplete, claims, about, progress. ARGV: id.
FORGET = Script(
    """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
"""
)

# A job, where it stands, and its running attempt's latest stage.
# KEYS: job id, incomplete, progress. Returns {record, score, progress}.
GET = Script(
    """
return {
  redis.call('GET', KEYS[1]),
  redis.call('ZSCORE', KEYS[2], KEYS[1]),
  redis.call('HGET', KEYS[3], KEYS[1]),
}
"""
)

# Several jobs, as GET. KEYS: incomplete, progress. ARGV: ids.
# Returns {record1, score1, progress1, record2, …}.
GET_MANY = Script(
    """
local out = {}
for i, id in ipairs(ARGV) do
  out[3 * i - 2] = redis.call('GET', id)
  out[3 * i - 1] = redis.call('ZSCORE', KEYS[1], id)
  out[3 * i] = redis.call('HGET', KEYS[2], id)
end
return out
"""
)

# Counts by state, with the finished listings first trimmed to their retention by age (their
# records expire by themselves; their search entries go here).
# KEYS: queued, active, incomplete, completed, failed, about.
# ARGV: completed cutoff ms, failed cutoff ms ('-inf' when kept for ever).
# Returns {waiting, active, delayed, completed, failed}.
COUNTS = Script(
    """
for i = 1, 2 do
  if ARGV[i] ~= '-inf' then
    local index = KEYS[3 + i]
    local expired = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[i], 'LIMIT', 0, 5000)
    if #expired > 0 then
      redis.call('ZREM', index, unpack(expired))
      redis.call('HDEL', KEYS[6], unpack(expired))
    end
  end
end
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('LLEN', KEYS[2]),
  redis.call('ZCOUNT', KEYS[3], '(0', '+inf'),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
}
"""
)

# A failed (or aborted) job back to the queue with a fresh set of attempts (the board's and the
# owner's retry). KEYS: job id, failed, incomplete, queued. ARGV: record.
# Returns 1 done, 0 no such job, -1 not failed.
RETRY_FAILED = Script(
    """
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
local ok, record = pcall(cjson.decode, stored)
local status = ok and type(record) == 'table' and record['status']
if status ~= 'failed' and status ~= 'aborted' then return -1 end
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], 0, KEYS[1])
redis.call('RPUSH', KEYS[4], KEYS[1])
redis.call('PUBLISH', KEYS[1], 'queued')
return 1
"""
)

# Delete a job that no worker holds (one in active without a claim is in transit from a
# blocking dequeue, whose claim then finds it gone).
# KEYS: job id, queued, incomplete, completed, failed, claims, active, about, progress.
# Returns 1 removed, 0 no such job, -1 a worker holds it.
REMOVE = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[6], KEYS[1]) == 1 then return -1 end
redis.call('LREM', KEYS[7], 0, KEYS[1])
redis.call('LREM', KEYS[2], 0, KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[4], KEYS[1])
redis.call('ZREM', KEYS[5], KEYS[1])
redis.call('HDEL', KEYS[8], KEYS[1])
redis.call('HDEL', KEYS[9], KEYS[1])
redis.call('DEL', KEYS[1])
return 1
"""
)

# A delayed (scheduled) job ready now. KEYS: incomplete, queued, job id.
# Returns 1 done, 0 no such job, -1 not delayed.
PROMOTE = Script(
    """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local score = redis.call('ZSCORE', KEYS[1], KEYS[3])
if not score or tonumber(score) <= 0 then return -1 end
redis.call('ZADD', KEYS[1], 0, KEYS[3])
redis.call('RPUSH', KEYS[2], KEYS[3])
return 1
"""
)

# Remove the finished jobs of one listing that finished before a cutoff, a batch at a time.
# KEYS: index, about. ARGV: cutoff ms, batch size. Returns how many were removed.
CLEAN_FINISHED = Script(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids == 0 then return 0 end
redis.call('DEL', unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
return #ids
"""
)

# Remove some waiting or delayed jobs (ids chosen by the caller), if still there.
# KEYS: queued, incomplete, about. ARGV: ids. Returns how many were removed.
REMOVE_UNSTARTED = Script(
    """
local removed = 0
for _, id in ipairs(ARGV) do
  local score = redis.call('ZSCORE', KEYS[2], id)
  if score then
    local queued = redis.call('LREM', KEYS[1], 0, id)
    if queued > 0 or tonumber(score) > 0 then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('DEL', id)
      removed = removed + 1
    end
  end
end
return removed
"""
)

# The oldest waiting job's record. KEYS: queued.
OLDEST_WAITING = Script(
    """
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return false end
return redis.call('GET', id)
"""
)

# One page of the jobs of a listing that a search accepts, and how many it accepts (SPEC §7
# search): by user id, exactly; by text in the question (case-folded by the caller, like the
# search entries), and for failed jobs also in the error of their last attempt. Reads each
# job's search entry, "<user>\x1f<error>\x1f<question>", newest first; a job without one
# (enqueued by a plain SAQ client) is read from its record.
# KEYS: the listing, about. ARGV: kind ('list': a list, newest at its end; 'zset': newest
# highest; 'delayed': incomplete scores > 0), user or '', case-folded text or '', '1' to also
# search the error, offset, limit.
# Returns {total, id…} for the page.
SEARCH = Script(
    """
local ids
if ARGV[1] == 'list' then
  ids = redis.call('LRANGE', KEYS[1], 0, -1)
  local n = #ids
  for i = 1, math.floor(n / 2) do ids[i], ids[n - i + 1] = ids[n - i + 1], ids[i] end
elseif ARGV[1] == 'delayed' then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(0')
else
  ids = redis.call('ZREVRANGE', KEYS[1], 0, -1)
end
local user, text, with_error = ARGV[2], ARGV[3], ARGV[4] == '1'
local prefix = user .. '\\31'
local offset, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local function from_record(id)
  local raw = redis.call('GET', id)
  local ok, job = pcall(cjson.decode, raw or '')
  local kwargs = ok and type(job) == 'table' and job['kwargs']
  if type(kwargs) ~= 'table' then return nil end
  local who, question = kwargs['userId'], kwargs['question']
  if type(who) ~= 'string' then who = '' end
  if type(question) ~= 'string' then question = '' end
  return who .. '\\31\\31' .. string.lower(question)
end
local total, page = 0, {}
for i = 1, #ids, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #ids) do chunk[#chunk + 1] = ids[j] end
  local entries = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j, entry in ipairs(entries) do
    if not entry then entry = from_record(chunk[j]) end
    local ok = entry ~= nil
    if ok and user ~= '' then ok = string.sub(entry, 1, #prefix) == prefix end
    if ok and text ~= '' then
      local first = string.find(entry, '\\31', 1, true)
      local second = first and string.find(entry, '\\31', first + 1, true)
      if not second then
        ok = false
      else
        local found = string.find(entry, text, second + 1, true)
        if not found and with_error then
          found = string.find(string.sub(entry, first + 1, second - 1), text, 1, true)
        end
        ok = found ~= nil
      end
    end
    if ok then
      total = total + 1
      if total > offset and #page < limit then page[#page + 1] = chunk[j] end
    end
  end
end
table.insert(page, 1, total)
return page
"""
)
