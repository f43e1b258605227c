/* An accept callback that returns true with options netev cannot use: the
 * socket is closed, the listener gets ERROR (NETEV_ERR_INVALID_ARGUMENT, in
 * its errors list too), no connection callback ever runs, and the
 * user_data the host handed over is freed once through user_data_free. */
#include "common.h"
#include <stdatomic.h>

static atomic_int frees, conn_events, listener_errors;
static netev_status listener_error;

static void count_free(void *ud) {
  CHECK(ud == &frees);
  atomic_fetch_add(&frees, 1);
}
static void conn_event(netev_connection c, const netev_event *e, void *ud) {
  (void)c, (void)e, (void)ud;
  atomic_fetch_add(&conn_events, 1);
}
static bool bad_accept(netev_listener l, const netev_event *e, void *ud,
                       netev_connection_options *o) {
  (void)l, (void)e, (void)ud;
  o->on_connection = o->on_data = o->on_terminate = conn_event;
  o->user_data = &frees;
  o->user_data_free = count_free;
  o->idle_timeout = -1; /* invalid */
  return true;
}
static void on_error(netev_listener l, const netev_event *e, void *ud) {
  (void)l, (void)ud;
  listener_error = e->error;
  atomic_fetch_add(&listener_errors, 1);
}

int main(void) {
  watchdog(60);
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = bad_accept;
  lo.on_error = on_error;
  lo.bind_address = "127.0.0.1";
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  /* The client sees its connection closed. */
  struct pollfd p = {.fd = fd, .events = POLLIN};
  CHECK(poll(&p, 1, 10000) == 1);
  char b;
  CHECK(recv(fd, &b, 1, 0) <= 0);
  close(fd);

  double end = now_seconds() + 10;
  while (atomic_load(&listener_errors) == 0 && now_seconds() < end) poll(NULL, 0, 10);
  CHECK(atomic_load(&listener_errors) == 1);
  CHECK(listener_error == NETEV_ERR_INVALID_ARGUMENT);
  size_t n = 0;
  CHECK_OK(netev_listener_error_count(l, &n));
  CHECK(n == 1);
  netev_error_info info;
  CHECK_OK(netev_listener_error_at(l, 0, &info));
  CHECK(info.code == NETEV_ERR_INVALID_ARGUMENT);
  CHECK(atomic_load(&frees) == 1);

  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(atomic_load(&conn_events) == 0);
  CHECK(atomic_load(&frees) == 1);
  return 0;
}
