-- kpiwatch.history.html: the trend report as one self-contained HTML file.
--
-- One inline SVG line chart per metric, thresholds drawn as dashed lines,
-- every point a circle whose <title> names its execution id, date and
-- value (shown on hover; for avg_score also whether it is the exact mean
-- of the stored per-call scores, a filled point, or the server's value
-- rounded to 0.1, a hollow one), and under each chart the same points as a table
-- (for screen readers, copy and paste). No script, no external font, image
-- or stylesheet: the file opens offline and as a CI artifact. Every text
-- that came from the server or the command line goes through the one XML
-- escaper of kpiwatch.gate_report.

local report = require "kpiwatch.gate_report"
local model = require "kpiwatch.model"
local history = require "kpiwatch.history"

local M = {}

local concat, format, max, min = table.concat, string.format, math.max, math.min
local text, attr = report.xml_text, report.xml_attr
local fmt = model.format_value

local W, H = 720, 240
local PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 40

local STYLE = [[
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:760px;color:#1b1f24;background:#fff}
h1{font-size:1.4em}h2{font-size:1.1em;margin:1.6em 0 .4em}
.meta{color:#57606a}
svg{width:100%;height:auto;background:#fafbfc;border:1px solid #d0d7de;border-radius:6px}
.axis{stroke:#8c959f;stroke-width:1}
.grid{stroke:#eaeef2;stroke-width:1}
.line{fill:none;stroke:#0969da;stroke-width:2}
.pt{fill:#0969da;stroke:#fff;stroke-width:1.5}
.pt.last{fill:#cf222e}
.pt.srv{fill:#fff;stroke:#0969da;stroke-width:1.5}
.pt.srv.last{stroke:#cf222e}
.med{stroke:#8c959f;stroke-width:1;stroke-dasharray:2 3}
.thr{stroke:#cf222e;stroke-width:1.5;stroke-dasharray:6 4}
.lbl{font-size:11px;fill:#57606a}
.thrlbl{font-size:11px;fill:#cf222e}
details{margin:.4em 0 1em}
table{border-collapse:collapse;font-size:.85em}
td,th{border-bottom:1px solid #eaeef2;padding:2px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
]]

local function num(v)
  return format("%.2f", v)
end

-- Round axis ticks covering [lo, hi]: a step of 1, 2 or 5 times a power
-- of ten giving 3 to 6 ticks.
local function nice_ticks(lo, hi)
  if hi == lo then lo, hi = lo - 1, hi + 1 end
  local raw = (hi - lo) / 4
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local step = mag
  for _, m in ipairs({ 1, 2, 5, 10 }) do
    step = m * mag
    if step >= raw then break end
  end
  local first = math.floor(lo / step + 1e-9) * step
  local ticks = {}
  local v = first
  repeat
    ticks[#ticks + 1] = v
    v = v + step
  until v >= hi - step * 1e-9
  ticks[#ticks + 1] = v
  return step, ticks
end

local function date_of(t)
  return t and tostring(t):sub(1, 10) or "?"
end

-- source(s, i) -> where point i of a series the server rounds comes from,
-- as " (...)" ("" for other metrics)
local function source(s, i)
  local from, server, calls = s:source(i)
  if from == "calls" then
    return format(" (exact mean of %d per-call scores; the server says %s)", calls, fmt(server))
  elseif from == "server" then
    return " (the server's value, rounded)"
  end
  return ""
end

-- chart(s, thresholds) -> the <section> of one metric
local function chart(s, thresholds)
  local vals = s.values
  local lo, hi
  for i = 1, s.n do
    lo = lo and min(lo, vals[i]) or vals[i]
    hi = hi and max(hi, vals[i]) or vals[i]
  end
  for _, t in ipairs(thresholds) do
    lo = lo and min(lo, t.threshold) or t.threshold
    hi = hi and max(hi, t.threshold) or t.threshold
  end
  lo, hi = lo or 0, hi or 1
  local _, ticks = nice_ticks(lo, hi)
  lo, hi = ticks[1], ticks[#ticks]
  local pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
  local function x(i)
    if s.n == 1 then return PAD_L + pw / 2 end
    return PAD_L + (i - 1) * pw / (s.n - 1)
  end
  local function y(v) return PAD_T + (hi - v) * ph / (hi - lo) end

  local name = s.display or s.metric
  local out = {}
  out[#out + 1] = format('<section class="chart" data-metric="%s">', attr(name))
  out[#out + 1] = format("<h2>%s</h2>", text(name))
  if s.n > 0 then
    out[#out + 1] = format('<p class="meta">last %s &#183; median %s (dotted) &#183; %d executions</p>',
      text(fmt(vals[s.n])), text(fmt(s:median())), s.n)
  end
  local note = history.precision_note(s)
  if note then
    out[#out + 1] = format('<p class="meta prec">%s%s</p>', text(note),
      (s.exact_n or 0) < s.n and " &#183; hollow points: the server's rounded value" or "")
  end
  out[#out + 1] = format('<svg viewBox="0 0 %d %d" role="img" aria-label="%s">', W, H,
    attr(name .. " over " .. s.n .. " executions"))
  out[#out + 1] = format("<title>%s</title>", text(name))
  -- grid and y labels at round numbers
  for _, v in ipairs(ticks) do
    local yy = y(v)
    out[#out + 1] = format('<line class="grid" x1="%d" y1="%s" x2="%d" y2="%s"/>', PAD_L, num(yy), W - PAD_R, num(yy))
    out[#out + 1] = format('<text class="lbl" x="%d" y="%s" text-anchor="end">%s</text>', PAD_L - 6, num(yy + 4),
      text(fmt(tonumber(format("%.10g", v)))))
  end
  out[#out + 1] = format('<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>', PAD_L, PAD_T, PAD_L, H - PAD_B)
  out[#out + 1] = format('<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>', PAD_L, H - PAD_B, W - PAD_R, H - PAD_B)
  local med = s.n > 0 and s:median() or nil
  if med then
    local yy = y(med)
    out[#out + 1] = format('<line class="med" x1="%d" y1="%s" x2="%d" y2="%s"/>', PAD_L, num(yy), W - PAD_R, num(yy))
  end
  for _, t in ipairs(thresholds) do
    local yy = y(t.threshold)
    out[#out + 1] = format('<line class="thr" x1="%d" y1="%s" x2="%d" y2="%s"/>', PAD_L, num(yy), W - PAD_R, num(yy))
    out[#out + 1] = format('<text class="thrlbl" x="%d" y="%s" text-anchor="end">%s</text>', W - PAD_R - 4,
      num(yy - 4), text(t.text))
  end
  if s.n > 1 then
    local pts = {}
    for i = 1, s.n do pts[i] = num(x(i)) .. "," .. num(y(vals[i])) end
    out[#out + 1] = format('<polyline class="line" points="%s"/>', concat(pts, " "))
  end
  for i = 1, s.n do
    local rounded = s:source(i) == "server"
    out[#out + 1] = format('<circle class="pt%s%s" cx="%s" cy="%s" r="4"><title>%s</title></circle>',
      rounded and " srv" or "", i == s.n and " last" or "", num(x(i)), num(y(vals[i])),
      text(format("%s\n%s\n%s = %s%s", s.ids[i], tostring(s.times[i] or ""), name, fmt(vals[i]), source(s, i))))
  end
  -- x labels: first and last dates (and the middle one when there is room)
  local marks = s.n > 2 and { 1, (s.n + 1) // 2, s.n } or (s.n == 2 and { 1, 2 } or { 1 })
  for _, i in ipairs(marks) do
    if s.n > 0 then
      local anchor = (i == 1 and s.n > 1) and "start" or (i == s.n and s.n > 1) and "end" or "middle"
      out[#out + 1] = format('<text class="lbl" x="%s" y="%d" text-anchor="%s">%s</text>', num(x(i)), H - PAD_B + 16,
        anchor, text(date_of(s.times[i])))
    end
  end
  if s.n == 0 then
    out[#out + 1] = format('<text class="lbl" x="%d" y="%d" text-anchor="middle">no data</text>', W // 2, H // 2)
  end
  out[#out + 1] = "</svg>"
  out[#out + 1] = "<details><summary>" .. s.n .. " executions</summary><table><tr><th>execution</th><th>date</th>"
    .. "<th>" .. text(name) .. "</th>" .. (s.exact_n and "<th>source</th>" or "") .. "</tr>"
  for i = s.n, 1, -1 do
    out[#out + 1] = format('<tr><td><code>%s</code></td><td>%s</td><td class="num">%s</td>%s</tr>', text(s.ids[i]),
      text(tostring(s.times[i] or "")), text(fmt(vals[i])),
      s.exact_n and ("<td>" .. text(source(s, i):match("^ %((.*)%)$")) .. "</td>") or "")
  end
  out[#out + 1] = "</table></details></section>"
  return concat(out, "\n")
end

---The HTML report of a run test's series.
---@param run_test string the run test id (or name) shown in the title
---@param series table[] kpiwatch.history series, each with .display (its shown name)
---@param thresholds? table<string, {threshold: number, text: string}[]> by series display name
---@param opts? {generated?: string}
---@return string html
function M.render(run_test, series, thresholds, opts)
  thresholds = thresholds or {}
  opts = opts or {}
  local parts = {
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    -- nothing may load from anywhere: the file stands alone
    [[<meta http-equiv="Content-Security-Policy"]]
      .. [[ content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">]],
    "<title>" .. text("kpiwatch trends: " .. run_test) .. "</title>",
    "<style>" .. STYLE .. "</style></head><body>",
    "<h1>" .. text("Trends of run test " .. run_test) .. "</h1>",
    '<p class="meta">' .. text(format("%d metrics; generated by kpiwatch %s", #series,
      opts.generated or os.date("!%Y-%m-%d %H:%M UTC"))) .. "</p>",
  }
  for _, s in ipairs(series) do
    parts[#parts + 1] = chart(s, thresholds[s.display or s.metric] or {})
  end
  parts[#parts + 1] = "</body></html>\n"
  return concat(parts, "\n")
end

return M
