/* The log callback is a callback like the others (API.md, "Precise rules",
 * "The log callback"):
 *
 *  1. It may call any netev function, on the very connection the line is
 *     about, and it never runs while netev holds a lock. A log callback
 *     reads every property of the line's connection and sends a few bytes
 *     on it, while real echo sessions run (immediate mode against a BSD
 *     echo peer, and dispatcher mode, run by this thread, against a netev
 *     listener echoing): sends, shutdown, END, close. Every call returns a
 *     documented status; nothing hangs (a hang is reported by the
 *     watchdog with the stage it happened in).
 *  2. After netev_log_set_callback(NULL, NULL), or with another callback,
 *     returns, the old callback is never called again, while other threads
 *     produce lines all the time (connections opening and closing in a
 *     loop). Removed, replaced and re-added many times.
 *  3. The callback itself may remove the callback: set_callback(NULL, NULL)
 *     from inside returns NETEV_OK, without deadlock (calls already under
 *     way on other threads are only counted, not judged).
 *
 * `log_callback_reentry [reentry|removal|self]` runs one part only. */
#include "common_listener.h"

#include <stdatomic.h>

#define UNSET (-1)

/* ---- a watchdog that says where it hung --------------------------------- */


  
/* "<timestamp> connection <id> <what>": the id and the what. */
static int parse_connection_line(const char *line, netev_connection *id, const char **what) {
  const char *sp = strchr(line, ' ');
  if (!sp || strncmp(sp + 1, "connection ", 11) != 0) return 0;
  const char *p = sp + 12;
  char *end = NULL;
  unsigned long long v = strtoull(p, &end, 10);
  if (end == p || *end != ' ') return 0;
  *id = (netev_connection)v;
  *what = end + 1;
  return 1;
}

/* ======================================================================== */
/* 1. reentry: the callback calls netev on the line's connection            */
/* ======================================================================== */

#define MAX_IDS 512
#define SENDS_PER_ID 4

typedef struct reentry_log {
  atomic_long lines;
  atomic_long connection_lines;
  atomic_long nested;       /* lines logged by the callback's own calls */
  atomic_long sends_ok;     /* sends from the callback that netev took */
  atomic_long valid_handle; /* lines whose connection answered NETEV_OK */
  pthread_mutex_t mu;
  int bad;
  char bad_what[512];
  netev_connection ids[MAX_IDS];
  int sends[MAX_IDS];
  int nids;
} reentry_log;

static reentry_log g_rl;
/* Lines produced by this thread's calls from inside the callback come
 * back into the callback: those only count, or a send would log a line
 * that sends again, forever. */
static _Thread_local int log_depth;

static void rl_bad(const char *fn, netev_status st, const char *line) {
  pthread_mutex_lock(&g_rl.mu);
  if (!g_rl.bad)
    snprintf(g_rl.bad_what, sizeof g_rl.bad_what, "%s returned %s inside the log callback on \"%s\"",
             fn, netev_status_name((int32_t)st), line);
  g_rl.bad++;
  pthread_mutex_unlock(&g_rl.mu);
}

/* Whether the callback may still send on `id` (a few sends per connection:
 * an echo peer sends them back, and each DATA logs a line). */
static int rl_may_send(netev_connection id) {
  int ok = 0;
  pthread_mutex_lock(&g_rl.mu);
  int i;
  for (i = 0; i < g_rl.nids; i++)
    if (g_rl.ids[i] == id) break;
  if (i == g_rl.nids && g_rl.nids < MAX_IDS) {
    g_rl.ids[i] = id;
    g_rl.sends[i] = 0;
    g_rl.nids++;
  }
  if (i < g_rl.nids && g_rl.sends[i] < SENDS_PER_ID) {
    g_rl.sends[i]++;
    ok = 1;
  }
  pthread_mutex_unlock(&g_rl.mu);
  return ok;
}

#define RL_GETTER(call, fn)                                                    \
  do {                                                                         \
    netev_status st_ = (call);                                                 \
    if (st_ != NETEV_OK && st_ != NETEV_ERR_INVALID_HANDLE) rl_bad(fn, st_, line); \
    if (st_ == NETEV_OK) any_ok = 1;                                           \
  } while (0)

static void reentry_log_cb(const char *line, void *ud) {
  (void)ud;
  atomic_fetch_add(&g_rl.lines, 1);
  if (log_depth > 0) {
    atomic_fetch_add(&g_rl.nested, 1);
    return;
  }
  netev_connection id;
  const char *what;
  if (!parse_connection_line(line, &id, &what)) return;
  atomic_fetch_add(&g_rl.connection_lines, 1);
  log_depth++;
  int any_ok = 0;
  bool b = false;
  uint16_t port = 0;
  char addr[64];
  size_t need = 0, n = 0;
  void *user = NULL;
  netev_listener owner = 0;
  netev_error_info info;
  RL_GETTER(netev_connection_closed(id, &b), "netev_connection_closed");
  RL_GETTER(netev_connection_port(id, &port), "netev_connection_port");
  RL_GETTER(netev_connection_address(id, addr, sizeof addr, &need), "netev_connection_address");
  RL_GETTER(netev_connection_buffered_amount(id, &n), "netev_connection_buffered_amount");
  RL_GETTER(netev_connection_error_count(id, &n), "netev_connection_error_count");
  RL_GETTER(netev_connection_user_data(id, &user), "netev_connection_user_data");
  RL_GETTER(netev_connection_listener(id, &owner), "netev_connection_listener");
  RL_GETTER(netev_connection_no_delay(id, &b), "netev_connection_no_delay");
  netev_status st = netev_connection_error_at(id, 0, &info);
  if (st != NETEV_OK && st != NETEV_ERR_INVALID_ARGUMENT && st != NETEV_ERR_INVALID_HANDLE)
    rl_bad("netev_connection_error_at(0)", st, line);
  if (any_ok) atomic_fetch_add(&g_rl.valid_handle, 1);
  if (rl_may_send(id)) {
    st = netev_connection_send(id, "##", 2);
    if (st == NETEV_OK)
      atomic_fetch_add(&g_rl.sends_ok, 1);
    else if (st != NETEV_ERR_CLOSED && st != NETEV_ERR_INVALID_HANDLE &&
             st != NETEV_ERR_BUFFER_FULL)
      rl_bad("netev_connection_send", st, line);
  }
  log_depth--;
}

/* The received bytes without the '#' the log callback sent. */
static size_t plain_len(recorder *r) {
  size_t k = 0;
  for (size_t i = 0; i < r->data_len; i++) k += r->data[i] != '#';
  return k;
}
static int pred_plain(recorder *r, size_t n) { return plain_len(r) >= n; }

static void check_plain(recorder *r, const char *want, const char *session) {
  pthread_mutex_lock(&r->mu);
  char got[256];
  size_t k = 0;
  for (size_t i = 0; i < r->data_len && k + 1 < sizeof got; i++)
    if (r->data[i] != '#') got[k++] = (char)r->data[i];
  got[k] = 0;
  pthread_mutex_unlock(&r->mu);
  if (strcmp(got, want) != 0)
    FAIL("%s: the echo (without the log callback's '#') is \"%s\", expected \"%s\"", session, got,
         want);
}

/* Runs `d` on this thread (when d != 0) until pred(r, arg) holds, or just
 * waits for it; bounded. */
static int pump(netev_dispatcher d, recorder *r, int (*pred)(recorder *, size_t), size_t arg,
                double seconds) {
  if (!d) return rec_wait(r, pred, arg, seconds);
  double end = now_seconds() + seconds * test_time_factor();
  for (;;) {
    pthread_mutex_lock(&r->mu);
    int ok = pred(r, arg);
    pthread_mutex_unlock(&r->mu);
    if (ok) return 1;
    if (now_seconds() > end) return 0;
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
}

static const char *const msgs[] = {"alpha ", "beta ", "gamma", NULL};
#define ALL_MSGS "alpha beta gamma"

/* One echo session: open, sends, then shutdown (END, CLOSE) or close. */
static void session(const char *name, uint16_t port, netev_dispatcher d, int use_close) {
  TEST_STAGE = name;
  recorder r;
  rec_init(&r);
  if (d) {
    r.check_thread = 1;
    r.expect_thread = pthread_self();
  }
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.dispatcher = d;
  o.connection_timeout = 10;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  for (int i = 0; msgs[i]; i++) CHECK_OK(netev_connection_send(c, msgs[i], strlen(msgs[i])));
  if (!pump(d, &r, pred_plain, strlen(ALL_MSGS), 20)) {
    char seq[512];
    rec_sequence(&r, seq, sizeof seq);
    FAIL("%s: the echo did not come back; events \"%s\"", name, seq);
  }
  check_plain(&r, ALL_MSGS, name);
  if (use_close)
    CHECK_OK(netev_connection_close(c));
  else
    CHECK_OK(netev_connection_shutdown(c));
  if (!pump(d, &r, rec_pred_terminated, 0, 20)) {
    char seq[512];
    rec_sequence(&r, seq, sizeof seq);
    FAIL("%s: no TERMINATE; events \"%s\"", name, seq);
  }
  if (use_close)
    CHECK_SEQUENCE(&r, "connection data* close terminate");
  else
    CHECK_SEQUENCE(&r, "connection data* end close terminate");
  check_plain(&r, ALL_MSGS, name);
  CHECK(r.overlaps == 0 && r.after_terminate == 0 && r.wrong_thread == 0);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
}

static void part_reentry(void) {
  memset(&g_rl, 0, sizeof g_rl);
  pthread_mutex_init(&g_rl.mu, NULL);
  CHECK_OK(netev_log_set_callback(reentry_log_cb, NULL));

  /* immediate mode, against a BSD echo peer */
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  session("reentry: immediate mode, BSD echo peer, shutdown (a log callback calling netev on "
          "the line's connection deadlocked? rule: the log callback never runs while netev "
          "holds a lock)",
          p.port, 0, 0);
  peer_stop(&p);
  peer_start(&p, PEER_ECHO, 0);
  session("reentry: immediate mode, BSD echo peer, close (log callback calling netev "
          "deadlocked?)",
          p.port, 0, 1);
  peer_stop(&p);

  /* with a dispatcher run by this thread, against a netev listener echoing
   * on netev's threads (so its accepted connections log lines too) */
  TEST_STAGE = "reentry: opening the echo listener";
  lsn_server s;
  lsn_init(&s);
  uint16_t port = lsn_open(&s, "127.0.0.1");
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  session("reentry: dispatcher mode, netev listener echoing, shutdown (log callback calling "
          "netev deadlocked?)",
          port, d, 0);
  session("reentry: dispatcher mode, netev listener echoing, close (log callback calling "
          "netev deadlocked?)",
          port, d, 1);
  TEST_STAGE = "reentry: waiting for the accepted connections to end";
  if (!lsn_wait(&s, lsn_pred_conn_terminates, 2, 20))
    FAIL("the listener's accepted connections did not end");
  lsn_check_clean(&s);
  TEST_STAGE = "reentry: releasing the listener and the dispatcher";
  CHECK_OK(netev_listener_release(s.listener));
  CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_log_set_callback(NULL, NULL));

  pthread_mutex_lock(&g_rl.mu);
  if (g_rl.bad)
    FAIL("%d calls from the log callback gave a status outside the contract; first: %s",
         g_rl.bad, g_rl.bad_what);
  pthread_mutex_unlock(&g_rl.mu);
  /* the test did what it means to: lines about live connections came, and
   * the callback's calls on them answered */
  if (atomic_load(&g_rl.connection_lines) < 10)
    FAIL("only %ld connection lines reached the log callback",
         (long)atomic_load(&g_rl.connection_lines));
  if (atomic_load(&g_rl.valid_handle) == 0)
    FAIL("no call from the log callback ever found the line's connection live");
  lsn_free(&s);
  pthread_mutex_destroy(&g_rl.mu);
}

/* ======================================================================== */
/* Producers: threads that open and close connections in a loop, so lines  */
/* come all the time, from their threads and from netev's.                  */
/* ======================================================================== */

#define PRODUCERS 2

typedef struct producers {
  pthread_t t[PRODUCERS];
  uint16_t port;
  atomic_int stop;
  atomic_long iterations;
  atomic_int failed;
  char failure[256];
} producers;

static producers g_prod;

static void *producer_main(void *arg) {
  (void)arg;
  while (!atomic_load(&g_prod.stop)) {
    netev_connection_options o;
    netev_connection_options_init(&o);
    o.connection_timeout = 10;
    netev_connection c = 0;
    netev_status st = netev_connection_open("127.0.0.1", g_prod.port, &o, &c);
    if (st == NETEV_OK) st = netev_connection_send(c, "x", 1);
    if (st == NETEV_OK) st = netev_connection_close(c);
    if (st == NETEV_OK) st = netev_connection_wait(c, 10 * test_time_factor());
    if (c) netev_connection_release(c);
    if (st != NETEV_OK) {
      if (!atomic_exchange(&g_prod.failed, 1))
        snprintf(g_prod.failure, sizeof g_prod.failure, "producer: %s",
                 netev_status_name((int32_t)st));
      break;
    }
    atomic_fetch_add(&g_prod.iterations, 1);
  }
  return NULL;
}

static netev_listener g_prod_listener;

static void producers_start(void) {
  memset(&g_prod, 0, sizeof g_prod);
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1"; /* accepts with the defaults: no callbacks */
  CHECK_OK(netev_listener_open(0, &lo, &g_prod_listener));
  CHECK_OK(netev_listener_port(g_prod_listener, &g_prod.port));
  for (int i = 0; i < PRODUCERS; i++)
    CHECK(pthread_create(&g_prod.t[i], NULL, producer_main, NULL) == 0);
}

static void producers_stop(void) {
  atomic_store(&g_prod.stop, 1);
  for (int i = 0; i < PRODUCERS; i++) pthread_join(g_prod.t[i], NULL);
  if (atomic_load(&g_prod.failed)) FAIL("%s", g_prod.failure);
  CHECK_OK(netev_listener_release(g_prod_listener));
}

/* Waits (bounded) until the producers have done `n` more round trips, so
 * that lines were logged after whatever just happened. */
static void producers_advance(long n, const char *what) {
  long start = atomic_load(&g_prod.iterations);
  double end = now_seconds() + 20 * test_time_factor();
  while (atomic_load(&g_prod.iterations) < start + n) {
    if (atomic_load(&g_prod.failed)) FAIL("%s", g_prod.failure);
    if (now_seconds() > end) FAIL("%s: the producer threads made no progress", what);
    sleep_ms(1);
  }
}

/* ======================================================================== */
/* 2. removal: after set_callback returns, the old callback is never called */
/* ======================================================================== */

typedef struct rctx {
  atomic_int removed; /* set by main right after set_callback that dropped it returned */
  atomic_long calls;
  atomic_long late;   /* calls that began after that */
} rctx;

static void race_cb(const char *line, void *ud) {
  rctx *x = ud;
  (void)line;
  if (atomic_load(&x->removed)) atomic_fetch_add(&x->late, 1);
  atomic_fetch_add(&x->calls, 1);
}

static void wait_calls(rctx *x, long n) {
  double end = now_seconds() + 20 * test_time_factor();
  while (atomic_load(&x->calls) < n) {
    if (atomic_load(&g_prod.failed)) FAIL("%s", g_prod.failure);
    if (now_seconds() > end) FAIL("removal: the log callback got no lines for 20 s");
    sleep_ms(1);
  }
}

static void part_removal(void) {
  long rounds = test_scale(1000, 20);
  rctx *ctx = calloc((size_t)rounds, sizeof *ctx);
  CHECK(ctx != NULL);
  TEST_STAGE = "removal: starting the producers";
  producers_start();
  TEST_STAGE = "removal: netev_log_set_callback in a loop (hangs?)";
  int installed = 0; /* ctx[k-1] is still installed */
  for (long k = 0; k < rounds; k++) {
    CHECK_OK(netev_log_set_callback(race_cb, &ctx[k]));
    if (installed) atomic_store(&ctx[k - 1].removed, 1); /* replaced by another */
    installed = 1;
    wait_calls(&ctx[k], 2);
    /* every other round, removed with NULL; else replaced by the next */
    if (k % 2 == 0) {
      CHECK_OK(netev_log_set_callback(NULL, NULL));
      atomic_store(&ctx[k].removed, 1);
      installed = 0;
    }
  }
  if (installed) {
    CHECK_OK(netev_log_set_callback(NULL, NULL));
    atomic_store(&ctx[rounds - 1].removed, 1);
  }
  /* lines go on after the last removal: none may reach an old callback */
  producers_advance(5, "removal");
  TEST_STAGE = "removal: stopping the producers";
  producers_stop();
  long late = 0, calls = 0, rounds_late = 0;
  for (long k = 0; k < rounds; k++) {
    long l = atomic_load(&ctx[k].late);
    late += l;
    rounds_late += l > 0;
    calls += atomic_load(&ctx[k].calls);
  }
  if (late > 0)
    FAIL("a log callback was called %ld times (in %ld of %ld rounds) after "
         "netev_log_set_callback had returned removing or replacing it "
         "(rule: after netev_log_set_callback(NULL, NULL) or another callback returns, the "
         "old one is never called again)",
         late, rounds_late, rounds);
  CHECK(calls >= 2 * rounds);
  free(ctx);
}

/* ======================================================================== */
/* 3. self: the callback removes itself                                     */
/* ======================================================================== */

static atomic_int self_entries;
static atomic_int self_removed; /* the inner set_callback(NULL) returned */
static atomic_long self_late;
static atomic_int self_status = UNSET;

static void self_cb(const char *line, void *ud) {
  (void)line;
  (void)ud;
  if (atomic_load(&self_removed)) atomic_fetch_add(&self_late, 1);
  if (atomic_fetch_add(&self_entries, 1) == 0) {
    atomic_store(&self_status, (int)netev_log_set_callback(NULL, NULL));
    atomic_store(&self_removed, 1);
  }
}

static void part_self(void) {
  TEST_STAGE = "self: starting the producers";
  producers_start();
  int rounds = (int)test_scale(20, 5);
  for (int k = 0; k < rounds; k++) {
    atomic_store(&self_entries, 0);
    atomic_store(&self_removed, 0);
    atomic_store(&self_status, UNSET);
    TEST_STAGE = "self: netev_log_set_callback(NULL, NULL) inside the log callback (deadlock? "
              "rule: the log callback may call any netev function)";
    CHECK_OK(netev_log_set_callback(self_cb, NULL));
    double end = now_seconds() + 20 * test_time_factor();
    while (!atomic_load(&self_removed)) {
      if (atomic_load(&g_prod.failed)) FAIL("%s", g_prod.failure);
      if (now_seconds() > end)
        FAIL("netev_log_set_callback(NULL, NULL) inside the log callback has not returned "
             "after 20 s (or no line came)");
      sleep_ms(1);
    }
    int st = atomic_load(&self_status);
    if (st != NETEV_OK)
      FAIL("netev_log_set_callback(NULL, NULL) inside the log callback returned %s, expected "
           "NETEV_OK",
           netev_status_name(st));
    producers_advance(3, "self");
  }
  /* Not asserted: whether a call already under way on another thread may
   * still enter the callback after it removed itself from inside (waiting
   * for it there could deadlock two callbacks removing at once). Part 2
   * asserts the rule for a removal made outside any callback. */
  if (atomic_load(&self_late) > 0)
    fprintf(stderr,
            "note: the log callback was entered %ld times (on other threads) after it had "
            "removed itself from inside; not a failure here\n",
            (long)atomic_load(&self_late));
  /* removing again from outside is harmless */
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  TEST_STAGE = "self: stopping the producers";
  producers_stop();
}

int main(int argc, char **argv) {
  watchdog_staged("log_callback_reentry", 90);
  const char *only = argc > 1 ? argv[1] : NULL;
  if (!only || strcmp(only, "reentry") == 0) part_reentry();
  if (!only || strcmp(only, "removal") == 0) part_removal();
  if (!only || strcmp(only, "self") == 0) part_self();
  TEST_STAGE = "netev_runtime_shutdown";
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
