/* Blocking calls never stall netev's I/O threads, and two option and size
 * rules (API.md, "Precise rules": "Dispatch", "Events").
 *
 * 1. blocking: from inside an immediate-mode callback (on a netev I/O
 *    thread), one after the other:
 *    - netev_connection_wait(other, T) on a connection bound to a
 *      dispatcher and not ended: NETEV_ERR_WOULD_DEADLOCK at once (well
 *      under T);
 *    - netev_dispatcher_run(d, T, &ran): NETEV_ERR_WOULD_DEADLOCK at once,
 *      `ran` untouched or 0;
 *    - netev_dispatcher_release(d2) of a dispatcher with live connections
 *      bound to it: NETEV_OK without blocking (well under T); those
 *      connections are closed, and their remaining callbacks (CLOSE,
 *      TERMINATE) each run exactly once afterwards, on netev's threads (not
 *      the host's), then user_data_free once;
 *    - netev_connection_wait(other, -1) (no limit): NETEV_ERR_WOULD_DEADLOCK
 *      at once.
 *    (T is 1 s, stretched by NETEV_TEST_TIME_FACTOR.)
 * 2. keepalive: applied in whole seconds, rounded up: 0.5 opens and works
 *    (echo); 32767 (Linux's most) opens and works; 1e6 is refused by open
 *    with NETEV_ERR_INVALID_ARGUMENT and no callback ever fires.
 * 3. sizes: netev_connection_send with len PTRDIFF_MAX + 1 or SIZE_MAX gives
 *    NETEV_ERR_INVALID_ARGUMENT without touching the buffer (16 valid bytes
 *    followed by an inaccessible page), before and after the connection is
 *    established; the connection works afterwards.
 *
 * `io_thread_rules [blocking|keepalive|sizes]` runs one part. */
#include "common_a.h"
#include "common_b.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>

#define UNSET (-1)

static pthread_t g_main;

/* ======================================================================== */
/* 1. blocking calls inside an I/O-thread callback                          */
/* ======================================================================== */

enum { STEP_WAIT_T, STEP_RUN_T, STEP_RELEASE, STEP_WAIT_FOREVER, NSTEPS };

static const char *const step_names[NSTEPS] = {
    "netev_connection_wait(other, T) on a dispatcher-bound connection",
    "netev_dispatcher_run(d, T, &ran)",
    "netev_dispatcher_release(d2) with live connections bound to d2",
    "netev_connection_wait(other, -1) on a dispatcher-bound connection",
};

typedef struct steps {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;                     /* steps finished */
  netev_status status[NSTEPS];
  double took[NSTEPS];
  size_t ran;                   /* of STEP_RUN_T */
  pthread_t io_thread;
  netev_connection other;
  netev_dispatcher d, d2;
  double T;
} steps;

static steps S;

static void step_done(int k, netev_status st, double took) {
  pthread_mutex_lock(&S.mu);
  S.status[k] = st;
  S.took[k] = took;
  S.done = k + 1;
  pthread_cond_broadcast(&S.cv);
  pthread_mutex_unlock(&S.mu);
}

/* on_connection of an immediate-mode connection: runs on a netev I/O thread */
static void steps_cb(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  S.io_thread = pthread_self();
  double t0 = now_seconds();
  netev_status st = netev_connection_wait(S.other, S.T);
  step_done(STEP_WAIT_T, st, now_seconds() - t0);

  size_t ran = 12345;
  t0 = now_seconds();
  st = netev_dispatcher_run(S.d, S.T, &ran);
  S.ran = ran;
  step_done(STEP_RUN_T, st, now_seconds() - t0);

  t0 = now_seconds();
  st = netev_dispatcher_release(S.d2);
  step_done(STEP_RELEASE, st, now_seconds() - t0);

  t0 = now_seconds();
  st = netev_connection_wait(S.other, -1);
  step_done(STEP_WAIT_FOREVER, st, now_seconds() - t0);
  rec_done(&x->r);
}

/* Waits (bounded) for step k; checks it gave `want` at once. */
static void check_step(int k, netev_status want) {
  double limit = 3 * S.T + 5 * test_time_factor();
  double end = now_seconds() + limit;
  pthread_mutex_lock(&S.mu);
  while (S.done <= k && cond_wait_until(&S.cv, &S.mu, end)) {
  }
  int done = S.done > k;
  netev_status st = S.status[k];
  double took = S.took[k];
  pthread_mutex_unlock(&S.mu);
  if (!done)
    FAIL("%s inside an immediate-mode callback (a netev I/O thread) has not returned after "
         "%.1f s (rule: a blocking call on a netev I/O thread never stalls it: "
         "%s at once)",
         step_names[k], limit, netev_status_name((int32_t)want));
  if (st != want || took >= S.T / 2)
    FAIL("%s inside an immediate-mode callback (a netev I/O thread) returned %s after %.3f s, "
         "expected %s at once (well under T = %.1f s) (rule: blocking calls on netev's I/O "
         "threads never stall them)",
         step_names[k], netev_status_name((int32_t)st), took, netev_status_name((int32_t)want),
         S.T);
}

/* A recorder for the connections bound to d2: also notes CLOSE and
 * TERMINATE running on the main thread (they must run on netev's). */
typedef struct bound {
  xrec x; /* first */
  atomic_int end_on_main;
} bound;

static void bound_cb(netev_connection c, const netev_event *e, void *ud) {
  bound *b = ud;
  if ((e->type == NETEV_EVENT_CLOSE || e->type == NETEV_EVENT_TERMINATE ||
       e->type == NETEV_EVENT_ERROR) &&
      pthread_equal(pthread_self(), g_main))
    atomic_fetch_add(&b->end_on_main, 1);
  xrec_callback(c, e, ud);
}

static netev_connection open_bound(uint16_t port, netev_dispatcher d, xrec *x,
                                   netev_connection_callback cb) {
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, x);
  if (cb) {
    o.on_connection = o.on_data = o.on_shutdown = o.on_error = cb;
    o.on_terminate = o.on_drain = o.on_end = cb;
  }
  o.dispatcher = d;
  o.connection_timeout = 10;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  return c;
}

/* Runs `d` on this thread until `x` saw CONNECTION; bounded. */
static void run_until_connected(netev_dispatcher d, xrec *x) {
  double end = now_seconds() + 10 * test_time_factor();
  while (!rec_pred_type(&x->r, NETEV_EVENT_CONNECTION) || x->r.in_callback) {
    if (now_seconds() > end) FAIL("a dispatcher-bound connection never connected");
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
}

static void part_blocking(void) {
  memset(&S, 0, sizeof S);
  pthread_mutex_init(&S.mu, NULL);
  pthread_cond_init(&S.cv, NULL);
  S.T = 1.0 * test_time_factor();
  multi_peer hold;
  multi_peer_start(&hold, 8);
  peer echo;
  peer_start(&echo, PEER_ECHO, 0);

  /* `other`, bound to d, connected and idle (the peer holds it) */
  CHECK_OK(netev_dispatcher_create(&S.d));
  xrec xo;
  xrec_init(&xo);
  S.other = open_bound(hold.port, S.d, &xo, NULL);
  run_until_connected(S.d, &xo);

  /* two connections bound to d2, connected */
  CHECK_OK(netev_dispatcher_create(&S.d2));
  bound b[2];
  netev_connection bc[2];
  for (int i = 0; i < 2; i++) {
    memset(&b[i], 0, sizeof b[i]);
    xrec_init(&b[i].x);
    bc[i] = open_bound(hold.port, S.d2, &b[i].x, bound_cb);
    run_until_connected(S.d2, &b[i].x);
  }

  /* the steps run in on_connection of an immediate-mode connection */
  xrec xt;
  xrec_init(&xt);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &xt);
  o.on_connection = steps_cb;
  netev_connection t = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", echo.port, &o, &t));

  check_step(STEP_WAIT_T, NETEV_ERR_WOULD_DEADLOCK);
  check_step(STEP_RUN_T, NETEV_ERR_WOULD_DEADLOCK);
  if (S.ran != 12345 && S.ran != 0)
    FAIL("netev_dispatcher_run refused on a netev I/O thread stored ran = %zu (expected it "
         "untouched or 0)",
         S.ran);
  check_step(STEP_RELEASE, NETEV_OK);
  CHECK(!pthread_equal(S.io_thread, g_main));

  /* d2's connections end by themselves: nobody runs d2 (its handle is dead) */
  CHECK_STATUS(netev_dispatcher_run(S.d2, 0, NULL), NETEV_ERR_INVALID_HANDLE);
  for (int i = 0; i < 2; i++) {
    if (!rec_wait_terminated(&b[i].x.r, 10)) {
      char seq[256];
      rec_sequence(&b[i].x.r, seq, sizeof seq);
      FAIL("connection %d bound to the dispatcher released on a netev I/O thread got no "
           "TERMINATE; events \"%s\" (rule: its remaining callbacks run, on netev's threads)",
           i, seq);
    }
    if (!xrec_wait_freed(&b[i].x, 10))
      FAIL("connection %d bound to the released dispatcher: user_data_free never ran", i);
    CHECK_SEQUENCE(&b[i].x.r, "connection close terminate");
    CHECK_XREC_CLEAN(&b[i].x);
    CHECK(XREC_GET(&b[i].x, free_calls) == 1 && XREC_GET(&b[i].x, free_early) == 0);
    if (atomic_load(&b[i].end_on_main))
      FAIL("connection %d: CLOSE/TERMINATE ran on the host's main thread after its dispatcher "
           "was released on a netev I/O thread (expected on netev's threads)",
           i);
    bool closed = false;
    CHECK_OK(netev_connection_closed(bc[i], &closed));
    CHECK(closed);
    CHECK_OK(netev_connection_release(bc[i]));
  }

  check_step(STEP_WAIT_FOREVER, NETEV_ERR_WOULD_DEADLOCK);

  /* `other` was left alone by all this: open, nothing run on netev's threads */
  bool closed = true;
  CHECK_OK(netev_connection_closed(S.other, &closed));
  CHECK(!closed);
  CHECK_SEQUENCE(&xo.r, "connection");
  CHECK_OK(netev_connection_close(S.other));
  CHECK_OK(netev_connection_wait(S.other, 10 * test_time_factor())); /* runs d here */
  REC_WAIT_TERMINATED_OR_FAIL(&xo.r, 10);
  CHECK_SEQUENCE(&xo.r, "connection close terminate");
  CHECK_XREC_CLEAN(&xo);
  CHECK_OK(netev_connection_release(S.other));
  CHECK_OK(netev_dispatcher_release(S.d));

  /* the connection whose callback did all this is fine too */
  CHECK_OK(netev_connection_shutdown(t));
  REC_WAIT_TERMINATED_OR_FAIL(&xt.r, 10);
  CHECK_SEQUENCE(&xt.r, "connection end close terminate");
  CHECK_XREC_CLEAN(&xt);
  CHECK_OK(netev_connection_release(t));

  peer_stop(&echo);
  multi_peer_stop(&hold);
  xrec_free_fields(&xo);
  xrec_free_fields(&xt);
  for (int i = 0; i < 2; i++) xrec_free_fields(&b[i].x);
  pthread_mutex_destroy(&S.mu);
  pthread_cond_destroy(&S.cv);
}

/* ======================================================================== */
/* 2. keepalive                                                             */
/* ======================================================================== */

/* At least `n` bytes, or the end (an error ends it early). */
static int pred_bytes_or_end(recorder *r, size_t n) { return r->data_len >= n || r->terminated; }

/* An echo round trip on a connection opened with `keepalive`. */
static void keepalive_works(double keepalive) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.keepalive = keepalive;
  o.connection_timeout = 10;
  netev_connection c = 0;
  netev_status st = netev_connection_open("127.0.0.1", p.port, &o, &c);
  if (st != NETEV_OK)
    FAIL("keepalive = %g: netev_connection_open returned %s, expected NETEV_OK", keepalive,
         netev_status_name((int32_t)st));
  const char *msg = "keepalive";
  CHECK_OK(netev_connection_send(c, msg, strlen(msg)));
  if (!rec_wait(&x.r, pred_bytes_or_end, strlen(msg), 10) ||
      rec_count(&x.r, NETEV_EVENT_ERROR) || x.r.data_len < strlen(msg)) {
    rec_wait_terminated(&x.r, 1);
    char seq[256];
    rec_sequence(&x.r, seq, sizeof seq);
    FAIL("keepalive = %g: the connection did not work: events \"%s\", error %s \"%s\" (rule: "
         "keepalive is applied in whole seconds, rounded up, at least 1; a value the OS cannot "
         "take fails open, never after connecting)",
         keepalive, seq, netev_status_name((int32_t)XREC_GET(&x, r.error)), x.message);
  }
  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(x.r.data_len == strlen(msg) && memcmp(x.r.data, msg, strlen(msg)) == 0);
  CHECK_XREC_CLEAN(&x);
  CHECK(xrec_wait_freed(&x, 10));
  size_t nerr = 99;
  CHECK_OK(netev_connection_error_count(c, &nerr));
  CHECK(nerr == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  xrec_free_fields(&x);
}

static xrec g_refused; /* callbacks of the refused open: none may fire */

static void part_keepalive(void) {
  keepalive_works(0.5);
  keepalive_works(32767);

  /* beyond what the OS takes: refused by open itself (to a port where
   * nothing listens: a connection that wrongly opened fails, and says so) */
  xrec_init(&g_refused);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &g_refused);
  o.keepalive = 1e6;
  o.connection_timeout = 10;
  netev_connection c = 0;
  netev_status st = netev_connection_open("127.0.0.1", refused_port(), &o, &c);
  if (st != NETEV_ERR_INVALID_ARGUMENT) {
    if (st == NETEV_OK) rec_wait_terminated(&g_refused.r, 2);
    char seq[256];
    rec_sequence(&g_refused.r, seq, sizeof seq);
    FAIL("keepalive = 1e6 (over Linux's 32767 s): netev_connection_open returned %s (events "
         "\"%s\"), expected NETEV_ERR_INVALID_ARGUMENT (rule: a keepalive the OS cannot take "
         "gives NETEV_ERR_INVALID_ARGUMENT from open, never a failure after connecting)",
         netev_status_name((int32_t)st), seq);
  }
  /* checked again after netev_runtime_shutdown, when nothing can come any more */
  CHECK(XREC_GET(&g_refused, r.total) == 0);
}

/* ======================================================================== */
/* 3. sizes above PTRDIFF_MAX                                               */
/* ======================================================================== */

static void huge_sends(netev_connection c, const unsigned char *buf, const char *when) {
  static const struct {
    size_t len;
    const char *name;
  } sizes[] = {{(size_t)PTRDIFF_MAX + 1, "PTRDIFF_MAX + 1"}, {SIZE_MAX, "SIZE_MAX"}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    netev_status st = netev_connection_send(c, buf, sizes[i].len);
    if (st != NETEV_ERR_INVALID_ARGUMENT)
      FAIL("netev_connection_send with len %s (%s) returned %s, expected "
           "NETEV_ERR_INVALID_ARGUMENT (rule: a len above PTRDIFF_MAX gives "
           "NETEV_ERR_INVALID_ARGUMENT)",
           sizes[i].name, when, netev_status_name((int32_t)st));
  }
}

static void part_sizes(void) {
  /* 16 valid bytes right before a page nothing may touch */
  long page = sysconf(_SC_PAGESIZE);
  CHECK(page > 0);
  unsigned char *map =
      mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(map != MAP_FAILED);
  CHECK(mprotect(map + page, (size_t)page, PROT_NONE) == 0);
  unsigned char *buf = map + page - 16;
  memcpy(buf, "0123456789abcdef", 16);

  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.connection_timeout = 10;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  huge_sends(c, buf, "right after open");
  CHECK_OK(netev_connection_send(c, "before", 6));
  if (!rec_wait_bytes(&x.r, 6, 10)) FAIL("no echo after the refused huge sends");
  huge_sends(c, buf, "once established");
  CHECK_OK(netev_connection_send(c, "after", 5));
  if (!rec_wait_bytes(&x.r, 11, 10)) FAIL("no echo after the refused huge sends (established)");
  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  if (x.r.data_len != 11 || memcmp(x.r.data, "beforeafter", 11) != 0)
    FAIL("the echo is %zu bytes, expected exactly \"beforeafter\": a refused send queued "
         "something",
         x.r.data_len);
  CHECK_XREC_CLEAN(&x);
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  xrec_free_fields(&x);
  CHECK(memcmp(buf, "0123456789abcdef", 16) == 0);
  CHECK(munmap(map, (size_t)page * 2) == 0);
}

int main(int argc, char **argv) {
  watchdog(60);
  g_main = pthread_self();
  const char *only = argc > 1 ? argv[1] : NULL;
  if (!only || strcmp(only, "blocking") == 0) part_blocking();
  if (!only || strcmp(only, "keepalive") == 0) part_keepalive();
  if (!only || strcmp(only, "sizes") == 0) part_sizes();
  CHECK_OK(netev_runtime_shutdown(10));
  if (!only || strcmp(only, "keepalive") == 0) {
    if (XREC_GET(&g_refused, r.total) != 0)
      FAIL("a callback fired for the connection whose open was refused (keepalive 1e6)");
    if (XREC_GET(&g_refused, free_calls) != 0)
      FAIL("user_data_free ran for the connection whose open was refused (keepalive 1e6)");
    xrec_free_fields(&g_refused);
  }
  return 0;
}
