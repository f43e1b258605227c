/* chat_server: every line a client sends goes to all the other clients.
 *
 * Shows what a server does with state per connection and across them:
 * - per connection: a small struct (its name), allocated in the listener's
 *   on_connection, handed to netev as the connection's user_data, and freed
 *   by netev through user_data_free after the connection's TERMINATE;
 * - across connections: the list of clients to broadcast to. Each is added
 *   in its own on_connection with netev_connection_retain, so that its
 *   handle stays valid for as long as it is in the list, and removed (and
 *   released) in its on_terminate.
 *
 * Lines are netev's job, not ours: the connections use delimiter framing
 * ("\n"), so each DATA event is exactly one line without its newline, however
 * TCP sliced it, and a last line without '\n' still comes as a DATA when the
 * client finishes. A line longer than 4 KiB (max_frame) is a protocol error:
 * netev never holds more than that of it, reports ERROR NETEV_ERR_PROTOCOL
 * and drops that client, so memory stays bounded. Each line goes out as
 * "ip:port: line" to everyone else with netev_connection_send_frame, which
 * adds the "\n"; a client that joins is greeted with a "* welcome" line first.
 *
 * Callbacks run on netev's I/O threads, concurrently for different clients,
 * so a mutex guards the list. The broadcast calls netev_connection_send_frame
 * (and close) with that mutex held: netev allows it, since neither call ever
 * runs a callback before returning, so no callback of ours can try to take
 * the mutex again underneath. Holding it keeps every line in the same order
 * for every client, and the handles in the list alive while they are used.
 *
 * SIGINT or SIGTERM stops it like echo_server: main waits in poll() on a
 * self-pipe.
 *
 * Usage: chat_server [PORT]    (0 or nothing: the system picks a free port)
 * First line on stdout: "listening on port N".
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LINE 4096

typedef struct client {
  netev_connection conn;
  char name[64];       /* "ip:port", or "[ipv6]:port" */
  struct client *next; /* in the list, under `lock` */
  bool listed;
} client;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static client *clients;           /* under `lock` */
static unsigned long joined, left; /* under `lock` */

static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "chat_server: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1);
  errno = saved;
}

/* Sends "name: text" as one line to every client but `from`. Called with
 * `lock` held. */
static void broadcast_locked(const client *from, const char *text, size_t len) {
  char msg[sizeof from->name + 2 + MAX_LINE];
  int head = snprintf(msg, sizeof msg, "%s: ", from->name);
  if (len > 0) memcpy(msg + head, text, len); /* an empty line's `text` may be NULL */
  size_t total = (size_t)head + len;
  for (client *c = clients; c; c = c->next) {
    if (c == from) continue;
    /* One frame: netev appends the "\n". `text` came out of a frame, so it
     * holds no '\n' and the peer reads exactly one line. */
    netev_status st = netev_connection_send_frame(c->conn, msg, total);
    if (st == NETEV_ERR_BUFFER_FULL) {
      /* 8 MiB of chat queued for a client that does not read: drop it.
       * close returns at once; its CLOSE and TERMINATE come later, on its
       * own thread, once this callback has let go of the lock. */
      fprintf(stderr, "chat_server: %s does not read: closing\n", c->name);
      check(netev_connection_close(c->conn), "close");
    } else if (st != NETEV_ERR_CLOSED) { /* CLOSED: it is leaving; skip it */
      check(st, "send");
    }
  }
}

/* The listener's on_connection: one client struct per connection, owned by
 * netev from here on through user_data / user_data_free. */
static bool on_incoming(netev_listener listener, const netev_event *e, void *user_data,
                        netev_connection_options *options) {
  (void)listener;
  (void)user_data;
  client *c = calloc(1, sizeof *c);
  if (!c) return false; /* out of memory: refuse this one, keep serving */
  c->conn = e->connection;
  if (strchr(e->ip, ':'))
    snprintf(c->name, sizeof c->name, "[%s]:%u", e->ip, (unsigned)e->port);
  else
    snprintf(c->name, sizeof c->name, "%s:%u", e->ip, (unsigned)e->port);
  options->user_data = c;
  options->user_data_free = free; /* after TERMINATE, when no callback can use it any more */
  return true;
}

/* The connection's own on_connection: the first event of an accepted
 * connection, before any DATA. */
static void on_connection(netev_connection conn, const netev_event *e, void *user_data) {
  (void)e;
  client *c = user_data;
  /* Our own reference: the handle stays valid until we release it, not
   * only until netev's TERMINATE returns. Here, where handles are only used
   * under the lock and removed in on_terminate, that is belt and braces;
   * it is what makes a handle safe to keep anywhere else (copied out of the
   * list, in a timer, in another thread's queue). */
  check(netev_connection_retain(conn), "retain");
  pthread_mutex_lock(&lock);
  c->next = clients;
  clients = c;
  c->listed = true;
  unsigned long n = ++joined - left;
  pthread_mutex_unlock(&lock);
  printf("%s joined (%lu online)\n", c->name, n);
  /* From now on this client hears every line: say so, which also tells a
   * client (or a test) when it is safe to expect broadcasts. */
  char welcome[128];
  int len = snprintf(welcome, sizeof welcome, "* welcome %s, %lu online", c->name, n);
  netev_status st = netev_connection_send_frame(conn, welcome, (size_t)len);
  if (st != NETEV_ERR_CLOSED) check(st, "send");
}

/* One DATA is one line, without its '\n' (delimiter framing): no buffer of
 * our own, no searching for newlines, whatever pieces TCP delivered. */
static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  client *c = user_data;
  size_t len = e->data_len;
  if (len > 0 && e->data[len - 1] == '\r') len--; /* telnet and friends end lines with \r\n */
  pthread_mutex_lock(&lock);
  broadcast_locked(c, (const char *)e->data, len);
  pthread_mutex_unlock(&lock);
}

/* NETEV_ERR_PROTOCOL here is a line over max_frame: netev already dropped
 * the client (TERMINATE follows), having kept at most 4 KiB of it. */
static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  client *c = user_data;
  printf("%s failed: %s: %s\n", c->name, netev_status_name((int32_t)e->error), e->message);
}

static void on_terminate(netev_connection conn, const netev_event *e, void *user_data) {
  (void)e;
  client *c = user_data;
  pthread_mutex_lock(&lock);
  bool listed = c->listed;
  if (listed) {
    for (client **p = &clients; *p; p = &(*p)->next) {
      if (*p == c) {
        *p = c->next;
        break;
      }
    }
    c->listed = false;
    left++;
  }
  unsigned long n = joined - left;
  pthread_mutex_unlock(&lock);
  printf("%s left (%lu online)\n", c->name, n);
  /* Out of the list, so no broadcast can pick the handle up any more: give
   * our reference back. netev frees `c` through user_data_free after this. */
  if (listed) check(netev_connection_release(conn), "release");
}

int main(int argc, char **argv) {
  if (argc > 2) {
    fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
    return 2;
  }
  char *end;
  long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
  if (argc == 2 && (*argv[1] == '\0' || *end != '\0' || port < 0 || port > 65535)) {
    fprintf(stderr, "chat_server: bad port\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* The self-pipe and handlers, with the signals blocked while netev starts
   * its threads so that only main ever receives them (see echo_server.c). */
  if (pipe(signal_pipe) != 0) {
    perror("chat_server: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("chat_server: fcntl");
      return 1;
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      pthread_sigmask(SIG_BLOCK, &stop_signals, NULL) != 0) {
    perror("chat_server: signals");
    return 1;
  }

  /* What every accepted connection starts from; netev copies it in open. */
  netev_connection_options defaults;
  check(netev_connection_options_init(&defaults), "connection_options_init");
  defaults.on_connection = on_connection;
  defaults.on_data = on_data;
  defaults.on_error = on_error;
  defaults.on_terminate = on_terminate;
  defaults.no_delay = true;
  /* Each DATA is one line. delimiter is copied at listener_open, like the
   * rest of the defaults. */
  defaults.framing = NETEV_FRAMING_DELIMITER;
  defaults.delimiter = (const uint8_t *)"\n";
  defaults.delimiter_len = 1;
  defaults.max_frame = MAX_LINE;

  netev_listener_options options;
  check(netev_listener_options_init(&options), "listener_options_init");
  options.on_connection = on_incoming;
  options.connection_defaults = &defaults;

  netev_listener listener;
  check(netev_listener_open((uint16_t)port, &options, &listener), "listener_open");
  uint16_t real_port;
  check(netev_listener_port(listener, &real_port), "listener_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("chat_server: pthread_sigmask");
    return 1;
  }

  unsigned char sig = 0;
  for (;;) {
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("chat_server: poll");
      return 1;
    }
    if (read(signal_pipe[0], &sig, 1) == 1) break;
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  /* runtime_shutdown closes every client; each on_terminate still runs and
   * releases its reference, so the list is empty once it returns. */
  check(netev_listener_terminate(listener), "listener_terminate");
  check(netev_listener_release(listener), "listener_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");

  printf("%lu client%s came and went\n", joined, joined == 1 ? "" : "s");
  if (clients != NULL || joined != left) {
    fprintf(stderr, "chat_server: clients left in the list after shutdown\n");
    return 1;
  }
  return 0;
}
