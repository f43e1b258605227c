/* dispatcher_wake_rules: two promises of a dispatcher that a host polling
 * its fd, or blocking in run, relies on.
 *
 * 1. The fd is readable while callbacks are queued, even when host code
 *    runs long on the netev thread that queued them: here connection B
 *    (bound to the dispatcher) and connection A (not bound; its DATA
 *    callback blocks the only I/O thread) become readable in one turn, B
 *    first. A's callback waits until the host sees the fd readable; a
 *    wake-up held back until the end of the turn would never come.
 * 2. netev_dispatcher_run waits for a callback: queued work that calls no
 *    host callback (here END, CLOSE and TERMINATE of a connection with only
 *    on_data set) does not end a run early with nothing run. */
#include "common.h"

static netev_dispatcher disp;
static int disp_fd;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int gate_in, gate_open;     /* C's callback holds the I/O thread */
static int a_in, fd_seen;          /* A's callback waits for the host */
static int a_connected, c_connected;
static int b_data;

static void set_flag(int *flag) {
  pthread_mutex_lock(&mu);
  *flag = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

/* Waits (bounded) for *flag; returns it. */
static int wait_flag(int *flag, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&mu);
  while (!*flag && cond_wait_until(&cv, &mu, end)) {
  }
  int v = *flag;
  pthread_mutex_unlock(&mu);
  return v;
}

static void on_c(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)ud;
  if (e->type == NETEV_EVENT_CONNECTION) set_flag(&c_connected);
  if (e->type != NETEV_EVENT_DATA) return;
  set_flag(&gate_in);
  wait_flag(&gate_open, 10);
}

static void on_a(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)ud;
  if (e->type == NETEV_EVENT_CONNECTION) set_flag(&a_connected);
  if (e->type != NETEV_EVENT_DATA) return;
  set_flag(&a_in);
  wait_flag(&fd_seen, 5);
}

static void on_b(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)ud;
  if (e->type == NETEV_EVENT_DATA) b_data += (int)e->data_len;
}

static int raw_listener(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 16) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static netev_connection open_to(uint16_t port, netev_connection_callback cb, netev_dispatcher d) {
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_connection = cb;
  o.on_data = cb;
  o.dispatcher = d;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  return c;
}

/* Runs the dispatcher until `done` holds, for at most `seconds`. */
static int run_until(int *done, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (!*done && now_seconds() < end) CHECK_OK(netev_dispatcher_run(disp, 0.05, NULL));
  return *done;
}

static int fd_readable(int ms) {
  struct pollfd p = {.fd = disp_fd, .events = POLLIN};
  return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static void fd_wakes_despite_host_code_on_the_io_thread(void) {
  TEST_STAGE = "connect C, A and B";
  uint16_t port;
  int lfd = raw_listener(&port);
  netev_connection c = open_to(port, on_c, 0);
  int fc = accept(lfd, NULL, NULL);
  netev_connection a = open_to(port, on_a, 0);
  int fa = accept(lfd, NULL, NULL);
  netev_connection b = open_to(port, on_b, disp);
  int fb = accept(lfd, NULL, NULL);
  CHECK(fc >= 0 && fa >= 0 && fb >= 0);
  CHECK(wait_flag(&c_connected, 5) && wait_flag(&a_connected, 5));
  int b_connected = 0;
  double end = now_seconds() + 5 * test_time_factor();
  while (!b_connected && now_seconds() < end) {
    size_t ran = 0;
    CHECK_OK(netev_dispatcher_run(disp, 0.05, &ran));
    b_connected = ran > 0;
  }
  CHECK(b_connected);

  TEST_STAGE = "hold the I/O thread in C's callback";
  CHECK(send(fc, "c", 1, MSG_NOSIGNAL) == 1);
  CHECK(wait_flag(&gate_in, 5));
  /* Both arrive while the loop is held: its next poll reports B, then A
   * (epoll reports sockets in the order they became ready). */
  CHECK(send(fb, "b", 1, MSG_NOSIGNAL) == 1);
  CHECK(send(fa, "a", 1, MSG_NOSIGNAL) == 1);
  set_flag(&gate_open);

  TEST_STAGE = "A's callback runs: the fd must already say B's DATA waits";
  CHECK(wait_flag(&a_in, 5));
  int readable = fd_readable((int)(2000 * test_time_factor()));
  set_flag(&fd_seen);
  if (!readable) FAIL("B's DATA was queued but the dispatcher's fd stayed unreadable");
  CHECK(run_until(&b_data, 5));
  CHECK(b_data == 1);

  TEST_STAGE = "release";
  CHECK_OK(netev_connection_release(a));
  CHECK_OK(netev_connection_release(b));
  CHECK_OK(netev_connection_release(c));
  close(fa);
  close(fb);
  close(fc);
  close(lfd);
}

static void on_data_only(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)e;
  (void)ud;
}

static void run_waits_for_a_callback(void) {
  TEST_STAGE = "a connection with only on_data";
  uint16_t port;
  int lfd = raw_listener(&port);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_data = on_data_only;
  o.dispatcher = disp;
  netev_connection conn = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &conn));
  int fd = accept(lfd, NULL, NULL);
  CHECK(fd >= 0);

  TEST_STAGE = "the peer ends: END, CLOSE, TERMINATE, none with a callback";
  CHECK(shutdown(fd, SHUT_WR) == 0);
  /* END waits in the queue (the fd says so); running it calls nothing. */
  CHECK(fd_readable((int)(5000 * test_time_factor())));

  TEST_STAGE = "run(0.3 s) must wait the whole timeout: no callback is due";
  double t0 = now_seconds();
  size_t ran = 99;
  CHECK_OK(netev_dispatcher_run(disp, 0.3, &ran));
  double waited = now_seconds() - t0;
  CHECK(ran == 0);
  if (waited < 0.29) FAIL("run returned after %.3f s with nothing run, before its 0.3 s timeout", waited);

  CHECK_OK(netev_connection_release(conn));
  close(fd);
  close(lfd);
}

int main(void) {
  watchdog_staged("dispatcher_wake_rules", 60);
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  ro.worker_threads = 1; /* A's callback holds the only I/O thread */
  CHECK_OK(netev_runtime_init(&ro));
  CHECK_OK(netev_dispatcher_create(&disp));
  CHECK_OK(netev_dispatcher_fd(disp, &disp_fd));
  fd_wakes_despite_host_code_on_the_io_thread();
  run_waits_for_a_callback();
  CHECK_OK(netev_dispatcher_release(disp));
  CHECK_OK(netev_runtime_shutdown(10));
  printf("dispatcher_wake_rules: ok\n");
  return 0;
}
