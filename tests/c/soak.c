/* Soak (opt-in for long runs): NETEV_SOAK_SECONDS (default 6, or 3 with
 * NETEV_TEST_SCALE=small; a full run uses 60). For the whole duration, at
 * once:
 *  - churn: a netev listener in immediate mode echoes; client connections
 *    (several at a time, paced) are opened, echo 1 to 8 KiB byte-exact, and
 *    end by shutdown, close or a plain release;
 *  - streaming: one client streams at its send limit (8 MiB) to a slow BSD
 *    reader, resuming on each DRAIN; the reader checks every byte;
 *  - a dispatcher nobody runs, with a connection bound to it that a BSD peer
 *    floods continuously: netev must stop reading at its receive limit (the
 *    peer's writes stall) and hold no more.
 * rss_kib() is sampled every second ("soak: t=N rss=K KiB" on stderr). The
 * RSS growth from the sample at 1/6 of the duration (the 10th second of 60)
 * to the last one must stay below 16 MiB (not asserted under ASan/valgrind,
 * NETEV_TEST_TIME_FACTOR > 1), and every echoed and streamed byte must be
 * right. At the end everything is closed, the dispatcher released (its
 * remaining callbacks run; its connection gets one TERMINATE) and
 * netev_runtime_shutdown(10) returns NETEV_OK. */
#include "common_b.h"
#include "common_mem.h"
#include "common_listener.h"

#include <inttypes.h>
#include <stdatomic.h>

#define PAT_MIB ((size_t)1024 * 1024)


/* ---- a slow reader peer that checks every byte ------------------------------ */

/* Accepts one connection with SO_RCVBUF `rcvbuf`, reads it to EOF
 * `read_size` bytes at a time, pausing `pause_s` every `pause_every` reads,
 * checks every byte against the pattern, then shuts down its write side. */
typedef struct slow_reader {
  int listen_fd, conn_fd;
  uint16_t port;
  size_t read_size;
  int pause_every;
  double pause_s;
  unsigned char *buf;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t got, bad_at;
  int read_errno, eof, finished;
} slow_reader;

static void *slow_reader_main(void *arg) {
  slow_reader *p = arg;
  int fd = accept(p->listen_fd, NULL, NULL);
  size_t off = 0, bad_at = SIZE_MAX, reads = 0;
  int err = fd < 0 ? errno : 0, eof = 0;
  pthread_mutex_lock(&p->mu);
  p->conn_fd = fd;
  pthread_mutex_unlock(&p->mu);
  while (fd >= 0) {
    ssize_t n = recv(fd, p->buf, p->read_size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) {
      eof = 1;
      break;
    }
    if (bad_at == SIZE_MAX) {
      size_t i = pattern_mismatch(p->buf, (size_t)n, off);
      if (i < (size_t)n) bad_at = off + i;
    }
    off += (size_t)n;
    pthread_mutex_lock(&p->mu);
    p->got = off;
    pthread_mutex_unlock(&p->mu);
    if (++reads % (size_t)p->pause_every == 0) pause_seconds(p->pause_s);
  }
  if (eof) shutdown(fd, SHUT_WR);
  pthread_mutex_lock(&p->mu);
  p->got = off;
  p->bad_at = bad_at;
  p->read_errno = err;
  p->eof = eof;
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void slow_reader_start(slow_reader *p, int rcvbuf, size_t read_size, int pause_every, double pause_s) {
  memset(p, 0, sizeof *p);
  p->conn_fd = -1;
  p->read_size = read_size;
  p->pause_every = pause_every;
  p->pause_s = pause_s;
  p->bad_at = SIZE_MAX;
  p->buf = malloc(read_size);
  CHECK(p->buf);
  memset(p->buf, 0, read_size);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(p->listen_fd >= 0);
  /* set before listen(): the accepted socket inherits it */
  CHECK(setsockopt(p->listen_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(p->listen_fd, 4) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(p->listen_fd, (struct sockaddr *)&a, &len) == 0);
  p->port = ntohs(a.sin_port);
  CHECK(pthread_create(&p->thread, NULL, slow_reader_main, p) == 0);
}

static size_t slow_reader_got(slow_reader *p) {
  pthread_mutex_lock(&p->mu);
  size_t g = p->got;
  pthread_mutex_unlock(&p->mu);
  return g;
}

static int slow_reader_wait_finished(slow_reader *p, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (!p->finished && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->finished;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

static void slow_reader_stop(slow_reader *p) {
  shutdown(p->listen_fd, SHUT_RDWR);
  if (!slow_reader_wait_finished(p, 5)) {
    pthread_mutex_lock(&p->mu);
    if (p->conn_fd >= 0) shutdown(p->conn_fd, SHUT_RDWR);
    pthread_mutex_unlock(&p->mu);
  }
  CHECK(slow_reader_wait_finished(p, 10));
  pthread_join(p->thread, NULL);
  if (p->conn_fd >= 0) close(p->conn_fd);
  close(p->listen_fd);
  free(p->buf);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

#define GROWTH_BOUND_KIB (16L * 1024)
#define CHURN_SLOTS 8
#define CHURN_RATE 150.0 /* connections opened per second at most */

static atomic_int stop_all;

/* ======================================================================== */
/* churn: the echo server                                                   */
/* ======================================================================== */

typedef struct srv_conn {
  atomic_int in_cb;
} srv_conn;

static atomic_long srv_accepted, srv_terminates, srv_frees, srv_errors, srv_overlaps;
static atomic_long srv_echo_failed, srv_data_events, srv_data_bytes, srv_connections;
static atomic_int srv_echo_status; /* of the first failed echo */

static void srv_cb(netev_connection c, const netev_event *e, void *ud) {
  srv_conn *s = ud;
  if (atomic_exchange(&s->in_cb, 1)) atomic_fetch_add(&srv_overlaps, 1);
  if (e->type == NETEV_EVENT_CONNECTION) atomic_fetch_add(&srv_connections, 1);
  if (e->type == NETEV_EVENT_DATA) {
    atomic_fetch_add(&srv_data_events, 1);
    atomic_fetch_add(&srv_data_bytes, (long)e->data_len);
    netev_status st = netev_connection_send(c, e->data, e->data_len);
    if (st != NETEV_OK && atomic_fetch_add(&srv_echo_failed, 1) == 0)
      atomic_store(&srv_echo_status, (int)st);
  } else if (e->type == NETEV_EVENT_ERROR) {
    atomic_fetch_add(&srv_errors, 1); /* a client that closed may reset us: allowed */
  } else if (e->type == NETEV_EVENT_TERMINATE) {
    atomic_fetch_add(&srv_terminates, 1);
  }
  atomic_store(&s->in_cb, 0);
}

static void srv_free(void *ud) {
  atomic_fetch_add(&srv_frees, 1);
  free(ud);
}

static bool srv_accept(netev_listener l, const netev_event *e, void *ud, netev_connection_options *o) {
  (void)l, (void)e, (void)ud;
  srv_conn *s = calloc(1, sizeof *s);
  CHECK(s);
  o->on_connection = o->on_data = o->on_shutdown = o->on_error = srv_cb;
  o->on_terminate = o->on_drain = o->on_end = srv_cb;
  o->user_data = s;
  o->user_data_free = srv_free;
  atomic_fetch_add(&srv_accepted, 1);
  return true;
}

/* ======================================================================== */
/* churn: the clients                                                       */
/* ======================================================================== */

enum { END_SHUTDOWN, END_CLOSE, END_RELEASE };

typedef struct echo_client {
  netev_connection c;
  size_t len, off0; /* payload: len pattern bytes from stream offset off0 */
  int send_in_cb;   /* the payload is sent from the CONNECTION callback */
  int end_mode;
  int phase;        /* 0 echoing, 1 ending, 2 released */
  double t_open;
  /* under churn_mu: */
  size_t got, bad_at;
  int connected, data_before_connection, ended, closed, errors, terminated, freed, early_free;
  int in_cb, overlaps, after_terminate, send_failed;
  netev_status send_status, error;
  char error_message[128];
} echo_client;

static pthread_mutex_t churn_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t churn_cv = PTHREAD_COND_INITIALIZER;
static long churn_done, churn_bytes, churn_modes[3];
static uint16_t echo_port;

/* `c`: the handle (inside the CONNECTION callback, open may not have stored
 * it in x->c yet). */
static void send_payload(echo_client *x, netev_connection c) {
  size_t sent = 0;
  int parts = 1 + (int)(x->off0 % 3);
  for (int i = 0; i < parts; i++) {
    size_t k = i == parts - 1 ? x->len - sent : x->len / (size_t)parts;
    netev_status st = netev_connection_send(c, pattern_at(x->off0 + sent), k);
    if (st != NETEV_OK) {
      pthread_mutex_lock(&churn_mu);
      if (!x->send_failed++) x->send_status = st;
      pthread_mutex_unlock(&churn_mu);
      return;
    }
    sent += k;
  }
}

static void client_cb(netev_connection c, const netev_event *e, void *ud) {
  echo_client *x = ud;
  pthread_mutex_lock(&churn_mu);
  if (x->in_cb) x->overlaps++;
  x->in_cb = 1;
  if (x->terminated) x->after_terminate++;
  int send_now = 0;
  switch (e->type) {
  case NETEV_EVENT_CONNECTION:
    x->connected++;
    send_now = x->send_in_cb;
    break;
  case NETEV_EVENT_DATA:
    if (!x->connected) x->data_before_connection++;
    if (x->bad_at == SIZE_MAX) {
      if (x->got + e->data_len > x->len) {
        x->bad_at = x->len; /* more than was sent */
      } else {
        size_t i = pattern_mismatch(e->data, e->data_len, x->off0 + x->got);
        if (i < e->data_len) x->bad_at = x->got + i;
      }
    }
    x->got += e->data_len;
    break;
  case NETEV_EVENT_END: x->ended++; break;
  case NETEV_EVENT_CLOSE: x->closed++; break;
  case NETEV_EVENT_ERROR:
    x->errors++;
    x->error = e->error;
    snprintf(x->error_message, sizeof x->error_message, "%s", e->message ? e->message : "");
    break;
  case NETEV_EVENT_TERMINATE: x->terminated++; break;
  default: break;
  }
  pthread_mutex_unlock(&churn_mu);
  if (send_now) send_payload(x, c);
  pthread_mutex_lock(&churn_mu);
  x->in_cb = 0;
  pthread_cond_broadcast(&churn_cv);
  pthread_mutex_unlock(&churn_mu);
}

static void client_free(void *ud) {
  echo_client *x = ud;
  pthread_mutex_lock(&churn_mu);
  x->freed++;
  if (!x->terminated) x->early_free++;
  pthread_cond_broadcast(&churn_cv);
  pthread_mutex_unlock(&churn_mu);
}

static uint64_t churn_rng = 0x50a4;
static unsigned churn_rnd(unsigned n) {
  uint64_t x = (churn_rng += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return (unsigned)((x ^ (x >> 31)) % n);
}

static echo_client *client_start(long serial) {
  echo_client *x = calloc(1, sizeof *x);
  CHECK(x);
  x->len = 1024 + churn_rnd(7 * 1024 + 1);
  x->off0 = (size_t)serial * 4099;
  x->send_in_cb = (int)churn_rnd(2);
  x->end_mode = (int)churn_rnd(3);
  x->bad_at = SIZE_MAX;
  x->t_open = now_seconds();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_connection = o.on_data = o.on_shutdown = o.on_error = client_cb;
  o.on_terminate = o.on_drain = o.on_end = client_cb;
  o.user_data = x;
  o.user_data_free = client_free;
  o.connection_timeout = 20;
  o.no_delay = churn_rnd(2) != 0;
  CHECK_OK(netev_connection_open("127.0.0.1", echo_port, &o, &x->c));
  if (!x->send_in_cb) send_payload(x, x->c); /* before CONNECTION: sent once connected */
  return x;
}

/* A finished client (freed and released): every check. churn_mu held. */
static void client_verify(echo_client *x, long serial) {
  const char *mode = x->end_mode == END_SHUTDOWN ? "shutdown" : x->end_mode == END_CLOSE ? "close" : "release";
  if (x->send_failed) FAIL("churn client %ld: send returned %s", serial, netev_status_name((int32_t)x->send_status));
  if (x->errors)
    FAIL("churn client %ld (ended by %s): ERROR %s: %s", serial, mode, netev_status_name((int32_t)x->error),
         x->error_message);
  if (x->bad_at != SIZE_MAX)
    FAIL("churn client %ld: echo byte %zu of %zu wrong (or more bytes than sent: %zu)", serial, x->bad_at,
         x->len, x->got);
  if (x->got != x->len) FAIL("churn client %ld: %zu bytes echoed of %zu", serial, x->got, x->len);
  if (x->connected != 1 || x->data_before_connection || x->closed != 1 || x->terminated != 1 ||
      x->freed != 1 || x->early_free || x->overlaps || x->after_terminate || x->ended > 1 ||
      (x->end_mode == END_SHUTDOWN && x->ended != 1))
    FAIL("churn client %ld (ended by %s): CONNECTION %d (DATA before it %d), END %d, CLOSE %d, TERMINATE %d, "
         "user_data_free %d (early %d), overlaps %d, after TERMINATE %d",
         serial, mode, x->connected, x->data_before_connection, x->ended, x->closed, x->terminated, x->freed,
         x->early_free, x->overlaps, x->after_terminate);
}

static void *churn_main(void *arg) {
  (void)arg;
  echo_client *slot[CHURN_SLOTS] = {0};
  long serial[CHURN_SLOTS] = {0};
  long next_serial = 0;
  double t_start = now_seconds();
  const double slot_limit = 30 * test_time_factor();
  for (;;) {
    int stopping = atomic_load(&stop_all), busy = 0;
    for (int i = 0; i < CHURN_SLOTS; i++) {
      echo_client *x = slot[i];
      if (!x) {
        /* paced: at most CHURN_RATE opens per second on average */
        if (!stopping && next_serial < (long)((now_seconds() - t_start) * CHURN_RATE) + CHURN_SLOTS) {
          serial[i] = next_serial++;
          slot[i] = client_start(serial[i]);
          busy++;
        }
        continue;
      }
      busy++;
      pthread_mutex_lock(&churn_mu);
      size_t got = x->got;
      int terminated = x->terminated, freed = x->freed, errors = x->errors;
      pthread_mutex_unlock(&churn_mu);
      if (now_seconds() - x->t_open > slot_limit) {
        size_t queued = 0;
        netev_status qs = netev_connection_buffered_amount(x->c, &queued);
        pthread_mutex_lock(&churn_mu);
        FAIL("churn client %ld stuck for %.0f s: phase %d, %zu of %zu bytes echoed (payload sent %s, %d sends "
             "failed, first with %s; buffered_amount %zu: %s), CONNECTION %d, END %d, CLOSE %d, ERROR %d, "
             "TERMINATE %d, freed %d; echo server: %ld accepted, %ld CONNECTION, %ld DATA (%ld bytes), %ld "
             "TERMINATE, %ld echo sends failed",
             serial[i], slot_limit, x->phase, x->got, x->len,
             x->send_in_cb ? "from the CONNECTION callback" : "right after open", x->send_failed,
             netev_status_name((int32_t)x->send_status), queued, netev_status_name((int32_t)qs), x->connected,
             x->ended, x->closed, x->errors, x->terminated, x->freed, atomic_load(&srv_accepted),
             atomic_load(&srv_connections), atomic_load(&srv_data_events), atomic_load(&srv_data_bytes),
             atomic_load(&srv_terminates), atomic_load(&srv_echo_failed));
      }
      if (x->phase == 0 && (errors || terminated)) {
        /* it ended before the host ended it: client_verify says how */
        pthread_mutex_lock(&churn_mu);
        client_verify(x, serial[i]);
        FAIL("churn client %ld ended (TERMINATE) before the host ended it", serial[i]);
      }
      if (x->phase == 0 && got >= x->len) {
        x->phase = 1;
        if (x->end_mode == END_SHUTDOWN) {
          CHECK_OK(netev_connection_shutdown(x->c));
        } else if (x->end_mode == END_CLOSE) {
          CHECK_OK(netev_connection_close(x->c));
        } else {
          CHECK_OK(netev_connection_release(x->c));
          x->phase = 2;
        }
      } else if (x->phase == 1 && terminated) {
        CHECK_OK(netev_connection_release(x->c));
        x->phase = 2;
      } else if (x->phase == 2 && freed) {
        pthread_mutex_lock(&churn_mu);
        client_verify(x, serial[i]);
        churn_done++;
        churn_bytes += (long)x->len;
        churn_modes[x->end_mode]++;
        pthread_mutex_unlock(&churn_mu);
        free(x);
        slot[i] = NULL;
      }
    }
    if (stopping && busy == 0) break;
    pthread_mutex_lock(&churn_mu);
    struct timespec ts;
    deadline_in(&ts, 0.002);
    pthread_cond_timedwait(&churn_cv, &churn_mu, &ts);
    pthread_mutex_unlock(&churn_mu);
  }
  return NULL;
}

/* ======================================================================== */
/* streaming at the send limit to a slow reader                             */
/* ======================================================================== */

typedef struct stream_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int connected, drains, ended, closed, errors, terminated, other, in_cb, overlaps, after_terminate;
  netev_status error;
} stream_state;

static stream_state ss = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          NETEV_OK};
static netev_connection stream_conn;
static size_t stream_sent;
static int stream_refusals;
static slow_reader reader;

static void stream_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c, (void)ud;
  pthread_mutex_lock(&ss.mu);
  if (ss.in_cb) ss.overlaps++;
  ss.in_cb = 1;
  if (ss.terminated) ss.after_terminate++;
  switch (e->type) {
  case NETEV_EVENT_CONNECTION: ss.connected++; break;
  case NETEV_EVENT_DRAIN: ss.drains++; break;
  case NETEV_EVENT_END: ss.ended++; break;
  case NETEV_EVENT_CLOSE: ss.closed++; break;
  case NETEV_EVENT_ERROR:
    ss.errors++;
    ss.error = e->error;
    break;
  case NETEV_EVENT_TERMINATE: ss.terminated++; break;
  default: ss.other++; break;
  }
  ss.in_cb = 0;
  pthread_cond_broadcast(&ss.cv);
  pthread_mutex_unlock(&ss.mu);
}

/* Waits (bounded) until `*field` >= n; returns whether it got there. */
static int stream_wait(int *field, int n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&ss.mu);
  while (*field < n && !ss.errors && cond_wait_until(&ss.cv, &ss.mu, end)) {
  }
  int ok = *field >= n;
  pthread_mutex_unlock(&ss.mu);
  return ok;
}

static void *stream_main(void *arg) {
  (void)arg;
  if (!stream_wait(&ss.connected, 1, 20)) FAIL("stream: no CONNECTION (ERROR %d)", ss.errors);
  while (!atomic_load(&stop_all)) {
    netev_status st = netev_connection_send(stream_conn, pattern_at(stream_sent), PATTERN_RUN_MAX);
    if (st == NETEV_ERR_BUFFER_FULL) {
      stream_refusals++;
      if (!stream_wait(&ss.drains, stream_refusals, 60))
        FAIL("stream: no DRAIN after refusal %d (%zu bytes sent, the reader got %zu; ERROR %d %s)", stream_refusals,
             stream_sent, slow_reader_got(&reader), ss.errors, netev_status_name((int32_t)ss.error));
    } else {
      CHECK_STATUS(st, NETEV_OK);
      stream_sent += PATTERN_RUN_MAX;
    }
  }
  CHECK_OK(netev_connection_shutdown(stream_conn));
  return NULL;
}

/* ======================================================================== */
/* a dispatcher nobody runs, flooded                                        */
/* ======================================================================== */

typedef struct flood_conn {
  int in_cb, overlaps, after_terminate, events, connected, closed, errors, terminated, freed;
  size_t got, bad_at;
} flood_conn;

static flood_conn fc;
static pthread_mutex_t fc_mu = PTHREAD_MUTEX_INITIALIZER; /* its callbacks may end on netev's threads */
static atomic_int flood_stop;
static atomic_size_t flood_written;
static int flood_lfd;
static pthread_t flood_thread;

static void flood_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c, (void)ud;
  /* runs only from netev_dispatcher_release on (mostly on the main thread) */
  pthread_mutex_lock(&fc_mu);
  if (fc.in_cb) fc.overlaps++;
  fc.in_cb = 1;
  if (fc.terminated) fc.after_terminate++;
  fc.events++;
  switch (e->type) {
  case NETEV_EVENT_CONNECTION: fc.connected++; break;
  case NETEV_EVENT_DATA:
    if (fc.bad_at == SIZE_MAX) {
      size_t i = pattern_mismatch(e->data, e->data_len, fc.got);
      if (i < e->data_len) fc.bad_at = fc.got + i;
    }
    fc.got += e->data_len;
    break;
  case NETEV_EVENT_CLOSE: fc.closed++; break;
  case NETEV_EVENT_ERROR: fc.errors++; break;
  case NETEV_EVENT_TERMINATE: fc.terminated++; break;
  default: break;
  }
  fc.in_cb = 0;
  pthread_mutex_unlock(&fc_mu);
}

static void flood_free(void *ud) {
  (void)ud;
  pthread_mutex_lock(&fc_mu);
  fc.freed++;
  pthread_mutex_unlock(&fc_mu);
}

static int fc_get(int *field) {
  pthread_mutex_lock(&fc_mu);
  int v = *field;
  pthread_mutex_unlock(&fc_mu);
  return v;
}

/* The peer: writes the pattern as fast as the socket takes it until told to stop. */
static void *flood_main(void *arg) {
  (void)arg;
  int fd = -1;
  while (!atomic_load(&flood_stop)) {
    if (!fd_readable(flood_lfd, 50)) continue;
    fd = accept4(flood_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) break;
  }
  if (fd < 0) return NULL;
  size_t off = 0;
  while (!atomic_load(&flood_stop)) {
    struct pollfd p = {fd, POLLOUT, 0};
    int k = poll(&p, 1, 50);
    if (k <= 0) continue;
    if (p.revents & (POLLERR | POLLHUP)) break;
    ssize_t w = send(fd, pattern_at(off), PATTERN_RUN_MAX, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      off += (size_t)w;
      atomic_store(&flood_written, off);
    } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
      break;
    }
  }
  close(fd);
  return NULL;
}

/* The third number of a /proc/sys/net/ipv4/tcp_[rw]mem file (the largest
 * buffer the kernel grows a socket's to), or `dflt`. */
static long tcp_mem_max(const char *path, long dflt) {
  FILE *f = fopen(path, "r");
  if (!f) return dflt;
  long a, b, c;
  int n = fscanf(f, "%ld %ld %ld", &a, &b, &c);
  fclose(f);
  return n == 3 ? c : dflt;
}

/* ======================================================================== */

int main(void) {
  const char *secs_s = getenv("NETEV_SOAK_SECONDS");
  long duration = secs_s && *secs_s ? strtol(secs_s, NULL, 10) : test_scale(6, 3);
  if (duration < 1) duration = 1;
  long base_t = duration / 6 > 0 ? duration / 6 : 1;
  fprintf(stderr, "soak: NETEV_SOAK_SECONDS=%ld; RSS growth measured from t=%ld to t=%ld\n", duration, base_t,
          duration);
  watchdog((unsigned)(duration + 240));
  raise_nofile();
  pattern_table_init();

  /* the echo server */
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = srv_accept;
  lo.bind_address = "127.0.0.1";
  lo.backlog = 256;
  netev_listener echo;
  CHECK_OK(netev_listener_open(0, &lo, &echo));
  CHECK_OK(netev_listener_port(echo, &echo_port));

  /* the flood on a dispatcher nobody runs */
  uint16_t flood_port;
  flood_lfd = listen_loopback(&flood_port, 4);
  CHECK(pthread_create(&flood_thread, NULL, flood_main, NULL) == 0);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int dfd;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  fc.bad_at = SIZE_MAX;
  netev_connection_options fo;
  CHECK_OK(netev_connection_options_init(&fo));
  fo.on_connection = fo.on_data = fo.on_shutdown = fo.on_error = flood_cb;
  fo.on_terminate = fo.on_drain = fo.on_end = flood_cb;
  fo.user_data = &fc;
  fo.user_data_free = flood_free;
  fo.dispatcher = d;
  fo.connection_timeout = 20;
  netev_connection flood_c;
  CHECK_OK(netev_connection_open("127.0.0.1", flood_port, &fo, &flood_c));

  /* the stream to a slow reader: 32 KiB reads, 10 ms pause every 4 */
  slow_reader_start(&reader, 256 * 1024, 32 * 1024, 4, 0.010);
  netev_connection_options so;
  CHECK_OK(netev_connection_options_init(&so));
  so.on_connection = so.on_data = so.on_shutdown = so.on_error = stream_cb;
  so.on_terminate = so.on_drain = so.on_end = stream_cb;
  so.connection_timeout = 20;
  /* so.send_buffer_limit stays 0: the default 8 MiB */
  CHECK_OK(netev_connection_open("127.0.0.1", reader.port, &so, &stream_conn));
  pthread_t stream_thread, churn_thread;
  CHECK(pthread_create(&stream_thread, NULL, stream_main, NULL) == 0);
  CHECK(pthread_create(&churn_thread, NULL, churn_main, NULL) == 0);

  /* one RSS sample a second */
  double t0 = now_seconds();
  long *rss = calloc((size_t)duration + 1, sizeof *rss);
  CHECK(rss);
  for (long t = 1; t <= duration; t++) {
    double wake = t0 + (double)t;
    while (now_seconds() < wake) pause_seconds(wake - now_seconds());
    rss[t] = rss_kib();
    CHECK(rss[t] > 0);
    pthread_mutex_lock(&churn_mu);
    long done = churn_done;
    pthread_mutex_unlock(&churn_mu);
    fprintf(stderr, "soak: t=%ld rss=%ld KiB (churn %ld connections, stream %.1f MiB read, flood peer wrote %.1f MiB)\n",
            t, rss[t], done, (double)slow_reader_got(&reader) / (double)PAT_MIB,
            (double)atomic_load(&flood_written) / (double)PAT_MIB);
    if (fc_get(&fc.events)) FAIL("the never-run dispatcher ran %d callbacks", fc_get(&fc.events));
  }
  atomic_store(&stop_all, 1);

  /* churn: the clients in flight finish, each checked */
  pthread_join(churn_thread, NULL);

  /* stream: the reader gets every byte, byte-exact, then ends its side */
  pthread_join(stream_thread, NULL);
  if (!slow_reader_wait_finished(&reader, 120))
    FAIL("stream: the reader did not reach EOF: read %zu of %zu bytes", slow_reader_got(&reader), stream_sent);
  pthread_mutex_lock(&reader.mu);
  size_t rgot = reader.got, rbad = reader.bad_at;
  int rerr = reader.read_errno, reof = reader.eof;
  pthread_mutex_unlock(&reader.mu);
  if (rerr) FAIL("stream: the reader's recv failed: %s", strerror(rerr));
  if (!reof) FAIL("stream: the reader saw no EOF");
  if (rbad != SIZE_MAX) FAIL("stream: byte %zu of the stream is not the pattern", rbad);
  if (rgot != stream_sent) FAIL("stream: the reader got %zu bytes, %zu were sent", rgot, stream_sent);
  if (stream_refusals == 0) FAIL("stream: no send was refused: the stream never reached its send limit");
  if (!stream_wait(&ss.terminated, 1, 20)) FAIL("stream: no TERMINATE after the reader ended");
  pthread_mutex_lock(&ss.mu);
  if (ss.connected != 1 || ss.ended != 1 || ss.closed != 1 || ss.errors || ss.terminated != 1 || ss.other ||
      ss.overlaps || ss.after_terminate || ss.drains != stream_refusals)
    FAIL("stream: CONNECTION %d, DRAIN %d (refusals %d), END %d, CLOSE %d, ERROR %d (%s), TERMINATE %d, other %d, "
         "overlaps %d, after TERMINATE %d",
         ss.connected, ss.drains, stream_refusals, ss.ended, ss.closed, ss.errors,
         netev_status_name((int32_t)ss.error), ss.terminated, ss.other, ss.overlaps, ss.after_terminate);
  pthread_mutex_unlock(&ss.mu);
  CHECK_OK(netev_connection_release(stream_conn));
  slow_reader_stop(&reader);

  /* the flood: netev stopped reading; nothing ran; now release the dispatcher */
  size_t written = atomic_load(&flood_written);
  long rmem = tcp_mem_max("/proc/sys/net/ipv4/tcp_rmem", 64L * PAT_MIB);
  long wmem = tcp_mem_max("/proc/sys/net/ipv4/tcp_wmem", 64L * PAT_MIB);
  size_t flood_bound = (size_t)(rmem + wmem) + (size_t)4 * PAT_MIB;
  if (fc_get(&fc.events)) FAIL("the never-run dispatcher ran %d callbacks", fc_get(&fc.events));
  CHECK(fd_readable(dfd, 0)); /* callbacks are queued */
  double tr = now_seconds();
  CHECK_OK(netev_dispatcher_release(d));
  double release_s = now_seconds() - tr;
  double end = now_seconds() + 20 * test_time_factor();
  while (!fc_get(&fc.terminated) && now_seconds() < end) sleep_ms(2); /* later ones run on netev's threads */
  pthread_mutex_lock(&fc_mu);
  if (!fc.terminated) FAIL("flood: no TERMINATE after the dispatcher's release");
  if (fc.bad_at != SIZE_MAX) FAIL("flood: byte %zu of the stream is not the pattern", fc.bad_at);
  if (fc.connected != 1 || fc.closed + fc.errors != 1 || fc.terminated != 1 || fc.overlaps || fc.after_terminate)
    FAIL("flood: CONNECTION %d, CLOSE %d, ERROR %d, TERMINATE %d, overlaps %d, after TERMINATE %d", fc.connected,
         fc.closed, fc.errors, fc.terminated, fc.overlaps, fc.after_terminate);
  if (fc.got > written) FAIL("flood: %zu bytes delivered, the peer wrote only %zu", fc.got, written);
  pthread_mutex_unlock(&fc_mu);
  CHECK_OK(netev_connection_release(flood_c));
  atomic_store(&flood_stop, 1);
  pthread_join(flood_thread, NULL);
  close(flood_lfd);

  CHECK_OK(netev_listener_release(echo));
  CHECK_OK(netev_runtime_shutdown(10));
  if (fc.freed != 1) FAIL("flood: user_data_free ran %d times", fc.freed);

  /* the echo server's side */
  if (atomic_load(&srv_echo_failed))
    FAIL("echo server: %ld echo sends failed, first with %s", atomic_load(&srv_echo_failed),
         netev_status_name(atomic_load(&srv_echo_status)));
  if (atomic_load(&srv_overlaps)) FAIL("echo server: overlapping callbacks");
  if (atomic_load(&srv_terminates) != atomic_load(&srv_accepted) || atomic_load(&srv_frees) != atomic_load(&srv_accepted))
    FAIL("echo server: %ld accepted, %ld TERMINATE, %ld user_data_free", atomic_load(&srv_accepted),
         atomic_load(&srv_terminates), atomic_load(&srv_frees));
  if (atomic_load(&srv_accepted) != churn_done)
    FAIL("echo server: %ld accepted, %ld churn clients", atomic_load(&srv_accepted), churn_done);

  fprintf(stderr,
          "soak: churn: %ld connections echoed %ld bytes byte-exact (ended by shutdown %ld, close %ld, release %ld; "
          "server saw %ld ERRORs)\n",
          churn_done, churn_bytes, churn_modes[0], churn_modes[1], churn_modes[2], atomic_load(&srv_errors));
  fprintf(stderr, "soak: stream: %zu bytes (%.1f MiB) at the send limit, %d refusals and DRAINs, all read byte-exact\n",
          stream_sent, (double)stream_sent / (double)PAT_MIB, stream_refusals);
  fprintf(stderr,
          "soak: flood: the peer wrote %zu bytes (%.1f MiB; bound tcp_rmem+tcp_wmem max + 4 MiB = %.1f MiB) to the "
          "never-run dispatcher's connection; its release ran %d callbacks in %.2f s, delivering %zu bytes "
          "byte-exact\n",
          written, (double)written / (double)PAT_MIB, (double)flood_bound / (double)PAT_MIB, fc.events, release_s,
          fc.got);
  if (written > flood_bound)
    FAIL("flood: the peer wrote %zu bytes to a connection nobody dispatched: netev did not stop reading", written);
  if (churn_done == 0) FAIL("churn: no connection finished");

  long growth = rss[duration] - rss[base_t];
  int skip = test_time_factor() > 1.0 || env_flag("NETEV_TEST_VALGRIND");
  fprintf(stderr, "soak: RSS growth from t=%ld (%ld KiB) to t=%ld (%ld KiB): %ld KiB (%.1f MiB), bound %ld KiB%s\n",
          base_t, rss[base_t], duration, rss[duration], growth, (double)growth / 1024.0, GROWTH_BOUND_KIB,
          skip ? " -- RSS bound not asserted under ASan/valgrind (NETEV_TEST_TIME_FACTOR > 1)" : "");
  if (!skip && growth >= GROWTH_BOUND_KIB)
    FAIL("soak: RSS grew by %ld KiB from t=%ld to t=%ld, past the bound of %ld KiB", growth, base_t, duration,
         GROWTH_BOUND_KIB);
  free(rss);
  return 0;
}
