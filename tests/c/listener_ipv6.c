/* IPv6 and dual stack: a listener on ::1 serves a client to ::1 and shows
 * ip "::1"; a listener on all interfaces takes IPv4 peers (shown as
 * "127.0.0.1", never "::ffff:127.0.0.1") and IPv6 ones; a listener on
 * 127.0.0.1 is not reachable at ::1. Without an IPv6 loopback only the
 * IPv4 parts run. */
#include "common_listener.h"

/* One netev client round trip to ip:port; checks the accepted side's ip. */
static void round_trip(lsn_server *s, int index, const char *ip, uint16_t port,
                       const char *want_ip) {
  recorder r;
  rec_init(&r);
  netev_connection c = client_open(ip, port, &r);
  client_echo_round(c, &r, "over ip");
  lsn_conn *lc = lsn_conn_at(s, index, 10);
  CHECK(lsn_wait(s, lsn_pred_conn_terminates, index + 1, 10));
  CHECK(rec_wait_terminated(&lc->r, 10));
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  if (strcmp(lc->ip, want_ip) != 0)
    FAIL("client to %s: accept event ip \"%s\", expected \"%s\"", ip, lc->ip, want_ip);
  if (strcmp(lc->address_prop, want_ip) != 0)
    FAIL("client to %s: accepted connection's address \"%s\", expected \"%s\"", ip,
         lc->address_prop, want_ip);
  CHECK(lc->port != 0 && lc->port_prop == lc->port);
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
}

/* A BSD client to ip:port: the accept event shows want_ip and its local port. */
static void bsd_round_trip(lsn_server *s, int index, const char *ip, uint16_t port,
                           const char *want_ip) {
  int fd = bsd_connect(ip, port);
  if (fd < 0) FAIL("BSD connect to %s port %u: %s", ip, port, strerror(errno));
  uint16_t local = bsd_local_port(fd);
  CHECK(write_all(fd, (const unsigned char *)"v6", 2) == 0);
  unsigned char b[2];
  CHECK(bsd_recv_exact(fd, b, 2, 10) == 0 && memcmp(b, "v6", 2) == 0);
  CHECK(shutdown(fd, SHUT_WR) == 0);
  CHECK(bsd_recv_end(fd, 10) == 0);
  close(fd);
  lsn_conn *lc = lsn_conn_at(s, index, 10);
  CHECK(lsn_wait(s, lsn_pred_conn_terminates, index + 1, 10));
  if (strcmp(lc->ip, want_ip) != 0)
    FAIL("BSD client to %s: accept event ip \"%s\", expected \"%s\"", ip, lc->ip, want_ip);
  if (lc->port != local)
    FAIL("BSD client to %s: accept event port %u, its local port %u", ip, lc->port, local);
}

static void close_listener(lsn_server *s) {
  lsn_check_clean(s);
  CHECK(lsn_get(s, &s->errors) == 0);
  CHECK_OK(netev_listener_release(s->listener));
  CHECK(lsn_wait(s, lsn_pred_terminated, 0, 10));
}

int main(void) {
  watchdog(60);
  int v6 = ipv6_available();
  if (!v6) printf("skipping IPv6: no IPv6 loopback on this machine\n");

  /* Dual stack (or plain IPv4 without IPv6): an IPv4 peer is "127.0.0.1". */
  lsn_server dual;
  lsn_init(&dual);
  uint16_t dport = lsn_open(&dual, NULL);
  round_trip(&dual, 0, "127.0.0.1", dport, "127.0.0.1");
  bsd_round_trip(&dual, 1, "127.0.0.1", dport, "127.0.0.1");
  if (v6) {
    round_trip(&dual, 2, "::1", dport, "::1");
    bsd_round_trip(&dual, 3, "::1", dport, "::1");
  }
  CHECK(lsn_get(&dual, &dual.accepts) == (v6 ? 4 : 2));
  close_listener(&dual);

  if (v6) {
    /* Bound to ::1. */
    lsn_server s6;
    lsn_init(&s6);
    uint16_t port6 = lsn_open(&s6, "::1");
    round_trip(&s6, 0, "::1", port6, "::1");
    bsd_round_trip(&s6, 1, "::1", port6, "::1");
    CHECK(lsn_get(&s6, &s6.accepts) == 2);
    close_listener(&s6);

    /* Bound to 127.0.0.1: ::1 at that port is refused. */
    lsn_server s4;
    lsn_init(&s4);
    uint16_t port4 = lsn_open(&s4, "127.0.0.1");
    recorder r;
    rec_init(&r);
    netev_connection c = client_open("::1", port4, &r);
    CHECK(rec_wait_terminated(&r, 15));
    CHECK_SEQUENCE(&r, "error terminate");
    if (r.error != NETEV_ERR_CONNECTION_REFUSED)
      FAIL("client to ::1 of a 127.0.0.1 listener: %s, expected NETEV_ERR_CONNECTION_REFUSED",
           netev_status_name(r.error));
    CHECK_OK(netev_connection_release(c));
    rec_free(&r);
    round_trip(&s4, 0, "127.0.0.1", port4, "127.0.0.1");
    CHECK(lsn_get(&s4, &s4.accepts) == 1);
    close_listener(&s4);
    CHECK_OK(netev_runtime_shutdown(10));
    lsn_free(&s6);
    lsn_free(&s4);
  } else {
    CHECK_OK(netev_runtime_shutdown(10));
  }
  lsn_free(&dual);
  return 0;
}
