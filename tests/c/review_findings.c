/* Regression tests for the findings of an adversarial review: each part
 * asserts the documented behaviour the review found broken.
 *
 * 1. accept_wait: inside a listener's on_connection,
 *    netev_connection_wait(event->connection, T) and
 *    netev_connection_wait(event->connection, -1) return
 *    NETEV_ERR_WOULD_DEADLOCK at once (well under T = 1 s): for a listener
 *    bound to a dispatcher the main thread runs, for a listener on netev's
 *    threads, and when the callback first sets options->dispatcher to a
 *    second dispatcher. The accepted connection then works (echo through it:
 *    "connection data* end close terminate").
 * 2. run_release: a thread blocked in netev_dispatcher_run(d, -1, NULL)
 *    (and in run(d, 30, NULL)) with nothing queued returns promptly
 *    (< 2 s) with NETEV_ERR_INVALID_HANDLE once another thread calls
 *    netev_dispatcher_release(d). A thread looping
 *    `while (netev_dispatcher_run(d, -1, NULL) == NETEV_OK) {}` (servicing a
 *    connection bound to d) exits after the main thread calls
 *    netev_runtime_shutdown(5) then netev_dispatcher_release(d).
 * 3. close_after_error: a connection bound to a dispatcher the host is not
 *    running meets an error it has not been told about yet — the peer
 *    resets it (SO_LINGER 0), or its idle_timeout (0.2 s) fires. The host
 *    makes sure it happened (the dispatcher's fd is readable), then calls
 *    netev_connection_close (or netev_connection_release), and only then
 *    runs the dispatcher: the events are exactly
 *    "connection close terminate", never ERROR. 10 rounds each (small: 3).
 * 4. option_sizes: netev_listener_open with connection_defaults.size 0, 3,
 *    64 or sizeof - 1 gives NETEV_ERR_INVALID_ARGUMENT. An on_connection
 *    that sets options->size = 0 and returns true: the client's socket is
 *    closed (EOF or reset), the listener gets an ERROR
 *    NETEV_ERR_INVALID_ARGUMENT (also in its errors list), no callback of
 *    the connection ever fires, and user_data_free runs once.
 * 5. drain_low_queue: the peer never reads; with a little queued (the
 *    kernel buffers are full), a send of exactly the limit (1 MiB) is
 *    refused with NETEV_ERR_BUFFER_FULL while the queue is already at or
 *    below half the limit: a DRAIN follows within 2 s, without the peer
 *    reading anything.
 * 6. log_shutdown: a log callback calling netev_runtime_shutdown(1) gets
 *    NETEV_ERR_WOULD_DEADLOCK every time, on netev's threads and on the
 *    host's (the line logged inside netev_connection_open); the connection
 *    opened works (echo), then the callback is removed and the runtime shuts
 *    down normally.
 *
 * `review_findings [accept_wait|run_release|close_after_error|option_sizes|
 * drain_low_queue|log_shutdown]` runs one part; no argument runs all. */
#include "common_b.h"
#include "common_listener.h"

#include <stdatomic.h>

static pthread_t g_main;

  
/* Waits (bounded) for TERMINATE; on a timeout, fails showing the events so far. */
static void wait_terminated_or_fail(recorder *r, double seconds, const char *what) {
  if (!rec_wait_terminated(r, seconds)) {
    char seq[1024];
    rec_sequence(r, seq, sizeof seq);
    FAIL("%s: no TERMINATE within %g s; events so far: \"%s\"", what, seconds, seq);
  }
}

/* ---- driving dispatchers from the main thread --------------------------- */

typedef struct drv {
  netev_dispatcher d[2];
  int nd;
} drv;

/* One slice of work: runs each dispatcher briefly (or just pauses). */
static void drive_once(const drv *v) {
  if (v->nd == 0) {
    sleep_ms(5);
    return;
  }
  for (int i = 0; i < v->nd; i++) {
    netev_status st = netev_dispatcher_run(v->d[i], v->nd == 1 ? 0.01 : 0.005, NULL);
    if (st != NETEV_OK)
      FAIL("netev_dispatcher_run on the main thread returned %s", netev_status_name((int32_t)st));
  }
}

/* Drives until pred(arg) holds or `seconds` (stretched) pass. */
static int drive_until(const drv *v, int (*pred)(void *), void *arg, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (!pred(arg)) {
    if (now_seconds() >= end) return pred(arg);
    drive_once(v);
  }
  return 1;
}

/* Reads what the socket has to the end of the stream while driving; returns
 * 0 on EOF, -1 on a time-out, or the errno of a failed recv. */
static int drive_read_to_end(const drv *v, int fd, unsigned char *buf, size_t cap, size_t *got,
                             double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  for (;;) {
    ssize_t r = recv(fd, buf + *got, cap - *got, MSG_DONTWAIT);
    if (r == 0) return 0;
    if (r > 0) {
      *got += (size_t)r;
      if (*got >= cap) return -1; /* more than expected: the caller compares */
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return errno;
    if (now_seconds() >= end) return -1;
    drive_once(v);
  }
}

/* ======================================================================== */
/* 1. wait inside a listener's on_connection                                */
/* ======================================================================== */

#define UNSET (-1)

typedef struct aw_case {
  lsn_server s; /* first: the listener's callbacks take it as user_data */
  const char *name;
  netev_dispatcher switch_to; /* set options->dispatcher to this first (0: leave) */
  double T;
  atomic_int done;
  int st_t, st_forever;   /* statuses of wait(conn, T) and wait(conn, -1) */
  double took_t, took_forever;
  int on_main;            /* on_connection ran on the main thread */
} aw_case;

static int aw_pred_done(void *arg) { return atomic_load(&((aw_case *)arg)->done); }

static bool aw_accept(netev_listener l, const netev_event *e, void *ud,
                      netev_connection_options *o) {
  aw_case *k = ud;
  if (k->switch_to) o->dispatcher = k->switch_to;
  k->on_main = pthread_equal(pthread_self(), g_main);
  double t0 = now_seconds();
  k->st_t = netev_connection_wait(e->connection, k->T);
  k->took_t = now_seconds() - t0;
  /* wait(-1) would hang this thread for good where wait(T) did not refuse
   * at once: it is only tried once wait(T) behaved, the failure reported. */
  if (k->st_t == NETEV_ERR_WOULD_DEADLOCK) {
    t0 = now_seconds();
    k->st_forever = netev_connection_wait(e->connection, -1);
    k->took_forever = now_seconds() - t0;
  }
  bool ok = lsn_accept(l, e, &k->s, o); /* records it, echo callbacks */
  atomic_store(&k->done, 1);
  return ok;
}

static int aw_pred_conn_terminated(void *arg) {
  lsn_server *s = arg;
  return lsn_get(s, &s->conn_terminates) >= 1;
}
static int aw_pred_listener_terminated(void *arg) {
  lsn_server *s = arg;
  return lsn_get(s, &s->terminates) >= 1;
}

/* One case: a listener bound to `listener_d` (0: netev's threads) whose
 * on_connection may move the connection to `switch_to`; `driven` lists the
 * dispatchers the main thread runs. */
static void accept_wait_case(const char *name, netev_dispatcher listener_d,
                             netev_dispatcher switch_to, const drv *driven) {
  static char stage[256];
  snprintf(stage, sizeof stage, "accept_wait (%s)", name);
  TEST_STAGE = stage;
  aw_case *k = calloc(1, sizeof *k);
  CHECK(k != NULL);
  lsn_init(&k->s);
  k->name = name;
  k->switch_to = switch_to;
  k->T = 1.0 * test_time_factor();
  k->st_t = k->st_forever = UNSET;

  netev_listener_options lo;
  lsn_options(&k->s, &lo);
  lo.on_connection = aw_accept;
  lo.user_data = k;
  lo.bind_address = "127.0.0.1";
  lo.dispatcher = listener_d;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  pthread_mutex_lock(&k->s.mu);
  k->s.listener = l;
  pthread_mutex_unlock(&k->s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));

  int fd = bsd_connect("127.0.0.1", port);
  if (fd < 0) FAIL("%s: connect to the listener failed: %s", name, strerror(errno));
  char msg[128];
  snprintf(msg, sizeof msg, "accept_wait %s", name);
  size_t n = strlen(msg);
  CHECK(write_all(fd, (const unsigned char *)msg, n) == 0);

  double limit = 2 * k->T + 10 * test_time_factor();
  if (!drive_until(driven, aw_pred_done, k, limit))
    FAIL("%s: on_connection (waiting on its incoming connection) has not returned after "
         "%.1f s (rule: wait inside on_connection, on the thread that must run the "
         "connection's callbacks, returns NETEV_ERR_WOULD_DEADLOCK at once)",
         name, limit);
  if (k->st_t != NETEV_ERR_WOULD_DEADLOCK || k->took_t >= k->T / 2)
    FAIL("%s: netev_connection_wait(event->connection, %.1f) inside on_connection (%s) "
         "returned %s after %.3f s, expected NETEV_ERR_WOULD_DEADLOCK at once (rule: a wait "
         "that could only finish by work of the thread it blocks refuses at once)",
         name, k->T, k->on_main ? "on the main thread" : "on a netev thread",
         netev_status_name(k->st_t), k->took_t);
  if (k->st_forever != NETEV_ERR_WOULD_DEADLOCK || k->took_forever >= k->T / 2)
    FAIL("%s: netev_connection_wait(event->connection, -1) inside on_connection returned %s "
         "after %.3f s, expected NETEV_ERR_WOULD_DEADLOCK at once",
         name, netev_status_name(k->st_forever), k->took_forever);

  /* The accepted connection works: the message comes back, then the end. */
  CHECK(shutdown(fd, SHUT_WR) == 0);
  unsigned char got[256];
  size_t got_len = 0;
  int end = drive_read_to_end(driven, fd, got, sizeof got, &got_len, 10);
  if (end != 0 || got_len != n || memcmp(got, msg, n) != 0)
    FAIL("%s: the accepted connection did not echo \"%s\" then end: %zu bytes back, end %s "
         "(%d)",
         name, msg, got_len, end == -1 ? "timed out" : end == 0 ? "EOF" : strerror(end), end);
  if (!drive_until(driven, aw_pred_conn_terminated, &k->s, 10)) {
    char seq[256] = "(none)";
    if (lsn_get(&k->s, &k->s.nconns) > 0) rec_sequence(&k->s.conns[0]->r, seq, sizeof seq);
    FAIL("%s: the accepted connection got no TERMINATE; events \"%s\"", name, seq);
  }
  lsn_conn *lc = lsn_conn_at(&k->s, 0, 1);
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(lc->r.data_len == n && memcmp(lc->r.data, msg, n) == 0);
  lsn_check_clean(&k->s);
  close(fd);

  CHECK_OK(netev_listener_release(l));
  if (!drive_until(driven, aw_pred_listener_terminated, &k->s, 10))
    FAIL("%s: the listener got no TERMINATE after release", name);
  CHECK_LSN_SEQUENCE(&k->s, "connection terminate");
  lsn_check_clean(&k->s);
  CHECK(lsn_get(&k->s, &k->s.accepts) == 1);
  lsn_free(&k->s);
  free(k);
}

static void part_accept_wait(void) {
  netev_dispatcher d1 = 0, d2 = 0;
  CHECK_OK(netev_dispatcher_create(&d1));
  CHECK_OK(netev_dispatcher_create(&d2));
  drv none = {{0, 0}, 0}, only_d1 = {{d1, 0}, 1}, both = {{d1, d2}, 2};

  /* listener bound to d1, which the main thread runs */
  accept_wait_case("listener on a dispatcher run by the main thread", d1, 0, &only_d1);
  /* the same, the callback moving the connection to d2 before waiting */
  accept_wait_case("listener on d1, options->dispatcher set to d2", d1, d2, &both);
  /* listener on netev's threads */
  accept_wait_case("listener on netev's threads", 0, 0, &none);
  /* listener on netev's threads, the connection moved to d1 */
  accept_wait_case("listener on netev's threads, options->dispatcher set to d1", 0, d1, &only_d1);

  CHECK_OK(netev_dispatcher_release(d1));
  CHECK_OK(netev_dispatcher_release(d2));
}

/* ======================================================================== */
/* 2. a thread blocked in netev_dispatcher_run when the dispatcher goes     */
/* ======================================================================== */

typedef struct runner {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  netev_dispatcher d;
  double timeout;
  int loop;       /* while (run(d, -1) == OK) {} */
  int done;
  netev_status st;
  long runs;      /* run calls that returned NETEV_OK (loop form) */
  double t_done;
} runner;

static void *runner_main(void *arg) {
  runner *r = arg;
  netev_status st;
  long runs = 0;
  if (r->loop) {
    while ((st = netev_dispatcher_run(r->d, -1, NULL)) == NETEV_OK) runs++;
  } else {
    st = netev_dispatcher_run(r->d, r->timeout, NULL);
  }
  pthread_mutex_lock(&r->mu);
  r->st = st;
  r->runs = runs;
  r->done = 1;
  r->t_done = now_seconds();
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static void runner_start(runner *r, netev_dispatcher d, double timeout, int loop) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  r->d = d;
  r->timeout = timeout;
  r->loop = loop;
  CHECK(pthread_create(&r->thread, NULL, runner_main, r) == 0);
}

/* Waits until the runner returned or the monotonic instant `end` passed. */
static int runner_wait_until(runner *r, double end) {
  pthread_mutex_lock(&r->mu);
  while (!r->done && cond_wait_until(&r->cv, &r->mu, end)) {
  }
  int done = r->done;
  pthread_mutex_unlock(&r->mu);
  return done;
}

static void runner_join(runner *r) {
  pthread_join(r->thread, NULL);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

/* A thread in run(d, timeout) with nothing queued; main releases d. */
static void run_release_blocked(double timeout) {
  static char stage[160];
  snprintf(stage, sizeof stage,
           "run_release: a thread in netev_dispatcher_run(d, %g) while main releases d",
           timeout);
  TEST_STAGE = stage;
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  runner r;
  runner_start(&r, d, timeout, 0);
  pause_seconds(0.2); /* let it block */
  if (runner_wait_until(&r, now_seconds()))
    FAIL("netev_dispatcher_run(d, %g) with nothing queued returned %s before anything "
         "happened",
         timeout, netev_status_name((int32_t)r.st));
  double limit = 2 * test_time_factor();
  double t0 = now_seconds();
  netev_status st = netev_dispatcher_release(d);
  double took_release = now_seconds() - t0;
  if (st != NETEV_OK)
    FAIL("netev_dispatcher_release(d) while another thread is in run(d, %g) returned %s",
         timeout, netev_status_name((int32_t)st));
  if (!runner_wait_until(&r, t0 + limit))
    FAIL("a thread blocked in netev_dispatcher_run(d, %g, NULL) with nothing queued has not "
         "returned %.1f s after another thread called netev_dispatcher_release(d) (release "
         "took %.3f s) (rule: releasing the dispatcher ends the run, which returns "
         "NETEV_ERR_INVALID_HANDLE promptly)",
         timeout, limit, took_release);
  runner_join(&r);
  if (r.st != NETEV_ERR_INVALID_HANDLE || r.t_done - t0 >= limit)
    FAIL("netev_dispatcher_run(d, %g) blocked when d was released returned %s %.3f s after the "
         "release began, expected NETEV_ERR_INVALID_HANDLE within %.1f s",
         timeout, netev_status_name((int32_t)r.st), r.t_done - t0, limit);
  CHECK_STATUS(netev_dispatcher_run(d, 0, NULL), NETEV_ERR_INVALID_HANDLE);
}

/* The host's loop on another thread, across runtime shutdown. */
static void run_release_loop(void) {
  TEST_STAGE = "run_release: loop thread servicing d; netev_runtime_shutdown(5) then "
            "netev_dispatcher_release(d)";
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  recorder rc;
  rec_init(&rc);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &rc, rec_callback);
  o.dispatcher = d;
  o.connection_timeout = 10;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));

  runner r;
  runner_start(&r, d, -1, 1);
  const char *msg = "loop";
  CHECK_OK(netev_connection_send(c, msg, strlen(msg)));
  if (!rec_wait_bytes(&rc, strlen(msg), 10))
    FAIL("the connection serviced by the loop thread never echoed");
  CHECK(!runner_wait_until(&r, now_seconds())); /* the loop still runs */

  TEST_STAGE = "run_release: netev_runtime_shutdown(5) while a thread loops on run(d, -1)";
  netev_status st = netev_runtime_shutdown(5);
  if (st != NETEV_OK)
    FAIL("netev_runtime_shutdown(5) with a thread looping on netev_dispatcher_run(d, -1) "
         "returned %s",
         netev_status_name((int32_t)st));
  if (!rec_wait_terminated(&rc, 1))
    FAIL("netev_runtime_shutdown returned NETEV_OK before the TERMINATE of the connection "
         "bound to d");
  CHECK(rec_count(&rc, NETEV_EVENT_TERMINATE) == 1 && rc.overlaps == 0 &&
        rc.after_terminate == 0);

  TEST_STAGE = "run_release: netev_dispatcher_release(d) after netev_runtime_shutdown, the loop "
            "thread still in run(d, -1)";
  double limit = 2 * test_time_factor();
  double t0 = now_seconds();
  st = netev_dispatcher_release(d);
  if (st != NETEV_OK && st != NETEV_ERR_INVALID_HANDLE)
    FAIL("netev_dispatcher_release(d) after netev_runtime_shutdown returned %s",
         netev_status_name((int32_t)st));
  if (!runner_wait_until(&r, t0 + limit))
    FAIL("a thread looping on `while (netev_dispatcher_run(d, -1, NULL) == NETEV_OK) {}` has "
         "not exited %.1f s after the main thread called netev_runtime_shutdown(5) then "
         "netev_dispatcher_release(d) (which returned %s) (rule: a run blocked on a dispatcher "
         "that goes away returns)",
         limit, netev_status_name((int32_t)st));
  runner_join(&r);
  if (r.st == NETEV_OK) FAIL("the loop thread ended with NETEV_OK"); /* cannot happen */

  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&rc);
}

static void part_run_release(void) {
  run_release_blocked(-1);
  run_release_blocked(30);
  run_release_loop();
}

/* ======================================================================== */
/* 3. close/release after an error the host has not been told about yet     */
/* ======================================================================== */

/* Accepts one connection on `lfd` (bounded). */
static int accept_bounded(int lfd) {
  if (!fd_readable(lfd, (int)(10000 * test_time_factor())))
    FAIL("the peer saw no incoming connection");
  int s = accept(lfd, NULL, NULL);
  CHECK(s >= 0);
  return s;
}

static int pred_connected(void *arg) {
  recorder *r = arg;
  pthread_mutex_lock(&r->mu);
  int ok = 0;
  for (int i = 0; i < r->n; i++) ok |= r->types[i] == NETEV_EVENT_CONNECTION;
  ok = ok && !r->in_callback;
  pthread_mutex_unlock(&r->mu);
  return ok;
}
static int pred_terminated(void *arg) {
  recorder *r = arg;
  pthread_mutex_lock(&r->mu);
  int ok = r->terminated && !r->in_callback;
  pthread_mutex_unlock(&r->mu);
  return ok;
}

/* One variant, `rounds` times; returns how many rounds broke the rule. */
static int close_after_error_variant(int idle, int use_release, int rounds, char *first,
                                     size_t cap) {
  uint16_t port = 0;
  int lfd = listen_loopback(&port, 16);
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  int dfd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  drv v = {{d, 0}, 1};
  int bad = 0;
  for (int i = 0; i < rounds; i++) {
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    o.dispatcher = d;
    o.connection_timeout = 10;
    if (idle) o.idle_timeout = 0.2 * test_time_factor(); /* stretched: not before CONNECTION */
    netev_connection c = 0;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
    int s = accept_bounded(lfd);
    if (!drive_until(&v, pred_connected, &r, 10)) FAIL("round %d: no CONNECTION", i);
    if (fd_readable(dfd, 0))
      FAIL("round %d: the dispatcher's fd is readable right after CONNECTION ran", i);

    if (idle) {
      pause_seconds(0.3 * test_time_factor()); /* past the idle timeout */
    } else {
      struct linger lg = {1, 0};
      CHECK(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
      close(s); /* the peer resets; done when close returns */
      s = -1;
    }
    /* netev has seen it and queued its callback on d */
    if (!fd_readable(dfd, (int)(5000 * test_time_factor())))
      FAIL("round %d: the dispatcher's fd never became readable after the %s (netev did not "
           "notice it)",
           i, idle ? "idle timeout" : "peer's reset");

    /* The host, not told anything yet, ends the connection. */
    if (use_release)
      CHECK_OK(netev_connection_release(c));
    else
      CHECK_OK(netev_connection_close(c));
    if (!drive_until(&v, pred_terminated, &r, 10)) {
      char seq[256];
      rec_sequence(&r, seq, sizeof seq);
      FAIL("round %d: no TERMINATE after %s; events \"%s\"", i, use_release ? "release" : "close",
           seq);
    }
    char seq[256];
    rec_sequence(&r, seq, sizeof seq);
    if (strcmp(seq, "connection close terminate") != 0) {
      if (!bad)
        snprintf(first, cap, "round %d: events \"%s\" (error %s)", i, seq,
                 netev_status_name((int32_t)r.error));
      bad++;
    }
    CHECK(r.overlaps == 0 && r.after_terminate == 0);
    if (!use_release) CHECK_OK(netev_connection_release(c));
    if (s >= 0) close(s);
    rec_free(&r);
  }
  CHECK(!fd_readable(dfd, 0));
  CHECK_OK(netev_dispatcher_release(d));
  close(lfd);
  return bad;
}

static void part_close_after_error(void) {
  int rounds = (int)test_scale(10, 3);
  static const struct {
    int idle, release;
    const char *stage, *what;
  } variants[] = {
      {0, 0, "close_after_error: peer reset, close", "the peer reset; netev_connection_close"},
      {0, 1, "close_after_error: peer reset, release",
       "the peer reset; netev_connection_release"},
      {1, 0, "close_after_error: idle timeout, close",
       "the idle timeout fired; netev_connection_close"},
      {1, 1, "close_after_error: idle timeout, release",
       "the idle timeout fired; netev_connection_release"},
  };
  char report[1024] = "";
  size_t used = 0;
  int failed = 0;
  for (size_t k = 0; k < sizeof variants / sizeof variants[0]; k++) {
    TEST_STAGE = variants[k].stage;
    char first[256] = "";
    int bad = close_after_error_variant(variants[k].idle, variants[k].release, rounds, first,
                                        sizeof first);
    if (bad) {
      failed++;
      int w = snprintf(report + used, sizeof report - used, "\n  %s: %d of %d rounds; first %s",
                       variants[k].what, bad, rounds, first);
      if (w > 0 && (size_t)w < sizeof report - used) used += (size_t)w;
    }
  }
  if (failed)
    FAIL("close_after_error: a connection bound to an undriven dispatcher met an error, the "
         "host (not told yet) ended it, then ran the dispatcher: expected exactly "
         "\"connection close terminate\" (rule: close and release end with CLOSE then "
         "TERMINATE, never ERROR):%s",
         report);
}

/* ======================================================================== */
/* 4. options sizes: listener defaults and the options of on_connection     */
/* ======================================================================== */

static atomic_int g_size_frees;

static void size_user_data_free(void *ud) {
  (void)ud;
  atomic_fetch_add(&g_size_frees, 1);
}

static bool size_accept(netev_listener l, const netev_event *e, void *ud,
                        netev_connection_options *o) {
  bool ok = lsn_accept(l, e, ud, o); /* records it; callbacks of every slot set */
  o->user_data_free = size_user_data_free;
  o->size = 0; /* invalid */
  return ok;
}

static int pred_size_frees(void *arg) {
  (void)arg;
  return atomic_load(&g_size_frees) >= 1;
}

static void part_option_sizes(void) {
  TEST_STAGE = "option_sizes: netev_listener_open with a bad connection_defaults.size";
  /* the first version (netev 0.2) ends after `dispatcher`: one byte less */
  const uint32_t first =
      (uint32_t)(offsetof(netev_connection_options, dispatcher) + sizeof(netev_dispatcher));
  const uint32_t sizes[] = {0, 3, 64, first - 1};
  char report[512] = "";
  size_t used = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    lsn_server s;
    lsn_init(&s);
    netev_connection_options defaults;
    CHECK_OK(netev_connection_options_init(&defaults));
    defaults.size = sizes[i];
    netev_listener_options lo;
    lsn_options(&s, &lo);
    lo.bind_address = "127.0.0.1";
    lo.connection_defaults = &defaults;
    netev_listener l = 0;
    netev_status st = netev_listener_open(0, &lo, &l);
    if (st != NETEV_ERR_INVALID_ARGUMENT) {
      int w = snprintf(report + used, sizeof report - used, " size %u -> %s;", sizes[i],
                       netev_status_name((int32_t)st));
      if (w > 0 && (size_t)w < sizeof report - used) used += (size_t)w;
      if (st == NETEV_OK) {
        CHECK_OK(netev_listener_release(l));
        CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
      }
    }
    lsn_free(&s);
  }
  if (used)
    FAIL("netev_listener_open with connection_defaults.size below the struct's first version:%s "
         "expected NETEV_ERR_INVALID_ARGUMENT for each (rule: bad connection_defaults, `size` "
         "not set)",
         report);

  TEST_STAGE = "option_sizes: on_connection returns options with size 0";
  atomic_store(&g_size_frees, 0);
  lsn_server s;
  lsn_init(&s);
  netev_listener_options lo;
  lsn_options(&s, &lo);
  lo.on_connection = size_accept;
  lo.bind_address = "127.0.0.1";
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  pthread_mutex_lock(&s.mu);
  s.listener = l;
  pthread_mutex_unlock(&s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  int fd = bsd_connect("127.0.0.1", port);
  if (fd < 0) FAIL("connect to the listener failed: %s", strerror(errno));
  (void)write_all(fd, (const unsigned char *)"hello", 5); /* may meet the reset: fine */
  int end = bsd_recv_end(fd, 5);
  if (end == ETIMEDOUT || end == -1)
    FAIL("the client of a connection whose on_connection returned options with size 0 was "
         "%s (rule: invalid options returned with true close the socket)",
         end == -1 ? "answered (bytes came back: it was accepted)"
                   : "neither closed nor reset within 5 s");
  close(fd);
  if (!lsn_wait(&s, lsn_pred_errors, 1, 5)) {
    char lseq[256];
    lsn_sequence(&s, lseq, sizeof lseq);
    FAIL("no listener ERROR within 5 s after on_connection returned options with size 0 "
         "(listener events \"%s\") (rule: invalid options returned with true give the "
         "listener an ERROR)",
         lseq);
  }
  pthread_mutex_lock(&s.mu);
  netev_status lerr = s.last_error.error;
  char lmsg[256];
  snprintf(lmsg, sizeof lmsg, "%s", s.last_error_message);
  pthread_mutex_unlock(&s.mu);
  if (lerr != NETEV_ERR_INVALID_ARGUMENT)
    FAIL("the listener's ERROR for options with size 0 is %s (\"%s\"), expected "
         "NETEV_ERR_INVALID_ARGUMENT",
         netev_status_name((int32_t)lerr), lmsg);
  size_t nerr = 0;
  CHECK_OK(netev_listener_error_count(l, &nerr));
  int found = 0;
  for (size_t i = 0; i < nerr; i++) {
    netev_error_info info;
    CHECK_OK(netev_listener_error_at(l, i, &info));
    found |= info.code == NETEV_ERR_INVALID_ARGUMENT;
  }
  if (!found)
    FAIL("the listener's errors list (%zu entries) has no NETEV_ERR_INVALID_ARGUMENT entry",
         nerr);
  if (!poll_until(pred_size_frees, NULL, 5))
    FAIL("user_data_free of the options returned with size 0 never ran (header: called once)");

  CHECK_OK(netev_listener_release(l));
  if (!lsn_wait(&s, lsn_pred_terminated, 0, 10)) FAIL("the listener got no TERMINATE");
  pause_seconds(0.1); /* a late callback would show now */
  CHECK_LSN_SEQUENCE(&s, "connection error terminate");
  lsn_check_clean(&s);
  CHECK(lsn_get(&s, &s.nconns) == 1);
  recorder *r = &s.conns[0]->r;
  pthread_mutex_lock(&r->mu);
  int total = r->total;
  pthread_mutex_unlock(&r->mu);
  if (total != 0) {
    char seq[256];
    rec_sequence(r, seq, sizeof seq);
    FAIL("callbacks of the connection refused for its options (size 0) fired: \"%s\"", seq);
  }
  if (atomic_load(&g_size_frees) != 1)
    FAIL("user_data_free ran %d times, expected once", atomic_load(&g_size_frees));
  lsn_free(&s);
}

/* ======================================================================== */
/* 5. a refused send while the queue is already low                         */
/* ======================================================================== */

#define DRAIN_LIMIT ((size_t)1 << 20)
#define DRAIN_CHUNK 8192

static size_t buffered(netev_connection c) {
  size_t q = 0;
  CHECK_OK(netev_connection_buffered_amount(c, &q));
  return q;
}

/* Whether the queue stays non-empty for `seconds` (polled). */
static int queue_stays(netev_connection c, double seconds) {
  double end = now_seconds() + seconds;
  while (now_seconds() < end) {
    if (buffered(c) == 0) return 0;
    sleep_ms(5);
  }
  return buffered(c) > 0;
}

/* Sends small chunks until the kernel buffers are full and a few bytes stay
 * queued in netev (the peer never reads). Returns the bytes queued. */
static size_t fill_until_queued(netev_connection c) {
  static unsigned char chunk[DRAIN_CHUNK];
  double end = now_seconds() + 30 * test_time_factor();
  for (;;) {
    if (now_seconds() > end) FAIL("the socket buffers never filled up (peer not reading)");
    netev_status st = netev_connection_send(c, chunk, sizeof chunk);
    if (st != NETEV_OK)
      FAIL("a %d-byte send while filling the kernel buffers returned %s (queued %zu)",
           DRAIN_CHUNK, netev_status_name((int32_t)st), buffered(c));
    /* written at once while the kernel takes it */
    double until = now_seconds() + 0.05 * test_time_factor();
    while (buffered(c) > 0 && now_seconds() < until) sleep_ms(1);
    if (buffered(c) == 0) continue;
    if (queue_stays(c, 0.3 * test_time_factor())) return buffered(c);
  }
}

static void part_drain_low_queue(void) {
  TEST_STAGE = "drain_low_queue: filling the socket buffers";
  uint16_t port = 0;
  int lfd = listen_loopback(&port, 4);
  int small = 4096;
  CHECK(setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.connection_timeout = 10;
  o.send_buffer_limit = DRAIN_LIMIT;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  int s = accept_bounded(lfd); /* never read */
  if (!rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10)) FAIL("no CONNECTION");

  size_t q = fill_until_queued(c);
  CHECK(q > 0);
  if (q > DRAIN_LIMIT / 2)
    FAIL("setup: %zu bytes queued, expected a little (at most half the limit)", q);
  CHECK(rec_count(&r, NETEV_EVENT_DRAIN) == 0); /* nothing was refused yet */

  TEST_STAGE = "drain_low_queue: a refused send of the limit, waiting for DRAIN";
  unsigned char *big = calloc(1, DRAIN_LIMIT);
  CHECK(big != NULL);
  netev_status st = netev_connection_send(c, big, DRAIN_LIMIT);
  free(big);
  size_t q_after = buffered(c);
  if (st != NETEV_ERR_BUFFER_FULL)
    FAIL("setup: a send of the limit (%zu bytes) with %zu queued returned %s, expected "
         "NETEV_ERR_BUFFER_FULL",
         DRAIN_LIMIT, q, netev_status_name((int32_t)st));
  if (q_after > DRAIN_LIMIT / 2)
    FAIL("setup: %zu bytes queued after the refused send (expected the same little)", q_after);
  if (!rec_wait_type(&r, NETEV_EVENT_DRAIN, 2)) {
    char seq[256];
    rec_sequence(&r, seq, sizeof seq);
    FAIL("a send of %zu bytes was refused (NETEV_ERR_BUFFER_FULL) while only %zu bytes were "
         "queued (at most half the limit, %zu): no DRAIN within 2 s while the peer reads "
         "nothing (events \"%s\") (rule: one DRAIN follows a refused send once the queue is at "
         "half the limit; here it already is)",
         DRAIN_LIMIT, q_after, DRAIN_LIMIT / 2, seq);
  }

  TEST_STAGE = "drain_low_queue: closing";
  CHECK_OK(netev_connection_close(c));
  wait_terminated_or_fail(&r, 10, "drain_low_queue");
  CHECK_SEQUENCE(&r, "connection drain* close terminate");
  if (rec_count(&r, NETEV_EVENT_DRAIN) != 1)
    FAIL("%d DRAIN events after one refused send, expected one",
         rec_count(&r, NETEV_EVENT_DRAIN));
  CHECK(r.overlaps == 0 && r.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  close(s);
  close(lfd);
  rec_free(&r);
}

/* ======================================================================== */
/* 6. netev_runtime_shutdown inside the log callback                        */
/* ======================================================================== */

typedef struct log_state {
  pthread_mutex_t mu;
  int calls;          /* netev_runtime_shutdown calls made in the callback */
  int refused;        /* of them, NETEV_ERR_WOULD_DEADLOCK */
  int on_main_in_open;/* calls on the main thread during netev_connection_open */
  int on_main;        /* calls on the main thread */
  int wrong;          /* calls with another status */
  netev_status first_wrong;
  int first_wrong_on_main;
  char first_wrong_line[256];
  int in_open;        /* the main thread is inside netev_connection_open */
  int nested;         /* lines handed over inside our own shutdown call */
} log_state;

static log_state g_log;
static _Thread_local int t_in_log;

static void log_cb(const char *line, void *ud) {
  log_state *L = ud;
  if (t_in_log) { /* a line logged by the shutdown call below */
    pthread_mutex_lock(&L->mu);
    L->nested++;
    pthread_mutex_unlock(&L->mu);
    return;
  }
  t_in_log = 1;
  netev_status st = netev_runtime_shutdown(1);
  t_in_log = 0;
  int main_thread = pthread_equal(pthread_self(), g_main);
  pthread_mutex_lock(&L->mu);
  L->calls++;
  if (main_thread) L->on_main++;
  if (main_thread && L->in_open) L->on_main_in_open++;
  if (st == NETEV_ERR_WOULD_DEADLOCK) {
    L->refused++;
  } else {
    if (!L->wrong) {
      L->first_wrong = st;
      L->first_wrong_on_main = main_thread;
      snprintf(L->first_wrong_line, sizeof L->first_wrong_line, "%s", line);
    }
    L->wrong++;
  }
  pthread_mutex_unlock(&L->mu);
}

static void log_check(const char *when) {
  pthread_mutex_lock(&g_log.mu);
  int wrong = g_log.wrong;
  netev_status st = g_log.first_wrong;
  int on_main = g_log.first_wrong_on_main;
  char line[256];
  snprintf(line, sizeof line, "%s", g_log.first_wrong_line);
  int calls = g_log.calls;
  pthread_mutex_unlock(&g_log.mu);
  if (wrong)
    FAIL("%s: netev_runtime_shutdown(1) inside the log callback returned %s (%d of %d calls; "
         "first on %s, for the line \"%s\"), expected NETEV_ERR_WOULD_DEADLOCK every time "
         "(rule: the log callback is a callback like the others; runtime_shutdown returns "
         "NETEV_ERR_WOULD_DEADLOCK inside a callback)",
         when, netev_status_name((int32_t)st), wrong, calls,
         on_main ? "the host's main thread" : "a netev thread", line);
}

static void part_log_shutdown(void) {
  TEST_STAGE = "log_shutdown: netev_connection_open with the log callback set";
  memset(&g_log, 0, sizeof g_log);
  pthread_mutex_init(&g_log.mu, NULL);
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.connection_timeout = 10;

  CHECK_OK(netev_log_set_callback(log_cb, &g_log));
  pthread_mutex_lock(&g_log.mu);
  g_log.in_open = 1;
  pthread_mutex_unlock(&g_log.mu);
  netev_connection c = 0;
  netev_status st = netev_connection_open("127.0.0.1", p.port, &o, &c);
  pthread_mutex_lock(&g_log.mu);
  g_log.in_open = 0;
  int in_open = g_log.on_main_in_open;
  pthread_mutex_unlock(&g_log.mu);
  log_check("during netev_connection_open");
  if (st != NETEV_OK)
    FAIL("netev_connection_open with a log callback calling netev_runtime_shutdown returned %s",
         netev_status_name((int32_t)st));
  if (in_open == 0)
    FAIL("no log line was handed to the callback on the host's thread inside "
         "netev_connection_open (expected its \"open\" line there), so that case went "
         "untested");

  TEST_STAGE = "log_shutdown: echo with the log callback set";
  const char *msg = "log_shutdown";
  size_t n = strlen(msg);
  CHECK_OK(netev_connection_send(c, msg, n));
  if (!rec_wait_bytes(&r, n, 10)) {
    char seq[256];
    rec_sequence(&r, seq, sizeof seq);
    log_check("during the echo");
    FAIL("the connection opened with the log callback set did not echo; events \"%s\"", seq);
  }
  CHECK_OK(netev_connection_shutdown(c));
  wait_terminated_or_fail(&r, 10, "log_shutdown");
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == n && memcmp(r.data, msg, n) == 0);
  CHECK(r.overlaps == 0 && r.after_terminate == 0);

  TEST_STAGE = "log_shutdown: removing the log callback";
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  log_check("over the connection's life");
  pthread_mutex_lock(&g_log.mu);
  int calls = g_log.calls, refused = g_log.refused, on_main = g_log.on_main;
  pthread_mutex_unlock(&g_log.mu);
  CHECK(calls >= 2 && refused == calls && on_main >= 1);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
  pthread_mutex_lock(&g_log.mu);
  CHECK(g_log.calls == calls); /* never called after removal */
  pthread_mutex_unlock(&g_log.mu);
  pthread_mutex_destroy(&g_log.mu);
}

/* ======================================================================== */

static const struct {
  const char *name;
  void (*run)(void);
} parts[] = {
    {"accept_wait", part_accept_wait},
    {"run_release", part_run_release},
    {"close_after_error", part_close_after_error},
    {"option_sizes", part_option_sizes},
    {"drain_low_queue", part_drain_low_queue},
    {"log_shutdown", part_log_shutdown},
};

int main(int argc, char **argv) {
  g_main = pthread_self();
  const char *only = argc > 1 ? argv[1] : NULL;
  int ran = 0;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    if (only && strcmp(only, parts[i].name) != 0) continue;
    watchdog_staged("review_findings", 90);
    parts[i].run();
    ran++;
  }
  if (!ran) FAIL("unknown part \"%s\"", only);
  watchdog_staged("review_findings", 60);
  TEST_STAGE = "netev_runtime_shutdown at the end";
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
