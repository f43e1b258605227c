/* netev_runtime_shutdown with 1000 open connections to a netev listener
 * (200 under valgrind): every connection, client and accepted side, gets
 * exactly "connection close terminate" — or "connection end close
 * terminate" when the other end was closed first and its FIN arrived — and
 * one user_data_free, all before
 * shutdown returns; nothing after; the listener gets exactly one TERMINATE. */
#include "common_listener.h"

#include <stdatomic.h>

typedef struct cstate {
  pthread_mutex_t mu;
  int types[8];
  int n, total, in_cb, overlaps, terminated, after_terminate, frees;
} cstate;

static atomic_int shutdown_returned, late;
static atomic_int accepted_connected, client_connected, naccepted;
static cstate *clients, *servers;
static int nconn;
static atomic_int listener_terminates, listener_errors, listener_after;

static void cs_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  cstate *s = ud;
  if (atomic_load(&shutdown_returned)) atomic_fetch_add(&late, 1);
  pthread_mutex_lock(&s->mu);
  if (s->in_cb) s->overlaps++;
  s->in_cb = 1;
  if (s->terminated) s->after_terminate++;
  if (s->n < 8) s->types[s->n++] = (int)e->type;
  s->total++;
  if (e->type == NETEV_EVENT_TERMINATE) s->terminated = 1;
  pthread_mutex_unlock(&s->mu);
  if (e->type == NETEV_EVENT_CONNECTION)
    atomic_fetch_add(s >= servers && s < servers + nconn ? &accepted_connected : &client_connected, 1);
  pthread_mutex_lock(&s->mu);
  s->in_cb = 0;
  pthread_mutex_unlock(&s->mu);
}

static void cs_free(void *ud) {
  cstate *s = ud;
  if (atomic_load(&shutdown_returned)) atomic_fetch_add(&late, 1);
  pthread_mutex_lock(&s->mu);
  if (!s->terminated) s->after_terminate += 1000; /* free before TERMINATE */
  s->frees++;
  pthread_mutex_unlock(&s->mu);
}

static void cs_options(netev_connection_options *o, cstate *s) {
  o->on_connection = o->on_data = o->on_shutdown = o->on_error = cs_cb;
  o->on_terminate = o->on_drain = o->on_end = cs_cb;
  o->user_data = s;
  o->user_data_free = cs_free;
}

static bool on_accept(netev_listener l, const netev_event *e, void *ud, netev_connection_options *o) {
  (void)l, (void)e, (void)ud;
  int i = atomic_fetch_add(&naccepted, 1);
  if (i >= nconn) return false;
  cs_options(o, &servers[i]);
  return true;
}

static void on_listener(netev_listener l, const netev_event *e, void *ud) {
  (void)l, (void)ud;
  if (atomic_load(&listener_terminates)) atomic_fetch_add(&listener_after, 1);
  if (e->type == NETEV_EVENT_TERMINATE) atomic_fetch_add(&listener_terminates, 1);
  if (e->type == NETEV_EVENT_ERROR) atomic_fetch_add(&listener_errors, 1);
}

static int all_connected(void *arg) {
  (void)arg;
  return atomic_load(&client_connected) == nconn && atomic_load(&accepted_connected) == nconn;
}

static void check_state(cstate *s, const char *side, int i) {
  pthread_mutex_lock(&s->mu);
  int end = s->n == 4 && s->types[1] == NETEV_EVENT_END;
  int ok = s->n == 3 + end && s->total == s->n && s->types[0] == NETEV_EVENT_CONNECTION &&
           s->types[1 + end] == NETEV_EVENT_CLOSE && s->types[2 + end] == NETEV_EVENT_TERMINATE;
  if (!ok) {
    char seq[256] = "";
    for (int k = 0; k < s->n; k++) {
      strcat(seq, netev_event_type_name(s->types[k]));
      strcat(seq, " ");
    }
    FAIL("%s connection %d: events \"%s\" (%d in all), expected \"connection [end] close terminate\"", side,
         i, seq, s->total);
  }
  if (s->frees != 1) FAIL("%s connection %d: user_data_free ran %d times", side, i, s->frees);
  if (s->overlaps || s->after_terminate) FAIL("%s connection %d: overlapping or late callbacks", side, i);
  pthread_mutex_unlock(&s->mu);
}

int main(void) {
  watchdog(180);
  nconn = (int)test_scale(1000, 200);
  rlim_t lim = raise_nofile();
  if (lim < (rlim_t)(2 * nconn + 64)) {
    nconn = (int)(lim - 64) / 2;
    printf("RLIMIT_NOFILE %ld: scaled down to %d connections\n", (long)lim, nconn);
  }
  clients = calloc((size_t)nconn, sizeof *clients);
  servers = calloc((size_t)nconn, sizeof *servers);
  CHECK(clients && servers);
  for (int i = 0; i < nconn; i++) {
    pthread_mutex_init(&clients[i].mu, NULL);
    pthread_mutex_init(&servers[i].mu, NULL);
  }
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = on_accept;
  lo.on_error = lo.on_terminate = on_listener;
  lo.bind_address = "127.0.0.1";
  lo.backlog = 4096;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  netev_connection *conns = calloc((size_t)nconn, sizeof *conns);
  CHECK(conns);
  for (int i = 0; i < nconn; i++) {
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    cs_options(&o, &clients[i]);
    o.connection_timeout = 60;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &conns[i]));
  }
  if (!poll_until(all_connected, NULL, 60))
    FAIL("%d clients and %d accepted connections up, of %d", atomic_load(&client_connected),
         atomic_load(&accepted_connected), nconn);
  CHECK(atomic_load(&naccepted) == nconn);
  CHECK(atomic_load(&listener_errors) == 0);

  double t0 = now_seconds();
  CHECK_OK(netev_runtime_shutdown(30));
  atomic_store(&shutdown_returned, 1);
  printf("shutdown with %d + %d open connections took %.3f s\n", nconn, nconn, now_seconds() - t0);

  for (int i = 0; i < nconn; i++) {
    check_state(&clients[i], "client", i);
    check_state(&servers[i], "accepted", i);
  }
  CHECK(atomic_load(&listener_terminates) == 1 && atomic_load(&listener_after) == 0);
  /* Nothing more comes (bounded look), and the handles still answer. */
  sleep_ms(200);
  CHECK(atomic_load(&late) == 0);
  for (int i = 0; i < nconn; i++) {
    bool closed = false;
    CHECK_OK(netev_connection_closed(conns[i], &closed));
    CHECK(closed);
    CHECK_OK(netev_connection_release(conns[i]));
  }
  netev_status lst = netev_listener_release(l); /* held: OK; or already gone */
  CHECK(lst == NETEV_OK || lst == NETEV_ERR_INVALID_HANDLE);
  CHECK(atomic_load(&late) == 0);
  for (int i = 0; i < nconn; i++) {
    CHECK(clients[i].total == clients[i].n && servers[i].total == servers[i].n);
    pthread_mutex_destroy(&clients[i].mu);
    pthread_mutex_destroy(&servers[i].mu);
  }
  free(conns);
  free(clients);
  free(servers);
  return 0;
}
