#!lua name=switchboard_presence
-- Switchboard presence, as one Redis function library so that every change is atomic and the
-- shared steps (dropping a connection, settling a departure) exist once.
--
-- Every function takes the key prefix as its first argument; keys are `<prefix>:<kind>:<id>`
-- with the id last, so no id can collide with another kind. Redis 7.0 has no per-field TTL:
-- entries are tied to their node, whose expiry time sits in the sorted set `<prefix>:nodes`;
-- a surviving node reaps a node whose expiry has passed. docs/cluster.md lists every key.

local SEEN_TTL = 30 * 24 * 3600

local function key(p, kind, id)
  if id then
    return p .. ':' .. kind .. ':' .. id
  end
  return p .. ':' .. kind
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

-- Takes a connection of `user` out of a conversation; true when it was the user's last joined
-- connection there.
local function unjoin(p, node, user, conv, conn)
  redis.call('HDEL', key(p, 'croster', conv), conn)
  local rooms = key(p, 'nroom', node)
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

-- Removes one connection of `node`. Returns nil when unknown, else
-- {user, last_connection (0/1), was_visible (0/1), {joined...}, {left...}, status}.
local function drop(p, node, conn, now)
  local user = redis.call('HGET', key(p, 'nconn', node), conn)
  if not user then
    return nil
  end
  local status = status_of(p, user)
  local was_visible = status ~= 'offline' and 1 or 0
  redis.call('HDEL', key(p, 'nconn', node), conn)
  redis.call('HDEL', key(p, 'uc', user), conn)
  local joined = redis.call('SMEMBERS', key(p, 'join', conn))
  local left = {}
  for _, conv in ipairs(joined) do
    if unjoin(p, node, user, conv, conn) then
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

-- Forgets a user with no connection left. Returns {contacts...} for the one caller that
-- settles the departure, nil for everyone else (the user came back, or was settled already).
local function settle(p, user)
  if redis.call('HLEN', key(p, 'uc', user)) > 0 then
    return nil
  end
  if redis.call('SREM', key(p, 'present'), user) == 0 then
    return nil
  end
  local contacts = contacts_of(p, user)
  for _, circle in ipairs(redis.call('SMEMBERS', key(p, 'ucir', user))) do
    redis.call('SREM', key(p, 'cir', circle), user)
  end
  redis.call('DEL', key(p, 'ucir', user))
  redis.call('HDEL', key(p, 'status'), user)
  return contacts
end

-- ARGV: prefix, node, conn, user, circles... → 1 when the user was not present before.
redis.register_function('sb_connect', function(_, args)
  local p, node, conn, user = args[1], args[2], args[3], args[4]
  redis.call('HSET', key(p, 'nconn', node), conn, user)
  redis.call('HSET', key(p, 'uc', user), conn, node)
  redis.call('ZADD', key(p, 'online'), 0, user)
  local arrived = redis.call('SADD', key(p, 'present'), user)
  for i = 5, #args do
    add_circle(p, user, args[i])
  end
  return arrived
end)

-- ARGV: prefix, node, conn, now_ms → see drop().
redis.register_function('sb_disconnect', function(_, args)
  return drop(args[1], args[2], args[3], args[4])
end)

-- ARGV: prefix, node, conn, conv, since_ms → {connection_changed, user_changed, status}. A
-- connection joined already keeps its first `since`.
redis.register_function('sb_join', function(_, args)
  local p, node, conn, conv, since = args[1], args[2], args[3], args[4], args[5]
  local user = redis.call('HGET', key(p, 'nconn', node), conn)
  if not user then
    return { 0, 0, 'online' }
  end
  if redis.call('SADD', key(p, 'join', conn), conv) == 0 then
    return { 0, 0, status_of(p, user) }
  end
  if not since then
    -- A node of an older version (they share this library during a rolling upgrade) sends no
    -- time; Redis's clock is close enough.
    local t = redis.call('TIME')
    since = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
  end
  redis.call('HINCRBY', key(p, 'nroom', node), conv, 1)
  local n = redis.call('HINCRBY', key(p, 'conv', conv), user, 1)
  redis.call('HSET', key(p, 'croster', conv), conn, user .. '|' .. since)
  redis.call('SADD', key(p, 'rooms'), conv)
  add_circle(p, user, conv)
  return { 1, n == 1 and 1 or 0, status_of(p, user) }
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
  return { 1, unjoin(p, node, user, conv, conn) and 1 or 0, status_of(p, user) }
end)

-- ARGV: prefix, user, status, now_ms → the user's previous status; 'online' when the user is
-- not connected, and then nothing changes (a lingering user keeps the status they left with).
redis.register_function('sb_status', function(_, args)
  local p, user, status, now = args[1], args[2], args[3], args[4]
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
    redis.call('SET', key(p, 'seen', user), now, 'EX', SEEN_TTL)
  end
  return previous
end)

-- ARGV: prefix, user → {1, {contacts...}} for the settling caller, {0} otherwise.
redis.register_function('sb_settle', function(_, args)
  local contacts = settle(args[1], args[2])
  if contacts then
    return { 1, contacts }
  end
  return { 0 }
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

-- ARGV: prefix, node, expires_at_ms, started_at → 1 when the node was not registered (first
-- heartbeat, or its entries were lost or reaped: the caller registers its connections again).
redis.register_function('sb_heartbeat', function(_, args)
  local p, node, expires, started = args[1], args[2], args[3], args[4]
  local added = redis.call('ZADD', key(p, 'nodes'), expires, node)
  redis.call('HSET', key(p, 'ninfo', node), 'startedAt', started)
  return added
end)

-- ARGV: prefix, node → marks the node expired, so that the next reap removes it (a polite exit).
redis.register_function('sb_depart', function(_, args)
  return redis.call('ZADD', key(args[1], 'nodes'), 'XX', 0, args[2])
end)

-- ARGV: prefix, now_ms → reaps every node whose heartbeat expired. Each dead node is claimed by
-- exactly one caller (ZREM), so its departures are announced once cluster-wide. Returns one row
-- per dropped connection: {{user, {left convs...}, offline (0/1), {contacts...}, conn,
-- {joined convs...}, status}...}.
redis.register_function('sb_reap', function(_, args)
  local p, now = args[1], tonumber(args[2])
  local out = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', key(p, 'nodes'), '-inf', now)) do
    redis.call('ZREM', key(p, 'nodes'), node)
    for _, conn in ipairs(redis.call('HKEYS', key(p, 'nconn', node))) do
      local d = drop(p, node, conn, now)
      if d then
        local contacts = {}
        local offline = 0
        if d[2] == 1 then
          -- A dead node's users get no grace: they are gone now.
          contacts = settle(p, d[1]) or {}
          offline = d[3]
        end
        table.insert(out, { d[1], d[5], offline, contacts, conn, d[4], d[6] })
      end
    end
    redis.call('DEL', key(p, 'nconn', node), key(p, 'nroom', node), key(p, 'ninfo', node))
  end
  return out
end)

-- ARGV: prefix, now_ms → {{node, connections, users, rooms, started_at}...}, online users, rooms.
redis.register_function('sb_stats', function(_, args)
  local p, now = args[1], args[2]
  local nodes = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', key(p, 'nodes'), '(' .. now, '+inf')) do
    local users, distinct = {}, 0
    for _, user in ipairs(redis.call('HVALS', key(p, 'nconn', node))) do
      if not users[user] then
        users[user] = true
        distinct = distinct + 1
      end
    end
    table.insert(nodes, {
      node,
      redis.call('HLEN', key(p, 'nconn', node)),
      distinct,
      redis.call('HLEN', key(p, 'nroom', node)),
      redis.call('HGET', key(p, 'ninfo', node), 'startedAt') or '',
    })
  end
  return { nodes, redis.call('ZCARD', key(p, 'online')), redis.call('SCARD', key(p, 'rooms')) }
end)
