-- fail: settle the shard as failed, unless it is settled already.
-- KEYS: aggregated failed leases expiry
-- ARGV: index token reason
-- USES: drop_if_ours
-- Returns 1 when this call settled it.
if redis.call('SISMEMBER', aggregated, index) == 1 or redis.call('HEXISTS', failed, index) == 1 then
  return 0
end
redis.call('HSET', failed, index, reason)
drop_if_ours(index, token)
return 1
