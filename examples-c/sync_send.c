/* sync_send: send one message and wait for its echo, the synchronous way.
 *
 * This is 4D's synchronous TCPConnection example in C:
 *
 *   $connection:=4D.TCPConnection.new($address; $port; $handler)
 *   $connection.send($message)
 *   $connection.wait(30)    // onData calls $connection.shutdown() when all came back
 *
 * Usage: sync_send [HOST] PORT [MESSAGE]    (HOST defaults to 127.0.0.1)
 * Try it against any echo server, e.g. examples-c/echo_server.c.
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the callbacks share with main. on_data runs on a netev I/O thread,
 * so the buffer is guarded by a mutex. */
typedef struct {
  pthread_mutex_t lock;
  char received[1024];
  size_t received_len;
  size_t expected_len;
} exchange;

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "sync_send: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

static void on_data(netev_connection conn, const netev_event *event, void *user_data) {
  exchange *x = user_data;
  pthread_mutex_lock(&x->lock);
  size_t room = sizeof x->received - x->received_len;
  size_t n = event->data_len < room ? event->data_len : room;
  memcpy(x->received + x->received_len, event->data, n);
  x->received_len += n;
  bool complete = x->received_len >= x->expected_len;
  pthread_mutex_unlock(&x->lock);
  /* The echo may come back in several pieces; only the whole message ends
   * the exchange. As in 4D, shutdown() from a callback ends the main
   * thread's wait(). */
  if (complete) check(netev_connection_shutdown(conn), "shutdown");
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s [HOST] PORT [MESSAGE]\n", argv[0]);
    return 2;
  }
  const char *host = argc >= 3 ? argv[1] : "127.0.0.1";
  int port = atoi(argc >= 3 ? argv[2] : argv[1]);
  const char *message = argc == 4 ? argv[3] : "Hello from netev, the 4D way";
  if (port <= 0 || port > 65535) {
    fprintf(stderr, "sync_send: bad port\n");
    return 2;
  }

  exchange x = {.expected_len = strlen(message)};
  if (x.expected_len == 0 || x.expected_len > sizeof x.received) {
    fprintf(stderr, "sync_send: the message must be 1 to %zu bytes\n", sizeof x.received);
    return 2;
  }
  pthread_mutex_init(&x.lock, NULL);

  netev_connection_options options;
  check(netev_connection_options_init(&options), "options_init");
  options.on_data = on_data;
  options.user_data = &x;
  options.connection_timeout = 10;

  netev_connection conn;
  check(netev_connection_open(host, (uint16_t)port, &options, &conn), "open");
  /* No need to wait for the connection: netev queues the bytes until it is up. */
  check(netev_connection_send(conn, message, x.expected_len), "send");
  check(netev_connection_wait(conn, 30), "wait");

  pthread_mutex_lock(&x.lock);
  bool complete = x.received_len == x.expected_len && memcmp(x.received, message, x.expected_len) == 0;
  printf("sent %zu bytes:  %s\n", x.expected_len, message);
  printf("echo %zu bytes:  %.*s\n", x.received_len, (int)x.received_len, x.received);
  pthread_mutex_unlock(&x.lock);

  /* A failed connect also ends the wait: its reasons stay in the errors list. */
  size_t errors;
  check(netev_connection_error_count(conn, &errors), "error_count");
  for (size_t i = 0; i < errors; i++) {
    netev_error_info info;
    check(netev_connection_error_at(conn, i, &info), "error_at");
    fprintf(stderr, "sync_send: [%s] %s: %s\n", info.component, netev_status_name((int32_t)info.code),
            info.message);
  }

  /* release closes what is left of the connection; runtime_shutdown returns
   * once every callback has run, so `x` may go out of scope after it. */
  check(netev_connection_release(conn), "release");
  check(netev_runtime_shutdown(10), "runtime_shutdown");
  pthread_mutex_destroy(&x.lock);
  if (!complete) {
    fprintf(stderr, "sync_send: the echo did not match what was sent\n");
    return 1;
  }
  return 0;
}
