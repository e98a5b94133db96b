-- begin: take the shard's lease for a step, unless the task should not run.
-- KEYS: job aggregated failed deliveries leases expiry
-- ARGV: delivery index lease seconds most_deliveries
-- USES: now
-- delivery: the step's name (the stage; "score.wave2" after the first wave); lease: the Lease's JSON, its rank
-- from workers.lifecycle.pipeline. Another task's live lease at the same or a later step wins.
-- Returns {1, '', deliveries} to run, or {0, why, deliveries}: the job's status, 'settled', 'leased by <worker>',
-- 'poison' (delivered more than most_deliveries times).
local status = redis.call('HGET', job, 'status')
if status ~= 'running' then
  return {0, status or 'unknown', 0}
end
if redis.call('SISMEMBER', aggregated, index) == 1 or redis.call('HEXISTS', failed, index) == 1 then
  return {0, 'settled', 0}
end
local mine = cjson.decode(lease)
local held = redis.call('HGET', leases, index)
if held then
  local other = cjson.decode(held)
  local expires = tonumber(redis.call('ZSCORE', expiry, index) or '0')
  local live = expires > now and other.state ~= 'requeued'
  if other.token ~= mine.token and live and other.rank >= mine.rank then
    return {0, 'leased by ' .. other.owner, 0}
  end
end
local n = redis.call('HINCRBY', deliveries, delivery .. ':' .. index, 1)
if n > tonumber(most_deliveries) then return {0, 'poison', n} end
mine.since = now
redis.call('HSET', leases, index, cjson.encode(mine))
redis.call('ZADD', expiry, now + tonumber(seconds), index)
return {1, '', n}
