-- drop_if_ours(index, token): drop the shard's lease if this task (its token) holds it.
-- KEYS: leases expiry
local function drop_if_ours(index, token)
  local held = redis.call('HGET', leases, index)
  if held and cjson.decode(held).token == token then
    redis.call('HDEL', leases, index)
    redis.call('ZREM', expiry, index)
  end
end
