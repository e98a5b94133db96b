-- rearm(index, lease, seconds): the lease re-armed as sent again by the reaper, its expiry pushed on (so that a
-- task lost on its way is sent again); counted as a requeue unless a back-off ended. Returns its JSON.
-- KEYS: leases expiry job requeued
-- USES: now
local function rearm(index, lease, seconds)
  if lease.state ~= 'retry' then
    redis.call('HINCRBY', job, 'requeues', 1)
    redis.call('HINCRBY', requeued, index, 1)
  end
  lease.state = 'requeued'
  lease.owner = 'reaper'
  lease.since = now
  local held = cjson.encode(lease)
  redis.call('HSET', leases, index, held)
  redis.call('ZADD', expiry, now + tonumber(seconds), index)
  return held
end
