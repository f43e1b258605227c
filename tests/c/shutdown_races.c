/* netev_runtime_shutdown against concurrent callers and callbacks:
 *
 * (a) two threads call netev_runtime_shutdown(5) at once while 50
 *     connections (netev's own threads) are open: each call that returns
 *     NETEV_OK returns after every TERMINATE has run; each connection gets
 *     exactly one TERMINATE.
 * (b) a shutdown whose deadline passes while a callback still runs (a CLOSE
 *     callback on a netev thread that takes 1.5 s; shutdown(0.2)) returns
 *     NETEV_ERR_TIMEOUT, promptly; that connection's TERMINATE still comes,
 *     once; a second shutdown(5) then returns NETEV_OK.
 * (c) netev_connection_open (and netev_listener_open) racing
 *     netev_runtime_shutdown: every open that returned NETEV_OK has its
 *     handle in *out before any callback for it fires (none runs inside
 *     the open call on the opening thread, none finds *out unwritten), and
 *     it gets exactly one TERMINATE; when shutdown returns NETEV_OK, every
 *     object whose open had returned before shutdown was called has had its
 *     TERMINATE. Opens during the shutdown return NETEV_ERR_SHUTDOWN (or
 *     NETEV_OK), nothing else.
 *     A callback on another thread that finds *out written but the opener
 *     not yet past its own "open returned" store is only counted: no
 *     library can close that window (it lies in the host's code). */
#include "common_b.h"

#include <stdatomic.h>

static void sleep_ns(long ns) {
  struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ======================================================================== */
/* (a) two concurrent shutdowns                                             */
/* ======================================================================== */

#define A_CONNS 50

typedef struct a_conn {
  recorder r;
  atomic_int terminates;
  atomic_int terminate_returned;
} a_conn;

static void a_cb(netev_connection c, const netev_event *e, void *ud) {
  a_conn *s = ud;
  if (e->type == NETEV_EVENT_TERMINATE) atomic_fetch_add(&s->terminates, 1);
  rec_event(&s->r, e);
  /* A slow host: CLOSE takes 5 ms, which widens the window in which a
   * shutdown could return before every TERMINATE. */
  if (e->type == NETEV_EVENT_CLOSE) sleep_ns(5 * 1000000L);
  rec_done(&s->r);
  (void)c;
  if (e->type == NETEV_EVENT_TERMINATE) atomic_store(&s->terminate_returned, 1);
}

typedef struct a_caller {
  pthread_t thread;
  pthread_barrier_t *start;
  a_conn *conns;
  netev_status status;
  int pending_at_return; /* connections whose on_terminate had not returned */
  double took;
} a_caller;

static void *a_shutdown_main(void *arg) {
  a_caller *k = arg;
  pthread_barrier_wait(k->start);
  double t0 = now_seconds();
  k->status = netev_runtime_shutdown(5);
  k->took = now_seconds() - t0;
  int pending = 0;
  for (int i = 0; i < A_CONNS; i++) pending += !atomic_load(&k->conns[i].terminate_returned);
  k->pending_at_return = pending;
  return NULL;
}

static int case_a(void) {
  long rounds = test_scale(10, 3);
  int bad_status = 0, early = 0, missing = 0;
  netev_status bad = NETEV_OK;
  int worst_pending = 0;
  for (long round = 0; round < rounds; round++) {
    multi_peer mp;
    multi_peer_start(&mp, A_CONNS);
    a_conn *conns = calloc(A_CONNS, sizeof *conns);
    CHECK(conns);
    netev_connection handles[A_CONNS];
    for (int i = 0; i < A_CONNS; i++) {
      rec_init(&conns[i].r);
      netev_connection_options o;
      CHECK_OK(netev_connection_options_init(&o));
      rec_set_all(&o, &conns[i].r, a_cb);
      o.user_data = &conns[i];
      CHECK_OK(netev_connection_open("127.0.0.1", mp.port, &o, &handles[i]));
    }
    for (int i = 0; i < A_CONNS; i++)
      if (!rec_wait_type(&conns[i].r, NETEV_EVENT_CONNECTION, 10)) FAIL("(a) connection %d: no CONNECTION", i);
    CHECK(multi_peer_wait_accepted(&mp, A_CONNS, 10));

    pthread_barrier_t start;
    CHECK(pthread_barrier_init(&start, NULL, 2) == 0);
    a_caller callers[2];
    memset(callers, 0, sizeof callers);
    for (int k = 0; k < 2; k++) {
      callers[k].start = &start;
      callers[k].conns = conns;
      CHECK(pthread_create(&callers[k].thread, NULL, a_shutdown_main, &callers[k]) == 0);
    }
    for (int k = 0; k < 2; k++) pthread_join(callers[k].thread, NULL);
    pthread_barrier_destroy(&start);
    int round_early = 0;
    for (int k = 0; k < 2; k++) {
      if (callers[k].status != NETEV_OK) {
        bad_status++;
        bad = callers[k].status;
      } else if (callers[k].pending_at_return > 0) {
        round_early = 1;
        if (callers[k].pending_at_return > worst_pending) worst_pending = callers[k].pending_at_return;
      }
    }
    early += round_early;
    /* Each connection: exactly one TERMINATE (bounded wait for stragglers). */
    for (int i = 0; i < A_CONNS; i++) {
      if (!rec_wait_terminated(&conns[i].r, 10)) {
        missing++;
        continue;
      }
      if (atomic_load(&conns[i].terminates) != 1)
        FAIL("(a) connection %d got %d TERMINATE", i, atomic_load(&conns[i].terminates));
      CHECK_SEQUENCE(&conns[i].r, "connection close terminate");
      CHECK(conns[i].r.overlaps == 0 && conns[i].r.after_terminate == 0);
    }
    if (missing) FAIL("(a) round %ld: %d connections never got TERMINATE", round, missing);
    for (int i = 0; i < A_CONNS; i++) {
      CHECK_OK(netev_connection_release(handles[i]));
      rec_free(&conns[i].r);
    }
    free(conns);
    multi_peer_stop(&mp);
  }
  fprintf(stderr,
          "shutdown_races (a): %ld rounds of two concurrent shutdown(5) calls with %d connections: "
          "a call not NETEV_OK in %d, a call returned NETEV_OK before every TERMINATE had run in %d "
          "rounds (up to %d pending)\n",
          rounds, A_CONNS, bad_status, early, worst_pending);
  int broken = 0;
  if (bad_status) {
    fprintf(stderr, "shutdown_races (a): BROKEN (concurrent shutdowns return NETEV_OK): %d of %ld calls returned %s\n",
            bad_status, 2 * rounds, netev_status_name(bad));
    broken++;
  }
  if (early) {
    fprintf(stderr,
            "shutdown_races (a): BROKEN (shutdown returns after every TERMINATE has run): in %d of "
            "%ld rounds a concurrent shutdown returned NETEV_OK with up to %d of %d TERMINATE "
            "callbacks not yet returned\n",
            early, rounds, worst_pending, A_CONNS);
    broken++;
  }
  return broken;
}

/* ======================================================================== */
/* (b) the deadline passes while a callback still runs                       */
/* ======================================================================== */

typedef struct b_conn {
  recorder r;
  atomic_int terminates;
  atomic_int in_close;
} b_conn;

static void b_cb(netev_connection c, const netev_event *e, void *ud) {
  b_conn *s = ud;
  rec_event(&s->r, e);
  if (e->type == NETEV_EVENT_CLOSE) {
    atomic_store(&s->in_close, 1);
    sleep_ns(1500 * 1000000L); /* a slow host on a netev thread */
  }
  if (e->type == NETEV_EVENT_TERMINATE) atomic_fetch_add(&s->terminates, 1);
  rec_done(&s->r);
  (void)c;
}

static int b_pred_in_close(recorder *r, size_t unused) {
  (void)unused;
  return atomic_load(&((b_conn *)r)->in_close);
}

static int case_b(void) {
  double f = test_time_factor();
  multi_peer mp;
  multi_peer_start(&mp, 1);
  b_conn *s = calloc(1, sizeof *s);
  CHECK(s);
  rec_init(&s->r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s->r, b_cb);
  o.user_data = s;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", mp.port, &o, &c));
  if (!rec_wait_type(&s->r, NETEV_EVENT_CONNECTION, 10)) FAIL("(b) no CONNECTION within 10 s");

  double t0 = now_seconds();
  netev_status st = netev_runtime_shutdown(0.2);
  double took = now_seconds() - t0;
  int close_started = atomic_load(&s->in_close);
  int terminated_at_return = atomic_load(&s->terminates);
  fprintf(stderr,
          "shutdown_races (b): shutdown(0.2) with a 1.5 s CLOSE callback running returned %s after "
          "%.3f s (CLOSE callback %s, TERMINATE %s)\n",
          netev_status_name(st), took, close_started ? "started" : "not started",
          terminated_at_return ? "already run" : "not yet run");
  /* The CLOSE callback must run (shutdown closed the connection). */
  if (!rec_wait(&s->r, b_pred_in_close, 0, 5)) FAIL("(b) the CLOSE callback never started");
  /* The TERMINATE still comes, once. */
  if (!rec_wait_terminated(&s->r, 10)) {
    char seq[256];
    rec_sequence(&s->r, seq, sizeof seq);
    FAIL("(b) no TERMINATE within 10 s after the slow CLOSE callback; events \"%s\"", seq);
  }
  CHECK_SEQUENCE(&s->r, "connection close terminate");
  netev_status st2 = netev_runtime_shutdown(5);
  if (atomic_load(&s->terminates) != 1) FAIL("(b) %d TERMINATE events", atomic_load(&s->terminates));
  CHECK(s->r.overlaps == 0 && s->r.after_terminate == 0);
  int broken = 0;
  if (st != NETEV_ERR_TIMEOUT) {
    fprintf(stderr,
            "shutdown_races (b): BROKEN (a shutdown whose deadline passes while a callback runs "
            "returns NETEV_ERR_TIMEOUT): shutdown(0.2) returned %s after %.3f s while a 1.5 s "
            "CLOSE callback was running (1 of 1 runs)\n",
            netev_status_name(st), took);
    broken++;
  }
  if (took > 0.2 + 0.5 * f) {
    fprintf(stderr,
            "shutdown_races (b): BROKEN (shutdown keeps its deadline): shutdown(0.2) took %.3f s, "
            "waiting for the 1.5 s callback\n", took);
    broken++;
  }
  if (st2 != NETEV_OK) {
    fprintf(stderr, "shutdown_races (b): BROKEN: the second shutdown(5) returned %s\n",
            netev_status_name(st2));
    broken++;
  }
  CHECK_OK(netev_connection_release(c));
  multi_peer_stop(&mp);
  rec_free(&s->r);
  free(s);
  return broken;
}

/* ======================================================================== */
/* (c) open racing shutdown                                                  */
/* ======================================================================== */

#define C_MAX 200

static _Thread_local int tls_in_open; /* this thread is inside an open call */
static atomic_int shutdown_called;    /* main is about to call (or in) shutdown */

/* One object opened by the racing thread. `handle` is the open's *out. */
typedef struct c_obj {
  uint64_t handle;           /* written by netev through *out */
  atomic_int opened;         /* set by the opener right after open returned NETEV_OK */
  int before_shutdown;       /* open returned before shutdown was called */
  atomic_int callbacks;
  atomic_int terminates;
  atomic_int terminate_returned;
  atomic_int inside_open;    /* callbacks run inside the open call, on its thread */
  atomic_int before_out;     /* callbacks that found *out not yet written */
  atomic_int before_return;  /* callbacks on another thread, *out written, before the
                              * opener's store after open returned (counted only) */
  atomic_int wrong_handle;   /* callback's handle differs from *out */
  pthread_mutex_t mu;
  pthread_cond_t cv;
} c_obj;

static void c_obj_seen(c_obj *o, uint64_t h, int terminate) {
  atomic_fetch_add(&o->callbacks, 1);
  uint64_t out = __atomic_load_n(&o->handle, __ATOMIC_ACQUIRE);
  if (tls_in_open)
    atomic_fetch_add(&o->inside_open, 1);
  else if (out == 0)
    atomic_fetch_add(&o->before_out, 1);
  else if (!atomic_load(&o->opened))
    atomic_fetch_add(&o->before_return, 1);
  if (out != 0 && out != h) atomic_fetch_add(&o->wrong_handle, 1);
  if (terminate) atomic_fetch_add(&o->terminates, 1);
}

static void c_obj_done(c_obj *o, int terminate) {
  if (!terminate) return;
  pthread_mutex_lock(&o->mu);
  atomic_store(&o->terminate_returned, 1);
  pthread_cond_broadcast(&o->cv);
  pthread_mutex_unlock(&o->mu);
}

static void c_conn_cb(netev_connection c, const netev_event *e, void *ud) {
  c_obj *o = ud;
  int term = e->type == NETEV_EVENT_TERMINATE;
  c_obj_seen(o, c, term);
  c_obj_done(o, term);
}

static void c_listener_cb(netev_listener l, const netev_event *e, void *ud) {
  c_obj *o = ud;
  int term = e->type == NETEV_EVENT_TERMINATE;
  c_obj_seen(o, l, term);
  c_obj_done(o, term);
}

/* Waits until the object's TERMINATE returned or the instant `end` passed. */
static int c_wait_terminated(c_obj *o, double end) {
  pthread_mutex_lock(&o->mu);
  while (!atomic_load(&o->terminate_returned) && cond_wait_until(&o->cv, &o->mu, end)) {
  }
  int ok = atomic_load(&o->terminate_returned);
  pthread_mutex_unlock(&o->mu);
  return ok;
}

typedef struct opener {
  int listeners;          /* open listeners instead of connections */
  uint16_t port;          /* connections: the peer's port */
  c_obj *objs;            /* C_MAX */
  int n;                  /* opens tried */
  int ok;                 /* of which NETEV_OK */
  int refused;            /* NETEV_ERR_SHUTDOWN */
  int other;              /* anything else */
  netev_status other_status;
  char other_message[256];
  atomic_int stop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
} opener;

static void *opener_main(void *arg) {
  opener *op = arg;
  for (int i = 0; i < C_MAX && !atomic_load(&op->stop); i++) {
    c_obj *o = &op->objs[i];
    netev_status st;
    tls_in_open = 1;
    if (op->listeners) {
      netev_listener_options lo;
      CHECK_OK(netev_listener_options_init(&lo));
      lo.bind_address = "127.0.0.1";
      lo.on_error = c_listener_cb;
      lo.on_terminate = c_listener_cb;
      lo.user_data = o;
      st = netev_listener_open(0, &lo, &o->handle);
    } else {
      netev_connection_options co;
      CHECK_OK(netev_connection_options_init(&co));
      co.on_connection = co.on_data = co.on_shutdown = co.on_error = c_conn_cb;
      co.on_terminate = co.on_drain = co.on_end = c_conn_cb;
      co.user_data = o;
      st = netev_connection_open("127.0.0.1", op->port, &co, &o->handle);
    }
    tls_in_open = 0;
    int before = !atomic_load(&shutdown_called);
    if (st == NETEV_OK) {
      o->before_shutdown = before;
      atomic_store(&o->opened, 1);
    }
    pthread_mutex_lock(&op->mu);
    op->n++;
    if (st == NETEV_OK)
      op->ok++;
    else if (st == NETEV_ERR_SHUTDOWN)
      op->refused++;
    else {
      op->other++;
      op->other_status = st;
      netev_last_error_message(op->other_message, sizeof op->other_message);
    }
    pthread_cond_broadcast(&op->cv);
    pthread_mutex_unlock(&op->mu);
  }
  return NULL;
}

static int opener_wait_opened(opener *op, int n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&op->mu);
  while (op->n < n && op->n < C_MAX && cond_wait_until(&op->cv, &op->mu, end)) {
  }
  int ok = op->n >= n || op->n >= C_MAX;
  pthread_mutex_unlock(&op->mu);
  return ok;
}

typedef struct c_tally {
  int rounds, opens, ok, refused;
  int inside_open, before_out, before_return, wrong_handle; /* callbacks */
  int no_terminate, many_terminates;                         /* objects */
  int handle_rounds, term_rounds, other_rounds;              /* rounds with such failures */
  int early;               /* objects opened before shutdown, not terminated when it returned OK */
  int early_rounds;
  int shutdown_not_ok;
  netev_status shutdown_status;
  int other;               /* opens that returned neither NETEV_OK nor NETEV_ERR_SHUTDOWN */
  netev_status other_status;
  char other_message[256];
} c_tally;

static void case_c_round(int listeners, long round, c_tally *t) {
  multi_peer mp;
  int use_peer = !listeners;
  if (use_peer) multi_peer_start(&mp, C_MAX);
  opener *op = calloc(1, sizeof *op);
  CHECK(op);
  op->objs = calloc(C_MAX, sizeof *op->objs);
  CHECK(op->objs);
  for (int i = 0; i < C_MAX; i++) {
    pthread_mutex_init(&op->objs[i].mu, NULL);
    pthread_cond_init(&op->objs[i].cv, NULL);
  }
  op->listeners = listeners;
  op->port = use_peer ? mp.port : 0;
  pthread_mutex_init(&op->mu, NULL);
  pthread_cond_init(&op->cv, NULL);
  atomic_store(&shutdown_called, 0);
  CHECK(pthread_create(&op->thread, NULL, opener_main, op) == 0);
  /* Start the shutdown after a varying number of opens. */
  CHECK(opener_wait_opened(op, 1 + (int)(round % 20), 10));
  atomic_store(&shutdown_called, 1);
  netev_status st = netev_runtime_shutdown(5);
  /* Right after it returned: every object opened before it was called must
   * have had its TERMINATE. */
  int early = 0;
  if (st == NETEV_OK) {
    for (int i = 0; i < C_MAX; i++) {
      c_obj *o = &op->objs[i];
      if (atomic_load(&o->opened) && o->before_shutdown && !atomic_load(&o->terminate_returned))
        early++;
    }
  } else {
    t->shutdown_not_ok++;
    t->shutdown_status = st;
  }
  atomic_store(&op->stop, 1);
  pthread_join(op->thread, NULL);
  /* Opens after the shutdown started a fresh runtime: end it too. */
  CHECK_OK(netev_runtime_shutdown(5));

  t->rounds++;
  t->opens += op->n;
  t->ok += op->ok;
  t->refused += op->refused;
  t->early += early;
  t->early_rounds += early > 0;
  if (op->other) {
    t->other += op->other;
    t->other_status = op->other_status;
    memcpy(t->other_message, op->other_message, sizeof t->other_message);
  }
  /* Every opened object's TERMINATE: the shutdown above returned NETEV_OK,
   * so they all ran already; 2 s of slack for all of them. */
  double end = now_seconds() + 2 * test_time_factor();
  int handle_bad = 0, term_bad = 0;
  for (int i = 0; i < op->n; i++) {
    c_obj *o = &op->objs[i];
    if (!atomic_load(&o->opened)) {
      if (atomic_load(&o->callbacks))
        FAIL("(c) an open that failed got %d callbacks", atomic_load(&o->callbacks));
      continue;
    }
    if (!c_wait_terminated(o, end)) {
      t->no_terminate++;
      term_bad = 1;
    } else if (atomic_load(&o->terminates) != 1) {
      t->many_terminates++;
      term_bad = 1;
    }
    int hb = atomic_load(&o->inside_open) + atomic_load(&o->before_out) +
             atomic_load(&o->wrong_handle);
    handle_bad |= hb > 0;
    t->inside_open += atomic_load(&o->inside_open);
    t->before_out += atomic_load(&o->before_out);
    t->before_return += atomic_load(&o->before_return);
    t->wrong_handle += atomic_load(&o->wrong_handle);
  }
  t->handle_rounds += handle_bad;
  t->term_rounds += term_bad;
  t->other_rounds += op->other > 0;
  for (int i = 0; i < op->n; i++) {
    c_obj *o = &op->objs[i];
    if (!atomic_load(&o->opened)) continue;
    netev_status rs = listeners ? netev_listener_release(o->handle) : netev_connection_release(o->handle);
    if (rs != NETEV_OK) FAIL("(c) releasing an opened handle returned %s", netev_status_name(rs));
  }
  for (int i = 0; i < C_MAX; i++) {
    pthread_mutex_destroy(&op->objs[i].mu);
    pthread_cond_destroy(&op->objs[i].cv);
  }
  free(op->objs);
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cv);
  free(op);
  if (use_peer) multi_peer_stop(&mp);
}

static int case_c(int listeners) {
  const char *what = listeners ? "netev_listener_open" : "netev_connection_open";
  long rounds = test_scale(50, 10);
  c_tally t;
  memset(&t, 0, sizeof t);
  for (long r = 0; r < rounds; r++) case_c_round(listeners, r, &t);
  fprintf(stderr,
          "shutdown_races (c) %s racing shutdown: %d rounds, %d opens (%d NETEV_OK, %d "
          "NETEV_ERR_SHUTDOWN); callbacks inside the open call %d, before *out was written %d, "
          "on another thread after *out but before the opener's store %d (counted only), with another handle %d; objects without "
          "TERMINATE %d, with more than one %d; opened before shutdown but not terminated when "
          "it returned NETEV_OK: %d (in %d rounds); shutdown not NETEV_OK %d\n",
          what, t.rounds, t.opens, t.ok, t.refused, t.inside_open, t.before_out, t.before_return,
          t.wrong_handle, t.no_terminate, t.many_terminates, t.early, t.early_rounds,
          t.shutdown_not_ok);
  int broken = 0;
  if (t.other) {
    fprintf(stderr,
            "shutdown_races (c): BROKEN (%s while shutdown runs returns NETEV_ERR_SHUTDOWN, "
            "else NETEV_OK): in %d of %d rounds, %d of %d opens returned %s (\"%s\")\n",
            what, t.other_rounds, t.rounds, t.other, t.opens, netev_status_name(t.other_status),
            t.other_message);
    broken++;
  }
  if (t.inside_open || t.before_out || t.wrong_handle) {
    fprintf(stderr,
            "shutdown_races (c): BROKEN (%s: the handle is known before any callback fires): "
            "in %d of %d rounds: %d callbacks ran inside the open call, %d before *out was "
            "written, %d with a handle other than *out\n",
            what, t.handle_rounds, t.rounds, t.inside_open, t.before_out, t.wrong_handle);
    broken++;
  }
  if (t.no_terminate || t.many_terminates) {
    fprintf(stderr,
            "shutdown_races (c): BROKEN (%s: every open that returned NETEV_OK gets exactly one "
            "TERMINATE): in %d of %d rounds: %d of %d objects never got one, %d got more than "
            "one\n",
            what, t.term_rounds, t.rounds, t.no_terminate, t.ok, t.many_terminates);
    broken++;
  }
  if (t.early || t.shutdown_not_ok) {
    fprintf(stderr,
            "shutdown_races (c): BROKEN (%s: shutdown returns NETEV_OK after every TERMINATE): "
            "%d objects in %d of %d rounds not terminated when it returned; %d shutdowns "
            "returned %s\n",
            what, t.early, t.early_rounds, t.rounds, t.shutdown_not_ok,
            t.shutdown_not_ok ? netev_status_name(t.shutdown_status) : "-");
    broken++;
  }
  return broken;
}

int main(int argc, char **argv) {
  watchdog(300);
  /* Cases can be run alone: shutdown_races a|b|c (default: all). */
  const char *only = argc > 1 ? argv[1] : "abc";
  int broken = 0;
  if (strchr(only, 'c')) {
    broken += case_c(0);
    broken += case_c(1);
  }
  if (strchr(only, 'a')) broken += case_a();
  if (strchr(only, 'b')) broken += case_b();
  if (broken) FAIL("%d promise(s) broken, see above", broken);
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
