package redis

import goredis "github.com/redis/go-redis/v9"

// The presence record's scripts. Each one touches the keys of one slot:
// the keys of one presence key (its total, members, index and instance
// hashes, which share a hash tag; with one Redis also the instance's key
// set), or one node-level key. Times are milliseconds of the clock of the
// Redis server that runs the script (TIME).

// Replies of updateScript other than a change.
const (
	updateExpired   = -1 // the instance's lease ended: nothing written
	updateOverLimit = -2 // refused by the limit: nothing written
	updateEmpty     = 4  // bit: the instance has no entry left in the key
)

// Changes that updateScript reports, in its reply's low bits.
const (
	updatePresent = 1 // the member had no session anywhere and now has
	updateAbsent  = 2 // the member had sessions and now has none
)

// updateScript sets instance ARGV[1]'s sessions of member ARGV[2] to ARGV[3]
// in a presence key whose total hash, member index, instance index and
// instance hash are KEYS[1] to KEYS[4]. It refuses with updateExpired when
// the server's clock has reached the instance's lease deadline ARGV[5],
// and with updateOverLimit an increase that would take the member's total
// above a positive limit ARGV[4]. Otherwise it returns the change
// (updatePresent, updateAbsent or 0), plus updateEmpty when the instance
// has no entry left in the key. With KEYS[5], the instance's key set, it
// keeps the presence key ARGV[6] in it exactly while the instance has
// entries in the key.
var updateScript = goredis.NewScript(`
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) >= tonumber(ARGV[5]) then
	return -1
end
local m = ARGV[2]
local new = tonumber(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[4], m) or '0')
local res = 0
if new ~= old then
	local total = tonumber(redis.call('HGET', KEYS[1], m) or '0')
	local nt = total - old + new
	local limit = tonumber(ARGV[4])
	if new > old and limit > 0 and nt > limit then
		return -2
	end
	if new > 0 then
		redis.call('HSET', KEYS[4], m, new)
	else
		redis.call('HDEL', KEYS[4], m)
	end
	if nt > 0 then
		redis.call('HSET', KEYS[1], m, nt)
		if total <= 0 then
			redis.call('ZADD', KEYS[2], 0, m)
			res = 1
		end
	else
		redis.call('HDEL', KEYS[1], m)
		redis.call('ZREM', KEYS[2], m)
		if total > 0 then res = 2 end
	end
	if old == 0 or new == 0 then
		local n = redis.call('HLEN', KEYS[4])
		if n > 0 then
			redis.call('HSET', KEYS[3], ARGV[1], n)
			if KEYS[5] and old == 0 then redis.call('SADD', KEYS[5], ARGV[6]) end
		else
			redis.call('HDEL', KEYS[3], ARGV[1])
			if KEYS[5] then redis.call('SREM', KEYS[5], ARGV[6]) end
		end
	end
end
if redis.call('EXISTS', KEYS[4]) == 0 then res = res + 4 end
return res
`)

// heartbeatScript renews instance ARGV[1] in the lease set KEYS[1] for
// ARGV[2] ms, unless it is lost: its lease ended, or (ARGV[3] is "1": this
// process registered it before) it is not there any more. A lost instance
// is never renewed; one that is missing goes back in with an ended lease,
// so that what it may have written since the store lost it is removed
// with it. It returns {lost (0 or 1), the server's time, up to ARGV[5]
// instances whose lease ended more than ARGV[4] ms ago, oldest first}.
var heartbeatScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
local lost
if s then
	lost = tonumber(s) < now
else
	lost = ARGV[3] == '1'
	if lost then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
end
if not lost then
	redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[4])), 'LIMIT', 0, tonumber(ARGV[5]))
return {lost and 1 or 0, now, dead}
`)

// reapScript removes up to ARGV[2] entries of dead instance ARGV[1] from a
// presence key (KEYS[1] to KEYS[4] as in updateScript), and returns {1 when
// the instance has no entry left in the key (0 otherwise), the members that
// have no session anywhere any more}.
var reapScript = goredis.NewScript(`
local cap = tonumber(ARGV[2])
local cur = '0'
local fields = {}
repeat
	local r = redis.call('HSCAN', KEYS[4], cur, 'COUNT', cap)
	cur = r[1]
	local kv = r[2]
	for i = 1, #kv, 2 do
		if #fields < cap then fields[#fields + 1] = kv[i] end
	end
until cur == '0' or #fields >= cap
local gone = {}
for _, m in ipairs(fields) do
	local s = redis.call('HGET', KEYS[4], m)
	if s then
		redis.call('HDEL', KEYS[4], m)
		local total = tonumber(redis.call('HGET', KEYS[1], m) or '0')
		local nt = total - tonumber(s)
		if nt > 0 then
			redis.call('HSET', KEYS[1], m, nt)
		else
			redis.call('HDEL', KEYS[1], m)
			redis.call('ZREM', KEYS[2], m)
			if total > 0 then gone[#gone + 1] = m end
		end
	end
end
local left = redis.call('HLEN', KEYS[4])
if left > 0 then
	redis.call('HSET', KEYS[3], ARGV[1], left)
else
	redis.call('HDEL', KEYS[3], ARGV[1])
end
return {left == 0 and 1 or 0, gone}
`)

// reapNextScript removes the presence keys ARGV[2:] from a dead instance's
// key set KEYS[1] and returns up to ARGV[1] of those left, at random,
// leaving out the set's marker "". When none is left it deletes the set.
var reapNextScript = goredis.NewScript(`
if #ARGV > 1 then redis.call('SREM', KEYS[1], unpack(ARGV, 2)) end
local n = tonumber(ARGV[1])
local out = {}
for _, k in ipairs(redis.call('SRANDMEMBER', KEYS[1], n + 1)) do
	if k ~= '' and #out < n then out[#out + 1] = k end
end
if #out == 0 then redis.call('DEL', KEYS[1]) end
return out
`)

// lockScript takes the reap lock KEYS[1] for ARGV[1] for ARGV[2] ms, or
// extends it if ARGV[1] holds it already. It returns 1 when ARGV[1] holds
// it, 0 when another does.
var lockScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
	return 1
end
return 0
`)

// unlockScript drops the reap lock KEYS[1] if ARGV[1] holds it.
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// forgetScript removes the reaped instance ARGV[1] from the lease set
// KEYS[1] if its lease ended before ARGV[2].
var forgetScript = goredis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)

// memberScript returns {the sessions of member ARGV[1] in a presence key
// whose total hash and instance index are KEYS[1] and KEYS[2], then up to
// ARGV[2] instances that hold them}. The instance hashes are named from
// KEYS[2] as presenceNames.instance names them, so they are in its slot.
var memberScript = goredis.NewScript(`
local s = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local out = {s}
if s > 0 then
	local max = tonumber(ARGV[2])
	for _, inst in ipairs(redis.call('HKEYS', KEYS[2])) do
		local e = string.gsub(inst, '[%%}]', {['%'] = '%25', ['}'] = '%7D'})
		if redis.call('HEXISTS', KEYS[2] .. ':' .. e, ARGV[1]) == 1 then
			out[#out + 1] = inst
			if #out > max then break end
		end
	end
end
return out
`)

// membersScript returns {up to ARGV[2] members of the index KEYS[2] from
// ARGV[1] (a ZRANGEBYLEX minimum), in byte order, and their totals from
// KEYS[1]}.
var membersScript = goredis.NewScript(`
local ms = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #ms == 0 then return {{}, {}} end
return {ms, redis.call('HMGET', KEYS[1], unpack(ms))}
`)

// presenceScripts are loaded together when Redis answers NOSCRIPT.
var presenceScripts = []*goredis.Script{
	updateScript, heartbeatScript, reapScript, reapNextScript,
	lockScript, unlockScript, forgetScript, memberScript, membersScript,
}
