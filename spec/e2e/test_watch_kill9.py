#!/usr/bin/env python3
"""No alert lost across kill -9 (issue 9, part 3).

A watch script (alert.watch with state= and spool= files, a signed
notify.webhook hook, an in-process sandbox serving the failing fixture plus
three "flip" executions read from a fixtures folder) is started and killed
with SIGKILL after a seeded random delay, again and again. Between runs the
test rewrites some flip fixtures (healthy <-> failing) so new firing and
resolved transitions arise, and takes the webhook receiver down (503) for
some runs so notifications get spooled; while up it answers 200 slowly (0.3
s) so that kills land mid-delivery. After every kill the state and
spool files must parse as JSON objects with mode 0600 and nothing may have
been moved aside as corrupt. A last clean run with the receiver up drains
everything. Then, after dedup by webhook-id:
  * every event id ever seen in an outbox or the spool was delivered;
  * the outbox and the spool are empty;
  * per alert (rule, execution, metric) the delivered firing/resolved events
    (the alerts of the grouped notifications, one per execution and cycle)
    add up to the final state, which matches the final fixture data, and
    every resolved event pairs with a firing one;
  * a webhook-id delivered twice carried the same event (a redelivery: a
    kill between the receiver's 200 and the file recording it; at least
    once is the contract). Duplicates are counted and printed.
Env: KPIWATCH (binary), KPIWATCH_SRC (repo root). Python standard library."""
import base64
import hashlib
import hmac
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import MockServer  # noqa: E402

KW = os.path.abspath(os.environ.get(
    "KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch")))
SRC = os.environ.get("KPIWATCH_SRC", os.path.join(os.path.dirname(__file__), "../.."))

FAILING = "c0ffee00-0000-4000-8000-000000000005"
FLIPS = ["0d15ea5e-0000-4000-8000-0000000000f1",
         "0d15ea5e-0000-4000-8000-0000000000f2",
         "0d15ea5e-0000-4000-8000-0000000000f3"]
RUNS = 20
SLOW_ANSWER = 0.3
SEED = 20261128
SECRET = "whsec_" + base64.b64encode(b"kpiwatch kill -9 e2e secret").decode()
KEY = base64.b64decode(SECRET[len("whsec_"):])

# avg_score and the eval percentages: GOOD trips no rule, BAD trips
# score-floor (avg_score < 0.8) and eval-floor on two evals (< 70).
GOOD = {"total_calls": 40, "avg_score": 0.9, "avg_response": 1000.0, "calls_attempted": 40,
        "connected_calls": 39, "calls_connected_percentage": 97.5, "failed_calls": 1,
        "total_duration": 4000, "agent_type": "voice", "is_inbound": False,
        "scenario_graphs": {}, "avg_task_completion": 91.0, "avg_is_polite": 95.0}
BAD = dict(GOOD, avg_score=0.55, avg_task_completion=52.0, avg_is_polite=61.0)
BAD_ALERTS = {("score-floor", "avg_score"), ("eval-floor", "task_completion"),
              ("eval-floor", "is_polite")}

WATCH_LUA = r'''
local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"
local sandbox = require "kpiwatch.sandbox"
local kpis = require "kpiwatch.kpis"
local fixdir, state, spool, url, max_cycles = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local sb = sandbox.start { fixtures_dir = fixdir }
kpis.configure { base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key, retries = 0 }
alert.configure { retries = 1, backoff = 0.05, max_backoff = 0.1, quiet = true }
alert.hook("ops", notify.webhook { url = url, secret = os.getenv("WATCH_SECRET"), timeout = 5 })
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, notify = { "ops" } }
alert.rule { name = "eval-floor", evals = "*", below = 70, notify = { "ops" } }
local ids = { "%s" }
for i = 6, #arg do ids[#ids + 1] = arg[i] end
local s = alert.watch { ids = ids, every = 0.2, state = state, spool = spool, max_cycles = max_cycles }
io.stdout:write(json.encode { cycles = s.cycles, delivered = s.delivered, spooled = s.spooled,
  lost = s.lost }, "\n")
sb:close()
''' % FAILING


class Receiver:
    """Webhook receiver (the shared stand-in server): verifies the signature,
    answers 503 while down, else 200 and logs the delivery."""

    def __init__(self):
        self.lock = threading.Lock()
        self.down = False
        self.delivered = []   # (webhook-id, event) per 200 answer
        self.refused = 0
        self.bad = []
        self.log = []
        self.run = 0
        self.srv = MockServer(self.respond)
        self.port = self.srv.httpd.server_address[1]

    def respond(self, req):
        body = req.body
        wid = req.headers["webhook-id"] or ""
        ts = req.headers["webhook-timestamp"] or ""
        want = "v1," + base64.b64encode(hmac.new(
            KEY, wid.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()).decode()
        with self.lock:
            if self.down:
                self.refused += 1
                code = 503
            else:
                code = 200
                try:
                    ev = json.loads(body)
                except ValueError:
                    ev = None
                if (not hmac.compare_digest(want, req.headers["webhook-signature"] or "")
                        or not isinstance(ev, dict) or ev.get("id") != wid):
                    self.bad.append((wid, body[:200]))
                self.delivered.append((wid, ev))
                self.log.append((self.run, wid[-6:], time.monotonic()))
        if code == 200:
            # answer slowly so that kills land mid-delivery: after
            # the receiver has the event, before the watch knows
            time.sleep(SLOW_ANSWER)
        return code, {}, b""


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def read_doc(path, what):
    """The file parses as a JSON object with mode 0600 (None when absent)."""
    if not os.path.exists(path):
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:
        fail("%s %s has mode %o, want 600" % (what, path, mode))
    with open(path, "rb") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError as e:
        fail("%s %s does not parse (%s): %r" % (what, path, e, text[:300]))
    if not isinstance(doc, dict):
        fail("%s %s is not a JSON object: %r" % (what, path, text[:300]))
    return doc


def main():
    rng = random.Random(SEED)
    tmp = tempfile.mkdtemp(prefix="kw-kill9-")
    try:
        fixdir = os.path.join(tmp, "fixtures")
        home = os.path.join(tmp, "home")
        os.makedirs(fixdir)
        os.makedirs(home)
        script = os.path.join(tmp, "watch.lua")
        with open(script, "w") as f:
            f.write(WATCH_LUA)
        state = os.path.join(tmp, "state", "state.json")   # its folder does not exist yet
        spool = os.path.join(tmp, "state", "spool.json")
        rec = Receiver()
        url = "http://127.0.0.1:%d/hook" % rec.port
        env = dict(os.environ, HOME=home, XDG_STATE_HOME="", KPIWATCH_SPOOL="",
                   WATCH_SECRET=SECRET)

        bad = {fid: rng.random() < 0.5 for fid in FLIPS}

        def write_fixtures():
            for fid in FLIPS:
                with open(os.path.join(fixdir, fid + ".json"), "w") as f:
                    json.dump(BAD if bad[fid] else GOOD, f)

        def start(max_cycles):
            return subprocess.Popen(
                [KW, script, fixdir, state, spool, url, str(max_cycles)] + FLIPS,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp)

        seen_ids = {}          # event id -> event, from outboxes and spools after kills
        spooled_seen = 0
        outbox_seen = 0
        flips = 0
        down_runs = 0

        def collect(where):
            nonlocal spooled_seen, outbox_seen
            st = read_doc(state, "state file (%s)" % where)
            sp = read_doc(spool, "spool file (%s)" % where)
            if st is not None:
                if not isinstance(st.get("outbox"), list) or not isinstance(st.get("alerts"), dict):
                    fail("state file (%s) lacks outbox/alerts: %r" % (where, st))
                for o in st["outbox"]:
                    seen_ids[o["event"]["id"]] = o["event"]
                    outbox_seen += 1
            if sp is not None:
                if not isinstance(sp.get("entries"), list):
                    fail("spool file (%s) lacks entries: %r" % (where, sp))
                for e in sp["entries"]:
                    seen_ids[e["event"]["id"]] = e["event"]
                    spooled_seen += 1
            corrupt = [n for n in os.listdir(os.path.dirname(state)) if ".corrupt-" in n] \
                if os.path.isdir(os.path.dirname(state)) else []
            if corrupt:
                fail("a file was moved aside as corrupt (%s): %s" % (where, corrupt))
            return st, sp

        t_start = time.monotonic()
        for run in range(1, RUNS + 1):
            if run > 1:
                for fid in FLIPS:
                    if rng.random() < 0.35:
                        bad[fid] = not bad[fid]
                        flips += 1
            write_fixtures()
            rec.down = rng.random() < 0.3
            rec.run = run
            down_runs += rec.down
            # half the kills early: transitions are decided and sent in a
            # run's first cycle, and those windows matter most
            delay = rng.uniform(0.05, 0.5 if rng.random() < 0.5 else 1.5)
            p = start(1000)
            time.sleep(delay)
            if p.poll() is not None:
                out, err = p.communicate()
                fail("run %d: the watch ended by itself (exit %s): %s" % (run, p.returncode, err.decode()))
            p.kill()
            _, err = p.communicate(timeout=30)
            err = err.decode(errors="replace")
            for bad_msg in ("does not parse", "cannot save", "neither delivered nor spooled"):
                if bad_msg in err:
                    fail("run %d: stderr says %r:\n%s" % (run, bad_msg, err))
            st_, sp_ = collect("after kill %d at %.2fs" % (run, delay))
            if os.environ.get("KILL9_DEBUG"):
                print("run", run, "down" if rec.down else "up", "delay %.2f" % delay, "outbox",
                      [o["event"]["id"][-6:] for o in (st_ or {}).get("outbox", [])], "spool",
                      [e["event"]["id"][-6:] for e in (sp_ or {}).get("entries", [])])
                print("   got", [w for r, w, _ in rec.log if r == run])
                print("   err", err.strip().replace("\n", "\n   err "))

        # the final clean run: receiver up, a few cycles, exits by itself
        rec.down = False
        p = start(3)
        try:
            out, err = p.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            fail("the final run did not finish")
        err = err.decode(errors="replace")
        if p.returncode != 0:
            fail("final run: exit %d, stderr:\n%s" % (p.returncode, err))
        summary = json.loads(out.decode().strip().splitlines()[-1])
        if summary["lost"] != 0:
            fail("final run lost notifications: %r\n%s" % (summary, err))
        st, sp = collect("after the final run")
        if st is None:
            fail("no state file after the final run")
        if st["outbox"]:
            fail("the outbox is not empty at the end: %r" % st["outbox"])
        if sp is not None and sp["entries"]:
            fail("the spool is not empty at the end: %r" % sp["entries"])

        # ---- what the receiver got -------------------------------------------------
        with rec.lock:
            deliveries = list(rec.delivered)
            refused = rec.refused
            if rec.bad:
                fail("deliveries with a bad signature or id: %r" % rec.bad[:3])
        by_id = {}
        dups = 0
        for wid, ev in deliveries:
            if wid in by_id:
                dups += 1
                if by_id[wid] != ev:
                    fail("webhook-id %s delivered twice with different events:\n%r\n%r"
                         % (wid, by_id[wid], ev))
            else:
                by_id[wid] = ev
        missing = sorted(set(seen_ids) - set(by_id))
        if missing:
            fail("%d decided notification(s) never delivered, e.g. %r"
                 % (len(missing), seen_ids[missing[0]]))

        # per alert: delivered transitions add up to the final state
        # a notification is one execution's group: its alerts are the transitions
        per = {}
        alerts_delivered = 0
        for g in by_id.values():
            for ev in g.get("alerts") or [g]:
                alerts_delivered += 1
                fp = (ev["rule"], ev["execution_id"], ev.get("metric"))
                per.setdefault(fp, {"firing": [], "resolved": []})[ev["state"]].append(ev["fired_at"])
        firing_now = set()
        for rec_ in st["alerts"].values():
            if rec_["state"] == "firing":
                firing_now.add((rec_["rule"], rec_["execution_id"], rec_.get("metric")))
        expect = {(rule, fid, metric) for fid in FLIPS if bad[fid] for rule, metric in BAD_ALERTS}
        failing_now = {fp for fp in firing_now if fp[1] == FAILING}
        if not any(fp[0] == "score-floor" for fp in failing_now):
            fail("the failing fixture's score-floor alert is not firing at the end: %r" % firing_now)
        if firing_now - failing_now != expect:
            fail("final firing alerts %r, the fixtures say %r" % (sorted(firing_now - failing_now),
                                                                   sorted(expect)))
        for fp in set(per) | firing_now:
            d = per.get(fp, {"firing": [], "resolved": []})
            want = 1 if fp in firing_now else 0
            if len(d["firing"]) - len(d["resolved"]) != want:
                fail("alert %r: %d firing and %d resolved notifications delivered, but it is %s"
                     % (fp, len(d["firing"]), len(d["resolved"]),
                        "firing" if want else "not firing"))
            pool = list(d["firing"])
            for fa in d["resolved"]:
                if fa not in pool:
                    fail("alert %r: a resolved notification (fired_at %s) with no firing one: %r"
                         % (fp, fa, d))
                pool.remove(fa)

        if alerts_delivered < 1 + 5:
            fail("only %d alerts delivered; the failing fixture alone fires 6" % alerts_delivered)
        leftovers = [n for n in os.listdir(os.path.dirname(state)) if ".tmp." in n]
        print("ok: %d kill -9 runs + 1 clean (%.1fs): %d notifications delivered (%d unique ids, "
              "%d redelivered); %d seen pending in outboxes, %d in spools after kills; "
              "%d fixture flips, %d runs with the receiver down (%d 503s); %d stray temp files"
              % (RUNS, time.monotonic() - t_start, len(deliveries), len(by_id), dups, outbox_seen,
                 spooled_seen, flips, down_runs, refused, len(leftovers)))
        if os.environ.get("KILL9_DEBUG"):
            counts = {}
            for wid, _ in deliveries:
                counts[wid] = counts.get(wid, 0) + 1
            print("times delivered per redelivered id:", sorted(c for c in counts.values() if c > 1))
        rec.srv.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
