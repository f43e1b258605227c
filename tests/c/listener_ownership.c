/* Who owns an accepted connection: netev, until its TERMINATE callback
 * returns (the handle works inside every callback, then is invalid), unless
 * the host retained it, in which case it stays valid, properties readable,
 * until the host's release. Releasing without a reference is refused. */
#include "common_listener.h"

static lsn_server sa; /* not retained */
static lsn_server sb; /* retained in on_connection (lsn_conn_cb does it) */
static lsn_server sc; /* retained in on_connection, released in on_data */

typedef struct seen {
  netev_status data_closed;  /* netev_connection_closed inside on_data */
  netev_status data_release; /* netev_connection_release inside on_data */
  netev_status term_closed;  /* netev_connection_closed inside on_terminate */
  bool term_closed_value;
  netev_status term_listener;
  netev_listener term_listener_value;
} seen;
static seen seen_a = {99, 99, 99, false, 99, 0}, seen_b = {99, 99, 99, false, 99, 0},
            seen_c = {99, 99, 99, false, 99, 0};

static void own_cb(netev_connection c, const netev_event *e, void *ud) {
  lsn_conn *lc = ud;
  seen *w = lc->srv == &sa ? &seen_a : lc->srv == &sb ? &seen_b : &seen_c;
  if (e->type == NETEV_EVENT_DATA && w->data_closed == 99) {
    bool closed = true;
    w->data_closed = netev_connection_closed(c, &closed);
    if (w->data_closed == NETEV_OK && closed) w->data_closed = NETEV_ERR_INTERNAL;
    if (lc->srv == &sa || lc->srv == &sc) w->data_release = netev_connection_release(c);
  }
  if (e->type == NETEV_EVENT_TERMINATE) {
    w->term_closed = netev_connection_closed(c, &w->term_closed_value);
    w->term_listener = netev_connection_listener(c, &w->term_listener_value);
  }
  lsn_conn_cb(c, e, ud); /* records, echoes; signals TERMINATE last */
}

static bool own_accept(netev_listener l, const netev_event *e, void *ud,
                       netev_connection_options *o) {
  if (!lsn_accept(l, e, ud, o)) return false;
  rec_set_all(o, o->user_data, own_cb);
  return true;
}

static netev_listener open_server(lsn_server *s, uint16_t *port) {
  netev_listener_options o;
  lsn_options(s, &o);
  o.on_connection = own_accept;
  o.bind_address = "127.0.0.1";
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  pthread_mutex_lock(&s->mu);
  s->listener = l;
  pthread_mutex_unlock(&s->mu);
  CHECK_OK(netev_listener_port(l, port));
  return l;
}

static netev_connection gone_handle;
static int bad_status_while_polling;
static int handle_gone(void *arg) {
  (void)arg;
  bool closed;
  netev_status st = netev_connection_closed(gone_handle, &closed);
  if (st != NETEV_OK && st != NETEV_ERR_INVALID_HANDLE) bad_status_while_polling++;
  return st == NETEV_ERR_INVALID_HANDLE;
}

int main(void) {
  watchdog(60);
  lsn_init(&sa);
  lsn_init(&sb);
  sb.retain = 1;
  uint16_t pa, pb;
  netev_listener la = open_server(&sa, &pa);
  netev_listener lb = open_server(&sb, &pb);

  /* Not retained: valid in its callbacks, invalid once TERMINATE returned. */
  recorder r;
  rec_init(&r);
  netev_connection c = client_open("127.0.0.1", pa, &r);
  client_echo_round(c, &r, "owned by netev");
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  CHECK(lsn_wait(&sa, lsn_pred_conn_terminates, 1, 10));
  lsn_conn *a = lsn_conn_at(&sa, 0, 1);
  CHECK_SEQUENCE(&a->r, "connection data* end close terminate");
  CHECK_STATUS(seen_a.data_closed, NETEV_OK);
  if (seen_a.data_release != NETEV_ERR_INVALID_HANDLE)
    FAIL("release of a non-retained accepted connection (no reference): %s, expected "
         "NETEV_ERR_INVALID_HANDLE",
         netev_status_name(seen_a.data_release));
  CHECK_STATUS(seen_a.term_closed, NETEV_OK);
  CHECK(seen_a.term_closed_value);
  CHECK_STATUS(seen_a.term_listener, NETEV_OK);
  CHECK(seen_a.term_listener_value == la);
  /* The release inside on_data changed nothing: the echo came back whole. */
  CHECK(a->r.data_len == strlen("owned by netev"));
  gone_handle = a->conn;
  if (!poll_until(handle_gone, NULL, 5))
    FAIL("an accepted connection's handle is still valid 5 s after its TERMINATE");
  CHECK(bad_status_while_polling == 0);
  bool closed;
  uint16_t port;
  CHECK_STATUS(netev_connection_closed(a->conn, &closed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_port(a->conn, &port), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_release(a->conn), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_retain(a->conn), NETEV_ERR_INVALID_HANDLE);

  /* Retained in on_connection: valid after TERMINATE until released. */
  rec_init(&r);
  c = client_open("127.0.0.1", pb, &r);
  client_echo_round(c, &r, "kept by the host");
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  CHECK(lsn_wait(&sb, lsn_pred_conn_terminates, 1, 10));
  lsn_conn *b = lsn_conn_at(&sb, 0, 1);
  CHECK_SEQUENCE(&b->r, "connection data* end close terminate");
  CHECK_STATUS(seen_b.data_closed, NETEV_OK);
  CHECK_STATUS(seen_b.term_closed, NETEV_OK);
  /* It stays valid: watch it for a while after TERMINATE returned. */
  gone_handle = b->conn;
  if (poll_until(handle_gone, NULL, 0.3))
    FAIL("a retained accepted connection's handle died at TERMINATE");
  CHECK(bad_status_while_polling == 0);
  closed = false;
  CHECK_OK(netev_connection_closed(b->conn, &closed));
  CHECK(closed);
  char addr[64];
  size_t need = 0;
  CHECK_OK(netev_connection_address(b->conn, addr, sizeof addr, &need));
  CHECK(strcmp(addr, "127.0.0.1") == 0 && need == strlen("127.0.0.1"));
  CHECK_OK(netev_connection_port(b->conn, &port));
  CHECK(port == b->port);
  netev_listener owner = 0;
  CHECK_OK(netev_connection_listener(b->conn, &owner));
  CHECK(owner == lb);
  void *ud = NULL;
  CHECK_OK(netev_connection_user_data(b->conn, &ud));
  CHECK(ud == b);
  size_t nerr = 99;
  CHECK_OK(netev_connection_error_count(b->conn, &nerr));
  CHECK(nerr == 0);
  CHECK_STATUS(netev_connection_send(b->conn, "late", 4), NETEV_ERR_CLOSED);
  CHECK_OK(netev_connection_close(b->conn)); /* harmless once ended */
  /* A second reference, then two releases: valid until the last. */
  CHECK_OK(netev_connection_retain(b->conn));
  CHECK_OK(netev_connection_release(b->conn));
  CHECK_OK(netev_connection_closed(b->conn, &closed));
  CHECK_OK(netev_connection_release(b->conn));
  CHECK_STATUS(netev_connection_closed(b->conn, &closed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_release(b->conn), NETEV_ERR_INVALID_HANDLE);

  /* Retained, then released before its end: the reference goes back to
   * netev and the connection carries on to its normal end. */
  lsn_init(&sc);
  sc.retain = 1;
  uint16_t pc;
  netev_listener lc = open_server(&sc, &pc);
  rec_init(&r);
  c = client_open("127.0.0.1", pc, &r);
  client_echo_round(c, &r, "given back early");
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  CHECK(lsn_wait(&sc, lsn_pred_conn_terminates, 1, 10));
  lsn_conn *cc = lsn_conn_at(&sc, 0, 1);
  CHECK_SEQUENCE(&cc->r, "connection data* end close terminate");
  CHECK_STATUS(seen_c.data_release, NETEV_OK);
  CHECK(cc->r.data_len == strlen("given back early"));
  gone_handle = cc->conn;
  if (!poll_until(handle_gone, NULL, 5))
    FAIL("a connection released before its end is still valid 5 s after its TERMINATE");
  CHECK_STATUS(netev_connection_release(cc->conn), NETEV_ERR_INVALID_HANDLE);
  lsn_check_clean(&sc);
  CHECK_OK(netev_listener_release(lc));

  /* Nothing more happened on either side. */
  CHECK(lsn_get(&sa, &sa.conn_terminates) == 1 && lsn_get(&sb, &sb.conn_terminates) == 1);
  lsn_check_clean(&sa);
  lsn_check_clean(&sb);
  CHECK_OK(netev_listener_release(la));
  CHECK_OK(netev_listener_release(lb));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&sa, &sa.terminates) == 1 && lsn_get(&sb, &sb.terminates) == 1);
  lsn_free(&sa);
  lsn_free(&sb);
  lsn_free(&sc);
  return 0;
}
