#!lua name=switchboard_presence
-- Switchboard presence, as one Redis function library so that every change is atomic and the
-- shared steps (dropping a connection, forgetting a departed user) exist once.
--
-- Every function takes the key prefix as its first argument; keys are `<prefix>:<kind>:<id>`
-- with the id last, so no id can collide with another kind. Redis 7.0 has no per-field TTL:
-- entries are tied to their node, whose expiry time sits in the sorted set `<prefix>:nodes`;
-- a surviving node reaps a node whose expiry has passed. docs/cluster.md lists every key.
--
-- Bounded work: Redis runs one function at a time, so no function may walk a structure whose
-- size grows with the cluster. Reaping moves a dead node's connections aside in O(1) and then
-- drops them a chunk per call; contacts of departed users are read a page of a circle per call.
-- Times come from Redis's own clock (TIME), so the nodes' clocks never meet in a comparison.

local SEEN_TTL = 30 * 24 * 3600

local function key(p, kind, id)
  if id then
    return p .. ':' .. kind .. ':' .. id
  end
  return p .. ':' .. kind
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function add_circle(p, user, circle)
  if redis.call('SADD', key(p, 'ucir', user), circle) == 1 then
    redis.call('SADD', key(p, 'cir', circle), user)
  end
end

-- No field means `online`: most users never set a status, and `online` costs no key.
local function status_of(p, user)
  return redis.call('HGET', key(p, 'status'), user) or 'online'
end

local function visible(p, user)
  return status_of(p, user) ~= 'offline'
end

-- A `croster` value is `user|since_ms`. The user comes first and may itself hold a `|`; the
-- time never does, so the last `|` splits them. Returns user, since_ms (nil when malformed).
local function roster_value(value)
  return string.match(value, '^(.*)|(%-?%d+)$')
end

-- Registers a connection; idempotent, so that a retried or late call counts nothing twice.
-- Returns 1 when the user was not present before (a new arrival).
local function register(p, node, conn, user)
  if redis.call('HSET', key(p, 'nconn', node), conn, user) == 1 then
    redis.call('HINCRBY', key(p, 'nusers', node), user, 1)
  end
  redis.call('HSET', key(p, 'uc', user), conn, node)
  redis.call('ZADD', key(p, 'online'), 0, user)
  local arrived = redis.call('SADD', key(p, 'present'), user)
  if arrived == 1 then
    -- A user nobody settled may have left a status behind; a new arrival starts online.
    redis.call('HDEL', key(p, 'status'), user)
  end
  return arrived
end

-- Joins a registered connection; returns {connection_changed, user_changed}.
local function join(p, node, user, conn, conv, since)
  if redis.call('SADD', key(p, 'join', conn), conv) == 0 then
    return 0, 0
  end
  redis.call('HINCRBY', key(p, 'nroom', node), conv, 1)
  local n = redis.call('HINCRBY', key(p, 'conv', conv), user, 1)
  redis.call('HSET', key(p, 'croster', conv), conn, user .. '|' .. since)
  redis.call('SADD', key(p, 'rooms'), conv)
  add_circle(p, user, conv)
  return 1, n == 1 and 1 or 0
end

-- Takes a connection of `user` out of a conversation; true when it was the user's last joined
-- connection there. `rooms` is the per-node count to decrement.
local function unjoin(p, rooms, user, conv, conn)
  redis.call('HDEL', key(p, 'croster', conv), conn)
  if redis.call('HINCRBY', rooms, conv, -1) <= 0 then
    redis.call('HDEL', rooms, conv)
  end
  local members = key(p, 'conv', conv)
  if redis.call('HINCRBY', members, user, -1) > 0 then
    return false
  end
  redis.call('HDEL', members, user)
  if redis.call('HLEN', members) == 0 then
    redis.call('SREM', key(p, 'rooms'), conv)
  end
  return true
end

-- Removes one connection listed in `conns` (a node's live hash, or a reaped one set aside).
-- `users` is the node's per-user count, nil for a reaped node. Returns nil when unknown, else
-- {user, last_connection (0/1), was_visible (0/1), {joined...}, {left...}, status}.
local function drop(p, conns, rooms, users, conn, now)
  local user = redis.call('HGET', conns, conn)
  if not user then
    return nil
  end
  local status = status_of(p, user)
  local was_visible = status ~= 'offline' and 1 or 0
  redis.call('HDEL', conns, conn)
  if users and redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
  end
  redis.call('HDEL', key(p, 'uc', user), conn)
  local joined = redis.call('SMEMBERS', key(p, 'join', conn))
  local left = {}
  for _, conv in ipairs(joined) do
    if unjoin(p, rooms, user, conv, conn) then
      table.insert(left, conv)
    end
  end
  redis.call('DEL', key(p, 'join', conn))
  local last = 0
  if redis.call('HLEN', key(p, 'uc', user)) == 0 then
    last = 1
    redis.call('ZREM', key(p, 'online'), user)
    redis.call('SET', key(p, 'seen', user), now, 'EX', SEEN_TTL)
  end
  return { user, last, was_visible, joined, left, status }
end

-- O(the user's circles × their sizes): for one user at a time only, never in a loop over users.
local function contacts_of(p, user)
  local seen, out = {}, {}
  for _, circle in ipairs(redis.call('SMEMBERS', key(p, 'ucir', user))) do
    for _, other in ipairs(redis.call('SMEMBERS', key(p, 'cir', circle))) do
      if other ~= user and not seen[other] and redis.call('HLEN', key(p, 'uc', other)) > 0 then
        seen[other] = true
        table.insert(out, other)
      end
    end
  end
  table.sort(out)
  return out
end

-- Forgets a user with no connection left: O(the user's circles). Returns their circles (the
-- caller reads each circle's members once for all departed users) for the one caller that
-- settles the departure, nil for everyone else (the user came back, or was settled already).
local function forget(p, user)
  if redis.call('HLEN', key(p, 'uc', user)) > 0 then
    return nil
  end
  if redis.call('SREM', key(p, 'present'), user) == 0 then
    return nil
  end
  local circles = redis.call('SMEMBERS', key(p, 'ucir', user))
  for _, circle in ipairs(circles) do
    redis.call('SREM', key(p, 'cir', circle), user)
  end
  redis.call('DEL', key(p, 'ucir', user))
  redis.call('HDEL', key(p, 'status'), user)
  redis.call('ZREM', key(p, 'lingering'), user)
  return circles
end

-- Sets a node's connections aside for reaping, in O(1) whatever their number: the live keys
-- are renamed to `rconn:<id>`/`rroom:<id>` so that the node (alive after all, or restarted
-- with the same id) starts afresh while the old entries are dropped a chunk at a time. The
-- record is leased to its reaper until `lease`; an expired lease is taken over. Returns the
-- reap id, or nil when the node had no connection.
local function retire(p, node, lease)
  local id = node .. '|' .. redis.call('INCR', key(p, 'reapseq'))
  redis.call('UNLINK', key(p, 'nusers', node))
  local had = redis.call('EXISTS', key(p, 'nconn', node)) == 1
  if had then
    redis.call('RENAME', key(p, 'nconn', node), key(p, 'rconn', id))
  end
  if redis.call('EXISTS', key(p, 'nroom', node)) == 1 then
    redis.call('RENAME', key(p, 'nroom', node), key(p, 'rroom', id))
  end
  if not had then
    redis.call('UNLINK', key(p, 'rroom', id))
    return nil
  end
  redis.call('ZADD', key(p, 'reaping'), lease, id)
  return id
end

-- ARGV: prefix, node, conn, user, circles... → 1 when the user was not present before.
redis.register_function('sb_connect', function(_, args)
  local p, node, conn, user = args[1], args[2], args[3], args[4]
  local arrived = register(p, node, conn, user)
  for i = 5, #args do
    add_circle(p, user, args[i])
  end
  return arrived
end)

-- ARGV: prefix, node, conn, linger_ms → see drop(). On the user's last connection the user
-- lingers: if nobody settles them within `linger_ms` (their node died during the grace),
-- sb_sweep does.
redis.register_function('sb_disconnect', function(_, args)
  local p, node, conn = args[1], args[2], args[3]
  local linger = tonumber(args[4]) or 60000
  local now = now_ms()
  local d = drop(p, key(p, 'nconn', node), key(p, 'nroom', node), key(p, 'nusers', node), conn, now)
  if d and d[2] == 1 then
    redis.call('ZADD', key(p, 'lingering'), now + linger, d[1])
  end
  return d
end)

-- ARGV: prefix, node, conn, conv, since_ms → {connection_changed, user_changed, status, known}.
-- A connection joined already keeps its first `since`; `known` is 0 when this node's
-- connection is unknown to Redis (it lost it), so that the node can register it again.
redis.register_function('sb_join', function(_, args)
  local p, node, conn, conv, since = args[1], args[2], args[3], args[4], args[5]
  local user = redis.call('HGET', key(p, 'nconn', node), conn)
  if not user then
    return { 0, 0, 'online', 0 }
  end
  local changed, user_changed = join(p, node, user, conn, conv, since or tostring(now_ms()))
  return { changed, user_changed, status_of(p, user), 1 }
end)

-- ARGV: prefix, node, conn, conv → {connection_changed, user_changed, status}.
redis.register_function('sb_leave', function(_, args)
  local p, node, conn, conv = args[1], args[2], args[3], args[4]
  local user = redis.call('HGET', key(p, 'nconn', node), conn)
  if not user then
    return { 0, 0, 'online' }
  end
  if redis.call('SREM', key(p, 'join', conn), conv) == 0 then
    return { 0, 0, status_of(p, user) }
  end
  local last = unjoin(p, key(p, 'nroom', node), user, conv, conn)
  return { 1, last and 1 or 0, status_of(p, user) }
end)

-- ARGV: prefix, user, status → the user's previous status; 'online' when the user is not
-- connected, and then nothing changes (a lingering user keeps the status they left with).
redis.register_function('sb_status', function(_, args)
  local p, user, status = args[1], args[2], args[3]
  if redis.call('HLEN', key(p, 'uc', user)) == 0 then
    return 'online'
  end
  local previous = status_of(p, user)
  if status == 'online' then
    redis.call('HDEL', key(p, 'status'), user)
  else
    redis.call('HSET', key(p, 'status'), user, status)
  end
  if status == 'offline' then
    redis.call('SET', key(p, 'seen', user), now_ms(), 'EX', SEEN_TTL)
  end
  return previous
end)

-- ARGV: prefix, user → {1, {contacts...}} for the settling caller, {0} otherwise.
redis.register_function('sb_settle', function(_, args)
  local p, user = args[1], args[2]
  if redis.call('HLEN', key(p, 'uc', user)) > 0 or redis.call('SISMEMBER', key(p, 'present'), user) == 0 then
    return { 0 }
  end
  local contacts = contacts_of(p, user)
  forget(p, user)
  return { 1, contacts }
end)

-- ARGV: prefix, user → {contacts...}.
redis.register_function('sb_contacts', function(_, args)
  return contacts_of(args[1], args[2])
end)

-- ARGV: prefix, user → {connections, status or '', last_seen_ms or ''}.
redis.register_function('sb_user', function(_, args)
  local p, user = args[1], args[2]
  local status = redis.call('HGET', key(p, 'status'), user) or ''
  local seen = redis.call('GET', key(p, 'seen', user)) or ''
  return { redis.call('HLEN', key(p, 'uc', user)), status, seen }
end)

-- ARGV: prefix, after ('' for the start), limit → {{users...}, next_cursor or ''}.
redis.register_function('sb_online_page', function(_, args)
  local p, after, limit = args[1], args[2], tonumber(args[3])
  local min = '-'
  if after ~= '' then
    min = '(' .. after
  end
  local out, last_scanned = {}, ''
  while #out <= limit do
    local batch = redis.call('ZRANGEBYLEX', key(p, 'online'), min, '+', 'LIMIT', 0, limit + 1)
    if #batch == 0 then
      break
    end
    for _, user in ipairs(batch) do
      if #out == limit then
        return { out, last_scanned }
      end
      last_scanned = user
      if visible(p, user) then
        table.insert(out, user)
      end
    end
    min = '(' .. batch[#batch]
  end
  return { out, '' }
end)

-- ARGV: prefix, conv → {visible users joined to it...}.
redis.register_function('sb_conversation_online', function(_, args)
  local p, conv = args[1], args[2]
  local out = {}
  for _, user in ipairs(redis.call('HKEYS', key(p, 'conv', conv))) do
    if visible(p, user) then
      table.insert(out, user)
    end
  end
  table.sort(out)
  return out
end)

-- ARGV: prefix, conv → {{conn, user, status, since_ms}...}: one row per visible connection joined
-- to it, unsorted (the caller sorts by byte order, which Lua's locale-dependent `<` may not be).
redis.register_function('sb_roster', function(_, args)
  local p, conv = args[1], args[2]
  local fields = redis.call('HGETALL', key(p, 'croster', conv))
  local statuses, out = {}, {}
  for i = 1, #fields, 2 do
    local user, since = roster_value(fields[i + 1])
    if user then
      -- A user's connections share one status: read it once per user, not per connection.
      statuses[user] = statuses[user] or status_of(p, user)
      if statuses[user] ~= 'offline' then
        table.insert(out, { fields[i], user, statuses[user], since })
      end
    end
  end
  return out
end)

-- ARGV: prefix, user → {status, {{conv, conn, since_ms}...}}: every joined connection of the user,
-- invisible or not, unsorted.
redis.register_function('sb_user_roster', function(_, args)
  local p, user = args[1], args[2]
  local out = {}
  for _, conn in ipairs(redis.call('HKEYS', key(p, 'uc', user))) do
    for _, conv in ipairs(redis.call('SMEMBERS', key(p, 'join', conn))) do
      local value = redis.call('HGET', key(p, 'croster', conv), conn)
      local _, since = roster_value(value or '')
      if since then
        table.insert(out, { conv, conn, since })
      end
    end
  end
  return { status_of(p, user), out }
end)

-- ARGV: prefix, node, incarnation, ttl_ms, started_at → the number of connections of a
-- previous incarnation set aside for reaping. A node starting with the id of one that crashed
-- must not adopt its connections: they are reaped and announced like a dead node's.
redis.register_function('sb_start', function(_, args)
  local p, node, incarnation, ttl, started = args[1], args[2], args[3], tonumber(args[4]), args[5]
  local now = now_ms()
  local old = redis.call('HLEN', key(p, 'nconn', node))
  -- Lease 0: any node's next reaper pass takes the record.
  retire(p, node, 0)
  redis.call('ZADD', key(p, 'nodes'), now + ttl, node)
  redis.call('DEL', key(p, 'ninfo', node))
  redis.call('HSET', key(p, 'ninfo', node), 'startedAt', started, 'incarnation', incarnation, 'registered', incarnation)
  return old
end)

-- ARGV: prefix, node, incarnation, ttl_ms, started_at → 1 when Redis does not hold this
-- incarnation's registration (it lost its data, or reaped the node): the caller registers its
-- connections again. A heartbeat alone never marks the node registered, so a late heartbeat
-- (timed out, executed after a flush) cannot hide a loss.
redis.register_function('sb_heartbeat', function(_, args)
  local p, node, incarnation, ttl, started = args[1], args[2], args[3], tonumber(args[4]), args[5]
  redis.call('ZADD', key(p, 'nodes'), now_ms() + ttl, node)
  redis.call('HSET', key(p, 'ninfo', node), 'startedAt', started, 'incarnation', incarnation)
  if redis.call('HGET', key(p, 'ninfo', node), 'registered') == incarnation then
    return 0
  end
  return 1
end)

-- ARGV: prefix, node, token → starts a registration attempt; chunks of another attempt, or
-- chunks after Redis lost the attempt's mark, are refused.
redis.register_function('sb_register_begin', function(_, args)
  return redis.call('HSET', key(args[1], 'ninfo', args[2]), 'registering', args[3])
end)

-- ARGV: prefix, node, token, ttl_ms, count, then per connection: conn, user, status,
-- n_circles, circles..., n_joins, (conv, since_ms)... → 1, or 0 when the attempt is void.
-- Each chunk extends the node's expiry, so a long registration never lets it expire.
redis.register_function('sb_register', function(_, args)
  local p, node, token, ttl, count = args[1], args[2], args[3], tonumber(args[4]), tonumber(args[5])
  if redis.call('HGET', key(p, 'ninfo', node), 'registering') ~= token then
    return 0
  end
  redis.call('ZADD', key(p, 'nodes'), now_ms() + ttl, node)
  local i = 6
  for _ = 1, count do
    local conn, user, status = args[i], args[i + 1], args[i + 2]
    register(p, node, conn, user)
    local circles = tonumber(args[i + 3])
    i = i + 4
    for c = 0, circles - 1 do
      add_circle(p, user, args[i + c])
    end
    i = i + circles
    local joins = tonumber(args[i])
    i = i + 1
    for j = 0, joins - 1 do
      join(p, node, user, conn, args[i + 2 * j], args[i + 2 * j + 1])
    end
    i = i + 2 * joins
    if status ~= 'online' then
      redis.call('HSET', key(p, 'status'), user, status)
    end
  end
  return 1
end)

-- ARGV: prefix, node, token, incarnation → 1 when the attempt completed and the node counts as
-- registered, 0 when it was void.
redis.register_function('sb_register_end', function(_, args)
  local p, node, token, incarnation = args[1], args[2], args[3], args[4]
  local info = key(p, 'ninfo', node)
  if redis.call('HGET', info, 'registering') ~= token then
    return 0
  end
  redis.call('HDEL', info, 'registering')
  redis.call('HSET', info, 'registered', incarnation)
  return 1
end)

-- ARGV: prefix, node, lease_ms → the reap id of this node's own connections ('' when none),
-- leased to the caller: a polite exit reaps itself at once.
redis.register_function('sb_depart', function(_, args)
  local p, node, lease = args[1], args[2], tonumber(args[3])
  redis.call('ZREM', key(p, 'nodes'), node)
  redis.call('DEL', key(p, 'ninfo', node))
  return retire(p, node, now_ms() + lease) or ''
end)

-- ARGV: prefix, self, lease_ms, limit → {reap ids...} now leased to the caller: nodes whose
-- heartbeat expired (never the caller itself, however late its own heartbeat), and records
-- whose reaper's lease ran out. Each connection is then dropped by exactly one reap call.
redis.register_function('sb_claim', function(_, args)
  local p, self, lease, limit = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local now = now_ms()
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', key(p, 'nodes'), '-inf', now, 'LIMIT', 0, limit + 1)) do
    if node ~= self then
      redis.call('ZREM', key(p, 'nodes'), node)
      redis.call('DEL', key(p, 'ninfo', node))
      retire(p, node, 0)
    end
  end
  local out = redis.call('ZRANGEBYSCORE', key(p, 'reaping'), '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(out) do
    redis.call('ZADD', key(p, 'reaping'), now + lease, id)
  end
  return out
end)

-- ARGV: prefix, reap_id, lease_ms, limit → {done (0/1), rows}: drops up to `limit` connections
-- of the record, one row each: {user, {left...}, offline (0/1), {circles...}, conn, {joined...},
-- status}. `offline` is 1 when that was the user's last connection and they were visible; their
-- circles are then returned (the caller reads each circle's members once per reap).
redis.register_function('sb_reap', function(_, args)
  local p, id, lease, limit = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local now = now_ms()
  local conns, rooms = key(p, 'rconn', id), key(p, 'rroom', id)
  local node = string.match(id, '^(.*)|%d+$') or id
  if not redis.call('ZSCORE', key(p, 'reaping'), id) then
    return { 1, {} }
  end
  redis.call('ZADD', key(p, 'reaping'), now + lease, id)
  local out = {}
  -- HRANDFIELD with a positive count is O(count) (or O(size) once size < 3 × count).
  for _, conn in ipairs(redis.call('HRANDFIELD', conns, limit)) do
    if redis.call('HEXISTS', key(p, 'nconn', node), conn) == 1 then
      -- The node is alive after all and registered this connection again: not a departure.
      redis.call('HDEL', conns, conn)
    else
      local d = drop(p, conns, rooms, nil, conn, now)
      if d then
        local circles, offline = {}, 0
        if d[2] == 1 then
          -- A dead node's users get no grace: they are gone now.
          local forgot = forget(p, d[1])
          if forgot then
            circles = forgot
            offline = d[3]
          end
        end
        table.insert(out, { d[1], d[5], offline, circles, conn, d[4], d[6] })
      end
    end
  end
  if redis.call('EXISTS', conns) == 0 then
    redis.call('UNLINK', rooms)
    redis.call('ZREM', key(p, 'reaping'), id)
    return { 1, out }
  end
  return { 0, out }
end)

-- ARGV: prefix, circle, cursor, count → {next_cursor ('0' at the end), {connected members...}}.
redis.register_function('sb_circle_page', function(_, args)
  local p, circle, cursor, count = args[1], args[2], args[3], args[4]
  local page = redis.call('SSCAN', key(p, 'cir', circle), cursor, 'COUNT', count)
  local out = {}
  for _, user in ipairs(page[2]) do
    if redis.call('HLEN', key(p, 'uc', user)) > 0 then
      table.insert(out, user)
    end
  end
  return { page[1], out }
end)

-- ARGV: prefix, limit → {{user, visible (0/1), {circles...}}...}: settles up to `limit` users
-- whose last connection closed longer ago than their linger time and whom nobody settled (the
-- node that should have died during the offline grace, or its disconnect was lost).
redis.register_function('sb_sweep', function(_, args)
  local p, limit = args[1], tonumber(args[2])
  local out = {}
  for _, user in ipairs(redis.call('ZRANGEBYSCORE', key(p, 'lingering'), '-inf', now_ms(), 'LIMIT', 0, limit)) do
    redis.call('ZREM', key(p, 'lingering'), user)
    local shown = visible(p, user) and 1 or 0
    local circles = forget(p, user)
    if circles then
      table.insert(out, { user, shown, circles })
    end
  end
  return out
end)

-- ARGV: prefix, SSCAN cursor ('0' for the start), count → {next cursor ('0' at the end), {conversations...}}.
redis.register_function('sb_rooms_page', function(_, args)
  return redis.call('SSCAN', key(args[1], 'rooms'), args[2], 'COUNT', tonumber(args[3]))
end)

-- ARGV: prefix → {{node, connections, users, rooms, started_at}...}, online users, rooms.
-- O(nodes): every count is the length of a per-node hash kept up to date by the changes.
redis.register_function('sb_stats', function(_, args)
  local p = args[1]
  local nodes = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', key(p, 'nodes'), '(' .. now_ms(), '+inf')) do
    table.insert(nodes, {
      node,
      redis.call('HLEN', key(p, 'nconn', node)),
      redis.call('HLEN', key(p, 'nusers', node)),
      redis.call('HLEN', key(p, 'nroom', node)),
      redis.call('HGET', key(p, 'ninfo', node), 'startedAt') or '',
    })
  end
  return { nodes, redis.call('ZCARD', key(p, 'online')), redis.call('SCARD', key(p, 'rooms')) }
end)
