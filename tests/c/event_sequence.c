/* The exact event sequence of a client connection, the fields every event
 * carries, user_data_free, and every connection property, on a clean run:
 * - to an echo peer, after send + shutdown: "connection data* end close terminate";
 * - to a peer that closes at once: "connection end close terminate". */
#include "common_a.h"

/* Checks netev_connection_address for `conn` opened with `given`. */
static void check_address(netev_connection conn, const char *given) {
  size_t len = strlen(given);
  size_t needed = 12345;
  /* capacity 0: buf may be NULL, only the length is reported */
  CHECK_OK(netev_connection_address(conn, NULL, 0, &needed));
  CHECK(needed == len);
  /* capacity 1: "" */
  char one[4] = {'x', 'y', 'z', 'w'};
  needed = 0;
  CHECK_OK(netev_connection_address(conn, one, 1, &needed));
  CHECK(one[0] == 0);
  CHECK(one[1] == 'y'); /* nothing written past the capacity */
  CHECK(needed == len);
  /* too small: cut and NUL-terminated */
  char small[6];
  memset(small, 'x', sizeof small);
  needed = 0;
  CHECK_OK(netev_connection_address(conn, small, 5, &needed));
  CHECK(needed == len);
  CHECK(strlen(small) == 4);
  CHECK(memcmp(small, given, 4) == 0);
  CHECK(small[5] == 'x');
  /* exactly the length: still cut by one, to leave room for the NUL */
  char *exact = malloc(len + 1);
  CHECK(exact != NULL);
  memset(exact, 'x', len + 1);
  CHECK_OK(netev_connection_address(conn, exact, len, &needed));
  CHECK(needed == len);
  CHECK(strlen(exact) == len - 1);
  free(exact);
  /* big enough */
  char full[64];
  memset(full, 'x', sizeof full);
  needed = 0;
  CHECK_OK(netev_connection_address(conn, full, sizeof full, &needed));
  CHECK(needed == len);
  CHECK(strcmp(full, given) == 0);
}

static void check_props(netev_connection conn, const char *address, uint16_t port,
                        bool no_delay, void *user_data) {
  check_address(conn, address);
  uint16_t got_port = 0;
  CHECK_OK(netev_connection_port(conn, &got_port));
  CHECK(got_port == port);
  bool nd = !no_delay;
  CHECK_OK(netev_connection_no_delay(conn, &nd));
  CHECK(nd == no_delay);
  netev_listener l = 99;
  CHECK_OK(netev_connection_listener(conn, &l));
  CHECK(l == 0);
  void *ud = NULL;
  CHECK_OK(netev_connection_user_data(conn, &ud));
  CHECK(ud == user_data);
}

static size_t error_count(netev_connection conn) {
  size_t n = 999;
  CHECK_OK(netev_connection_error_count(conn, &n));
  return n;
}

static bool is_closed(netev_connection conn) {
  bool b = false;
  CHECK_OK(netev_connection_closed(conn, &b));
  return b;
}

/* Echo peer: send, receive it back, shutdown, full sequence. */
static void echo_case(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  x.check_data_null = 1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.no_delay = true;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(c != 0);
  /* the host's option struct is copied: changing it now changes nothing */
  o.no_delay = false;
  o.user_data = NULL;

  check_props(c, "127.0.0.1", p.port, true, &x);
  CHECK(!is_closed(c));

  unsigned char msg[3000];
  fill_pattern(msg, sizeof msg, 0);
  CHECK_OK(netev_connection_send(c, msg, sizeof msg));
  size_t buffered = 999999;
  CHECK_OK(netev_connection_buffered_amount(c, &buffered));
  CHECK(buffered <= sizeof msg);

  CHECK(rec_wait_bytes(&x.r, sizeof msg, 10));
  CHECK(x.r.data_len == sizeof msg);
  CHECK(is_pattern(x.r.data, x.r.data_len, 0));
  /* every byte came back, so every byte left the queue */
  CHECK_OK(netev_connection_buffered_amount(c, &buffered));
  CHECK(buffered == 0);
  CHECK(!is_closed(c));
  CHECK(rec_count(&x.r, NETEV_EVENT_CONNECTION) == 1);
  CHECK(XREC_GET(&x, seen_conn) == c);

  CHECK_OK(netev_connection_shutdown(c));
  CHECK(is_closed(c));
  /* a second shutdown is harmless: OK, or CLOSED if the peer's answer to
   * the first already ended the connection */
  netev_status again = netev_connection_shutdown(c);
  CHECK(again == NETEV_OK || again == NETEV_ERR_CLOSED);
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(rec_count(&x.r, NETEV_EVENT_TERMINATE) == 1);
  CHECK_XREC_CLEAN(&x);

  /* wait returns at once on an ended connection */
  double t0 = now_seconds();
  CHECK_OK(netev_connection_wait(c, 5));
  CHECK_OK(netev_connection_wait(c, 0));
  CHECK(now_seconds() - t0 < 1);

  /* properties stay readable after the end, until release */
  check_props(c, "127.0.0.1", p.port, true, &x);
  CHECK(is_closed(c));
  CHECK_OK(netev_connection_buffered_amount(c, &buffered));
  CHECK(buffered == 0);
  /* a refused call is listed too: the second shutdown, if it was refused */
  CHECK(error_count(c) == (again == NETEV_ERR_CLOSED ? 1u : 0u));
  netev_error_info info;
  CHECK_STATUS(netev_connection_error_at(c, error_count(c), &info), NETEV_ERR_INVALID_ARGUMENT);

  CHECK_OK(netev_connection_release(c));
  CHECK(XREC_GET(&x, free_calls) == 1);
  CHECK(XREC_GET(&x, free_early) == 0);
  CHECK(XREC_GET(&x, r.total) == XREC_GET(&x, r.n));
  peer_stop(&p);
  /* nothing came after TERMINATE, even after the release */
  CHECK_XREC_CLEAN(&x);
  CHECK(XREC_GET(&x, free_calls) == 1);
  xrec_free_fields(&x);
}

/* A peer that closes at once: END, our side shuts, CLOSE. */
static void peer_close_case(void) {
  peer p;
  peer_start(&p, PEER_CLOSE, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  x.check_data_null = 1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("localhost", p.port, &o, &c));
  CHECK(c != 0);
  check_props(c, "localhost", p.port, false, &x);
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_SEQUENCE(&x.r, "connection end close terminate");
  CHECK_XREC_CLEAN(&x);
  CHECK(XREC_GET(&x, seen_conn) == c);
  CHECK(is_closed(c));
  check_props(c, "localhost", p.port, false, &x);
  size_t buffered = 1;
  CHECK_OK(netev_connection_buffered_amount(c, &buffered));
  CHECK(buffered == 0);
  CHECK(error_count(c) == 0);
  CHECK_OK(netev_connection_wait(c, 5));
  CHECK_OK(netev_connection_release(c));
  CHECK(XREC_GET(&x, free_calls) == 1);
  CHECK(XREC_GET(&x, free_early) == 0);
  peer_stop(&p);
  xrec_free_fields(&x);
}

/* Only some slots set: the others are simply not delivered; NULL options
 * means the defaults. */
static void partial_slots_case(void) {
  peer p;
  peer_start(&p, PEER_CLOSE, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_terminate = rec_callback;
  o.on_end = rec_callback;
  o.user_data = &r;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  REC_WAIT_TERMINATED_OR_FAIL(&r, 10);
  CHECK_SEQUENCE(&r, "end terminate");
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);

  peer_start(&p, PEER_CLOSE, 0);
  netev_connection d = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, NULL, &d));
  CHECK_OK(netev_connection_wait(d, 10));
  CHECK(is_closed(d));
  bool nd = true;
  CHECK_OK(netev_connection_no_delay(d, &nd));
  CHECK(!nd);
  void *ud = &nd;
  CHECK_OK(netev_connection_user_data(d, &ud));
  CHECK(ud == NULL);
  CHECK_OK(netev_connection_release(d));
  peer_stop(&p);
}

int main(void) {
  watchdog(60);
  echo_case();
  peer_close_case();
  partial_slots_case();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
