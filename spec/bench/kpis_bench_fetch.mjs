// kpis_bench_fetch.mjs N C: the kpis_bench.lua workload as a Node.js user
// would write it: the built-in fetch (undici, keep-alive), C async workers,
// each response decoded with res.json() and its avg_score read. Same env as
// kpis_bench.lua (FI_BASE_URL, FI_API_KEY, FI_SECRET_KEY, BENCH_IDS).
// Exits 1 unless every fetch succeeded.
const [n, c] = process.argv.slice(2).map(Number);
if (!(n > 0 && c > 0)) {
  console.error("usage: node kpis_bench_fetch.mjs N C");
  process.exit(2);
}
const base = process.env.FI_BASE_URL.replace(/\/+$/, "");
let pool = (process.env.BENCH_IDS || "").split(",").filter(Boolean);
if (pool.length === 0) pool = [1, 2, 3, 4, 5].map((i) => `c0ffee00-0000-4000-8000-00000000000${i}`);
const urls = pool.map((id) => `${base}/simulate/test-executions/${id}/kpis/`);
const headers = {
  "X-Api-Key": process.env.FI_API_KEY,
  "X-Secret-Key": process.env.FI_SECRET_KEY,
  Accept: "application/json",
};
let next = 0, fetched = 0, failed = 0, scored = 0;
async function worker() {
  while (next < n) {
    const i = next++;
    try {
      const res = await fetch(urls[i % urls.length], { headers });
      const doc = await res.json();
      if (res.status !== 200 || doc === null || typeof doc !== "object") {
        failed++;
        continue;
      }
      fetched++;
      if (doc.avg_score != null) scored++;
    } catch (e) {
      failed++;
    }
  }
}
await Promise.all(Array.from({ length: Math.min(c, n) }, worker));
console.log(`requests=${n} fetched=${fetched} failed=${failed} scored=${scored}`);
process.exit(fetched === n ? 0 : 1);
