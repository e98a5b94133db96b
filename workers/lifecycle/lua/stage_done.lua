-- stage_done: mark a stage done for the shard; aggregate settles it (its lease dropped, its counters added once,
-- a failure recorded earlier forgotten).
-- KEYS: stage failed counters leases expiry
-- ARGV: index token settles candidates tokens rows
-- USES: drop_if_ours
-- stage: the stage's set; settles: '1' for aggregate. Returns 1 when this call was the first.
local first = redis.call('SADD', stage, index)
if settles == '1' then
  redis.call('HDEL', failed, index)
  if first == 1 then
    redis.call('HINCRBY', counters, 'candidates', candidates)
    redis.call('HINCRBY', counters, 'tokens', tokens)
    redis.call('HINCRBY', counters, 'rows', rows)
  end
  drop_if_ours(index, token)
end
return first
