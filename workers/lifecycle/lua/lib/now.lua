-- now: Redis's own clock in seconds (the machines' clocks need not agree).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
