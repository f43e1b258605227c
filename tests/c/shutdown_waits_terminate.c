/* netev_runtime_shutdown returns only after every TERMINATE callback has
 * returned, and nothing is delivered afterwards — also for a connection
 * bound to a dispatcher that ANOTHER host thread services (a loop of
 * netev_dispatcher_run(d, 0.05, NULL)), whose CLOSE callback takes 50 ms.
 *
 * Each round: the connection to an echo peer is established (CONNECTION run
 * by the servicing thread); the main thread calls netev_runtime_shutdown(5).
 * It must return NETEV_OK, and by then on_terminate must have returned (a
 * flag set at its very end) and user_data_free must have run. Any callback
 * (or user_data_free) that starts after shutdown returned is counted as
 * delivered too late. The servicing thread is stopped only after the checks. */
#include "common_b.h"

#include <stdatomic.h>

static atomic_int shutdown_returned; /* set by main right after shutdown returned */

typedef struct conn_state {
  recorder r;
  atomic_int terminate_returned; /* set at the very end of on_terminate */
  atomic_int freed;              /* user_data_free calls */
  atomic_int late;               /* callbacks or frees begun after shutdown returned */
  atomic_int late_terminate;     /* of which TERMINATE */
  atomic_int free_before_terminate;
} conn_state;

static void sleep_ns(long ns) {
  struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void conn_cb(netev_connection c, const netev_event *e, void *ud) {
  conn_state *s = ud;
  if (atomic_load(&shutdown_returned)) {
    atomic_fetch_add(&s->late, 1);
    if (e->type == NETEV_EVENT_TERMINATE) atomic_fetch_add(&s->late_terminate, 1);
  }
  rec_event(&s->r, e);
  /* A slow host: CLOSE (on_shutdown) takes 50 ms. */
  if (e->type == NETEV_EVENT_CLOSE) sleep_ns(50 * 1000000L);
  rec_done(&s->r);
  (void)c;
  if (e->type == NETEV_EVENT_TERMINATE) atomic_store(&s->terminate_returned, 1);
}

static void conn_free(void *ud) {
  conn_state *s = ud;
  if (atomic_load(&shutdown_returned)) atomic_fetch_add(&s->late, 1);
  if (!atomic_load(&s->terminate_returned)) atomic_fetch_add(&s->free_before_terminate, 1);
  pthread_mutex_lock(&s->r.mu);
  atomic_fetch_add(&s->freed, 1);
  pthread_cond_broadcast(&s->r.cv);
  pthread_mutex_unlock(&s->r.mu);
}

/* ---- the host thread that services the dispatcher ------------------------ */

typedef struct servicer {
  netev_dispatcher d;
  pthread_t thread;
  atomic_int stop;
  atomic_int bad_status;   /* runs that returned neither OK nor INVALID_HANDLE */
  netev_status last_bad;
} servicer;

static void *service_main(void *arg) {
  servicer *sv = arg;
  while (!atomic_load(&sv->stop)) {
    netev_status st = netev_dispatcher_run(sv->d, 0.05, NULL);
    if (st == NETEV_OK) continue;
    if (st == NETEV_ERR_INVALID_HANDLE) break; /* gone: nothing to service */
    sv->last_bad = st;
    atomic_fetch_add(&sv->bad_status, 1);
    break;
  }
  return NULL;
}

static int pred_freed(recorder *r, size_t unused) {
  (void)unused;
  return atomic_load(&((conn_state *)r)->freed) > 0;
}

static int pred_total_above(recorder *r, size_t n) { return (size_t)r->total > n; }

typedef struct tally {
  int rounds;
  int not_ok;              /* shutdown returned something else than NETEV_OK */
  netev_status not_ok_status;
  int terminate_pending;   /* on_terminate had not returned when shutdown returned */
  int free_pending;        /* user_data_free had not run */
  int late;                /* rounds with a callback begun after shutdown returned */
  int late_terminate;      /* ... of which the TERMINATE */
  double slowest;
} tally;

static void round_once(tally *t) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  servicer sv;
  memset(&sv, 0, sizeof sv);
  CHECK_OK(netev_dispatcher_create(&sv.d));
  conn_state *s = calloc(1, sizeof *s);
  CHECK(s);
  rec_init(&s->r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s->r, conn_cb);
  o.user_data = s;
  o.user_data_free = conn_free;
  o.dispatcher = sv.d;
  netev_connection c;
  atomic_store(&shutdown_returned, 0);
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(pthread_create(&sv.thread, NULL, service_main, &sv) == 0);
  /* Established, and the echo works (run by the servicing thread). */
  if (!rec_wait_type(&s->r, NETEV_EVENT_CONNECTION, 10)) FAIL("no CONNECTION within 10 s");
  CHECK_OK(netev_connection_send(c, "ping", 4));
  if (!rec_wait_bytes(&s->r, 4, 10)) FAIL("no echo within 10 s");

  double t0 = now_seconds();
  netev_status st = netev_runtime_shutdown(5);
  atomic_store(&shutdown_returned, 1);
  double took = now_seconds() - t0;
  /* Read right after it returned. */
  int term_done = atomic_load(&s->terminate_returned);
  int freed = atomic_load(&s->freed);

  t->rounds++;
  if (took > t->slowest) t->slowest = took;
  if (st != NETEV_OK) {
    t->not_ok++;
    t->not_ok_status = st;
  }
  if (!term_done) t->terminate_pending++;
  if (!freed) t->free_pending++;

  /* Let whatever was left finish (bounded) before tearing anything down,
   * then look a moment longer for anything more. */
  if (!rec_wait_terminated(&s->r, 10)) {
    char seq[256];
    rec_sequence(&s->r, seq, sizeof seq);
    FAIL("no TERMINATE at all within 10 s of shutdown (returned %s); events \"%s\"",
         netev_status_name(st), seq);
  }
  if (!rec_wait(&s->r, pred_freed, 0, 10)) FAIL("user_data_free never ran");
  int total = s->r.total;
  /* A bounded look: nothing more comes. */
  if (rec_wait(&s->r, pred_total_above, (size_t)total, 0.1)) FAIL("an event after TERMINATE");
  if (atomic_load(&s->late)) t->late++;
  if (atomic_load(&s->late_terminate)) t->late_terminate++;

  CHECK_SEQUENCE(&s->r, "connection data* close terminate");
  CHECK(rec_count(&s->r, NETEV_EVENT_TERMINATE) == 1);
  CHECK(atomic_load(&s->freed) == 1);
  CHECK(atomic_load(&s->free_before_terminate) == 0);
  CHECK(s->r.overlaps == 0 && s->r.after_terminate == 0);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);

  atomic_store(&sv.stop, 1);
  pthread_join(sv.thread, NULL);
  if (atomic_load(&sv.bad_status))
    FAIL("netev_dispatcher_run on the servicing thread returned %s", netev_status_name(sv.last_bad));
  CHECK_OK(netev_connection_release(c));
  netev_status rs = netev_dispatcher_release(sv.d);
  CHECK(rs == NETEV_OK || rs == NETEV_ERR_INVALID_HANDLE);
  peer_stop(&p);
  rec_free(&s->r);
  free(s);
}

int main(void) {
  long rounds = test_scale(8, 3);
  watchdog((unsigned)(20 + rounds * 30));
  tally t;
  memset(&t, 0, sizeof t);
  for (long i = 0; i < rounds; i++) round_once(&t);
  fprintf(stderr,
          "shutdown_waits_terminate: %d rounds: shutdown not NETEV_OK in %d, on_terminate not "
          "returned when shutdown returned in %d, user_data_free not run in %d, callbacks "
          "delivered after shutdown returned in %d (TERMINATE in %d); slowest shutdown %.3f s\n",
          t.rounds, t.not_ok, t.terminate_pending, t.free_pending, t.late, t.late_terminate,
          t.slowest);
  if (t.not_ok)
    FAIL("broken promise \"shutdown returns NETEV_OK after every TERMINATE\": %d of %d rounds "
         "returned %s", t.not_ok, t.rounds, netev_status_name(t.not_ok_status));
  if (t.terminate_pending || t.late)
    FAIL("broken promise \"netev_runtime_shutdown returns after every TERMINATE has run; nothing "
         "is delivered afterwards\": in %d of %d rounds on_terminate had not returned when "
         "shutdown returned; in %d of %d a callback was delivered after it returned (TERMINATE "
         "in %d)",
         t.terminate_pending, t.rounds, t.late, t.rounds, t.late_terminate);
  if (t.free_pending)
    FAIL("broken promise \"user_data_free runs once after TERMINATE\" before shutdown returns: "
         "%d of %d rounds had not freed when shutdown returned", t.free_pending, t.rounds);
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
