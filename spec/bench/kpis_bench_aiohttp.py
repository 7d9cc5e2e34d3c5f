"""kpis_bench_aiohttp.py N C: the kpis_bench.lua workload as a Python user
would write it: asyncio with aiohttp (Debian python3-aiohttp), one
ClientSession (keep-alive pool of C connections), C worker coroutines, each
response decoded as JSON and its avg_score read. Same env as kpis_bench.lua
(FI_BASE_URL, FI_API_KEY, FI_SECRET_KEY, BENCH_IDS). Exits 1 unless every
fetch succeeded."""
import asyncio
import os
import sys

import aiohttp


async def main(n, c):
    base = os.environ["FI_BASE_URL"].rstrip("/")
    pool = [i for i in os.environ.get("BENCH_IDS", "").split(",") if i] or [
        "c0ffee00-0000-4000-8000-00000000000%d" % i for i in range(1, 6)
    ]
    urls = [f"{base}/simulate/test-executions/{i}/kpis/" for i in pool]
    headers = {
        "X-Api-Key": os.environ["FI_API_KEY"],
        "X-Secret-Key": os.environ["FI_SECRET_KEY"],
        "Accept": "application/json",
    }
    counts = {"fetched": 0, "failed": 0, "scored": 0}
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker():
            for i in todo:
                try:
                    async with session.get(urls[i % len(urls)]) as resp:
                        doc = await resp.json()
                        if resp.status != 200 or not isinstance(doc, dict):
                            counts["failed"] += 1
                            continue
                except aiohttp.ClientError:
                    counts["failed"] += 1
                    continue
                counts["fetched"] += 1
                if doc.get("avg_score") is not None:
                    counts["scored"] += 1

        await asyncio.gather(*(worker() for _ in range(min(c, n))))
    print("requests=%d fetched=%d failed=%d scored=%d" % (n, counts["fetched"], counts["failed"], counts["scored"]))
    return 0 if counts["fetched"] == n else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: kpis_bench_aiohttp.py N C")
    sys.exit(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]))))
