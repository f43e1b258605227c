/* async_client: every event of a connection, as it happens.
 *
 * One callback per event slot, each printing the event. The callbacks run on
 * netev's I/O threads while main goes on; main only blocks at the end, on a
 * condition variable that on_terminate signals, since TERMINATE is always the
 * last event of a connection, whatever happened before it.
 *
 * Usage: async_client [HOST] PORT    (HOST defaults to 127.0.0.1)
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool terminated;
} state;

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "async_client: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

/* The common part of every line; the callbacks add what their event carries. */
static void print_event(netev_connection conn, const netev_event *e) {
  printf("[conn %llu] %-10s from %s:%u", (unsigned long long)conn, netev_event_type_name((int32_t)e->type),
         e->ip[0] ? e->ip : "?", (unsigned)e->port);
}

static void on_connection(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  print_event(conn, e);
  printf("\n");
}

static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  print_event(conn, e);
  /* The data is borrowed: print (or copy) it now, it is gone after return.
   * It is not NUL-terminated, and a message may arrive in several pieces. */
  printf(" %zu bytes: \"", e->data_len);
  for (size_t i = 0; i < e->data_len; i++) {
    unsigned char c = e->data[i];
    if (c == '\n')
      printf("\\n");
    else if (c < 0x20 || c >= 0x7f)
      printf("\\x%02x", c);
    else
      putchar(c);
  }
  printf("\"\n");
}

static void on_end(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  print_event(conn, e);
  printf(" (the peer finished sending)\n");
}

static void on_drain(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  size_t queued;
  check(netev_connection_buffered_amount(conn, &queued), "buffered_amount");
  print_event(conn, e);
  printf(" %zu bytes still queued, sending may resume\n", queued);
}

static void on_shutdown(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  print_event(conn, e);
  printf(" (closed properly)\n");
}

static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  print_event(conn, e);
  printf(" %s, os error %d: %s\n", netev_status_name((int32_t)e->error), (int)e->os_error, e->message);
}

static void on_terminate(netev_connection conn, const netev_event *e, void *user_data) {
  state *s = user_data;
  print_event(conn, e);
  printf(" (last event)\n");
  fflush(stdout);
  pthread_mutex_lock(&s->lock);
  s->terminated = true;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s [HOST] PORT\n", argv[0]);
    return 2;
  }
  const char *host = argc == 3 ? argv[1] : "127.0.0.1";
  int port = atoi(argv[argc - 1]);
  if (port <= 0 || port > 65535) {
    fprintf(stderr, "async_client: bad port\n");
    return 2;
  }

  state s = {.terminated = false};
  pthread_mutex_init(&s.lock, NULL);
  /* A monotonic clock, so that the bounded wait below survives a clock change. */
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&s.cond, &attr);
  pthread_condattr_destroy(&attr);

  netev_connection_options options;
  check(netev_connection_options_init(&options), "options_init");
  options.on_connection = on_connection;
  options.on_data = on_data;
  options.on_end = on_end;
  options.on_drain = on_drain;
  options.on_shutdown = on_shutdown;
  options.on_error = on_error;
  options.on_terminate = on_terminate;
  options.user_data = &s;
  options.no_delay = true;
  options.connection_timeout = 10;

  netev_connection conn;
  check(netev_connection_open(host, (uint16_t)port, &options, &conn), "open");
  printf("opened connection %llu to %s:%d\n", (unsigned long long)conn, host, port);

  /* These sends happen before the connection is up: netev queues them and
   * writes them in order once it is. */
  const char *messages[] = {"first message\n", "second message\n", "third and last\n"};
  for (size_t i = 0; i < sizeof messages / sizeof messages[0]; i++) {
    size_t len = strlen(messages[i]);
    check(netev_connection_send(conn, messages[i], len), "send");
    printf("queued %zu bytes\n", len);
  }
  /* The write side closes once everything queued is out; the peer then sees
   * EOF, and we go on reading its echo until it closes too. */
  check(netev_connection_shutdown(conn), "shutdown");
  fflush(stdout);

  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += 15;
  pthread_mutex_lock(&s.lock);
  int rc = 0;
  while (!s.terminated && rc == 0) rc = pthread_cond_timedwait(&s.cond, &s.lock, &deadline);
  bool terminated = s.terminated;
  pthread_mutex_unlock(&s.lock);
  if (!terminated) {
    fprintf(stderr, "async_client: no TERMINATE within 15 s\n");
    return 1;
  }

  /* The handle outlives the connection: its properties and errors stay
   * readable until release. */
  size_t errors;
  check(netev_connection_error_count(conn, &errors), "error_count");
  printf("errors list: %zu entr%s\n", errors, errors == 1 ? "y" : "ies");
  for (size_t i = 0; i < errors; i++) {
    netev_error_info info;
    check(netev_connection_error_at(conn, i, &info), "error_at");
    printf("  [%zu] %s (component %s, os error %d): %s\n", i, netev_status_name((int32_t)info.code),
           info.component, (int)info.os_error, info.message);
  }

  check(netev_connection_release(conn), "release");
  check(netev_runtime_shutdown(10), "runtime_shutdown");
  pthread_cond_destroy(&s.cond);
  pthread_mutex_destroy(&s.lock);
  return errors == 0 ? 0 : 1;
}
