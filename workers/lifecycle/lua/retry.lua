-- retry: count a failed attempt; below the limit the lease waits out its back-off, then the reaper sends the task
-- again.
-- KEYS: attempts leases expiry
-- ARGV: index token most counted ...backoffs
-- USES: now
-- counted: what the attempts are counted under (the shard; an adaptive wave after the first apart); backoffs: the
-- seconds to wait after the 1st, 2nd, ... failed attempt (workers.lifecycle.policy; the last for any later one).
-- Returns {failed attempts so far, back-off}.
local n = redis.call('HINCRBY', attempts, counted, 1)
local backoff = tonumber(backoffs[math.min(n, #backoffs)] or '0')
if n < tonumber(most) then
  local held = redis.call('HGET', leases, index)
  if held then
    local lease = cjson.decode(held)
    if lease.token == token then
      lease.state = 'retry'
      redis.call('HSET', leases, index, cjson.encode(lease))
      redis.call('ZADD', expiry, now + backoff, index)
    end
  end
end
return {n, tostring(backoff)}
