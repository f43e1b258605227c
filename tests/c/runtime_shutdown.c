/* netev_runtime_shutdown with 50 open connections: each gets exactly one
 * TERMINATE and one user_data_free, nothing runs after shutdown returns,
 * handles stay readable until released, and netev starts afresh afterwards
 * (lazily on open, or by netev_runtime_init). */
#include "common_b.h"

#include <stdatomic.h>

#define N 50

typedef struct conn_state {
  recorder rec;
  atomic_int frees;
} conn_state;

static atomic_int shutdown_returned;
static atomic_int late_callbacks; /* callbacks or frees after shutdown returned */

static void cb(netev_connection c, const netev_event *e, void *ud) {
  if (atomic_load(&shutdown_returned)) atomic_fetch_add(&late_callbacks, 1);
  rec_callback(c, e, &((conn_state *)ud)->rec);
}

static void free_cb(void *ud) {
  conn_state *s = ud;
  if (atomic_load(&shutdown_returned)) atomic_fetch_add(&late_callbacks, 1);
  pthread_mutex_lock(&s->rec.mu);
  /* user_data_free comes after TERMINATE */
  if (!s->rec.terminated) s->rec.after_terminate += 1000;
  pthread_mutex_unlock(&s->rec.mu);
  atomic_fetch_add(&s->frees, 1);
}

static int pred_total_above(recorder *r, size_t n) { return (size_t)r->total > n; }

/* A full echo round trip on whatever runtime is current. */
static void echo_round_trip(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "again", 5));
  CHECK(rec_wait_bytes(&r, 5, 10));
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == 5 && memcmp(r.data, "again", 5) == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

int main(void) {
  watchdog(60);
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  CHECK(ro.size == sizeof ro && ro.worker_threads == 0);
  /* Not running yet: init with the defaults starts it; again is refused. */
  CHECK_OK(netev_runtime_init(NULL));
  CHECK_STATUS(netev_runtime_init(NULL), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_runtime_init(&ro), NETEV_ERR_INVALID_ARGUMENT);

  multi_peer mp;
  multi_peer_start(&mp, N);
  conn_state *st = calloc(N, sizeof *st);
  CHECK(st);
  netev_connection conns[N];
  for (int i = 0; i < N; i++) {
    rec_init(&st[i].rec);
    atomic_init(&st[i].frees, 0);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &st[i].rec, cb);
    o.user_data = &st[i];
    o.user_data_free = free_cb;
    CHECK_OK(netev_connection_open("127.0.0.1", mp.port, &o, &conns[i]));
  }
  for (int i = 0; i < N; i++) CHECK(rec_wait_type(&st[i].rec, NETEV_EVENT_CONNECTION, 10));
  CHECK(multi_peer_wait_accepted(&mp, N, 10));
  for (int i = 0; i < N; i++) {
    bool closed = true;
    CHECK_OK(netev_connection_closed(conns[i], &closed));
    CHECK(!closed);
  }

  double t0 = now_seconds();
  CHECK_OK(netev_runtime_shutdown(10));
  atomic_store(&shutdown_returned, 1);
  CHECK(now_seconds() - t0 < 10);

  int totals[N];
  for (int i = 0; i < N; i++) {
    recorder *r = &st[i].rec;
    pthread_mutex_lock(&r->mu);
    int terminated = r->terminated, in_cb = r->in_callback;
    totals[i] = r->total;
    pthread_mutex_unlock(&r->mu);
    if (!terminated || in_cb) FAIL("connection %d: no TERMINATE (or still in it) when shutdown returned", i);
    CHECK(rec_count(r, NETEV_EVENT_TERMINATE) == 1);
    CHECK_SEQUENCE(r, "connection close terminate");
    CHECK(atomic_load(&st[i].frees) == 1);
    CHECK(r->after_terminate == 0);
    CHECK(r->overlaps == 0);
    bool closed = false;
    CHECK_OK(netev_connection_closed(conns[i], &closed));
    CHECK(closed);
    size_t amount = 1;
    CHECK_OK(netev_connection_buffered_amount(conns[i], &amount));
    CHECK(amount == 0);
    uint16_t port = 0;
    CHECK_OK(netev_connection_port(conns[i], &port));
    CHECK(port == mp.port);
    void *ud = NULL;
    CHECK_OK(netev_connection_user_data(conns[i], &ud));
    CHECK(ud == &st[i]);
  }
  /* Nothing more arrives (bounded look). */
  CHECK(!rec_wait(&st[0].rec, pred_total_above, (size_t)totals[0], 0.2));
  for (int i = 0; i < N; i++) {
    CHECK(st[i].rec.total == totals[i]);
    CHECK(atomic_load(&st[i].frees) == 1);
  }
  CHECK(atomic_load(&late_callbacks) == 0);
  /* A send on an ended connection is refused. */
  CHECK_STATUS(netev_connection_send(conns[0], "x", 1), NETEV_ERR_CLOSED);
  /* Shutting down again with nothing running is harmless. */
  CHECK_OK(netev_runtime_shutdown(10));

  for (int i = 0; i < N; i++) {
    CHECK_OK(netev_connection_release(conns[i]));
    bool closed;
    CHECK_STATUS(netev_connection_closed(conns[i], &closed), NETEV_ERR_INVALID_HANDLE);
    CHECK_STATUS(netev_connection_release(conns[i]), NETEV_ERR_INVALID_HANDLE);
  }
  CHECK(atomic_load(&late_callbacks) == 0);
  for (int i = 0; i < N; i++) CHECK(atomic_load(&st[i].frees) == 1);
  multi_peer_stop(&mp);

  /* The runtime starts afresh on the next open. */
  echo_round_trip();
  /* Only once it runs does init refuse. */
  CHECK_STATUS(netev_runtime_init(NULL), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_runtime_shutdown(10));

  /* ... or by init, with one worker thread. */
  CHECK_OK(netev_runtime_options_init(&ro));
  ro.worker_threads = 1;
  CHECK_OK(netev_runtime_init(&ro));
  CHECK_STATUS(netev_runtime_init(&ro), NETEV_ERR_INVALID_ARGUMENT);
  echo_round_trip();
  echo_round_trip();
  CHECK_OK(netev_runtime_shutdown(10));

  for (int i = 0; i < N; i++) rec_free(&st[i].rec);
  free(st);
  return 0;
}
