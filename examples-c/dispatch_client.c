/* dispatch_client: a line client whose callbacks all run on the main thread.
 *
 * A host with its own event loop (a GUI, a game loop, an interpreter with a
 * global lock, 4D's worker model) does not want callbacks on netev's threads.
 * It creates a dispatcher, names it in the connection options, and puts the
 * dispatcher's descriptor in its loop beside its other inputs: when it
 * becomes readable, netev_dispatcher_run runs the queued callbacks right
 * there, on the loop's thread. Here the loop is poll() on stdin and netev.
 *
 * Lines typed are sent and their echo printed. End of input (Ctrl-D, or the
 * end of a pipe) shuts the connection down; the loop goes on until TERMINATE,
 * for at most 10 s.
 *
 * Usage: dispatch_client [HOST] PORT    (HOST defaults to 127.0.0.1)
 *   printf 'hello\nworld\n' | dispatch_client 127.0.0.1 7777
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Only touched from the main thread: no lock needed, that is the point. */
typedef struct {
  pthread_t main_thread;
  bool terminated;
  bool failed;
  size_t echoed;
} state;

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "dispatch_client: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

static void print_event(const netev_event *e, state *s) {
  printf("%-10s %s:%u%s", netev_event_type_name((int32_t)e->type), e->ip[0] ? e->ip : "?", (unsigned)e->port,
         pthread_equal(pthread_self(), s->main_thread) ? "" : " (NOT on the main thread!)");
}

static void on_event(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  print_event(e, user_data);
  printf("\n");
}

static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  state *s = user_data;
  s->echoed += e->data_len;
  print_event(e, s);
  printf(" %zu bytes\n", e->data_len);
  /* Borrowed and not NUL-terminated: print it before returning. A piece
   * may hold several lines, or part of one. */
  const char *p = (const char *)e->data, *end = p + e->data_len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *stop = nl ? nl : end;
    printf("  > %.*s\n", (int)(stop - p), p);
    p = nl ? nl + 1 : end;
  }
}

static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  state *s = user_data;
  s->failed = true;
  print_event(e, s);
  printf(" %s, os error %d: %s\n", netev_status_name((int32_t)e->error), (int)e->os_error, e->message);
}

static void on_terminate(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  state *s = user_data;
  print_event(e, s);
  printf("\n");
  s->terminated = true;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s [HOST] PORT\n", argv[0]);
    return 2;
  }
  const char *host = argc == 3 ? argv[1] : "127.0.0.1";
  int port = atoi(argv[argc - 1]);
  if (port <= 0 || port > 65535) {
    fprintf(stderr, "dispatch_client: bad port\n");
    return 2;
  }
  /* Output is read line by line by whoever runs this, even through a pipe. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  state s = {.main_thread = pthread_self()};

  netev_dispatcher dispatcher;
  check(netev_dispatcher_create(&dispatcher), "dispatcher_create");
  int dispatcher_fd;
  check(netev_dispatcher_fd(dispatcher, &dispatcher_fd), "dispatcher_fd");

  netev_connection_options options;
  check(netev_connection_options_init(&options), "options_init");
  options.on_connection = on_event;
  options.on_data = on_data;
  options.on_end = on_event;
  options.on_shutdown = on_event;
  options.on_error = on_error;
  options.on_terminate = on_terminate;
  options.user_data = &s;
  options.dispatcher = dispatcher;
  options.connection_timeout = 10;

  netev_connection conn;
  check(netev_connection_open(host, (uint16_t)port, &options, &conn), "open");

  bool input_open = true;
  size_t sent = 0;
  double give_up_at = 0; /* set at end of input */
  while (!s.terminated) {
    struct pollfd fds[2] = {
        {.fd = dispatcher_fd, .events = POLLIN},
        {.fd = input_open ? STDIN_FILENO : -1, .events = POLLIN}, /* fd -1: poll skips it */
    };
    int timeout_ms = -1;
    if (!input_open) {
      double left = give_up_at - now();
      if (left <= 0) {
        fprintf(stderr, "dispatch_client: no TERMINATE within 10 s after end of input\n");
        return 1;
      }
      timeout_ms = (int)(left * 1000) + 1;
    }
    if (poll(fds, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      perror("dispatch_client: poll");
      return 1;
    }

    if (fds[0].revents & POLLIN) {
      /* Runs what is queued now, without waiting: the callbacks above run
       * inside this call, on this thread. */
      check(netev_dispatcher_run(dispatcher, 0, NULL), "dispatcher_run");
    }

    if (fds[1].revents & (POLLIN | POLLHUP)) {
      /* read(), not stdio: stdio could buffer lines that poll() would then
       * never report. A chunk may hold several lines or part of one, which
       * is fine, TCP is a byte stream anyway. */
      char buf[4096];
      ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        perror("dispatch_client: read stdin");
        return 1;
      }
      if (n > 0) {
        check(netev_connection_send(conn, buf, (size_t)n), "send");
        sent += (size_t)n;
      } else {
        printf("end of input after %zu bytes: shutting down\n", sent);
        input_open = false;
        give_up_at = now() + 10;
        check(netev_connection_shutdown(conn), "shutdown");
      }
    }
  }

  printf("sent %zu bytes, %zu came back\n", sent, s.echoed);
  check(netev_connection_release(conn), "release");
  check(netev_dispatcher_release(dispatcher), "dispatcher_release");
  check(netev_runtime_shutdown(10), "runtime_shutdown");
  return !s.failed && s.echoed == sent ? 0 : 1;
}
