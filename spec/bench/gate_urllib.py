"""gate_urllib.py ID [THRESHOLD]: the CI gate as a Python user would write it
with the standard library only: GET the execution's KPIs with urllib, exit 0
when avg_score >= THRESHOLD (default 0.8), 1 when below, 3 on an API error.
Same env as kpiwatch (FI_BASE_URL, FI_API_KEY, FI_SECRET_KEY). The
comparison point of spec/bench/run.sh's gate latency."""
import json
import os
import sys
import urllib.error
import urllib.request


def main():
    if len(sys.argv) not in (2, 3):
        sys.stderr.write("usage: gate_urllib.py ID [THRESHOLD]\n")
        return 2
    threshold = float(sys.argv[2]) if len(sys.argv) == 3 else 0.8
    base = os.environ.get("FI_BASE_URL", "https://api.futureagi.com").rstrip("/")
    req = urllib.request.Request(
        "%s/simulate/test-executions/%s/kpis/" % (base, sys.argv[1]),
        headers={
            "X-Api-Key": os.environ["FI_API_KEY"],
            "X-Secret-Key": os.environ["FI_SECRET_KEY"],
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, ValueError) as e:
        sys.stderr.write("gate: %s\n" % e)
        return 3
    score = doc.get("avg_score")
    if score is None:
        print("FAIL avg_score: no data")
        return 1
    ok = score >= threshold
    print("%s avg_score %s >= %s" % ("PASS" if ok else "FAIL", score, threshold))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
