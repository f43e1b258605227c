/* proxy: a TCP forwarder. Every connection accepted on LISTEN_PORT gets a
 * connection of its own to TARGET_HOST:TARGET_PORT, and bytes flow both ways
 * until both sides are done.
 *
 * What a forwarder has to get right, and how netev does it here:
 * - Back-pressure. Each side reads as fast as its peer sends, but its bytes
 *   go out only as fast as the other peer reads. When a send to one side is
 *   refused with NETEV_ERR_BUFFER_FULL (its 8 MiB send limit is reached),
 *   the side the bytes came from is paused (netev_connection_pause: netev
 *   stops reading it, so its peer's sends back up into the kernel and then
 *   block). The refused chunk is kept, and on the full side's DRAIN it goes
 *   out (netev_connection_send_owned: netev takes our copy as it is) and the
 *   paused side is resumed. Memory per pair stays bounded: at most two send
 *   queues of 8 MiB and one refused chunk per direction, however fast one
 *   peer writes and however slowly the other reads.
 * - Bytes that arrive before the target is connected are not lost: netev
 *   queues sends made before the connection is established and writes them
 *   once it is, so they go through the same send as everything else.
 * - Half-close. Both connections allow half-open: when one peer finishes
 *   sending (END), the other connection is shut down once every byte queued
 *   for it is out, and the other direction goes on until it finishes too
 *   (as HTTP/1.0 or `nc -N` expect).
 * - Failure. An ERROR on one side, or a CLOSE that was not the end of both
 *   directions, closes the other side at once (a refused target closes the
 *   client's connection).
 *
 * Callbacks of the two connections of a pair may run at the same time on
 * different netev I/O threads, so each pair has a mutex. netev functions
 * are called with it held: none of them runs a callback before returning,
 * so no callback of ours can try to take it again underneath.
 *
 * SIGINT or SIGTERM stops it like echo_server: main waits in poll() on a
 * self-pipe.
 *
 * Usage: proxy LISTEN_PORT TARGET_HOST TARGET_PORT
 *   (LISTEN_PORT 0: the system picks a free port)
 * First line on stdout: "listening on port N". Then, for example, in front
 * of http_hello: curl http://127.0.0.1:N/
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { CLIENT = 0, TARGET = 1 }; /* the two sides of a pair */

struct pair;

/* A connection's user_data: which pair, and which side of it. */
typedef struct side {
  struct pair *pair;
  int index; /* CLIENT or TARGET; the other side is !index */
} side;

typedef struct pair {
  pthread_mutex_t lock; /* everything below */
  side sides[2];
  netev_connection conn[2]; /* 0 once that side's TERMINATE ran */
  /* A chunk side i sent that side !i refused (BUFFER_FULL), kept until
   * side !i drains; side i is paused meanwhile. */
  void *held[2];
  size_t held_len[2];
  bool ended[2];             /* END came from side i */
  unsigned long pauses[2];   /* how often side i was paused */
  unsigned long long in[2];  /* bytes received from side i (its stats) */
  int refs;                  /* sides whose user_data_free has yet to run */
  char name[64];             /* the client, "ip:port" */
} pair;

static const char *target_host;
static uint16_t target_port;
static netev_connection_options target_options; /* filled in main, copied by each open */

static atomic_ulong pairs_opened, pairs_freed;

static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "proxy: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

/* For calls on a connection that may be ending meanwhile (the peer's end
 * races with ours): NETEV_ERR_CLOSED is not a failure there. */
static void check_open(netev_status status, const char *what) {
  if (status != NETEV_ERR_CLOSED) check(status, what);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1);
  errno = saved;
}

/* Runs once for each side, after its TERMINATE: the last one frees the pair. */
static void side_free(void *user_data) {
  side *s = user_data;
  pair *p = s->pair;
  pthread_mutex_lock(&p->lock);
  bool last = --p->refs == 0;
  pthread_mutex_unlock(&p->lock);
  if (!last) return;
  printf("%s: done, %llu bytes to the target, %llu back, paused %lu+%lu times\n", p->name, p->in[CLIENT],
         p->in[TARGET], p->pauses[CLIENT], p->pauses[TARGET]);
  free(p->held[CLIENT]);
  free(p->held[TARGET]);
  pthread_mutex_destroy(&p->lock);
  free(p);
  atomic_fetch_add(&pairs_freed, 1);
}

/* The listener's on_connection: a pair for each client, the client's side
 * its user_data. The target is opened in the client's own CONNECTION, once
 * the client connection runs, so that whatever happens to the target can
 * act on it. */
static bool on_incoming(netev_listener listener, const netev_event *e, void *user_data,
                        netev_connection_options *options) {
  (void)listener;
  (void)user_data;
  pair *p = calloc(1, sizeof *p);
  if (!p) return false; /* out of memory: refuse this one, keep serving */
  pthread_mutex_init(&p->lock, NULL);
  for (int i = 0; i < 2; i++) p->sides[i] = (side){.pair = p, .index = i};
  p->conn[CLIENT] = e->connection;
  p->refs = 1;
  if (strchr(e->ip, ':'))
    snprintf(p->name, sizeof p->name, "[%s]:%u", e->ip, (unsigned)e->port);
  else
    snprintf(p->name, sizeof p->name, "%s:%u", e->ip, (unsigned)e->port);
  atomic_fetch_add(&pairs_opened, 1);
  options->user_data = &p->sides[CLIENT];
  options->user_data_free = side_free;
  return true;
}

static void on_connection(netev_connection conn, const netev_event *e, void *user_data) {
  (void)e;
  side *s = user_data;
  pair *p = s->pair;
  pthread_mutex_lock(&p->lock);
  if (s->index == CLIENT) {
    /* The target's handle is written to the pair before any of its
     * callbacks can run; those wait for the lock until we are done. */
    netev_connection_options o = target_options;
    o.user_data = &p->sides[TARGET];
    p->refs++;
    netev_status st = netev_connection_open(target_host, target_port, &o, &p->conn[TARGET]);
    if (st != NETEV_OK) { /* e.g. NETEV_ERR_SHUTDOWN: no callback of it will run */
      char msg[256];
      netev_last_error_message(msg, sizeof msg);
      printf("%s: cannot open the target: %s: %s\n", p->name, netev_status_name(st), msg);
      p->refs--;
      p->conn[TARGET] = 0;
      check(netev_connection_close(conn), "close");
    }
  } else {
    /* Our own end of the target connection (bind_address would choose it). */
    char local[NETEV_IP_TEXT_LEN];
    size_t needed;
    uint16_t local_port = 0;
    check(netev_connection_local_address(conn, local, sizeof local, &needed), "local_address");
    check(netev_connection_local_port(conn, &local_port), "local_port");
    printf("%s: connected to %s:%u from %s:%u\n", p->name, target_host, (unsigned)target_port, local,
           (unsigned)local_port);
  }
  pthread_mutex_unlock(&p->lock);
}

/* Keeps bytes of side i that side !i cannot take yet, after what is already
 * kept. Called with the lock held. */
static bool hold(pair *p, int i, const uint8_t *data, size_t len) {
  void *grown = realloc(p->held[i], p->held_len[i] + len);
  if (!grown) return false;
  memcpy((char *)grown + p->held_len[i], data, len);
  p->held[i] = grown;
  p->held_len[i] += len;
  return true;
}

/* Bytes from side i go to side !i. */
static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  side *s = user_data;
  pair *p = s->pair;
  int i = s->index;
  pthread_mutex_lock(&p->lock);
  netev_connection to = p->conn[!i];
  if (!to || e->data_len == 0) { /* !to: the other side is gone, and ours is being closed */
    pthread_mutex_unlock(&p->lock);
    return;
  }
  /* Bytes already held go first: nothing may overtake them. (The pause
   * below stops further DATA, so this is only a safeguard.) */
  netev_status st = p->held[i] ? NETEV_ERR_BUFFER_FULL : netev_connection_send(to, e->data, e->data_len);
  if (st == NETEV_ERR_BUFFER_FULL) {
    /* Nothing of it was queued. Keep it for the DRAIN that follows, and stop
     * reading this side until then: no more DATA arrives from it meanwhile,
     * so this one chunk is all we hold. */
    bool was_held = p->held[i] != NULL;
    if (hold(p, i, e->data, e->data_len)) {
      check(netev_connection_pause(conn), "pause");
      if (!was_held) p->pauses[i]++;
    } else {
      fprintf(stderr, "proxy: %s: out of memory: closing\n", p->name);
      check(netev_connection_close(conn), "close");
      check(netev_connection_close(to), "close");
    }
  } else {
    check_open(st, "send"); /* CLOSED: the other side is ending; drop it */
  }
  pthread_mutex_unlock(&p->lock);
}

/* Side j's queue fell to half its limit, after a refused send: the chunk
 * side !j could not pass on goes out now, and side !j reads again. */
static void on_drain(netev_connection conn, const netev_event *e, void *user_data) {
  (void)e;
  side *s = user_data;
  pair *p = s->pair;
  int from = !s->index;
  pthread_mutex_lock(&p->lock);
  if (p->held[from]) {
    /* netev takes our copy as it is and frees it when written (or dropped). */
    netev_status st = netev_connection_send_owned(conn, p->held[from], p->held_len[from], free, p->held[from]);
    if (st == NETEV_ERR_BUFFER_FULL) { /* still too full for it: another DRAIN follows */
      pthread_mutex_unlock(&p->lock);
      return;
    }
    if (st != NETEV_OK) {
      check_open(st, "send_owned");
      free(p->held[from]); /* refused: still ours */
    }
    p->held[from] = NULL;
    p->held_len[from] = 0;
    if (p->conn[from]) check(netev_connection_resume(p->conn[from]), "resume");
  }
  pthread_mutex_unlock(&p->lock);
}

/* Side i finished sending: so does the other side once its queue is out.
 * (With a chunk held, side i is paused, and its END waits for the resume.) */
static void on_end(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  (void)e;
  side *s = user_data;
  pair *p = s->pair;
  pthread_mutex_lock(&p->lock);
  p->ended[s->index] = true;
  netev_connection to = p->conn[!s->index];
  if (to) check_open(netev_connection_shutdown(to), "shutdown");
  pthread_mutex_unlock(&p->lock);
}

/* CLOSE after END on this side is the orderly end: the other side ended
 * too, was shut down, and closes by itself once its queue is out. A CLOSE
 * without END (we closed this side, or the runtime is shutting down) ends
 * the other side now. */
static void on_close(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  (void)e;
  side *s = user_data;
  pair *p = s->pair;
  pthread_mutex_lock(&p->lock);
  netev_connection to = p->conn[!s->index];
  if (to && !p->ended[s->index]) check(netev_connection_close(to), "close");
  pthread_mutex_unlock(&p->lock);
}

static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  side *s = user_data;
  pair *p = s->pair;
  pthread_mutex_lock(&p->lock);
  if (s->index == TARGET)
    printf("%s: target %s:%u: %s: %s\n", p->name, target_host, (unsigned)target_port,
           netev_status_name((int32_t)e->error), e->message);
  else
    printf("%s: %s: %s\n", p->name, netev_status_name((int32_t)e->error), e->message);
  netev_connection to = p->conn[!s->index];
  if (to) check(netev_connection_close(to), "close");
  pthread_mutex_unlock(&p->lock);
}

/* The last event of each side: its counters, then its handle is gone (the
 * client's is netev's; the target's is ours from open, given back here). */
static void on_terminate(netev_connection conn, const netev_event *e, void *user_data) {
  (void)e;
  side *s = user_data;
  pair *p = s->pair;
  netev_connection_stats stats;
  check(netev_connection_stats_get(conn, &stats), "stats_get");
  pthread_mutex_lock(&p->lock);
  p->in[s->index] = stats.bytes_received;
  p->conn[s->index] = 0;
  if (s->index == TARGET) check(netev_connection_release(conn), "release");
  pthread_mutex_unlock(&p->lock);
}

static void on_listener_error(netev_listener listener, const netev_event *e, void *user_data) {
  (void)listener;
  (void)user_data;
  /* e.g. out of file descriptors; netev keeps accepting with a back-off. */
  fprintf(stderr, "proxy: accept failed: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

static bool parse_port(const char *text, long min, long *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || errno != 0 || v < min || v > 65535) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  long listen_port, port;
  if (argc != 4 || !parse_port(argv[1], 0, &listen_port) || !parse_port(argv[3], 1, &port)) {
    fprintf(stderr, "usage: %s LISTEN_PORT TARGET_HOST TARGET_PORT\n", argv[0]);
    return 2;
  }
  target_host = argv[2];
  target_port = (uint16_t)port;
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* The self-pipe and handlers, with the signals blocked while netev starts
   * its threads so that only main ever receives them (see echo_server.c). */
  if (pipe(signal_pipe) != 0) {
    perror("proxy: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("proxy: fcntl");
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
    perror("proxy: signals");
    return 1;
  }

  /* Both sides behave alike: the same callbacks (each knows its side from
   * its user_data), half-open allowed so that each direction ends on its
   * own, no Nagle delay added to what the peers already chose, and the
   * default 8 MiB send limit. */
  netev_connection_options defaults;
  check(netev_connection_options_init(&defaults), "connection_options_init");
  defaults.on_connection = on_connection;
  defaults.on_data = on_data;
  defaults.on_drain = on_drain;
  defaults.on_end = on_end;
  defaults.on_shutdown = on_close;
  defaults.on_error = on_error;
  defaults.on_terminate = on_terminate;
  defaults.user_data_free = side_free;
  defaults.allow_half_open = true;
  defaults.no_delay = true;
  target_options = defaults;

  netev_listener_options options;
  check(netev_listener_options_init(&options), "listener_options_init");
  options.on_connection = on_incoming;
  options.on_error = on_listener_error;
  options.connection_defaults = &defaults;

  netev_listener listener;
  check(netev_listener_open((uint16_t)listen_port, &options, &listener), "listener_open");
  uint16_t real_port;
  check(netev_listener_port(listener, &real_port), "listener_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("proxy: pthread_sigmask");
    return 1;
  }

  unsigned char sig = 0;
  for (;;) {
    struct pollfd pfd = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&pfd, 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("proxy: poll");
      return 1;
    }
    if (read(signal_pipe[0], &sig, 1) == 1) break;
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  /* runtime_shutdown closes both sides of every pair still open; each
   * TERMINATE and user_data_free still runs, so every pair is freed once it
   * returns. */
  check(netev_listener_terminate(listener), "listener_terminate");
  check(netev_listener_release(listener), "listener_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");

  unsigned long opened = atomic_load(&pairs_opened), freed = atomic_load(&pairs_freed);
  printf("proxied %lu connection%s\n", opened, opened == 1 ? "" : "s");
  if (opened != freed) {
    fprintf(stderr, "proxy: %lu connections accepted but %lu freed\n", opened, freed);
    return 1;
  }
  return 0;
}
