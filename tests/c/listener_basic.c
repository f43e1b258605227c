/* A netev listener as an echo server: port 0 gives a real port; the accept
 * event carries the peer's ip and port and the new handle, with options
 * pre-filled from connection_defaults; the accepted connection sees
 * "connection data* end close terminate" like a client; a NULL
 * on_connection accepts with the defaults; plain BSD clients round-trip
 * 1 MiB byte-exact. */
#include "common_listener.h"

static int marker; /* a distinctive connection_defaults.user_data */

/* connection_defaults callback of the second listener: records and echoes. */
static void echo_rec_cb(netev_connection c, const netev_event *e, void *ud) {
  recorder *r = ud;
  rec_event(r, e);
  if (e->type == NETEV_EVENT_DATA) CHECK_OK(netev_connection_send(c, e->data, e->data_len));
  if (r->conn == 0) r->conn = c;
  rec_done(r);
}

/* The first listener's on_connection: the options arrive pre-filled from
 * connection_defaults (user_data is checked by lsn_accept). */
static int prefill_bad;
static bool basic_accept(netev_listener l, const netev_event *e, void *ud,
                         netev_connection_options *o) {
  if (!o->no_delay || o->on_data != NULL || o->dispatcher != 0 || o->user_data != &marker)
    __atomic_add_fetch(&prefill_bad, 1, __ATOMIC_SEQ_CST);
  return lsn_accept(l, e, ud, o);
}

#define BIG (1u << 20)

typedef struct writer {
  int fd;
  int ok;
} writer;

static void *writer_main(void *arg) {
  writer *w = arg;
  unsigned char *buf = malloc(BIG);
  if (!buf) FAIL("out of memory");
  fill_pattern(buf, BIG, 0);
  w->ok = write_all(w->fd, buf, BIG) == 0 && shutdown(w->fd, SHUT_WR) == 0;
  free(buf);
  return NULL;
}

int main(void) {
  watchdog(60);
  lsn_server s;
  lsn_init(&s);
  s.want_user_data = &marker;
  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.user_data = &marker;
  defaults.no_delay = true;
  netev_listener_options o;
  lsn_options(&s, &o);
  o.bind_address = "127.0.0.1";
  o.connection_defaults = &defaults; /* copied by open */
  o.on_connection = basic_accept;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &o, &l));
  CHECK(l != 0);
  pthread_mutex_lock(&s.mu);
  s.listener = l;
  pthread_mutex_unlock(&s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(port != 0);

  /* A netev client: exact sequences on both sides. */
  recorder cr;
  rec_init(&cr);
  netev_connection c = client_open("127.0.0.1", port, &cr);
  client_echo_round(c, &cr, "hello, listener");
  netev_listener cl = 99;
  CHECK_OK(netev_connection_listener(c, &cl));
  CHECK(cl == 0);
  lsn_conn *lc = lsn_conn_at(&s, 0, 10);
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 1, 20));
  CHECK(rec_wait_terminated(&lc->r, 10));
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(lc->r.data_len == strlen("hello, listener"));
  CHECK(memcmp(lc->r.data, "hello, listener", lc->r.data_len) == 0);
  CHECK(strcmp(lc->ip, "127.0.0.1") == 0);
  CHECK(lc->port != 0 && lc->port != port);
  CHECK(lc->conn != 0 && lc->conn != c && lc->conn != l);
  if (lc->listener_prop != l)
    FAIL("netev_connection_listener(accepted) = %llu, expected %llu",
         (unsigned long long)lc->listener_prop, (unsigned long long)l);
  CHECK(strcmp(lc->address_prop, "127.0.0.1") == 0);
  if (lc->port_prop != lc->port)
    FAIL("accepted connection's port property %u, expected the remote port %u", lc->port_prop,
         lc->port);
  CHECK(__atomic_load_n(&prefill_bad, __ATOMIC_SEQ_CST) == 0);
  CHECK_OK(netev_connection_release(c));
  rec_free(&cr);

  /* A BSD client: the accept event's port is the client's local port. */
  int fd = bsd_connect("127.0.0.1", port);
  CHECK(fd >= 0);
  uint16_t local = bsd_local_port(fd);
  lsn_conn *lb = lsn_conn_at(&s, 1, 10);
  if (lb->port != local)
    FAIL("accept event port %u, the client's local port is %u", lb->port, local);
  CHECK(strcmp(lb->ip, "127.0.0.1") == 0);
  CHECK(write_all(fd, (const unsigned char *)"ping", 4) == 0);
  unsigned char got[4];
  CHECK(bsd_recv_exact(fd, got, 4, 10) == 0);
  CHECK(memcmp(got, "ping", 4) == 0);
  CHECK(shutdown(fd, SHUT_WR) == 0);
  CHECK(bsd_recv_end(fd, 10) == 0);
  close(fd);
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 2, 20));
  CHECK(rec_wait_terminated(&lb->r, 10));
  CHECK_SEQUENCE(&lb->r, "connection data* end close terminate");
  CHECK(lb->port_prop == local);

  /* 1 MiB byte-exact through a BSD client. */
  fd = bsd_connect("127.0.0.1", port);
  CHECK(fd >= 0);
  writer w = {fd, 0};
  pthread_t wt;
  CHECK(pthread_create(&wt, NULL, writer_main, &w) == 0);
  unsigned char *back = malloc(BIG + 1);
  CHECK(back != NULL);
  size_t have = 0;
  double end = now_seconds() + 30;
  for (;;) {
    CHECK(now_seconds() < end);
    struct pollfd p = {fd, POLLIN, 0};
    int k = poll(&p, 1, 1000);
    if (k < 0 && errno == EINTR) continue;
    CHECK(k >= 0);
    if (k == 0) continue;
    ssize_t n = recv(fd, back + have, BIG + 1 - have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) FAIL("recv: %s", strerror(errno));
    if (n == 0) break;
    have += (size_t)n;
    CHECK(have <= BIG);
  }
  pthread_join(wt, NULL);
  CHECK(w.ok);
  if (have != BIG) FAIL("1 MiB echo: got %zu bytes back", have);
  CHECK(is_pattern(back, BIG, 0));
  free(back);
  close(fd);
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 3, 20));
  lsn_conn *lbig = lsn_conn_at(&s, 2, 1);
  CHECK(rec_wait_terminated(&lbig->r, 10));
  CHECK_SEQUENCE(&lbig->r, "connection data* end close terminate");
  CHECK(lbig->r.data_len == BIG && is_pattern(lbig->r.data, BIG, 0));

  /* A second listener with on_connection NULL accepts with the defaults. */
  recorder sr;
  rec_init(&sr);
  netev_connection_options defaults2;
  CHECK_OK(netev_connection_options_init(&defaults2));
  rec_set_all(&defaults2, &sr, echo_rec_cb);
  netev_listener_options o2;
  CHECK_OK(netev_listener_options_init(&o2));
  o2.bind_address = "127.0.0.1";
  o2.connection_defaults = &defaults2;
  netev_listener l2 = 0;
  CHECK_OK(netev_listener_open(0, &o2, &l2));
  CHECK(l2 != 0 && l2 != l);
  uint16_t port2 = 0;
  CHECK_OK(netev_listener_port(l2, &port2));
  CHECK(port2 != 0 && port2 != port);
  recorder cr2;
  rec_init(&cr2);
  netev_connection c2 = client_open("127.0.0.1", port2, &cr2);
  client_echo_round(c2, &cr2, "defaults");
  CHECK(rec_wait_terminated(&sr, 20));
  CHECK_SEQUENCE(&sr, "connection data* end close terminate");
  CHECK(sr.data_len == 8 && memcmp(sr.data, "defaults", 8) == 0);
  CHECK(sr.overlaps == 0);
  CHECK_OK(netev_connection_release(c2));
  rec_free(&cr2);

  /* Listener bookkeeping: three accepts, no error, TERMINATE last. */
  lsn_check_clean(&s);
  CHECK(lsn_get(&s, &s.accepts) == 3);
  CHECK(lsn_get(&s, &s.errors) == 0);
  size_t nerr = 99;
  CHECK_OK(netev_listener_error_count(l, &nerr));
  CHECK(nerr == 0);
  CHECK_OK(netev_listener_release(l));
  CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
  CHECK_LSN_SEQUENCE(&s, "connection connection connection terminate");
  CHECK_OK(netev_listener_release(l2));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&s, &s.terminates) == 1);
  lsn_free(&s);
  rec_free(&sr);
  return 0;
}
