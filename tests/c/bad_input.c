/* Every bad input of API.md gives its exact status, never a crash: NULL
 * pointers, bad handles of every sort, bad values; the name functions for
 * every value; the last-error message; send after shutdown; the version.
 * A failed open leaves *out untouched and no callback ever fires. */
#include "common_a.h"

#include <math.h>

#define SENTINEL ((netev_connection)0x5e5e5e5e5e5e5e5eull)

static recorder never; /* callbacks of opens that must fail */
static netev_connection_options never_opts;

/* An open that must fail with `want`: *out untouched, a message set. */
#define CHECK_OPEN_FAILS(address, port, opts, want)                            \
  do {                                                                         \
    netev_connection out_ = SENTINEL;                                          \
    CHECK_STATUS(netev_connection_open((address), (port), (opts), &out_), (want)); \
    CHECK(out_ == SENTINEL);                                                   \
    CHECK(netev_last_error_message(NULL, 0) > 0);                              \
  } while (0)

static netev_connection_options opts_with(void) {
  netev_connection_options o = never_opts;
  return o;
}

static void names_and_version(void) {
  static const char *const status[16] = {
      "NETEV_OK",
      "NETEV_ERR_NULL_ARGUMENT",
      "NETEV_ERR_INVALID_ARGUMENT",
      "NETEV_ERR_INVALID_HANDLE",
      "NETEV_ERR_CLOSED",
      "NETEV_ERR_BUFFER_FULL",
      "NETEV_ERR_TIMEOUT",
      "NETEV_ERR_WOULD_DEADLOCK",
      "NETEV_ERR_CONNECTION_REFUSED",
      "NETEV_ERR_CONNECTION_RESET",
      "NETEV_ERR_HOST_NOT_FOUND",
      "NETEV_ERR_ADDRESS_IN_USE",
      "NETEV_ERR_PERMISSION_DENIED",
      "NETEV_ERR_IO",
      "NETEV_ERR_SHUTDOWN",
      "NETEV_ERR_INTERNAL",
  };
  for (int i = 0; i < 16; i++) {
    const char *n = netev_status_name(i);
    CHECK(n != NULL);
    if (strcmp(n, status[i]) != 0) FAIL("netev_status_name(%d) = \"%s\", expected \"%s\"", i, n, status[i]);
  }
  /* the enum constants have those numbers */
  CHECK(NETEV_OK == 0 && NETEV_ERR_NULL_ARGUMENT == 1 && NETEV_ERR_INVALID_ARGUMENT == 2);
  CHECK(NETEV_ERR_INVALID_HANDLE == 3 && NETEV_ERR_CLOSED == 4 && NETEV_ERR_BUFFER_FULL == 5);
  CHECK(NETEV_ERR_TIMEOUT == 6 && NETEV_ERR_WOULD_DEADLOCK == 7);
  CHECK(NETEV_ERR_CONNECTION_REFUSED == 8 && NETEV_ERR_CONNECTION_RESET == 9);
  CHECK(NETEV_ERR_HOST_NOT_FOUND == 10 && NETEV_ERR_ADDRESS_IN_USE == 11);
  CHECK(NETEV_ERR_PERMISSION_DENIED == 12 && NETEV_ERR_IO == 13);
  CHECK(NETEV_ERR_SHUTDOWN == 14 && NETEV_ERR_INTERNAL == 15);
  /* 16 came with TLS: a library's names are its own, whatever the header */
  CHECK(strcmp(netev_status_name(16), "NETEV_ERR_TLS") == 0);
#ifndef NETEV_TEST_RELEASED_HEADER
  CHECK(NETEV_ERR_TLS == 16);
#endif
  const int32_t unknown_status[] = {-1, 100, 1000, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof unknown_status / sizeof *unknown_status; i++) {
    const char *n = netev_status_name(unknown_status[i]);
    CHECK(n != NULL);
    if (strcmp(n, "NETEV_UNKNOWN_STATUS") != 0)
      FAIL("netev_status_name(%ld) = \"%s\"", (long)unknown_status[i], n);
  }

  static const char *const types[8] = {NULL,        "connection", "data", "error",
                                       "close",     "terminate",  "drain", "end"};
  for (int i = 1; i <= 7; i++) {
    const char *n = netev_event_type_name(i);
    CHECK(n != NULL);
    if (strcmp(n, types[i]) != 0) FAIL("netev_event_type_name(%d) = \"%s\"", i, n);
  }
  CHECK(NETEV_EVENT_CONNECTION == 1 && NETEV_EVENT_DATA == 2 && NETEV_EVENT_ERROR == 3);
  CHECK(NETEV_EVENT_CLOSE == 4 && NETEV_EVENT_TERMINATE == 5 && NETEV_EVENT_DRAIN == 6);
  CHECK(NETEV_EVENT_END == 7);
  const int32_t unknown_type[] = {0, 8, -1, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof unknown_type / sizeof *unknown_type; i++) {
    const char *n = netev_event_type_name(unknown_type[i]);
    CHECK(n != NULL);
    if (strcmp(n, "unknown") != 0)
      FAIL("netev_event_type_name(%ld) = \"%s\"", (long)unknown_type[i], n);
  }

  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", NETEV_VERSION_MAJOR, NETEV_VERSION_MINOR,
           NETEV_VERSION_PATCH);
  CHECK(netev_version() != NULL);
  if (strcmp(netev_version(), want) != 0)
    FAIL("netev_version() = \"%s\", expected \"%s\"", netev_version(), want);
}

/* The calling thread's last error, on a thread that never failed. */
static void *fresh_thread_last_error(void *arg) {
  size_t *n = arg;
  char buf[8] = "xxxxxxx";
  *n = netev_last_error_message(buf, sizeof buf);
  if (buf[0] != 0) *n = 999;
  return NULL;
}

static void last_error(void) {
  /* a real failure */
  CHECK_OPEN_FAILS("127.0.0.1", 0, NULL, NETEV_ERR_INVALID_ARGUMENT);
  size_t n = netev_last_error_message(NULL, 0);
  CHECK(n > 4);
  char *full = malloc(n + 1);
  CHECK(full != NULL);
  memset(full, 'x', n + 1);
  CHECK(netev_last_error_message(full, n + 1) == n);
  CHECK(strlen(full) == n);
  printf("last error after port 0: %s\n", full);
  /* capacity 0 with a real buffer: nothing written */
  char zero[2] = {'q', 'q'};
  CHECK(netev_last_error_message(zero, 0) == n);
  CHECK(zero[0] == 'q');
  /* capacity 1: "" */
  char one[2] = {'q', 'q'};
  CHECK(netev_last_error_message(one, 1) == n);
  CHECK(one[0] == 0 && one[1] == 'q');
  /* cut to fit */
  char five[6];
  memset(five, 'q', sizeof five);
  CHECK(netev_last_error_message(five, 5) == n);
  CHECK(strlen(five) == 4 && memcmp(five, full, 4) == 0 && five[5] == 'q');
  /* a successful call leaves it unchanged */
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  char again[512];
  CHECK(netev_last_error_message(again, sizeof again) == n);
  CHECK(strcmp(again, full) == 0);
  /* a new failure replaces it */
  CHECK_STATUS(netev_connection_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK(netev_last_error_message(again, sizeof again) > 0);
  CHECK(strcmp(again, full) != 0);
  free(full);
  /* per thread: a thread that never failed has none */
  pthread_t t;
  size_t fresh = 12345;
  CHECK(pthread_create(&t, NULL, fresh_thread_last_error, &fresh) == 0);
  pthread_join(t, NULL);
  CHECK(fresh == 0);
}

static void failed_opens(netev_dispatcher live_d, netev_connection live_c,
                         netev_dispatcher released_d) {
  netev_connection_options o = opts_with();
  CHECK_OPEN_FAILS(NULL, 80, &o, NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_connection_open("127.0.0.1", 80, &o, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_OPEN_FAILS("\xff\xfe", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OPEN_FAILS("127.0.0.\xc3", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OPEN_FAILS("", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OPEN_FAILS("127.0.0.1", 0, &o, NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OPEN_FAILS("127.0.0.1", 0, NULL, NETEV_ERR_INVALID_ARGUMENT);

  const double bad_seconds[] = {-1.0, -0.001, -INFINITY, NAN};
  for (size_t i = 0; i < sizeof bad_seconds / sizeof *bad_seconds; i++) {
    o = opts_with();
    o.connection_timeout = bad_seconds[i];
    CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
    o = opts_with();
    o.idle_timeout = bad_seconds[i];
    CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
    o = opts_with();
    o.keepalive = bad_seconds[i];
    CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
  }

  o = opts_with();
  o.size = 0;
  CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_ARGUMENT);
  o.size = 4;
  CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_ARGUMENT);

  const netev_dispatcher bad_d[] = {0xdeadbeefull, UINT64_MAX, live_c, released_d};
  for (size_t i = 0; i < sizeof bad_d / sizeof *bad_d; i++) {
    o = opts_with();
    o.dispatcher = bad_d[i];
    CHECK_OPEN_FAILS("127.0.0.1", 80, &o, NETEV_ERR_INVALID_HANDLE);
  }
  (void)live_d;
}

/* Every connection function with a handle that is not a live connection. */
static void check_bad_conn_handle(netev_connection h) {
  const netev_status W = NETEV_ERR_INVALID_HANDLE;
  char buf[16];
  size_t needed = 0;
  uint16_t port;
  bool b;
  netev_listener l;
  void *ud;
  size_t n;
  netev_error_info info;
  CHECK_STATUS(netev_connection_send(h, "x", 1), W);
  CHECK_STATUS(netev_connection_send(h, NULL, 0), W);
  CHECK_STATUS(netev_connection_shutdown(h), W);
  CHECK_STATUS(netev_connection_wait(h, 0), W);
  CHECK_STATUS(netev_connection_wait(h, 0.01), W);
  CHECK_STATUS(netev_connection_close(h), W);
  CHECK_STATUS(netev_connection_retain(h), W);
  CHECK_STATUS(netev_connection_release(h), W);
  CHECK_STATUS(netev_connection_address(h, buf, sizeof buf, &needed), W);
  CHECK_STATUS(netev_connection_address(h, NULL, 0, &needed), W);
  CHECK_STATUS(netev_connection_port(h, &port), W);
  CHECK_STATUS(netev_connection_closed(h, &b), W);
  CHECK_STATUS(netev_connection_no_delay(h, &b), W);
  CHECK_STATUS(netev_connection_listener(h, &l), W);
  CHECK_STATUS(netev_connection_user_data(h, &ud), W);
  CHECK_STATUS(netev_connection_buffered_amount(h, &n), W);
  CHECK_STATUS(netev_connection_error_count(h, &n), W);
  CHECK_STATUS(netev_connection_error_at(h, 0, &info), W);
}

/* Every dispatcher function with a handle that is not a live dispatcher. */
static void check_bad_disp_handle(netev_dispatcher h) {
  const netev_status W = NETEV_ERR_INVALID_HANDLE;
  size_t ran = 7;
  int fd = -7;
  CHECK_STATUS(netev_dispatcher_run(h, 0, NULL), W);
  CHECK_STATUS(netev_dispatcher_run(h, 0.01, &ran), W);
  CHECK(ran == 7);
  CHECK_STATUS(netev_dispatcher_fd(h, &fd), W);
  CHECK(fd == -7);
  CHECK_STATUS(netev_dispatcher_release(h), W);
}

/* NULL for each required pointer of the functions taking a live connection. */
static void null_pointers(netev_connection c, netev_dispatcher d) {
  const netev_status W = NETEV_ERR_NULL_ARGUMENT;
  char buf[16];
  size_t needed = 0;
  CHECK_STATUS(netev_connection_options_init(NULL), W);
  CHECK_STATUS(netev_runtime_options_init(NULL), W);
  CHECK_STATUS(netev_connection_send(c, NULL, 5), W);
  CHECK_STATUS(netev_connection_address(c, NULL, 10, &needed), W);
  CHECK_STATUS(netev_connection_address(c, buf, sizeof buf, NULL), W);
  CHECK_STATUS(netev_connection_address(c, NULL, 0, NULL), W);
  CHECK_STATUS(netev_connection_port(c, NULL), W);
  CHECK_STATUS(netev_connection_closed(c, NULL), W);
  CHECK_STATUS(netev_connection_no_delay(c, NULL), W);
  CHECK_STATUS(netev_connection_listener(c, NULL), W);
  CHECK_STATUS(netev_connection_user_data(c, NULL), W);
  CHECK_STATUS(netev_connection_buffered_amount(c, NULL), W);
  CHECK_STATUS(netev_connection_error_count(c, NULL), W);
  CHECK_STATUS(netev_connection_error_at(c, 0, NULL), W);
  CHECK_STATUS(netev_dispatcher_create(NULL), W);
  CHECK_STATUS(netev_dispatcher_fd(d, NULL), W);
  CHECK_STATUS(netev_log_open(NULL), W);
  /* the optional ones */
  CHECK_OK(netev_connection_send(c, NULL, 0));
  CHECK_OK(netev_connection_address(c, NULL, 0, &needed));
  CHECK(needed == strlen("127.0.0.1"));
  CHECK_OK(netev_dispatcher_run(d, 0, NULL));
  /* none of these went to the connection's errors list */
  size_t n = 99;
  CHECK_OK(netev_connection_error_count(c, &n));
  CHECK(n == 0);
}

static void bad_values(netev_connection c, netev_dispatcher d) {
  const netev_status W = NETEV_ERR_INVALID_ARGUMENT;
  CHECK_STATUS(netev_connection_wait(c, NAN), W);
  CHECK_STATUS(netev_connection_wait(c, -NAN), W);
  size_t ran = 7;
  CHECK_STATUS(netev_dispatcher_run(d, NAN, &ran), W);
  CHECK(ran == 7);
  CHECK_STATUS(netev_runtime_shutdown(NAN), W);
  CHECK_STATUS(netev_log_open("/tmp/\xff\xfe.log"), W);
  /* a path that cannot be opened */
  CHECK_STATUS(netev_log_open("/nonexistent-netev-dir/x/y.log"), NETEV_ERR_IO);
  netev_error_info info;
  CHECK_STATUS(netev_connection_error_at(c, 0, &info), W);
  CHECK_STATUS(netev_connection_error_at(c, SIZE_MAX, &info), W);
  /* the runtime is still up: the NaN shutdown did nothing */
  bool closed = true;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(!closed);
}

static void check_defaults(void) {
  netev_connection_options o;
  memset(&o, 0xa5, sizeof o);
  CHECK_OK(netev_connection_options_init(&o));
  CHECK(o.size == sizeof o);
  CHECK(!o.on_connection && !o.on_data && !o.on_shutdown && !o.on_error);
  CHECK(!o.on_terminate && !o.on_drain && !o.on_end);
  CHECK(o.user_data == NULL && o.user_data_free == NULL);
  CHECK(!o.no_delay && !o.allow_half_open);
  CHECK(o.keepalive == 0 && o.idle_timeout == 0 && o.connection_timeout == 0);
  CHECK(o.send_buffer_limit == 0 && o.dispatcher == 0);
  netev_runtime_options ro;
  memset(&ro, 0xa5, sizeof ro);
  CHECK_OK(netev_runtime_options_init(&ro));
  CHECK(ro.size == sizeof ro);
  CHECK(ro.worker_threads == 0);
}

int main(void) {
  watchdog(60);
  rec_init(&never);
  CHECK_OK(netev_connection_options_init(&never_opts));
  rec_set_all(&never_opts, &never, rec_callback);

  names_and_version();
  last_error();
  check_defaults();

  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  CHECK(d != 0 && d != c);
  netev_dispatcher released_d = 0;
  CHECK_OK(netev_dispatcher_create(&released_d));
  CHECK_OK(netev_dispatcher_release(released_d));
  CHECK_STATUS(netev_dispatcher_release(released_d), NETEV_ERR_INVALID_HANDLE);

  failed_opens(d, c, released_d);
  null_pointers(c, d);
  bad_values(c, d);

  /* handles that are not live connections / dispatchers */
  const uint64_t garbage[] = {0, 0xdeadbeefull, UINT64_MAX, UINT64_MAX - 1, 1ull << 63};
  for (size_t i = 0; i < sizeof garbage / sizeof *garbage; i++) {
    check_bad_conn_handle(garbage[i]);
    check_bad_disp_handle(garbage[i]);
  }
  check_bad_conn_handle(d);          /* a dispatcher is not a connection */
  check_bad_disp_handle(c);          /* and a connection not a dispatcher */
  check_bad_disp_handle(released_d); /* released */
  check_bad_conn_handle(released_d);
  /* the live ones were not touched by the calls of the wrong kind */
  int fd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &fd));
  CHECK(fd >= 0);
  CHECK_OK(netev_connection_send(c, "ping", 4));
  CHECK(rec_wait_bytes(&x.r, 4, 10));
  CHECK(memcmp(x.r.data, "ping", 4) == 0);

  /* a connection released after it ended: every call says INVALID_HANDLE */
  {
    recorder r;
    rec_init(&r);
    netev_connection_options ro;
    CHECK_OK(netev_connection_options_init(&ro));
    rec_set_all(&ro, &r, rec_callback);
    netev_connection gone = 0;
    CHECK_OK(netev_connection_open("127.0.0.1", refused_port(), &ro, &gone));
    REC_WAIT_TERMINATED_OR_FAIL(&r, 10);
    CHECK_SEQUENCE(&r, "error terminate");
    CHECK_OK(netev_connection_retain(gone));
    CHECK_OK(netev_connection_release(gone)); /* gives back the retain */
    uint16_t port = 0;
    CHECK_OK(netev_connection_port(gone, &port));
    CHECK_OK(netev_connection_release(gone)); /* the last reference */
    CHECK_STATUS(netev_connection_release(gone), NETEV_ERR_INVALID_HANDLE);
    check_bad_conn_handle(gone);
    check_bad_disp_handle(gone);
    rec_free(&r);
  }
  /* a connection released while open: closed, TERMINATE once, then invalid */
  {
    peer hold;
    peer_start(&hold, PEER_HOLD, 0);
    recorder r;
    rec_init(&r);
    netev_connection_options ro;
    CHECK_OK(netev_connection_options_init(&ro));
    rec_set_all(&ro, &r, rec_callback);
    netev_connection gone = 0;
    CHECK_OK(netev_connection_open("127.0.0.1", hold.port, &ro, &gone));
    CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
    CHECK_OK(netev_connection_release(gone));
    CHECK_STATUS(netev_connection_release(gone), NETEV_ERR_INVALID_HANDLE);
    REC_WAIT_TERMINATED_OR_FAIL(&r, 10);
    CHECK_SEQUENCE(&r, "connection close terminate");
    CHECK(wait_handle_invalid(gone, 5));
    check_bad_conn_handle(gone);
    peer_stop(&hold);
    rec_free(&r);
  }

  /* send after shutdown: NETEV_ERR_CLOSED, and an entry in the errors list */
  size_t before = 99;
  CHECK_OK(netev_connection_error_count(c, &before));
  CHECK(before == 0);
  CHECK_OK(netev_connection_shutdown(c));
  CHECK_STATUS(netev_connection_send(c, "late", 4), NETEV_ERR_CLOSED);
  size_t after = 0;
  CHECK_OK(netev_connection_error_count(c, &after));
  CHECK(after == before + 1);
  netev_error_info info;
  CHECK_OK(netev_connection_error_at(c, after - 1, &info));
  if (info.code != NETEV_ERR_CLOSED)
    FAIL("errors[%zu].code = %s", after - 1, netev_status_name(info.code));
  CHECK(info.message[0] != 0);
  CHECK(strcmp(info.component, "netev") == 0);
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  /* once ended: shutdown says CLOSED; close stays harmless */
  CHECK_STATUS(netev_connection_shutdown(c), NETEV_ERR_CLOSED);
  CHECK_OK(netev_connection_close(c));
  CHECK_STATUS(netev_connection_send(c, "later", 5), NETEV_ERR_CLOSED);
  CHECK_OK(netev_connection_release(c));
  CHECK(wait_handle_invalid(c, 5));
  check_bad_conn_handle(c);

  CHECK_OK(netev_dispatcher_release(d));
  CHECK_STATUS(netev_dispatcher_release(d), NETEV_ERR_INVALID_HANDLE);
  check_bad_disp_handle(d);
  check_bad_conn_handle(d);

  CHECK_OK(netev_runtime_shutdown(10));
  peer_stop(&p);
  /* no failed open ever fired a callback */
  CHECK(never.total == 0);
  rec_free(&never);
  xrec_free_fields(&x);

  /* runtime options: bad size and bad values refused, good ones taken */
  netev_runtime_options rt;
  CHECK_OK(netev_runtime_options_init(&rt));
  rt.size = 0;
  CHECK_STATUS(netev_runtime_init(&rt), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_runtime_options_init(&rt));
  rt.worker_threads = 1u << 30;
  CHECK_STATUS(netev_runtime_init(&rt), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_runtime_options_init(&rt));
  rt.worker_threads = 1;
  CHECK_OK(netev_runtime_init(&rt));
  /* already running */
  CHECK_STATUS(netev_runtime_init(&rt), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_runtime_init(NULL), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK_OK(netev_runtime_init(NULL));
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
