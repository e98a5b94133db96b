-- resume: reopen a job (its keys no longer expire) and pick the shards to send again.
-- KEYS: job aggregated failed attempts deliveries leases expiry active ...others
-- ARGV: seen shards ...waiting
-- USES: now
-- others: the job's other kept keys; seen: the status the caller read; waiting: the shards whose task waits in the
-- broker. Returns the shards neither aggregated, nor under a live lease, nor waiting; or {-1, status} when the job
-- changed since the caller read it, or is done.
local status = redis.call('HGET', job, 'status')
if status ~= seen or status == 'done' then return {-1, status or 'unknown'} end
local queued = {}
for _, shard in ipairs(waiting) do queued[shard] = true end
local out = {}
for i = 0, tonumber(shards) - 1 do
  local index = tostring(i)
  if redis.call('SISMEMBER', aggregated, index) == 0 and not queued[index] then
    local expires = tonumber(redis.call('ZSCORE', expiry, index) or '0')
    if expires <= now then
      out[#out + 1] = i
      redis.call('HDEL', leases, index)
      redis.call('ZREM', expiry, index)
    end
  end
end
redis.call('DEL', failed, attempts, deliveries)
redis.call('HSET', job, 'status', 'running')
redis.call('HDEL', job, 'finished')
redis.call('SADD', active, job)
for _, key in ipairs(KEYS) do redis.call('PERSIST', key) end
return out
