/*
 * http_bench_curl.c - the ceiling for a libcurl client: N GETs of one URL
 * with C transfers in flight, driven by libcurl's multi interface directly
 * (curl_multi_poll + curl_multi_perform), easy handles reused so that only
 * the transfers themselves cost anything. Bodies are kept in memory as a
 * client that looks at them would, then dropped.
 *
 * Build (spec/bench/http_bench.sh does this):
 *   cc -O2 -o http_bench_curl spec/bench/http_bench_curl.c $(pkg-config --cflags --libs libcurl)
 * Run:
 *   ./http_bench_curl [-H 'Name: value']... URL[,URL...] N C [USER_AGENT]
 * With USER_AGENT it sends that User-Agent as kpiwatch does (libcurl
 * formats the header byte by byte on every request: a few thousand
 * instructions), to separate that cost from kpiwatch's own.
 * -H adds a request header to every request (the KPIs API's X-Api-Key and
 * X-Secret-Key in spec/bench/run.sh). With several comma-separated URLs,
 * request i goes to URL number i modulo their count (N documents over a
 * few execution ids).
 * Built with -DKW_BENCH_CJSON (and liblua5.4 and lua-cjson's static archive
 * linked), -j decodes every body with lua-cjson into a Lua table, then
 * drops it: the floor of a client that decodes its JSON (spec/bench/run.sh,
 * the goal of issue 14 §5).
 * Prints: requests=N ok=K seconds=S req_per_s=R connections=X
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#ifdef KW_BENCH_CJSON
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
int luaopen_cjson(lua_State *L);
static lua_State *L; /* with -j: cjson.decode at index 1 */

/* Decodes the body into a table and drops it, as a client would after
 * reading a field: 1 when it is a JSON object. */
static int decode(const char *p, size_t len) {
  int ok;
  lua_pushvalue(L, 1);
  lua_pushlstring(L, p, len);
  ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1);
  lua_settop(L, 1);
  return ok;
}
#endif

typedef struct {
  CURL *easy;
  char *buf;
  size_t len, cap;
} slot;

static size_t on_write(char *data, size_t size, size_t n, void *ud) {
  slot *s = ud;
  size_t len = size * n;
  if (s->len + len > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    while (cap < s->len + len)
      cap *= 2;
    char *p = realloc(s->buf, cap);
    if (!p) return 0;
    s->buf = p;
    s->cap = cap;
  }
  memcpy(s->buf + s->len, data, len);
  s->len += len;
  return len;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *user_agent;
static struct curl_slist *headers;

static void start(CURLM *m, slot *s, const char *url) {
  s->len = 0;
  curl_easy_setopt(s->easy, CURLOPT_URL, url);
  if (headers) curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
  curl_easy_setopt(s->easy, CURLOPT_PRIVATE, (char *)s);
  curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
  if (user_agent) curl_easy_setopt(s->easy, CURLOPT_USERAGENT, user_agent);
  curl_multi_add_handle(m, s->easy);
}

int main(int argc, char **argv) {
  const char *prog = argv[0];
  int json = 0; /* -j: decode every body (KW_BENCH_CJSON builds) */
  while (argc > 1 && strcmp(argv[1], "-j") == 0) {
#ifdef KW_BENCH_CJSON
    json = 1;
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_gc(L, LUA_GCGEN, 0, 0); /* as kpiwatch and lua.c */
    luaopen_cjson(L);
    lua_getfield(L, -1, "decode");
    lua_replace(L, 1);
    lua_settop(L, 1);
#else
    fprintf(stderr, "%s: -j needs a build with -DKW_BENCH_CJSON\n", prog);
    return 2;
#endif
    argc--;
    argv++;
  }
  (void)json;
  while (argc > 2 && strcmp(argv[1], "-H") == 0) {
    headers = curl_slist_append(headers, argv[2]);
    argc -= 2;
    argv += 2;
  }
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: %s [-H 'Name: value']... URL[,URL...] N C [USER_AGENT]\n", prog);
    return 2;
  }
  if (argc == 5) user_agent = argv[4];
  /* The URL list, split in place; request i uses urls[i % nurls]. */
  char *urls[64];
  long nurls = 0;
  for (char *tok = strtok(argv[1], ","); tok && nurls < 64; tok = strtok(NULL, ","))
    urls[nurls++] = tok;
  long n = atol(argv[2]), c = atol(argv[3]);
  if (n <= 0 || c <= 0 || nurls == 0) return 2;
  if (c > n) c = n;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURLM *m = curl_multi_init();
  curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, c);
  slot *slots = calloc((size_t)c, sizeof *slots);
  long started = 0, finished = 0, ok = 0, connects = 0;
  double t0 = now();
  for (long i = 0; i < c; i++) {
    slots[i].easy = curl_easy_init();
    start(m, &slots[i], urls[started % nurls]);
    started++;
  }
  while (finished < n) {
    int running;
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int pending;
    while ((msg = curl_multi_info_read(m, &pending))) {
      if (msg->msg != CURLMSG_DONE) continue;
      slot *s;
      long code = 0, nc = 0;
      CURL *e = msg->easy_handle;
      CURLcode res = msg->data.result;
      curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&s);
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
      curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
      connects += nc;
      curl_multi_remove_handle(m, e);
      finished++;
#ifdef KW_BENCH_CJSON
      if (json && res == CURLE_OK && code == 200 && !decode(s->buf, s->len)) res = CURLE_WEIRD_SERVER_REPLY;
#endif
      if (res == CURLE_OK && code == 200 && s->len > 0) ok++;
      if (started < n) {
        start(m, s, urls[started % nurls]);
        started++;
      }
    }
    if (finished < n) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  double secs = now() - t0;
  printf("requests=%ld ok=%ld seconds=%.3f req_per_s=%.0f connections=%ld\n", n, ok, secs,
         (double)n / secs, connects);
  for (long i = 0; i < c; i++) {
    curl_easy_cleanup(slots[i].easy);
    free(slots[i].buf);
  }
  free(slots);
  curl_slist_free_all(headers);
  curl_multi_cleanup(m);
  curl_global_cleanup();
#ifdef KW_BENCH_CJSON
  if (L) lua_close(L);
#endif
  return ok == n ? 0 : 1;
}
