/* netev_echo: the benchmark's echo server on netev.
 *
 * Usage: netev_echo [--dispatcher] [--workers N] [--framing] [--cert FILE --key FILE] [--udp] PORT
 *
 *   default        callbacks run on netev's I/O threads; on_data echoes the
 *                  borrowed bytes straight back with netev_connection_send.
 *   --framing      4-byte length-prefix framing: each DATA is one frame,
 *                  echoed with netev_connection_send_frame.
 *   --dispatcher   the listener and its connections are bound to a
 *                  netev_dispatcher that the main thread runs from a poll()
 *                  loop on netev_dispatcher_fd (the GUI / interpreter shape).
 *   --workers N    netev_runtime_init with worker_threads = N (0 = default,
 *                  one per core).
 *   --cert FILE --key FILE
 *                  TLS: a server configuration from this certificate chain
 *                  and key (PEM) becomes the listener's connection default,
 *                  so every accepted connection speaks TLS and on_data sees
 *                  plaintext. Combines with the options above.
 *   --udp          UDP instead: one netev UDP socket (netev_udp_open, every
 *                  interface, IPv6 and IPv4) whose on_data sends each
 *                  datagram back to its sender's ip and port with
 *                  netev_udp_send. Combines with --dispatcher and --workers.
 *                  A reply refused (NETEV_ERR_BUFFER_FULL) is dropped and
 *                  counted, as UDP allows; the count goes to stderr at exit.
 *
 * PORT 0 picks a free port. The first line on stdout is "port N", flushed.
 * SIGTERM or SIGINT: stop accepting, shut the runtime down, exit 0.
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int signal_pipe[2] = {-1, -1};

static void check(netev_status st, const char *what) {
  if (st == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "netev_echo: %s: %s: %s\n", what, netev_status_name(st), msg);
  exit(1);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  (void)!write(signal_pipe[1], &b, 1);
  errno = saved;
}

static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  netev_status st = netev_connection_send(conn, e->data, e->data_len);
  if (st == NETEV_ERR_BUFFER_FULL) {
    /* The load generator bounds what it has in flight well below the 8 MiB
     * limit, so this means a broken client: cut it off. */
    fprintf(stderr, "netev_echo: peer does not read its echo: closing\n");
    netev_connection_close(conn);
  } else if (st != NETEV_OK && st != NETEV_ERR_CLOSED) {
    check(st, "send");
  }
}

/* --framing: each DATA is one length-prefixed frame's payload; the echo is
 * the same frame, prefix added back by send_frame. */
static void on_frame(netev_connection conn, const netev_event *e, void *user_data) {
  (void)user_data;
  netev_status st = netev_connection_send_frame(conn, e->data, e->data_len);
  if (st == NETEV_ERR_BUFFER_FULL) {
    fprintf(stderr, "netev_echo: peer does not read its echo: closing\n");
    netev_connection_close(conn);
  } else if (st != NETEV_OK && st != NETEV_ERR_CLOSED) {
    check(st, "send_frame");
  }
}

/* --udp: each DATA is one datagram; back it goes, to the sender's address. */
static unsigned long long udp_dropped; /* the socket's callbacks never overlap */

static void on_datagram(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)user_data;
  netev_status st = netev_udp_send(sock, e->data, e->data_len, e->ip, e->port);
  if (st == NETEV_ERR_BUFFER_FULL) udp_dropped++;
  else if (st != NETEV_OK && st != NETEV_ERR_CLOSED) check(st, "udp_send");
}

static void on_udp_error(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)sock;
  (void)user_data;
  fprintf(stderr, "netev_echo: UDP error: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

static void on_listener_error(netev_listener l, const netev_event *e, void *user_data) {
  (void)l;
  (void)user_data;
  fprintf(stderr, "netev_echo: listener error: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

static void usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--dispatcher] [--workers N] [--framing] [--cert FILE --key FILE] [--udp] PORT\n",
          argv0);
  exit(2);
}

int main(int argc, char **argv) {
  int use_dispatcher = 0, framing = 0, udp = 0;
  long workers = 0, port = -1;
  const char *cert = NULL, *key = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--dispatcher") == 0) {
      use_dispatcher = 1;
    } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      workers = strtol(argv[++i], NULL, 10);
      if (workers < 0) usage(argv[0]);
    } else if (strcmp(argv[i], "--framing") == 0) {
      framing = 1;
    } else if (strcmp(argv[i], "--udp") == 0) {
      udp = 1;
    } else if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc) {
      cert = argv[++i];
    } else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc) {
      key = argv[++i];
    } else if (port < 0 && argv[i][0] >= '0' && argv[i][0] <= '9') {
      char *end;
      port = strtol(argv[i], &end, 10);
      if (*end || port > 65535) usage(argv[0]);
    } else {
      usage(argv[0]);
    }
  }
  if (port < 0 || !cert != !key || (udp && (cert || framing))) usage(argv[0]);

  /* Block the stop signals before netev starts its threads (they inherit
   * the mask), so only main receives them, through the self-pipe. */
  if (pipe(signal_pipe) != 0) return perror("pipe"), 1;
  for (int i = 0; i < 2; i++) fcntl(signal_pipe[i], F_SETFL, O_NONBLOCK);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);

  netev_runtime_options ro;
  check(netev_runtime_options_init(&ro), "runtime_options_init");
  ro.worker_threads = (uint32_t)workers;
  check(netev_runtime_init(&ro), "runtime_init");

  netev_dispatcher d = 0;
  int dfd = -1;
  if (use_dispatcher) {
    check(netev_dispatcher_create(&d), "dispatcher_create");
    check(netev_dispatcher_fd(d, &dfd), "dispatcher_fd");
  }

  netev_udp_socket usock = 0;
  netev_listener listener = 0;
  uint16_t real_port;
  netev_tls_config tls = 0;
  if (udp) {
    netev_udp_options uo;
    check(netev_udp_options_init(&uo), "udp_options_init");
    uo.on_data = on_datagram;
    uo.on_error = on_udp_error;
    uo.dispatcher = d;
    /* IPv4, as libuv's and the raw server's sockets: netev's default is
     * dual-stack, whose IPv4-mapped path costs the kernel more. */
    uo.bind_address = "0.0.0.0";
    check(netev_udp_open((uint16_t)port, &uo, &usock), "udp_open");
    check(netev_udp_port(usock, &real_port), "udp_port");
  } else {
    netev_connection_options defaults;
    check(netev_connection_options_init(&defaults), "connection_options_init");
    defaults.on_data = framing ? on_frame : on_data;
    if (framing) defaults.framing = NETEV_FRAMING_LENGTH_PREFIX; /* 4-byte prefix */
    defaults.no_delay = true;
    if (cert) {
      netev_tls_options to;
      check(netev_tls_options_init(&to), "tls_options_init");
      to.cert_file = cert;
      to.key_file = key;
      check(netev_tls_server_config_create(&to, &tls), "tls_server_config_create");
      defaults.tls = tls;
    }
    netev_listener_options lo;
    check(netev_listener_options_init(&lo), "listener_options_init");
    lo.on_error = on_listener_error;
    lo.connection_defaults = &defaults;
    lo.dispatcher = d; /* accepted connections inherit it */
    check(netev_listener_open((uint16_t)port, &lo, &listener), "listener_open");
    check(netev_listener_port(listener, &real_port), "listener_port");
  }
  printf("port %u\n", (unsigned)real_port);
  fflush(stdout);

  pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
  for (;;) {
    struct pollfd p[2] = {{.fd = signal_pipe[0], .events = POLLIN}, {.fd = dfd, .events = POLLIN}};
    if (poll(p, use_dispatcher ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("poll");
      return 1;
    }
    if (p[0].revents) {
      unsigned char sig;
      if (read(signal_pipe[0], &sig, 1) == 1) break;
    }
    if (use_dispatcher && p[1].revents) check(netev_dispatcher_run(d, 0, NULL), "dispatcher_run");
  }

  if (usock) {
    check(netev_udp_close(usock), "udp_close");
    check(netev_udp_release(usock), "udp_release");
  } else {
    check(netev_listener_terminate(listener), "listener_terminate");
    check(netev_listener_release(listener), "listener_release");
  }
  if (use_dispatcher) check(netev_dispatcher_release(d), "dispatcher_release");
  if (tls) check(netev_tls_config_release(tls), "tls_config_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");
  if (udp_dropped) fprintf(stderr, "netev_echo: %llu UDP replies dropped (send queue full)\n", udp_dropped);
  return 0;
}
