-- json.decode tells [] from {} (lua-cjson decodes both to the same empty
-- table; runtime/json.c sees which kind cjson creates and marks the empty
-- arrays as they are stored): these check it on hand-picked texts and on
-- random documents whose strings are full of brackets, quotes and
-- backslashes.

local function is_empty_array(t)
  return type(t) == "table" and next(t) == nil and json.encode(t) == "[]"
end
local function is_empty_object(t)
  return type(t) == "table" and next(t) == nil and json.encode(t) == "{}"
end

describe("json.decode and empty arrays", function()
  it("marks empty arrays with any whitespace inside", function()
    local d = json.decode('{"a": [], "b": [ ], "c": [\n\t\r ], "d": {}, "e": [[], {}]}')
    assert.is_true(is_empty_array(d.a))
    assert.is_true(is_empty_array(d.b))
    assert.is_true(is_empty_array(d.c))
    assert.is_true(is_empty_object(d.d))
    assert.is_true(is_empty_array(d.e[1]))
    assert.is_true(is_empty_object(d.e[2]))
  end)

  it("leaves brackets inside strings alone, escaped quotes and backslashes included", function()
    local d = json.decode([[{"s": "[]", "t": "x\"[ ]\"", "u": "a\\", "v": [], "w": "\\\"[]", "x": "[\\]"}]])
    assert.equal("[]", d.s)
    assert.equal('x"[ ]"', d.t)
    assert.equal("a\\", d.u)
    assert.is_true(is_empty_array(d.v))
    assert.equal('\\"[]', d.w)
    assert.equal("[\\]", d.x)
  end)

  it("marks top-level and nested empty arrays", function()
    assert.is_true(is_empty_array(json.decode("[]")))
    assert.is_true(is_empty_array(json.decode("  [ ]  ")))
    local d = json.decode('[[[]], "[]", []]')
    assert.is_true(is_empty_array(d[1][1]))
    assert.equal("[]", d[2])
    assert.is_true(is_empty_array(d[3]))
  end)

  it("restores every empty array, however many, wherever they are", function()
    local parts = {}
    for i = 1, 40 do parts[i] = ('"k%d": {"s": "[ ]", "a": [%s], "n": %d}'):format(i, i % 3 == 0 and "" or "1", i) end
    local d = json.decode("{" .. table.concat(parts, ", ") .. "}")
    for i = 1, 40 do
      if i % 3 == 0 then assert.is_true(is_empty_array(d["k" .. i].a), i) else assert.equal(1, d["k" .. i].a[1]) end
      assert.equal("[ ]", d["k" .. i].s)
    end
  end)

  it("restores a real empty array after a string that looks like its mark", function()
    -- the walk after decoding may stop at the last mark only when no
    -- string of the text can be the mark (it starts with NUL)
    local d = json.decode('[["\\u0000kw-empty-array"], []]')
    assert.is_true(is_empty_array(d[2]))
    d = json.decode('{"a": ["\\u0000kw-empty-array"], "b": {"c": []}}')
    assert.is_true(is_empty_array(d.b.c))
  end)

  it("marks nothing else: non-empty arrays, objects, strings that spell the old mark", function()
    local d = json.decode('{"a": [1], "o": {"x": []}, "m": ["\\u0000kw-empty-array"], "e": {}}')
    assert.is_nil(getmetatable(d))
    assert.is_nil(getmetatable(d.a))
    assert.is_nil(getmetatable(d.o))
    assert.is_nil(getmetatable(d.e))
    assert.same({ "\0kw-empty-array" }, d.m)
    assert.is_nil(getmetatable(d.m))
    assert.is_true(is_empty_array(d.o.x))
    -- a failed decode leaves the next one unaffected
    assert.has_error(function() json.decode('[[], {"a": [') end)
    assert.is_true(is_empty_object(json.decode('{"k": {}}').k))
  end)

  it("still reports invalid JSON, unterminated strings included", function()
    assert.has_error(function() json.decode('{"a": "[]') end)
    assert.has_error(function() json.decode('{"a": [] "b"') end)
    assert.has_error(function() json.decode('["\\"]') end)
  end)

  -- Random documents: the generator writes the text itself, with random
  -- whitespace, and knows what each value is.
  local ALPHABET = { "[", "]", " ", '"', "\\", "a", "{", "}", ",", ":", "\t" }
  local function ws(rng)
    local n = rng(0, 2)
    local out = {}
    for i = 1, n do out[i] = ({ " ", "\t", "\n", "\r" })[rng(1, 4)] end
    return table.concat(out)
  end
  local function gen_string(rng)
    local chars, text = {}, {}
    for i = 1, rng(0, 8) do
      local c = ALPHABET[rng(1, #ALPHABET)]
      chars[i] = c
      if c == '"' then text[i] = '\\"'
      elseif c == "\\" then text[i] = "\\\\"
      elseif c == "\t" then text[i] = "\\t"
      else text[i] = c end
    end
    return table.concat(chars), '"' .. table.concat(text) .. '"'
  end
  local function gen(rng, depth)
    local r = rng(1, depth > 3 and 3 or 6)
    if r == 1 then
      local s, text = gen_string(rng)
      return { kind = "string", value = s }, text
    elseif r == 2 then
      local n = rng(0, 1000)
      return { kind = "number", value = n }, tostring(n)
    elseif r == 3 then
      return { kind = "boolean", value = true }, "true"
    elseif r <= 5 then
      local items, parts = {}, {}
      for i = 1, rng(0, 3) do
        local v, text = gen(rng, depth + 1)
        items[i], parts[i] = v, ws(rng) .. text .. ws(rng)
      end
      return { kind = "array", items = items }, "[" .. ws(rng) .. table.concat(parts, ",") .. ws(rng) .. "]"
    else
      local fields, parts, n = {}, {}, 0
      for i = 1, rng(0, 3) do
        local key, ktext = gen_string(rng)
        key, ktext = key .. "#" .. i, ktext:sub(1, -2) .. "#" .. i .. '"'
        local v, text = gen(rng, depth + 1)
        fields[key] = v
        n = n + 1
        parts[n] = ws(rng) .. ktext .. ws(rng) .. ":" .. ws(rng) .. text .. ws(rng)
      end
      return { kind = "object", fields = fields }, "{" .. table.concat(parts, ",") .. "}"
    end
  end
  local function check(expected, got, path)
    local k = expected.kind
    if k == "array" then
      assert(type(got) == "table", path .. ": not a table")
      assert(#got == #expected.items, path .. ": length")
      if #expected.items == 0 then assert(is_empty_array(got), path .. ": not an empty array") end
      for i, item in ipairs(expected.items) do check(item, got[i], path .. "[" .. i .. "]") end
    elseif k == "object" then
      assert(type(got) == "table", path .. ": not a table")
      local n = 0
      for key, v in pairs(expected.fields) do
        n = n + 1
        check(v, got[key], path .. "." .. key)
      end
      local m = 0
      for _ in pairs(got) do m = m + 1 end
      assert(m == n, path .. ": keys")
      if n == 0 then assert(is_empty_object(got), path .. ": not an empty object") end
    else
      assert(got == expected.value, path .. ": " .. tostring(got) .. " ~= " .. tostring(expected.value))
    end
  end

  it("decodes 2000 random documents with tricky strings exactly", function()
    local seed = 20261128
    local function rng(a, b)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return a + seed % (b - a + 1)
    end
    for i = 1, 2000 do
      local expected, text = gen(rng, 0)
      text = ws(rng) .. text .. ws(rng)
      local ok, got = pcall(json.decode, text)
      assert(ok, "document " .. i .. " failed to decode: " .. tostring(got) .. "\n" .. text)
      local ok2, err = pcall(check, expected, got, "doc" .. i)
      assert(ok2, tostring(err) .. "\n" .. text)
    end
  end)
end)
