/* Built against an installed netev (tests/install.rs): with pkg-config, with
 * CMake's netev::netev and with netev::netev_static. A listener on
 * 127.0.0.1, port 0, echoes what it receives; a client connects to it, sends
 * a message, waits for the whole echo, and checks it. Prints "echo: ..." and
 * exits 0 on success. */
#define _POSIX_C_SOURCE 200809L
#include <netev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check(netev_status st, const char *what) {
  if (st == NETEV_OK) return;
  char msg[256];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "%s: %s: %s\n", what, netev_status_name(st), msg);
  exit(1);
}

/* The server side: every accepted connection sends back what it receives. */
static void server_on_data(netev_connection conn, const netev_event *ev, void *user_data) {
  (void)user_data;
  netev_status st = netev_connection_send(conn, ev->data, ev->data_len);
  if (st != NETEV_ERR_CLOSED) check(st, "server send");
}

/* The client side: collect the echo, shut down once it is all here. The
 * callbacks of one connection never run concurrently, and main reads `e`
 * only after netev_runtime_shutdown: no lock needed. */
typedef struct {
  char buf[256];
  size_t len, want;
} echo;

static void client_on_data(netev_connection conn, const netev_event *ev, void *user_data) {
  echo *e = user_data;
  size_t room = sizeof e->buf - e->len;
  size_t n = ev->data_len < room ? ev->data_len : room;
  memcpy(e->buf + e->len, ev->data, n);
  e->len += n;
  if (e->len >= e->want) check(netev_connection_shutdown(conn), "client shutdown"); /* ends the wait */
}

int main(void) {
  alarm(60); /* never hang a test run */
  printf("netev %s\n", netev_version());

  netev_connection_options defaults;
  check(netev_connection_options_init(&defaults), "connection_options_init");
  defaults.on_data = server_on_data;
  netev_listener_options lo;
  check(netev_listener_options_init(&lo), "listener_options_init");
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = &defaults;
  netev_listener l;
  check(netev_listener_open(0, &lo, &l), "listener_open");
  uint16_t port = 0;
  check(netev_listener_port(l, &port), "listener_port");
  if (port == 0) {
    fprintf(stderr, "listener_port gave 0\n");
    return 1;
  }

  const char *msg = "hello from an installed netev";
  echo e = {.want = strlen(msg)};
  netev_connection_options co;
  check(netev_connection_options_init(&co), "connection_options_init");
  co.on_data = client_on_data;
  co.user_data = &e;
  netev_connection c;
  check(netev_connection_open("127.0.0.1", port, &co, &c), "connection_open");
  check(netev_connection_send(c, msg, e.want), "send");
  check(netev_connection_wait(c, 30), "wait");
  size_t errors = 0;
  check(netev_connection_error_count(c, &errors), "error_count");
  check(netev_connection_release(c), "connection_release");
  check(netev_listener_terminate(l), "listener_terminate");
  check(netev_listener_release(l), "listener_release");
  check(netev_runtime_shutdown(10), "runtime_shutdown");

  /* Every callback has returned and netev's threads are gone. */
  if (errors != 0 || e.len != e.want || memcmp(e.buf, msg, e.want) != 0) {
    fprintf(stderr, "bad echo (%zu errors): got %zu bytes \"%.*s\", want \"%s\"\n", errors, e.len,
            (int)e.len, e.buf, msg);
    return 1;
  }
  printf("echo: %.*s\n", (int)e.len, e.buf);
  return 0;
}
