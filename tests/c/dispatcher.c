/* Dispatchers: callbacks of a bound connection run only on the thread that
 * dispatches (run, wait, release), the fd signals queued callbacks, `ran`
 * counts them, release ends bound connections on the releasing thread, and
 * two connections sharing a dispatcher never run callbacks at once. */
#include "common_b.h"

#include <stdatomic.h>

/* ---- helpers ------------------------------------------------------------ */

static atomic_int frees;

static void count_free(void *ud) {
  (void)ud;
  atomic_fetch_add(&frees, 1);
}

/* Dispatches `d` on this thread until `r` saw TERMINATE; returns the total `ran`. */
static size_t dispatch_until_terminated(netev_dispatcher d, int fd, recorder *r, double seconds) {
  size_t total = 0;
  double end = now_seconds() + seconds;
  while (!r->terminated) {
    if (now_seconds() > end) FAIL("no TERMINATE within %.0f s", seconds);
    fd_readable(fd, 200);
    size_t ran = 0;
    CHECK_OK(netev_dispatcher_run(d, 0, &ran));
    total += ran;
  }
  return total;
}

/* ---- 1: echo round trip driven by poll() on the dispatcher fd ----------- */

static void test_poll_loop(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  CHECK(d != 0);
  int fd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &fd));
  CHECK(fd >= 0);
  CHECK(!fd_readable(fd, 0)); /* nothing queued yet */

  recorder r;
  rec_init(&r);
  r.check_thread = 1;
  r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.dispatcher = d;
  o.user_data_free = count_free;
  atomic_store(&frees, 0);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));

  /* CONNECTION is queued, not run, until this thread dispatches. */
  CHECK(fd_readable(fd, 10000));
  CHECK(r.total == 0);
  size_t ran = 0, total_ran = 0;
  CHECK_OK(netev_dispatcher_run(d, 0, &ran));
  /* Nothing else can be queued: the echo peer has nothing to echo yet. */
  CHECK(ran == 1);
  total_ran += ran;
  CHECK(r.total == 1 && r.types[0] == NETEV_EVENT_CONNECTION);
  CHECK(!fd_readable(fd, 0)); /* drained */
  /* A run with nothing queued waits out its timeout and runs nothing. */
  CHECK_OK(netev_dispatcher_run(d, 0.05, &ran));
  CHECK(ran == 0);
  CHECK_OK(netev_dispatcher_run(d, 0, NULL)); /* `ran` may be NULL */

  CHECK_OK(netev_connection_send(c, "hello", 5));
  double end = now_seconds() + 10;
  while (r.data_len < 5) {
    if (now_seconds() > end) FAIL("echo not delivered");
    if (!fd_readable(fd, 200)) continue;
    int before = r.total;
    CHECK_OK(netev_dispatcher_run(d, 0, &ran));
    CHECK(ran >= 1);
    CHECK(r.total - before == (int)ran);
    total_ran += ran;
  }
  CHECK_OK(netev_connection_shutdown(c));
  total_ran += dispatch_until_terminated(d, fd, &r, 10);
  CHECK(!fd_readable(fd, 0)); /* nothing after TERMINATE */

  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == 5 && memcmp(r.data, "hello", 5) == 0);
  CHECK(r.wrong_thread == 0);
  CHECK(r.overlaps == 0);
  CHECK(r.after_terminate == 0);
  CHECK(total_ran == (size_t)r.total);
  CHECK(atomic_load(&frees) == 1);

  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_dispatcher_release(d));
  peer_stop(&p);
  rec_free(&r);
}

/* ---- 2: wait() runs the callbacks on the waiting thread ----------------- */

typedef struct waiter {
  recorder *r;
  netev_connection c;
  netev_status status;
  int terminated_at_return;
  double seconds;
} waiter;

static void *wait_thread(void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&w->r->mu);
  w->r->expect_thread = pthread_self();
  w->r->check_thread = 1;
  pthread_mutex_unlock(&w->r->mu);
  w->status = netev_connection_wait(w->c, w->seconds);
  pthread_mutex_lock(&w->r->mu);
  w->terminated_at_return = w->r->terminated;
  pthread_mutex_unlock(&w->r->mu);
  return NULL;
}

/* Peer closes at once: a wait (on another thread) runs CONNECTION, END,
 * CLOSE and TERMINATE there, and returns once TERMINATE ran. */
static void test_wait_until_terminate(void) {
  peer p;
  peer_start(&p, PEER_CLOSE, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.dispatcher = d;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  waiter w = {&r, c, NETEV_ERR_INTERNAL, 0, 10};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, wait_thread, &w) == 0);
  pthread_join(t, NULL);
  if (w.status != NETEV_OK) {
    char seq[256];
    rec_sequence(&r, seq, sizeof seq);
    FAIL("wait returned %s; events so far \"%s\"", netev_status_name(w.status), seq);
  }
  CHECK(w.terminated_at_return);
  CHECK_SEQUENCE(&r, "connection end close terminate");
  CHECK(r.wrong_thread == 0);
  /* Waiting on an ended connection returns at once. */
  CHECK_OK(netev_connection_wait(c, 0));
  CHECK_OK(netev_connection_wait(c, 5));
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_dispatcher_release(d));
  peer_stop(&p);
  rec_free(&r);
}

/* An echo peer; the DATA callback shuts down once the echo is complete,
 * which ends the wait with NETEV_OK. */
static void shutdown_when_echoed(netev_connection c, const netev_event *e, void *ud) {
  recorder *r = ud;
  rec_event(r, e);
  if (e->type == NETEV_EVENT_DATA) {
    pthread_mutex_lock(&r->mu);
    int full = r->data_len >= 4;
    pthread_mutex_unlock(&r->mu);
    if (full) CHECK_OK(netev_connection_shutdown(c));
  }
  rec_done(r);
}

static void test_wait_ended_by_shutdown(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int fd;
  CHECK_OK(netev_dispatcher_fd(d, &fd));
  recorder r;
  rec_init(&r);
  r.check_thread = 1;
  r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, shutdown_when_echoed);
  o.dispatcher = d;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "ping", 4));
  /* Nobody else dispatches: the wait runs CONNECTION and DATA here, and the
   * shutdown from the DATA callback ends it. */
  double t0 = now_seconds();
  CHECK_OK(netev_connection_wait(c, 10));
  CHECK(now_seconds() - t0 < 10);
  CHECK(r.data_len == 4 && memcmp(r.data, "ping", 4) == 0);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  /* The rest (END, CLOSE, TERMINATE) is dispatched here. */
  dispatch_until_terminated(d, fd, &r, 10);
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.wrong_thread == 0);
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_dispatcher_release(d));
  peer_stop(&p);
  rec_free(&r);
}

/* A wait that times out on a quiet dispatcher-bound connection. */
static void test_wait_timeout(void) {
  peer p;
  peer_start(&p, PEER_HOLD, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  recorder r;
  rec_init(&r);
  r.check_thread = 1;
  r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.dispatcher = d;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  /* Each wait times out (the peer is silent) but runs what comes meanwhile,
   * here: CONNECTION, on this thread. */
  double end = now_seconds() + 10;
  do {
    if (now_seconds() > end) FAIL("no CONNECTION within 10 s");
    double t0 = now_seconds();
    CHECK_STATUS(netev_connection_wait(c, 0.3), NETEV_ERR_TIMEOUT);
    double took = now_seconds() - t0;
    CHECK(took >= 0.25 && took < 10);
  } while (r.total == 0);
  CHECK_SEQUENCE(&r, "connection");
  CHECK(r.wrong_thread == 0);

  /* ---- 3: release of the dispatcher ends the bound connection here ---- */
  atomic_store(&frees, 0);
  CHECK_OK(netev_dispatcher_release(d));
  /* CLOSE and TERMINATE ran on this thread before release returned. */
  CHECK(r.terminated);
  CHECK_SEQUENCE(&r, "connection close terminate");
  CHECK(r.wrong_thread == 0);
  CHECK(r.after_terminate == 0);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  /* The dispatcher handle is dead. */
  int fd;
  size_t ran;
  CHECK_STATUS(netev_dispatcher_run(d, 0, &ran), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_dispatcher_fd(d, &fd), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_dispatcher_release(d), NETEV_ERR_INVALID_HANDLE);
  /* ... and naming it in options is refused. */
  netev_connection c2 = 0;
  CHECK_STATUS(netev_connection_open("127.0.0.1", p.port, &o, &c2), NETEV_ERR_INVALID_HANDLE);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

static void test_release_with_free(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int fd;
  CHECK_OK(netev_dispatcher_fd(d, &fd));
  recorder r;
  rec_init(&r);
  r.check_thread = 1;
  r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.dispatcher = d;
  o.user_data_free = count_free;
  atomic_store(&frees, 0);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "abc", 3));
  double end = now_seconds() + 10;
  while (r.data_len < 3) {
    if (now_seconds() > end) FAIL("echo not delivered");
    fd_readable(fd, 200);
    CHECK_OK(netev_dispatcher_run(d, 0, NULL));
  }
  CHECK(atomic_load(&frees) == 0);
  CHECK_OK(netev_dispatcher_release(d));
  CHECK(r.terminated);
  CHECK_SEQUENCE(&r, "connection data* close terminate");
  CHECK(r.wrong_thread == 0);
  CHECK(atomic_load(&frees) == 1);
  CHECK_OK(netev_connection_release(c));
  CHECK_STATUS(netev_connection_release(c), NETEV_ERR_INVALID_HANDLE);
  peer_stop(&p);
  rec_free(&r);
}

/* ---- 4: two connections, two dispatching threads, no overlap ----------- */

static atomic_int active;      /* callbacks of the shared dispatcher running now */
static atomic_int overlapping; /* times two ran at once */

#define PAIR_BYTES (256 * 1024)

static void spin(double seconds) {
  double end = now_seconds() + seconds;
  while (now_seconds() < end) {
  }
}

static void shared_cb(netev_connection c, const netev_event *e, void *ud) {
  recorder *r = ud;
  if (atomic_fetch_add(&active, 1) != 0) atomic_fetch_add(&overlapping, 1);
  rec_event(r, e);
  spin(0.0002); /* widen the window in which an overlap would show */
  if (e->type == NETEV_EVENT_DATA) {
    pthread_mutex_lock(&r->mu);
    int full = r->data_len >= PAIR_BYTES;
    pthread_mutex_unlock(&r->mu);
    if (full) CHECK_OK(netev_connection_shutdown(c));
  }
  atomic_fetch_sub(&active, 1);
  rec_done(r);
}

typedef struct runner {
  netev_dispatcher d;
  recorder *a, *b;
  size_t ran;
  netev_status status;
} runner;

static int both_done(recorder *a, recorder *b) {
  pthread_mutex_lock(&a->mu);
  int x = a->terminated;
  pthread_mutex_unlock(&a->mu);
  pthread_mutex_lock(&b->mu);
  int y = b->terminated;
  pthread_mutex_unlock(&b->mu);
  return x && y;
}

static void *run_thread(void *arg) {
  runner *u = arg;
  double end = now_seconds() + 30;
  while (!both_done(u->a, u->b) && now_seconds() < end) {
    size_t ran = 0;
    netev_status s = netev_dispatcher_run(u->d, 0.05, &ran);
    if (s != NETEV_OK) {
      u->status = s;
      break;
    }
    u->ran += ran;
  }
  return NULL;
}

static void test_two_connections_no_overlap(void) {
  peer p1, p2;
  peer_start(&p1, PEER_ECHO, 0);
  peer_start(&p2, PEER_ECHO, 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  recorder r1, r2;
  rec_init(&r1);
  rec_init(&r2);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.dispatcher = d;
  rec_set_all(&o, &r1, shared_cb);
  netev_connection c1, c2;
  CHECK_OK(netev_connection_open("127.0.0.1", p1.port, &o, &c1));
  rec_set_all(&o, &r2, shared_cb);
  CHECK_OK(netev_connection_open("127.0.0.1", p2.port, &o, &c2));
  unsigned char *buf = malloc(PAIR_BYTES);
  CHECK(buf);
  fill_pattern(buf, PAIR_BYTES, 0);
  for (size_t off = 0; off < PAIR_BYTES; off += 4096) {
    CHECK_OK(netev_connection_send(c1, buf + off, 4096));
    CHECK_OK(netev_connection_send(c2, buf + off, 4096));
  }
  runner u1 = {d, &r1, &r2, 0, NETEV_OK}, u2 = {d, &r1, &r2, 0, NETEV_OK};
  pthread_t t1, t2;
  CHECK(pthread_create(&t1, NULL, run_thread, &u1) == 0);
  CHECK(pthread_create(&t2, NULL, run_thread, &u2) == 0);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  CHECK_STATUS(u1.status, NETEV_OK);
  CHECK_STATUS(u2.status, NETEV_OK);
  CHECK(r1.terminated && r2.terminated);
  CHECK(atomic_load(&overlapping) == 0);
  CHECK(r1.overlaps == 0 && r2.overlaps == 0);
  CHECK(u1.ran + u2.ran == (size_t)(r1.total + r2.total));
  CHECK_SEQUENCE(&r1, "connection data* end close terminate");
  CHECK_SEQUENCE(&r2, "connection data* end close terminate");
  CHECK(r1.data_len == PAIR_BYTES && is_pattern(r1.data, PAIR_BYTES, 0));
  CHECK(r2.data_len == PAIR_BYTES && is_pattern(r2.data, PAIR_BYTES, 0));
  free(buf);
  CHECK_OK(netev_connection_release(c1));
  CHECK_OK(netev_connection_release(c2));
  CHECK_OK(netev_dispatcher_release(d));
  peer_stop(&p1);
  peer_stop(&p2);
  rec_free(&r1);
  rec_free(&r2);
}

int main(void) {
  watchdog(60);
  test_poll_loop();
  test_wait_until_terminate();
  test_wait_ended_by_shutdown();
  test_wait_timeout();
  test_release_with_free();
  test_two_connections_no_overlap();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
