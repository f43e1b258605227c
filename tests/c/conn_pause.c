/* pause and resume (issue 12): receive-side flow control.
 *
 * 1. Paused in the CONNECTION callback, against a peer flooding 8 MiB: no
 *    DATA and no byte read (stats) while paused; after resume every
 *    byte arrives in order, then END, CLOSE, TERMINATE.
 * 2. Paused from inside a DATA callback: no DATA after that callback for
 *    the window, paused() says so, END is held back; resume delivers the
 *    rest, then END. pause and resume are idempotent.
 * 3. The same with a dispatcher, on the host's thread: the dispatcher runs
 *    no DATA while paused.
 * 4. Bad handles. */
#include "common_a.h"

#define FLOOD (8u << 20)

typedef struct {
  recorder r;
  size_t pause_at; /* pause in the DATA callback once this many bytes arrived */
  int pause_on_connection;
  int paused_in_cb;
} pauser;

static void pause_cb(netev_connection c, const netev_event *e, void *ud) {
  pauser *p = ud;
  rec_event(&p->r, e);
  if (e->type == NETEV_EVENT_CONNECTION && p->pause_on_connection) CHECK_OK(netev_connection_pause(c));
  if (e->type == NETEV_EVENT_DATA && !p->paused_in_cb && p->r.data_len >= p->pause_at) {
    p->paused_in_cb = 1;
    CHECK_OK(netev_connection_pause(c));
    CHECK_OK(netev_connection_pause(c)); /* idempotent */
  }
  rec_done(&p->r);
}

static size_t data_len(recorder *r) {
  pthread_mutex_lock(&r->mu);
  size_t n = r->data_len;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static uint64_t stat_received(netev_connection c) {
  netev_connection_stats s;
  CHECK_OK(netev_connection_stats_get(c, &s));
  return s.bytes_received;
}

/* Nothing more arrives within `seconds`: the bounded window a pause is
 * checked over (an absence has no event to wait for). */
static void check_quiet(netev_connection c, recorder *r, double seconds) {
  size_t before = data_len(r);
  uint64_t counted = stat_received(c);
  double end = now_seconds() + seconds;
  while (now_seconds() < end) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (data_len(r) != before) FAIL("DATA arrived while paused (%zu -> %zu bytes)", before, data_len(r));
    if (stat_received(c) != counted) FAIL("netev read while paused");
  }
}

static void flood_paused_from_open(void) {
  TEST_STAGE = "paused from open";
  peer p;
  peer_start(&p, PEER_FLOOD, FLOOD);
  pauser x;
  memset(&x, 0, sizeof x);
  rec_init(&x.r);
  x.pause_at = SIZE_MAX;
  x.pause_on_connection = 1; /* before any byte can be read */
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &x.r, pause_cb);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&x.r, NETEV_EVENT_CONNECTION, 10));
  bool paused = false;
  CHECK_OK(netev_connection_paused(c, &paused));
  CHECK(paused);
  check_quiet(c, &x.r, 0.4);
  CHECK(stat_received(c) == 0);
  CHECK_OK(netev_connection_resume(c));
  CHECK_OK(netev_connection_resume(c));
  CHECK_OK(netev_connection_paused(c, &paused));
  CHECK(!paused);
  if (!rec_wait_terminated(&x.r, 30)) FAIL("no TERMINATE after resume (%zu bytes)", data_len(&x.r));
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(x.r.data_len == FLOOD && is_pattern(x.r.data, FLOOD, 0));
  netev_connection_stats s;
  CHECK_OK(netev_connection_stats_get(c, &s));
  CHECK(s.bytes_received == FLOOD);
  CHECK(s.data_events == (uint64_t)rec_count(&x.r, NETEV_EVENT_DATA));
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&x.r);
}

/* Paused in a DATA callback; END waits for the resume. */
static void paused_in_callback(netev_dispatcher d) {
  TEST_STAGE = d ? "paused in a callback, dispatcher" : "paused in a callback";
  peer p;
  size_t total = d ? (1u << 20) : (3u << 20);
  peer_start(&p, PEER_FLOOD, total);
  pauser x;
  memset(&x, 0, sizeof x);
  rec_init(&x.r);
  x.pause_at = 1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &x.r, pause_cb);
  o.dispatcher = d;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  double end = now_seconds() + 10 * test_time_factor();
  while (!x.paused_in_cb) {
    if (now_seconds() > end) FAIL("no DATA");
    if (d) CHECK_OK(netev_dispatcher_run(d, 0.02, NULL));
    else rec_wait_bytes(&x.r, 1, 0.02);
  }
  size_t at_pause = data_len(&x.r);
  CHECK(at_pause < total);
  if (d) {
    /* The dispatcher runs what is ready; no DATA is among it. */
    double quiet = now_seconds() + 0.4;
    while (now_seconds() < quiet) CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
    CHECK(data_len(&x.r) == at_pause);
  } else {
    check_quiet(c, &x.r, 0.4);
  }
  CHECK(rec_count(&x.r, NETEV_EVENT_END) == 0);
  bool paused = false;
  CHECK_OK(netev_connection_paused(c, &paused));
  CHECK(paused);
  CHECK_OK(netev_connection_resume(c));
  end = now_seconds() + 30 * test_time_factor();
  while (!rec_wait_terminated(&x.r, d ? 0 : 0.05)) {
    if (now_seconds() > end) FAIL("no TERMINATE after resume (%zu of %zu bytes)", data_len(&x.r), total);
    if (d) CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(x.r.data_len == total && is_pattern(x.r.data, total, 0));
  CHECK(x.r.overlaps == 0 && x.r.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&x.r);
}

int main(void) {
  watchdog_staged("conn_pause", 120);
  flood_paused_from_open();
  paused_in_callback(0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  paused_in_callback(d);
  CHECK_OK(netev_dispatcher_release(d));

  TEST_STAGE = "bad handles";
  bool b;
  CHECK_STATUS(netev_connection_pause(0), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_resume(0xdeadbeef12345ULL), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_paused(0, &b), NETEV_ERR_INVALID_HANDLE);
  CHECK_OK(netev_runtime_shutdown(5));
  printf("conn_pause: ok\n");
  return 0;
}
