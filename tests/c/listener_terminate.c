/* Listener lifetime and bad input: a port in use fails open itself with
 * NETEV_ERR_ADDRESS_IN_USE; terminate frees the port before it returns
 * while accepted connections go on; TERMINATE fires once, last; release
 * and double release; wrong handles, NULL pointers and bad options give
 * their statuses and no callback. */
#include "common_listener.h"

/* Binds (and listens on) a BSD socket at 127.0.0.1:port; returns the fd, or
 * -1 with errno set. */
static int bsd_listen(uint16_t port, int reuse) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  int one = 1;
  if (reuse) CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static int never_calls;
static void never_cb(netev_listener l, const netev_event *e, void *ud) {
  (void)l;
  (void)e;
  (void)ud;
  __atomic_add_fetch(&never_calls, 1, __ATOMIC_SEQ_CST);
}
static bool never_accept(netev_listener l, const netev_event *e, void *ud,
                         netev_connection_options *o) {
  (void)l;
  (void)e;
  (void)ud;
  (void)o;
  __atomic_add_fetch(&never_calls, 1, __ATOMIC_SEQ_CST);
  return true;
}

/* Listener options whose callbacks must never run. */
static void never_options(netev_listener_options *o) {
  CHECK_OK(netev_listener_options_init(o));
  o->on_connection = never_accept;
  o->on_error = never_cb;
  o->on_terminate = never_cb;
}

static void check_open_fails(uint16_t port, const netev_listener_options *o, netev_status want,
                             const char *what) {
  netev_listener out = 0;
  netev_status got = netev_listener_open(port, o, &out);
  if (got != want)
    FAIL("%s: netev_listener_open returned %s, expected %s", what, netev_status_name(got),
         netev_status_name(want));
  char msg[512];
  CHECK(netev_last_error_message(msg, sizeof msg) > 0);
  if (out != 0) {
    /* Whatever got stored must not be a live listener. */
    uint16_t p;
    CHECK_STATUS(netev_listener_port(out, &p), NETEV_ERR_INVALID_HANDLE);
  }
}

/* Every listener function answers NETEV_ERR_INVALID_HANDLE for `h`. */
static void check_not_listener(netev_listener h, const char *what) {
  uint16_t p;
  size_t n;
  netev_error_info info;
  netev_status st;
  if ((st = netev_listener_port(h, &p)) != NETEV_ERR_INVALID_HANDLE ||
      (st = netev_listener_error_count(h, &n)) != NETEV_ERR_INVALID_HANDLE ||
      (st = netev_listener_error_at(h, 0, &info)) != NETEV_ERR_INVALID_HANDLE ||
      (st = netev_listener_terminate(h)) != NETEV_ERR_INVALID_HANDLE ||
      (st = netev_listener_release(h)) != NETEV_ERR_INVALID_HANDLE)
    FAIL("%s (%llu) as a listener: %s, expected NETEV_ERR_INVALID_HANDLE", what,
         (unsigned long long)h, netev_status_name(st));
}

int main(void) {
  watchdog(60);
  lsn_server s;
  lsn_init(&s);
  netev_listener_options o;
  lsn_options(&s, &o); /* bind_address NULL: all interfaces */
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  pthread_mutex_lock(&s.mu);
  s.listener = l;
  pthread_mutex_unlock(&s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(port != 0);

  /* The port is taken: a second listener without reuse_port, and a BSD bind. */
  netev_listener_options bad;
  never_options(&bad);
  check_open_fails(port, &bad, NETEV_ERR_ADDRESS_IN_USE, "same port, all interfaces");
  bad.bind_address = "127.0.0.1";
  check_open_fails(port, &bad, NETEV_ERR_ADDRESS_IN_USE, "same port, 127.0.0.1");
  bad.bind_address = NULL;
  CHECK(bsd_listen(port, 1) < 0 && errno == EADDRINUSE);
  CHECK(bsd_listen(port, 0) < 0 && errno == EADDRINUSE);
  /* And a port a BSD socket holds. */
  int held = bsd_listen(0, 0);
  CHECK(held >= 0);
  uint16_t held_port = bsd_local_port(held);
  bad.bind_address = "127.0.0.1";
  check_open_fails(held_port, &bad, NETEV_ERR_ADDRESS_IN_USE, "BSD-held port, 127.0.0.1");
  bad.bind_address = NULL;
  check_open_fails(held_port, &bad, NETEV_ERR_ADDRESS_IN_USE, "BSD-held port, all interfaces");
  close(held);

  /* A connection accepted before terminate. */
  recorder cr;
  rec_init(&cr);
  netev_connection c = client_open("127.0.0.1", port, &cr);
  CHECK_OK(netev_connection_send(c, "before", 6));
  CHECK(rec_wait_bytes(&cr, 6, 10));
  lsn_conn *lc = lsn_conn_at(&s, 0, 5);

  /* terminate frees the port before it returns. */
  CHECK_OK(netev_listener_terminate(l));
  int fd = bsd_listen(port, 1);
  if (fd < 0) FAIL("bind+listen on port %u right after terminate: %s", port, strerror(errno));
  CHECK_OK(netev_listener_terminate(l)); /* harmless again */
  CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
  uint16_t again = 0;
  CHECK_OK(netev_listener_port(l, &again)); /* valid until release */
  CHECK(again == port);

  /* The accepted connection goes on. */
  CHECK_OK(netev_connection_send(c, "after", 5));
  CHECK(rec_wait_bytes(&cr, 11, 10));
  CHECK(memcmp(cr.data, "beforeafter", 11) == 0);
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&cr, 10));
  CHECK_SEQUENCE(&cr, "connection data* end close terminate");
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 1, 10));
  CHECK(rec_wait_terminated(&lc->r, 10));
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(lc->r.data_len == 11 && memcmp(lc->r.data, "beforeafter", 11) == 0);
  close(fd);

  /* TERMINATE once, last; release, then double release. */
  CHECK_OK(netev_listener_release(l));
  CHECK_STATUS(netev_listener_release(l), NETEV_ERR_INVALID_HANDLE);
  check_not_listener(l, "a released listener");
  CHECK_LSN_SEQUENCE(&s, "connection terminate");
  lsn_check_clean(&s);

  /* Handles that are not listeners. */
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  check_not_listener(0, "0");
  check_not_listener(0xdeadbeefcafeULL, "garbage");
  check_not_listener(UINT64_MAX, "UINT64_MAX");
  check_not_listener(c, "a connection");
  check_not_listener(d, "a dispatcher");

  /* A live listener is not a connection or a dispatcher. */
  netev_listener l2;
  CHECK_OK(netev_listener_open(0, NULL, &l2)); /* NULL options: defaults */
  bool closed;
  CHECK_STATUS(netev_connection_closed(l2, &closed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_send(l2, "x", 1), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_release(l2), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_dispatcher_run(l2, 0, NULL), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_dispatcher_release(l2), NETEV_ERR_INVALID_HANDLE);

  /* NULL pointers. */
  netev_listener_options init_ok;
  CHECK_OK(netev_listener_options_init(&init_ok));
  CHECK(init_ok.size == sizeof init_ok);
  CHECK_STATUS(netev_listener_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_listener_open(0, &init_ok, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_listener_port(l2, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_listener_error_count(l2, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_listener_error_at(l2, 0, NULL), NETEV_ERR_NULL_ARGUMENT);
  netev_error_info info;
  CHECK_STATUS(netev_listener_error_at(l2, 0, &info), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_listener_error_at(l2, (size_t)-1, &info), NETEV_ERR_INVALID_ARGUMENT);

  /* Bad options. */
  never_options(&bad);
  bad.bind_address = "not-an-ip";
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "bind_address not-an-ip");
  bad.bind_address = "\xff";
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "bind_address invalid UTF-8");
  bad.bind_address = "";
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "bind_address empty");
  bad.bind_address = "127.0.0.1:80";
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "bind_address with a port");
  bad.bind_address = NULL;
  netev_connection_options bad_defaults;
  CHECK_OK(netev_connection_options_init(&bad_defaults));
  bad.connection_defaults = &bad_defaults;
  bad_defaults.idle_timeout = -1;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "connection_defaults.idle_timeout -1");
  bad_defaults.idle_timeout = 0;
  bad_defaults.keepalive = 0.0 / 0.0;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "connection_defaults.keepalive NaN");
  bad_defaults.keepalive = 0;
  bad_defaults.connection_timeout = -0.5;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT,
                   "connection_defaults.connection_timeout -0.5");
  bad_defaults.connection_timeout = 0;
  bad.size = 0;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_ARGUMENT, "size 0");
  never_options(&bad);
  bad.dispatcher = 0xdeadbeefcafeULL;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_HANDLE, "unknown dispatcher");
  bad.dispatcher = l2;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_HANDLE, "a listener as dispatcher");
  bad.dispatcher = 0;
  bad.connection_defaults = &bad_defaults;
  bad_defaults.dispatcher = 0xdeadbeefcafeULL;
  check_open_fails(0, &bad, NETEV_ERR_INVALID_HANDLE, "unknown connection_defaults.dispatcher");

  CHECK_OK(netev_listener_release(l2));
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&s, &s.terminates) == 1);
  CHECK(lsn_get(&s, &s.after_terminate) == 0);
  if (__atomic_load_n(&never_calls, __ATOMIC_SEQ_CST) != 0)
    FAIL("%d callbacks of listeners whose open failed", never_calls);
  rec_free(&cr);
  lsn_free(&s);
  return 0;
}
