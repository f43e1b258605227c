/* netev called from inside its own callbacks. Immediate mode (netev's I/O
 * threads): send and shutdown drive an echo round trip, a second connection
 * is opened, close and release work from on_data, and the blocking calls
 * (wait, runtime shutdown) answer NETEV_ERR_WOULD_DEADLOCK instead of
 * hanging, or NETEV_OK when what they wait for already holds. With a
 * dispatcher: netev_dispatcher_run and wait inside its own callbacks give
 * NETEV_ERR_WOULD_DEADLOCK. Statuses are recorded in callbacks and checked
 * in main. */
#include "common_a.h"

#define UNSET (-1)

/* A status seen inside a callback, checked in main. */
#define EXPECT_ST(var, want)                                                   \
  do {                                                                         \
    if ((var) != (int)(want))                                                  \
      FAIL("inside a callback: %s gave %s, expected %s", #var,                 \
           (var) == UNSET ? "(not called)" : netev_status_name(var),          \
           netev_status_name(want));                                           \
  } while (0)

/* ---- A: an echo round trip driven by callbacks, a second open ---------- */

static int a_wait_in_connection = UNSET;
static int a_wait0_in_connection = UNSET;
static int a_runtime_shutdown = UNSET;
static int a_send_ping = UNSET;
static int a_open_second = UNSET;
static int a_send_pong = UNSET;
static int a_shutdown = UNSET;
static int a_wait_after_shutdown = UNSET;
static int a_send_after_shutdown = UNSET;
static double a_wait_took = -1;
static netev_connection a_second = 0;
static uint16_t a_second_port = 0;
static xrec a2; /* the second connection's recorder */

static void a_on_connection(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  double t0 = now_seconds();
  a_wait_in_connection = netev_connection_wait(c, 1);
  a_wait_took = now_seconds() - t0;
  a_wait0_in_connection = netev_connection_wait(c, 0);
  a_runtime_shutdown = netev_runtime_shutdown(1);
  a_send_ping = netev_connection_send(c, "ping", 4);
  netev_connection_options o;
  netev_connection_options_init(&o);
  xrec_set_all(&o, &a2);
  a_open_second = netev_connection_open("127.0.0.1", a_second_port, &o, &a_second);
  rec_done(&x->r);
}

static void a_on_data(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  pthread_mutex_lock(&x->r.mu);
  size_t got = x->r.data_len;
  pthread_mutex_unlock(&x->r.mu);
  if (got >= 4 && a_send_pong == UNSET) a_send_pong = netev_connection_send(c, "pong", 4);
  if (got >= 8 && a_shutdown == UNSET) {
    a_shutdown = netev_connection_shutdown(c);
    /* what wait waits for (shutdown was called) holds already: no deadlock */
    a_wait_after_shutdown = netev_connection_wait(c, 1);
    a_send_after_shutdown = netev_connection_send(c, "late", 4);
  }
  rec_done(&x->r);
}

static void part_a(void) {
  peer p1, p2;
  peer_start(&p1, PEER_ECHO, 0);
  peer_start(&p2, PEER_ECHO, 0);
  a_second_port = p2.port;
  xrec x;
  xrec_init(&x);
  xrec_init(&a2);
  x.want_ip = a2.want_ip = "127.0.0.1";
  x.want_port = p1.port;
  a2.want_port = p2.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.on_connection = a_on_connection;
  o.on_data = a_on_data;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p1.port, &o, &c));
  /* wait ends when a callback calls shutdown */
  CHECK_OK(netev_connection_wait(c, 20));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK_XREC_CLEAN(&x);
  CHECK(x.r.data_len == 8 && memcmp(x.r.data, "pingpong", 8) == 0);
  EXPECT_ST(a_wait_in_connection, NETEV_ERR_WOULD_DEADLOCK);
  CHECK(a_wait_took < 0.5); /* refused at once, not after the timeout */
  /* timeout 0 only looks: either answer is fine, as long as it returns */
  if (a_wait0_in_connection != NETEV_ERR_TIMEOUT &&
      a_wait0_in_connection != NETEV_ERR_WOULD_DEADLOCK)
    EXPECT_ST(a_wait0_in_connection, NETEV_ERR_TIMEOUT);
  EXPECT_ST(a_runtime_shutdown, NETEV_ERR_WOULD_DEADLOCK);
  EXPECT_ST(a_send_ping, NETEV_OK);
  EXPECT_ST(a_send_pong, NETEV_OK);
  EXPECT_ST(a_shutdown, NETEV_OK);
  EXPECT_ST(a_wait_after_shutdown, NETEV_OK);
  EXPECT_ST(a_send_after_shutdown, NETEV_ERR_CLOSED);
  CHECK(xrec_wait_freed(&x, 5));
  CHECK_OK(netev_connection_release(c));

  /* the connection opened inside a callback works like any other */
  EXPECT_ST(a_open_second, NETEV_OK);
  CHECK(a_second != 0 && a_second != c);
  CHECK_OK(netev_connection_send(a_second, "second", 6));
  CHECK(rec_wait_bytes(&a2.r, 6, 10));
  CHECK_OK(netev_connection_shutdown(a_second));
  REC_WAIT_TERMINATED_OR_FAIL(&a2.r, 10);
  CHECK_SEQUENCE(&a2.r, "connection data* end close terminate");
  CHECK_XREC_CLEAN(&a2);
  CHECK(memcmp(a2.r.data, "second", 6) == 0);
  CHECK(XREC_GET(&a2, seen_conn) == a_second);
  CHECK(xrec_wait_freed(&a2, 5));
  CHECK_OK(netev_connection_release(a_second));
  peer_stop(&p1);
  peer_stop(&p2);
  xrec_free_fields(&x);
  xrec_free_fields(&a2);
}

/* ---- B: close from on_data ---------------------------------------------- */

static int b_close = UNSET;
static int b_close_again = UNSET;
static int b_send_after_close = UNSET;
static int b_shutdown_after_close = UNSET;
static int b_wait_after_close = UNSET;

static void b_on_data(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  if (b_close == UNSET) {
    b_close = netev_connection_close(c);
    b_close_again = netev_connection_close(c);
    b_send_after_close = netev_connection_send(c, "z", 1);
    b_shutdown_after_close = netev_connection_shutdown(c);
    b_wait_after_close = netev_connection_wait(c, 1);
  }
  rec_done(&x->r);
}

static void part_b(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.on_data = b_on_data;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "x", 1));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* close terminate");
  CHECK_XREC_CLEAN(&x);
  EXPECT_ST(b_close, NETEV_OK);
  EXPECT_ST(b_close_again, NETEV_OK);
  EXPECT_ST(b_send_after_close, NETEV_ERR_CLOSED);
  EXPECT_ST(b_shutdown_after_close, NETEV_ERR_CLOSED);
  /* after close, inside its own callback: the connection has not ended
   * yet, so WOULD_DEADLOCK; OK if closed counts as done. Never a hang. */
  if (b_wait_after_close != NETEV_OK)
    EXPECT_ST(b_wait_after_close, NETEV_ERR_WOULD_DEADLOCK);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK_OK(netev_connection_wait(c, 5));
  CHECK(xrec_wait_freed(&x, 5));
  CHECK_OK(netev_connection_release(c));
  CHECK(XREC_GET(&x, free_calls) == 1);
  peer_stop(&p);
  xrec_free_fields(&x);
}

/* ---- C: release from on_data -------------------------------------------- */

static int c_release = UNSET;
static int c_release_again = UNSET;
static int c_port_in_close = UNSET;
static int c_port_in_terminate = UNSET;
static uint16_t c_port_seen = 0;

static void c_on_data(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  if (c_release == UNSET) {
    c_release = netev_connection_release(c);
    c_release_again = netev_connection_release(c);
  }
  rec_done(&x->r);
}

static void c_on_close(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  uint16_t port = 0;
  c_port_in_close = netev_connection_port(c, &port);
  rec_done(&x->r);
}

static void c_on_terminate(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  /* the handle stays usable inside the last callbacks */
  c_port_in_terminate = netev_connection_port(c, &c_port_seen);
  rec_done(&x->r);
}

static void part_c(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.on_data = c_on_data;
  o.on_shutdown = c_on_close;
  o.on_terminate = c_on_terminate;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "y", 1));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK(xrec_wait_freed(&x, 5));
  CHECK_SEQUENCE(&x.r, "connection data* close terminate");
  CHECK(rec_count(&x.r, NETEV_EVENT_TERMINATE) == 1);
  CHECK_XREC_CLEAN(&x);
  EXPECT_ST(c_release, NETEV_OK);
  EXPECT_ST(c_release_again, NETEV_ERR_INVALID_HANDLE);
  EXPECT_ST(c_port_in_close, NETEV_OK);
  EXPECT_ST(c_port_in_terminate, NETEV_OK);
  CHECK(c_port_seen == p.port);
  /* released: once TERMINATE returned the handle is gone */
  CHECK(wait_handle_invalid(c, 5));
  CHECK_STATUS(netev_connection_release(c), NETEV_ERR_INVALID_HANDLE);
  CHECK(XREC_GET(&x, free_calls) == 1);
  CHECK(XREC_GET(&x, free_early) == 0);
  peer_stop(&p);
  CHECK_XREC_CLEAN(&x);
  xrec_free_fields(&x);
}

/* ---- D: with a dispatcher ----------------------------------------------- */

static netev_dispatcher d_disp = 0;
static int d_run_inside = UNSET;
static int d_wait_inside = UNSET;
static int d_wait_other_inside = UNSET;
static int d_runtime_shutdown = UNSET;
static int d_send = UNSET;
static int d_shutdown = UNSET;
static int d_wait_after_shutdown = UNSET;
static netev_connection d_other = 0;

static void d_on_connection(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  size_t ran = 77;
  d_run_inside = netev_dispatcher_run(d_disp, 0, &ran);
  d_wait_inside = netev_connection_wait(c, 1);
  /* another connection bound to the same dispatcher */
  d_wait_other_inside = netev_connection_wait(d_other, 1);
  d_runtime_shutdown = netev_runtime_shutdown(1);
  d_send = netev_connection_send(c, "hi", 2);
  rec_done(&x->r);
}

static void d_on_data(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  pthread_mutex_lock(&x->r.mu);
  size_t got = x->r.data_len;
  pthread_mutex_unlock(&x->r.mu);
  if (got >= 2 && d_shutdown == UNSET) {
    d_shutdown = netev_connection_shutdown(c);
    d_wait_after_shutdown = netev_connection_wait(c, 1);
  }
  rec_done(&x->r);
}

static void part_d(void) {
  peer p, hold;
  peer_start(&p, PEER_ECHO, 0);
  peer_start(&hold, PEER_HOLD, 0);
  CHECK_OK(netev_dispatcher_create(&d_disp));
  /* a second connection on the same dispatcher, kept open meanwhile */
  xrec other;
  xrec_init(&other);
  netev_connection_options oo;
  CHECK_OK(netev_connection_options_init(&oo));
  xrec_set_all(&oo, &other);
  oo.dispatcher = d_disp;
  CHECK_OK(netev_connection_open("127.0.0.1", hold.port, &oo, &d_other));

  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  x.r.check_thread = 1;
  x.r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.on_connection = d_on_connection;
  o.on_data = d_on_data;
  o.dispatcher = d_disp;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  /* the wait runs the dispatcher here until on_data calls shutdown */
  CHECK_OK(netev_connection_wait(c, 20));
  EXPECT_ST(d_shutdown, NETEV_OK);
  double end = now_seconds() + 10;
  while (!rec_pred_terminated(&x.r, 0) && now_seconds() < end)
    CHECK_OK(netev_dispatcher_run(d_disp, 0.1, NULL));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 0.1);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK_XREC_CLEAN(&x);
  CHECK(x.r.wrong_thread == 0);
  CHECK(memcmp(x.r.data, "hi", 2) == 0);
  EXPECT_ST(d_run_inside, NETEV_ERR_WOULD_DEADLOCK);
  EXPECT_ST(d_wait_inside, NETEV_ERR_WOULD_DEADLOCK);
  EXPECT_ST(d_wait_other_inside, NETEV_ERR_WOULD_DEADLOCK);
  EXPECT_ST(d_runtime_shutdown, NETEV_ERR_WOULD_DEADLOCK);
  EXPECT_ST(d_send, NETEV_OK);
  EXPECT_ST(d_wait_after_shutdown, NETEV_OK);
  CHECK(xrec_wait_freed(&x, 5));
  CHECK_OK(netev_connection_release(c));

  /* the other connection was left alone by all this */
  bool closed = true;
  CHECK_OK(netev_connection_closed(d_other, &closed));
  CHECK(!closed);
  /* Its CONNECTION may still be on its way (connecting is asynchronous):
   * dispatch until it ran, so the close below meets an established one. */
  double up = now_seconds() + 10 * test_time_factor();
  while (!rec_pred_type(&other.r, NETEV_EVENT_CONNECTION) && now_seconds() < up)
    CHECK_OK(netev_dispatcher_run(d_disp, 0.1, NULL));
  CHECK_OK(netev_connection_close(d_other));
  CHECK_OK(netev_connection_wait(d_other, 10));
  CHECK_SEQUENCE(&other.r, "connection close terminate");
  CHECK_OK(netev_connection_release(d_other));
  CHECK_OK(netev_dispatcher_release(d_disp));
  peer_stop(&p);
  peer_stop(&hold);
  xrec_free_fields(&x);
  xrec_free_fields(&other);
}

int main(void) {
  watchdog(60);
  part_a();
  part_b();
  part_c();
  part_d();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
