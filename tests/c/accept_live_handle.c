/* Inside a listener's on_connection, event->connection is already a live
 * handle (API.md, "Precise rules", "Lifetimes and the runtime"):
 * netev_connection_retain works there, and so does every property getter —
 * listener (the listener's id), address (the peer's IP, "127.0.0.1"), port
 * (the peer's port, equal to event->port), closed (false), error_count (0).
 *
 * The handle retained there is kept: after accepting, the connection works
 * (the main thread sends on the retained handle, the BSD client echoes it
 * back, the connection's DATA brings it), and it stays valid after its
 * TERMINATE until released, then answers NETEV_ERR_INVALID_HANDLE.
 *
 * A connection rejected after being retained in on_connection: its handle
 * stays valid until released (closed reads true), no callback ever fires
 * for it and its user_data_free is never called (a rejected connection's
 * user_data stays the host's), release returns NETEV_OK, then the handle is
 * NETEV_ERR_INVALID_HANDLE.
 *
 * Both in immediate mode and with the listener bound to a dispatcher run
 * by the main thread. `accept_live_handle [immediate|dispatcher]` runs one. */
#include "common_listener.h"

#include <stdatomic.h>

/* What on_connection saw, on its own handle. */
typedef struct live_seen {
  int filled;
  netev_connection conn;
  uint16_t event_port;
  char event_ip[NETEV_IP_TEXT_LEN];
  netev_status st_retain, st_listener, st_address, st_port, st_closed, st_errcount;
  netev_listener listener_val;
  char address_val[64];
  size_t address_need;
  uint16_t port_val;
  bool closed_val;
  size_t errcount_val;
  pthread_t thread;
} live_seen;

/* The server: an lsn_server (first member: lsn_accept takes it as
 * user_data) plus what on_connection saw. */
typedef struct server {
  lsn_server s;
  live_seen seen[4];
  int nseen;
} server;

/* Callbacks of a rejected connection: none may ever run. */
static atomic_int never_calls;
static atomic_int never_frees;
static void never_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)e;
  (void)ud;
  atomic_fetch_add(&never_calls, 1);
}
static void never_free(void *ud) {
  (void)ud;
  atomic_fetch_add(&never_frees, 1);
}

static bool live_accept(netev_listener l, const netev_event *e, void *ud,
                        netev_connection_options *o) {
  server *S = ud;
  live_seen w;
  memset(&w, 0, sizeof w);
  w.conn = e->connection;
  w.event_port = e->port;
  memcpy(w.event_ip, e->ip, sizeof w.event_ip);
  w.thread = pthread_self();
  /* the handle is live: retain it, read every property */
  w.st_retain = netev_connection_retain(e->connection);
  w.st_listener = netev_connection_listener(e->connection, &w.listener_val);
  w.st_address =
      netev_connection_address(e->connection, w.address_val, sizeof w.address_val, &w.address_need);
  w.st_port = netev_connection_port(e->connection, &w.port_val);
  w.closed_val = true;
  w.st_closed = netev_connection_closed(e->connection, &w.closed_val);
  w.errcount_val = 99;
  w.st_errcount = netev_connection_error_count(e->connection, &w.errcount_val);
  w.filled = 1;
  pthread_mutex_lock(&S->s.mu);
  int reject = S->s.reject;
  if (S->nseen < 4) S->seen[S->nseen++] = w;
  pthread_cond_broadcast(&S->s.cv);
  pthread_mutex_unlock(&S->s.mu);
  if (reject) {
    /* whatever the options say, a rejected connection gets no callback */
    rec_set_all(o, NULL, never_cb);
    o->user_data_free = never_free;
  }
  (void)l;
  return lsn_accept(l, e, ud, o); /* records; returns false when s.reject */
}

static int pred_seen(lsn_server *s, long n) { return ((server *)s)->nseen >= n; }

/* Runs the dispatcher on this thread (when d != 0) until pred holds; bounded. */
static int srv_pump(netev_dispatcher d, server *S, int (*pred)(lsn_server *, long), long arg,
                    double seconds) {
  if (!d) return lsn_wait(&S->s, pred, arg, seconds);
  double end = now_seconds() + seconds * test_time_factor();
  for (;;) {
    pthread_mutex_lock(&S->s.mu);
    int ok = pred(&S->s, arg);
    pthread_mutex_unlock(&S->s.mu);
    if (ok) return 1;
    if (now_seconds() > end) return 0;
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
}

static int rec_pump(netev_dispatcher d, recorder *r, int (*pred)(recorder *, size_t), size_t arg,
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

#define RULE_LIVE "(rule: inside on_connection, event->connection is already a live handle)"

/* What on_connection saw must be a live, fresh connection from the client. */
static void check_seen(const char *mode, live_seen *w, netev_listener l, uint16_t client_port) {
  if (w->st_retain != NETEV_OK)
    FAIL("%s: netev_connection_retain(event->connection) inside on_connection returned %s, "
         "expected NETEV_OK %s",
         mode, netev_status_name((int32_t)w->st_retain), RULE_LIVE);
  if (w->st_listener != NETEV_OK || w->listener_val != l)
    FAIL("%s: netev_connection_listener inside on_connection: %s, listener %llu (expected %llu) "
         "%s",
         mode, netev_status_name((int32_t)w->st_listener), (unsigned long long)w->listener_val,
         (unsigned long long)l, RULE_LIVE);
  if (w->st_address != NETEV_OK || strcmp(w->address_val, "127.0.0.1") != 0 ||
      w->address_need != strlen("127.0.0.1"))
    FAIL("%s: netev_connection_address inside on_connection: %s, \"%s\" (needed %zu), "
         "expected the peer's IP \"127.0.0.1\" %s",
         mode, netev_status_name((int32_t)w->st_address), w->address_val, w->address_need,
         RULE_LIVE);
  if (w->st_port != NETEV_OK || w->port_val != w->event_port || w->port_val != client_port)
    FAIL("%s: netev_connection_port inside on_connection: %s, %u (event->port %u, the "
         "client's port %u) %s",
         mode, netev_status_name((int32_t)w->st_port), (unsigned)w->port_val,
         (unsigned)w->event_port, (unsigned)client_port, RULE_LIVE);
  if (w->st_closed != NETEV_OK || w->closed_val)
    FAIL("%s: netev_connection_closed inside on_connection: %s, %s (expected NETEV_OK, false) %s",
         mode, netev_status_name((int32_t)w->st_closed), w->closed_val ? "true" : "false",
         RULE_LIVE);
  if (w->st_errcount != NETEV_OK || w->errcount_val != 0)
    FAIL("%s: netev_connection_error_count inside on_connection: %s, %zu (expected NETEV_OK, 0) "
         "%s",
         mode, netev_status_name((int32_t)w->st_errcount), w->errcount_val, RULE_LIVE);
  CHECK(strcmp(w->event_ip, "127.0.0.1") == 0);
  CHECK(w->conn != 0);
}

static netev_connection g_watch;
static int g_watch_bad;
static int watch_gone(void *arg) {
  (void)arg;
  bool closed;
  netev_status st = netev_connection_closed(g_watch, &closed);
  if (st != NETEV_OK && st != NETEV_ERR_INVALID_HANDLE) g_watch_bad++;
  return st == NETEV_ERR_INVALID_HANDLE;
}

/* The handle must not die on its own: watched for a while. */
static void check_stays_valid(const char *mode, netev_connection h, const char *what) {
  g_watch = h;
  g_watch_bad = 0;
  if (poll_until(watch_gone, NULL, 0.3))
    FAIL("%s: %s: the handle retained in on_connection became invalid before it was released",
         mode, what);
  CHECK(g_watch_bad == 0);
}

static void run_mode(int with_dispatcher) {
  const char *mode = with_dispatcher ? "dispatcher" : "immediate";
  atomic_store(&never_calls, 0);
  atomic_store(&never_frees, 0);
  server *S = calloc(1, sizeof *S);
  CHECK(S != NULL);
  lsn_init(&S->s);
  S->s.echo = 0; /* the main thread sends; the BSD client echoes */
  netev_dispatcher d = 0;
  if (with_dispatcher) {
    CHECK_OK(netev_dispatcher_create(&d));
    S->s.check_thread = 1;
    S->s.expect_thread = pthread_self();
    S->s.check_dispatcher = 1;
    S->s.want_dispatcher = d;
  }
  netev_listener_options lo;
  lsn_options(&S->s, &lo);
  lo.on_connection = live_accept;
  lo.user_data = S;
  lo.bind_address = "127.0.0.1";
  lo.dispatcher = d;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  pthread_mutex_lock(&S->s.mu);
  S->s.listener = l;
  pthread_mutex_unlock(&S->s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));

  /* ---- accepted, retained in on_connection ---- */
  int fd = bsd_connect("127.0.0.1", port);
  CHECK(fd >= 0);
  uint16_t client_port = bsd_local_port(fd);
  if (!srv_pump(d, S, pred_seen, 1, 10)) FAIL("%s: on_connection never ran", mode);
  live_seen w = S->seen[0];
  if (with_dispatcher) CHECK(pthread_equal(w.thread, pthread_self()));
  check_seen(mode, &w, l, client_port);
  netev_connection h = w.conn;
  lsn_conn *lc = lsn_conn_at(&S->s, 0, 10);
  CHECK(lc->conn == h);
  if (!rec_pump(d, &lc->r, rec_pred_type, NETEV_EVENT_CONNECTION, 10))
    FAIL("%s: the accepted connection got no CONNECTION", mode);

  /* it works: send on the retained handle, the client echoes */
  const char *msg = "sent on the handle retained in on_connection";
  size_t n = strlen(msg);
  CHECK_OK(netev_connection_send(h, msg, n));
  unsigned char buf[128];
  if (bsd_recv_exact(fd, buf, n, 10) != 0)
    FAIL("%s: the client did not receive what was sent on the retained handle", mode);
  CHECK(memcmp(buf, msg, n) == 0);
  CHECK(write_all(fd, buf, n) == 0);
  if (!rec_pump(d, &lc->r, rec_pred_bytes, n, 10))
    FAIL("%s: the echo did not reach the accepted connection", mode);
  CHECK(lc->r.data_len == n && memcmp(lc->r.data, msg, n) == 0);
  /* the client ends: END, CLOSE, TERMINATE */
  CHECK(shutdown(fd, SHUT_WR) == 0);
  if (!rec_pump(d, &lc->r, rec_pred_terminated, 0, 10))
    FAIL("%s: the accepted connection did not end", mode);
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(bsd_recv_end(fd, 10) == 0);
  close(fd);

  /* valid after TERMINATE, until released */
  check_stays_valid(mode, h, "after its TERMINATE");
  bool closed = false;
  CHECK_OK(netev_connection_closed(h, &closed));
  CHECK(closed);
  uint16_t p = 0;
  CHECK_OK(netev_connection_port(h, &p));
  CHECK(p == client_port);
  netev_listener owner = 0;
  CHECK_OK(netev_connection_listener(h, &owner));
  CHECK(owner == l);
  CHECK_OK(netev_connection_release(h));
  CHECK_STATUS(netev_connection_closed(h, &closed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_release(h), NETEV_ERR_INVALID_HANDLE);

  /* ---- rejected, retained in on_connection ---- */
  pthread_mutex_lock(&S->s.mu);
  S->s.reject = 1;
  pthread_mutex_unlock(&S->s.mu);
  int fd2 = bsd_connect("127.0.0.1", port);
  CHECK(fd2 >= 0);
  uint16_t client_port2 = bsd_local_port(fd2);
  if (!srv_pump(d, S, pred_seen, 2, 10)) FAIL("%s: on_connection never ran (reject)", mode);
  live_seen w2 = S->seen[1];
  check_seen(mode, &w2, l, client_port2);
  netev_connection h2 = w2.conn;
  CHECK(h2 != h);
  /* rejected: the socket is closed at once */
  int end = bsd_recv_end(fd2, 10);
  if (end != 0 && end != ECONNRESET)
    FAIL("%s: the rejected client saw %d, expected end of stream", mode, end);
  close(fd2);
  /* a dispatcher run gives any (wrong) callback its chance */
  if (d) CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  check_stays_valid(mode, h2, "rejected");
  closed = false;
  CHECK_OK(netev_connection_closed(h2, &closed));
  if (!closed) FAIL("%s: a rejected connection retained in on_connection reads closed = false", mode);
  CHECK_OK(netev_connection_port(h2, &p));
  CHECK(p == client_port2);
  if (atomic_load(&never_calls) != 0)
    FAIL("%s: %d callbacks fired for a rejected connection", mode, atomic_load(&never_calls));
  CHECK_OK(netev_connection_release(h2));
  CHECK_STATUS(netev_connection_closed(h2, &closed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_port(h2, &p), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_release(h2), NETEV_ERR_INVALID_HANDLE);

  /* ---- the end ---- */
  CHECK_OK(netev_listener_release(l));
  if (!srv_pump(d, S, lsn_pred_terminated, 0, 10)) FAIL("%s: the listener did not terminate", mode);
  CHECK_LSN_SEQUENCE(&S->s, "connection connection terminate");
  CHECK(lsn_get(&S->s, &S->s.conn_terminates) == 1);
  lsn_check_clean(&S->s);
  CHECK(S->s.wrong_thread == 0);
  if (d) CHECK_OK(netev_dispatcher_release(d));
  CHECK(atomic_load(&never_calls) == 0);
  if (atomic_load(&never_frees) != 0)
    FAIL("%s: user_data_free ran for a rejected connection (its user_data stays the host's)",
         mode);
  lsn_free(&S->s);
  free(S);
}

int main(int argc, char **argv) {
  watchdog(60);
  const char *only = argc > 1 ? argv[1] : NULL;
  if (!only || strcmp(only, "immediate") == 0) run_mode(0);
  if (!only || strcmp(only, "dispatcher") == 0) run_mode(1);
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(atomic_load(&never_calls) == 0 && atomic_load(&never_frees) == 0);
  return 0;
}
