/* Timeouts and socket options: idle_timeout ends a quiet connection with
 * ERROR(NETEV_ERR_TIMEOUT) then TERMINATE; traffic keeps it alive; keepalive
 * and no_delay leave a working connection working. */
#include "common_b.h"

typedef struct timed {
  recorder rec;
  double t_connection, t_error;
  netev_event error_event; /* copy of the ERROR event (message not kept) */
} timed;

static void timed_cb(netev_connection c, const netev_event *e, void *ud) {
  timed *t = ud;
  /* Before rec_event, so that a waiter that sees the event sees these too. */
  if (e->type == NETEV_EVENT_CONNECTION) t->t_connection = now_seconds();
  if (e->type == NETEV_EVENT_ERROR) {
    t->t_error = now_seconds();
    t->error_event = *e;
    CHECK(e->message != NULL && e->message[0] != 0);
    t->error_event.message = NULL;
  }
  rec_callback(c, e, &t->rec);
}

static void test_idle_timeout_fires(void) {
  peer p;
  peer_start(&p, PEER_HOLD, 0);
  timed t;
  memset(&t, 0, sizeof t);
  rec_init(&t.rec);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &t.rec, timed_cb);
  o.user_data = &t;
  o.idle_timeout = 0.3;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_terminated(&t.rec, 15));
  CHECK_SEQUENCE(&t.rec, "connection error terminate");
  CHECK(t.rec.error == NETEV_ERR_TIMEOUT);
  CHECK(t.error_event.error == NETEV_ERR_TIMEOUT);
  CHECK(t.error_event.connection == c);
  CHECK(strcmp(t.error_event.ip, "127.0.0.1") == 0);
  CHECK(t.error_event.port == p.port);
  double after = t.t_error - t.t_connection;
  if (!(after >= 0.25 && after < 10)) FAIL("idle timeout fired %.3f s after CONNECTION, expected about 0.3", after);
  CHECK(has_error_entry(c, NETEV_ERR_TIMEOUT));
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);
  CHECK(t.rec.overlaps == 0 && t.rec.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&t.rec);
}

/* Traffic every 0.2 s for 1.6 s keeps an idle_timeout of 1 s from firing. */
static void test_traffic_keeps_alive(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.idle_timeout = 1.0;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  for (size_t i = 1; i <= 8; i++) {
    pause_seconds(0.2); /* pacing: the gaps are what is tested */
    CHECK_OK(netev_connection_send(c, "k", 1));
    CHECK(rec_wait_bytes(&r, i, 10));
  }
  CHECK(rec_count(&r, NETEV_EVENT_ERROR) == 0);
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == 8 && memcmp(r.data, "kkkkkkkk", 8) == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

static void test_keepalive_no_delay(int set) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  if (set) {
    o.keepalive = 1.0;
    o.no_delay = true;
  }
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  bool nd = !set;
  CHECK_OK(netev_connection_no_delay(c, &nd));
  CHECK(nd == (set != 0));
  static const char msg[] = "round trip with keepalive and no_delay";
  CHECK_OK(netev_connection_send(c, msg, sizeof msg));
  CHECK(rec_wait_bytes(&r, sizeof msg, 10));
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == sizeof msg && memcmp(r.data, msg, sizeof msg) == 0);
  CHECK_OK(netev_connection_no_delay(c, &nd)); /* still readable after the end */
  CHECK(nd == (set != 0));
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

/* Bad values are refused by open, and no callback fires. */
static void test_bad_values(void) {
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  netev_connection c = 0;
  o.idle_timeout = -1;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &o, &c), NETEV_ERR_INVALID_ARGUMENT);
  o.idle_timeout = 0;
  o.keepalive = -0.5;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &o, &c), NETEV_ERR_INVALID_ARGUMENT);
  CHECK(r.total == 0);
  rec_free(&r);
}

int main(void) {
  watchdog(60);
  test_idle_timeout_fires();
  test_traffic_keeps_alive();
  test_keepalive_no_delay(1);
  test_keepalive_no_delay(0);
  test_bad_values();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
