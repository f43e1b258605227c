/* echo_server: a TCP echo server, 4D's TCPListener in C.
 *
 * Every byte a client sends comes back to it. A line is printed for each
 * connection accepted and each one that ends. SIGINT (Ctrl-C) or SIGTERM
 * stops the server cleanly: it stops accepting, ends the connections still
 * open, prints the totals and exits 0.
 *
 * The callbacks run on netev's I/O threads, several at once for different
 * connections, so the counters they share are atomics. The main thread only
 * waits for a signal, in poll() on a self-pipe.
 *
 * Usage: echo_server [PORT]    (0 or nothing: the system picks a free port)
 * The first line on stdout is "listening on port N", flushed at once, so a
 * script can start this in the background and read where to connect.
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong accepted, ended;
static atomic_ullong echoed;

/* The self-pipe: the signal handler writes one byte, main polls the other end. */
static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "echo_server: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

/* Only async-signal-safe calls here: write() and errno. */
static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1); /* pipe full: a stop is already pending */
  errno = saved;
}

/* The listener's on_connection: decides on each incoming connection. The
 * options are pre-filled from connection_defaults below; returning true
 * accepts with them. */
static bool on_incoming(netev_listener listener, const netev_event *e, void *user_data,
                        netev_connection_options *options) {
  (void)listener;
  (void)user_data;
  (void)options;
  unsigned long n = atomic_fetch_add(&accepted, 1) + 1;
  printf("connection %lu accepted from %s:%u\n", n, e->ip, (unsigned)e->port);
  return true;
}

static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  /* send copies the bytes, so the borrowed data can go straight back. */
  netev_status st = netev_connection_send(conn, e->data, e->data_len);
  if (st == NETEV_OK) {
    atomic_fetch_add(&echoed, e->data_len);
  } else if (st == NETEV_ERR_BUFFER_FULL) {
    /* The client sends but does not read its echo, and 8 MiB are already
     * queued for it. netev has no way yet to pause reading, so rather than
     * buffer without limit, the client is cut off. */
    fprintf(stderr, "echo_server: %s:%u does not read its echo: closing\n", e->ip, (unsigned)e->port);
    check(netev_connection_close(conn), "close");
  } else if (st != NETEV_ERR_CLOSED) { /* CLOSED: already being closed, nothing to do */
    check(st, "send");
  }
  /* When the client shuts its side down, netev shuts ours once every byte
   * queued here is out (allow_half_open is false): nothing to do for END. */
}

static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  (void)user_data;
  printf("connection from %s:%u failed: %s: %s\n", e->ip, (unsigned)e->port, netev_status_name((int32_t)e->error),
         e->message);
}

/* TERMINATE is the last event of every accepted connection, however it
 * ended; after it returns the handle is gone (we never retained it). */
static void on_terminate(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  (void)user_data;
  unsigned long n = atomic_fetch_add(&ended, 1) + 1;
  printf("connection from %s:%u closed (%lu closed so far)\n", e->ip, (unsigned)e->port, n);
}

static void on_listener_error(netev_listener listener, const netev_event *e, void *user_data) {
  (void)listener;
  (void)user_data;
  /* e.g. out of file descriptors; netev keeps accepting with a back-off. */
  fprintf(stderr, "echo_server: accept failed: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

int main(int argc, char **argv) {
  if (argc > 2) {
    fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
    return 2;
  }
  char *end;
  long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
  if (argc == 2 && (*argv[1] == '\0' || *end != '\0' || port < 0 || port > 65535)) {
    fprintf(stderr, "echo_server: bad port\n");
    return 2;
  }
  /* Whoever reads our output through a pipe gets each line as it happens. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* Signals first, before netev starts its threads: with SIGINT and SIGTERM
   * blocked here, the threads netev creates inherit the mask, so the signals
   * can only be delivered to main once it unblocks them below. */
  if (pipe(signal_pipe) != 0) {
    perror("echo_server: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("echo_server: fcntl");
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
    perror("echo_server: signals");
    return 1;
  }

  /* What every accepted connection gets; on_incoming could change it per
   * connection. netev copies it in listener_open. */
  netev_connection_options defaults;
  check(netev_connection_options_init(&defaults), "connection_options_init");
  defaults.on_data = on_data;
  defaults.on_error = on_error;
  defaults.on_terminate = on_terminate;
  defaults.no_delay = true;

  netev_listener_options options;
  check(netev_listener_options_init(&options), "listener_options_init");
  options.on_connection = on_incoming;
  options.on_error = on_listener_error;
  options.connection_defaults = &defaults;

  netev_listener listener;
  check(netev_listener_open((uint16_t)port, &options, &listener), "listener_open");
  uint16_t real_port;
  check(netev_listener_port(listener, &real_port), "listener_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("echo_server: pthread_sigmask");
    return 1;
  }

  /* Everything happens in the callbacks; main sleeps until a signal. */
  unsigned char sig = 0;
  for (;;) {
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue; /* the handler ran: the byte is in the pipe */
      perror("echo_server: poll");
      return 1;
    }
    if (read(signal_pipe[0], &sig, 1) == 1) break;
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  /* The port is free once terminate returns. runtime_shutdown then closes
   * the connections still open, waits (at most 5 s) until every TERMINATE
   * callback has returned, and stops netev's threads: after it the counters
   * are ours alone. The listener handle goes back before that, while the
   * runtime that owns it still runs. */
  check(netev_listener_terminate(listener), "listener_terminate");
  check(netev_listener_release(listener), "listener_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");

  unsigned long a = atomic_load(&accepted), c = atomic_load(&ended);
  printf("served %lu connection%s, %llu bytes echoed\n", a, a == 1 ? "" : "s", (unsigned long long)atomic_load(&echoed));
  if (a != c) {
    fprintf(stderr, "echo_server: %lu connections accepted but %lu ended\n", a, c);
    return 1;
  }
  return 0;
}
