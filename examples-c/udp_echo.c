/* udp_echo: a UDP echo server, 4D's UDPSocket in C.
 *
 * Every datagram that arrives goes back, unchanged, to the address and port
 * it came from (netev_udp_send to the DATA event's `ip` and `port`). The
 * first datagram from each sender prints a line naming it, as echo_server
 * prints each connection; an empty datagram is echoed as an empty datagram.
 * SIGINT (Ctrl-C) or SIGTERM stops the server cleanly: it closes the socket,
 * shuts netev down, prints the totals and exits 0.
 *
 * UDP has no connections: one socket serves every peer, and its callbacks
 * never overlap (netev runs them one at a time, on one of its I/O threads),
 * so the counters and the table of senders below need no lock. main reads
 * them only after netev_runtime_shutdown returned NETEV_OK, when no
 * callback runs any more.
 *
 * Usage: udp_echo [PORT]    (0 or nothing: the system picks a free port)
 * The socket listens on every interface, IPv6 and IPv4. The first line on
 * stdout is "listening on port N", flushed at once, so a script can start
 * this in the background and read where to send.
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

/* Senders remembered, to print each once; past this many, new ones are
 * still echoed and counted, just not printed. */
#define MAX_PEERS 1024

typedef struct {
  char ip[NETEV_IP_TEXT_LEN];
  uint16_t port;
} peer;

/* Touched only by the socket's callbacks (never two at once), then by main
 * after runtime shutdown. */
static peer peers[MAX_PEERS];
static size_t npeers;
static unsigned long long new_peers, datagrams, bytes, dropped, errors;

/* The self-pipe: the signal handler writes one byte, main polls the other end. */
static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "udp_echo: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

/* Only async-signal-safe calls here: write() and errno. */
static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1); /* pipe full: a stop is already pending */
  errno = saved;
}

/* Prints a sender the first time it is seen. A linear search is fine for
 * an example; a server with many peers would hash them. */
static void note_sender(const netev_event *e) {
  for (size_t i = 0; i < npeers; i++)
    if (peers[i].port == e->port && strcmp(peers[i].ip, e->ip) == 0) return;
  new_peers++;
  if (npeers == MAX_PEERS) return;
  memcpy(peers[npeers].ip, e->ip, NETEV_IP_TEXT_LEN);
  peers[npeers].port = e->port;
  npeers++;
  /* An IPv6 address in brackets, so that "ip:port" is unambiguous. */
  const char *fmt = strchr(e->ip, ':') ? "datagram from [%s]:%u\n" : "datagram from %s:%u\n";
  printf(fmt, e->ip, (unsigned)e->port);
}

/* DATA: one datagram, whole; `ip` and `port` are its sender's. */
static void on_data(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)user_data;
  note_sender(e);
  datagrams++;
  bytes += e->data_len;
  /* send copies the bytes, so the borrowed datagram can go straight back.
   * e->data is NULL for an empty datagram, which send takes with len 0. */
  netev_status st = netev_udp_send(sock, e->data, e->data_len, e->ip, e->port);
  if (st == NETEV_ERR_BUFFER_FULL) {
    /* 1 MiB of replies already waits for the kernel: a flood. UDP promises
     * nothing, so this reply is dropped; a later send may succeed. */
    dropped++;
  } else if (st != NETEV_OK && st != NETEV_ERR_CLOSED) { /* CLOSED: we are stopping */
    char msg[512];
    netev_last_error_message(msg, sizeof msg);
    printf("reply to %s:%u refused: %s: %s\n", e->ip, (unsigned)e->port, netev_status_name((int32_t)st), msg);
    dropped++;
  }
}

/* ERROR: a reply the OS refused later (for instance an ICMP "port
 * unreachable" from a sender that has gone). The socket goes on. */
static void on_error(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)sock;
  (void)user_data;
  errors++;
  printf("error: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

int main(int argc, char **argv) {
  if (argc > 2) {
    fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
    return 2;
  }
  char *end;
  long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
  if (argc == 2 && (*argv[1] == '\0' || *end != '\0' || port < 0 || port > 65535)) {
    fprintf(stderr, "udp_echo: bad port\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* Signals first, before netev starts its threads: they inherit the mask
   * with SIGINT and SIGTERM blocked, so only main receives them (see
   * echo_server.c). */
  if (pipe(signal_pipe) != 0) {
    perror("udp_echo: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("udp_echo: fcntl");
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
    perror("udp_echo: signals");
    return 1;
  }

  netev_udp_options options;
  check(netev_udp_options_init(&options), "udp_options_init");
  options.on_data = on_data;
  options.on_error = on_error;
  /* bind_address NULL: every interface, IPv6 and IPv4 (an IPv4 sender
   * shows as "a.b.c.d"). */

  netev_udp_socket sock;
  check(netev_udp_open((uint16_t)port, &options, &sock), "udp_open");
  uint16_t real_port;
  check(netev_udp_port(sock, &real_port), "udp_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("udp_echo: pthread_sigmask");
    return 1;
  }

  /* Everything happens in the callbacks; main sleeps until a signal. */
  unsigned char sig = 0;
  for (;;) {
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("udp_echo: poll");
      return 1;
    }
    if (read(signal_pipe[0], &sig, 1) == 1) break;
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  /* The port is free once close returns; release gives the handle back
   * (TERMINATE follows). runtime_shutdown then waits (at most 5 s) until
   * every callback has returned and stops netev's threads: after it the
   * counters are ours alone. */
  check(netev_udp_close(sock), "udp_close");
  check(netev_udp_release(sock), "udp_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");

  printf("echoed %llu datagram%s, %llu bytes, from %llu sender%s; %llu repl%s dropped, %llu error%s\n", datagrams,
         datagrams == 1 ? "" : "s", bytes, new_peers, new_peers == 1 ? "" : "s", dropped, dropped == 1 ? "y" : "ies",
         errors, errors == 1 ? "" : "s");
  return 0;
}
