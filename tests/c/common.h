/* Shared helpers for netev's C tests: status checks, an event recorder and
 * small loopback peers written with plain BSD sockets. Every wait here is
 * bounded; a watchdog alarm ends a test that hangs anyway. */
#ifndef NETEV_TEST_COMMON_H
#define NETEV_TEST_COMMON_H

#define _GNU_SOURCE
#include "netev.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#define FAIL(...)                                                              \
  do {                                                                         \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                            \
    fprintf(stderr, __VA_ARGS__);                                              \
    fprintf(stderr, "\n");                                                     \
    exit(1);                                                                   \
  } while (0)

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) FAIL("CHECK failed: %s", #cond);                              \
  } while (0)

/* Asserts that `expr` returns the status `want`. */
#define CHECK_STATUS(expr, want)                                               \
  do {                                                                         \
    netev_status got_ = (expr);                                                \
    if (got_ != (want)) {                                                      \
      char msg_[512];                                                          \
      netev_last_error_message(msg_, sizeof msg_);                             \
      FAIL("%s returned %s, expected %s (last error: %s)", #expr,              \
           netev_status_name(got_), netev_status_name(want), msg_);            \
    }                                                                          \
  } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, NETEV_OK)

static inline double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How much slower than a plain run this one is (NETEV_TEST_TIME_FACTOR, set
 * by the harness: 3 under ASan, 10 under valgrind). Stretches the watchdog
 * and the bounded waits of these helpers; never shortens anything. */
static inline double test_time_factor(void) {
  const char *s = getenv("NETEV_TEST_TIME_FACTOR");
  double f = s ? atof(s) : 1.0;
  return f >= 1.0 ? f : 1.0;
}

/* `n_full`, or `n_small` when NETEV_TEST_SCALE=small (under valgrind):
 * heavy tests shrink their work, not their checks. */
static inline long test_scale(long n_full, long n_small) {
  const char *s = getenv("NETEV_TEST_SCALE");
  return s && strcmp(s, "small") == 0 ? n_small : n_full;
}

/* Whether an environment variable is set to something other than "" or "0". */
static inline int env_flag(const char *name) {
  const char *s = getenv(name);
  return s && *s && strcmp(s, "0") != 0;
}

/* Kills the test if it runs longer than `seconds` (stretched by the time
 * factor): a hang is a failure. */
static inline void watchdog(unsigned seconds) {
  signal(SIGALRM, SIG_DFL);
  alarm((unsigned)(seconds * test_time_factor()));
}

/* The stage a test is in ("connecting", "waiting for TERMINATE" …), named
 * on stderr when the staged watchdog fires, so a hang says where it hung. */
static inline const char *volatile *test_stage_slot(void) {
  static const char *volatile stage = "start";
  return &stage;
}
#define TEST_STAGE (*test_stage_slot())

static inline const char **test_name_slot(void) {
  static const char *name = "test";
  return &name;
}

static inline void test_stage_alarm(int sig) {
  (void)sig;
  const char *parts[] = {*test_name_slot(), ": watchdog: hung during: ", TEST_STAGE, "\n"};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    ssize_t w = write(2, parts[i], strlen(parts[i])); /* strlen is async-signal-safe */
    (void)w;
  }
  _exit(1);
}

/* watchdog(), naming TEST_STAGE when it fires. */
static inline void watchdog_staged(const char *test, unsigned seconds) {
  *test_name_slot() = test;
  watchdog(seconds);
  signal(SIGALRM, test_stage_alarm);
}

/* ---- event recorder ----------------------------------------------------- */

#define REC_MAX_EVENTS 4096

typedef struct recorder {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int types[REC_MAX_EVENTS];
  int n;                 /* events recorded (capped at REC_MAX_EVENTS) */
  int total;             /* events seen */
  unsigned char *data;   /* every DATA byte, in order */
  size_t data_len, data_cap;
  int in_callback;       /* a callback of this recorder is running */
  int overlaps;          /* callbacks that ran while another one was running */
  int after_terminate;   /* events seen after TERMINATE */
  int terminated;
  netev_status error;    /* of the ERROR event */
  pthread_t last_thread; /* thread of the most recent callback */
  int wrong_thread;      /* callbacks not on `expect_thread` when set */
  int check_thread;
  pthread_t expect_thread;
  netev_connection conn;
} recorder;

static inline void rec_init(recorder *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
}

static inline void rec_free(recorder *r) {
  free(r->data);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

/* Records `e`; also checks that callbacks of one recorder never overlap. */
static inline void rec_event(recorder *r, const netev_event *e) {
  pthread_mutex_lock(&r->mu);
  if (r->in_callback) r->overlaps++;
  r->in_callback = 1;
  if (r->terminated) r->after_terminate++;
  if (r->n < REC_MAX_EVENTS) r->types[r->n++] = (int)e->type;
  r->total++;
  r->last_thread = pthread_self();
  if (r->check_thread && !pthread_equal(r->expect_thread, pthread_self()))
    r->wrong_thread++;
  if (e->type == NETEV_EVENT_DATA && e->data_len > 0) { /* memcpy from NULL is UB even for 0 bytes */
    if (r->data_len + e->data_len > r->data_cap) {
      size_t cap = r->data_cap ? r->data_cap : 4096;
      while (cap < r->data_len + e->data_len) cap *= 2;
      r->data = realloc(r->data, cap);
      if (!r->data) FAIL("out of memory");
      r->data_cap = cap;
    }
    memcpy(r->data + r->data_len, e->data, e->data_len);
    r->data_len += e->data_len;
  }
  if (e->type == NETEV_EVENT_ERROR) r->error = e->error;
  if (e->type == NETEV_EVENT_TERMINATE) r->terminated = 1;
  pthread_mutex_unlock(&r->mu);
}

static inline void rec_done(recorder *r) {
  pthread_mutex_lock(&r->mu);
  r->in_callback = 0;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* A connection callback for every slot: user_data is the recorder. */
static inline void rec_callback(netev_connection c, const netev_event *e, void *ud) {
  recorder *r = ud;
  (void)c;
  rec_event(r, e);
  rec_done(r);
}

static inline void rec_set_all(netev_connection_options *o, recorder *r,
                               netev_connection_callback cb) {
  o->on_connection = o->on_data = o->on_shutdown = o->on_error = cb;
  o->on_terminate = o->on_drain = o->on_end = cb;
  o->user_data = r;
}

static inline int rec_count(recorder *r, int type) {
  int k = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n; i++) k += r->types[i] == type;
  pthread_mutex_unlock(&r->mu);
  return k;
}

/* One bounded slice of a condition wait (`mu` held): sleeps on `cv` until
 * signalled, 50 ms, or the monotonic deadline `end`; 0 once `end` passed. */
static inline int cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, double end) {
  double left = end - now_seconds();
  if (left <= 0) return 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double slice = left < 0.05 ? left : 0.05;
  long ns = ts.tv_nsec + (long)(slice * 1e9);
  ts.tv_sec += ns / 1000000000L;
  ts.tv_nsec = ns % 1000000000L;
  pthread_cond_timedwait(cv, mu, &ts);
  return 1;
}

/* Waits until `pred(r, arg)` holds or `seconds` pass; returns whether it held. */
static inline int rec_wait(recorder *r, int (*pred)(recorder *, size_t), size_t arg,
                           double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&r->mu);
  while (!pred(r, arg) && cond_wait_until(&r->cv, &r->mu, end)) {
  }
  int ok = pred(r, arg);
  pthread_mutex_unlock(&r->mu);
  return ok;
}

static inline int rec_pred_terminated(recorder *r, size_t unused) {
  (void)unused;
  return r->terminated && !r->in_callback;
}
static inline int rec_pred_bytes(recorder *r, size_t n) { return r->data_len >= n; }
static inline int rec_pred_type(recorder *r, size_t type) {
  for (int i = 0; i < r->n; i++)
    if (r->types[i] == (int)type) return 1;
  return 0;
}

static inline int rec_wait_terminated(recorder *r, double s) {
  return rec_wait(r, rec_pred_terminated, 0, s);
}
static inline int rec_wait_bytes(recorder *r, size_t n, double s) {
  return rec_wait(r, rec_pred_bytes, n, s);
}
static inline int rec_wait_type(recorder *r, int type, double s) {
  return rec_wait(r, rec_pred_type, (size_t)type, s);
}

/* The event sequence as text, runs of DATA (and DRAIN) folded into one
 * "data*" ("drain*"): "connection data* end close terminate". */
static inline void rec_sequence(recorder *r, char *out, size_t cap) {
  size_t used = 0;
  out[0] = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n; i++) {
    int t = r->types[i];
    if ((t == NETEV_EVENT_DATA || t == NETEV_EVENT_DRAIN) && i > 0 && r->types[i - 1] == t)
      continue;
    const char *name = netev_event_type_name(t);
    int w = snprintf(out + used, cap - used, "%s%s%s", used ? " " : "", name,
                     (t == NETEV_EVENT_DATA || t == NETEV_EVENT_DRAIN) ? "*" : "");
    if (w < 0 || (size_t)w >= cap - used) break;
    used += (size_t)w;
  }
  pthread_mutex_unlock(&r->mu);
}

#define CHECK_SEQUENCE(r, want)                                                \
  do {                                                                         \
    char seq_[1024];                                                           \
    rec_sequence((r), seq_, sizeof seq_);                                      \
    if (strcmp(seq_, (want)) != 0)                                             \
      FAIL("event sequence \"%s\", expected \"%s\"", seq_, (want));            \
  } while (0)

/* ---- loopback peers ----------------------------------------------------- */

typedef enum peer_mode {
  PEER_ECHO,      /* echo every byte; at EOF shut down the write side and close */
  PEER_SINK,      /* read nothing until peer_resume(); then read to EOF, keeping the bytes */
  PEER_FLOOD,     /* write `flood_len` pattern bytes, shut down writing, read to EOF */
  PEER_HOLD,      /* accept, never read or write; close when the test ends */
  PEER_CLOSE,     /* accept and close at once (EOF right away) */
  PEER_HALF_CLOSE /* shut down its write side at once, then echo what comes until EOF */
} peer_mode;

typedef struct peer {
  int listen_fd;
  int conn_fd;
  uint16_t port;
  peer_mode mode;
  size_t flood_len;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int resumed;
  unsigned char *got; /* SINK: bytes read */
  size_t got_len, got_cap;
  int finished;       /* the peer thread is done with its connection */
  int accept_errno;   /* errno of a failed accept, else 0 */
} peer;

/* The byte at offset i of the pattern every test sends. */
static inline unsigned char pattern_byte(size_t i) { return (unsigned char)((i * 7 + i / 251) & 0xff); }

static inline void peer_keep(peer *p, const unsigned char *b, size_t n) {
  pthread_mutex_lock(&p->mu);
  if (p->got_len + n > p->got_cap) {
    size_t cap = p->got_cap ? p->got_cap : 65536;
    while (cap < p->got_len + n) cap *= 2;
    p->got = realloc(p->got, cap);
    if (!p->got) FAIL("out of memory");
    p->got_cap = cap;
  }
  memcpy(p->got + p->got_len, b, n);
  p->got_len += n;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static inline int write_all(int fd, const unsigned char *b, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

static void *peer_main(void *arg) {
  peer *p = arg;
  unsigned char buf[65536];
  int fd = accept(p->listen_fd, NULL, NULL);
  if (fd < 0) {
    p->accept_errno = errno;
    return NULL;
  }
  p->conn_fd = fd;
  switch (p->mode) {
  case PEER_ECHO:
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      if (write_all(fd, buf, (size_t)n) < 0) break;
    }
    shutdown(fd, SHUT_WR);
    break;
  case PEER_HALF_CLOSE:
    shutdown(fd, SHUT_WR);
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      peer_keep(p, buf, (size_t)n);
    }
    break;
  case PEER_SINK:
    pthread_mutex_lock(&p->mu);
    while (!p->resumed) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      peer_keep(p, buf, (size_t)n);
    }
    break;
  case PEER_FLOOD: {
    size_t sent = 0;
    while (sent < p->flood_len) {
      size_t k = p->flood_len - sent < sizeof buf ? p->flood_len - sent : sizeof buf;
      for (size_t i = 0; i < k; i++) buf[i] = pattern_byte(sent + i);
      if (write_all(fd, buf, k) < 0) break;
      sent += k;
    }
    shutdown(fd, SHUT_WR);
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
    break;
  }
  case PEER_HOLD:
    pthread_mutex_lock(&p->mu);
    while (!p->resumed) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    break;
  case PEER_CLOSE:
    shutdown(fd, SHUT_RDWR); /* EOF right away; the fd is closed by peer_stop */
    break;
  }
  pthread_mutex_lock(&p->mu);
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Starts a peer that accepts one connection on 127.0.0.1 at an ephemeral port. */
static inline void peer_start(peer *p, peer_mode mode, size_t flood_len) {
  memset(p, 0, sizeof *p);
  p->mode = mode;
  p->flood_len = flood_len;
  p->conn_fd = -1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(p->listen_fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(p->listen_fd, 16) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(p->listen_fd, (struct sockaddr *)&a, &len) == 0);
  p->port = ntohs(a.sin_port);
  CHECK(pthread_create(&p->thread, NULL, peer_main, p) == 0);
}

/* Lets a SINK peer start reading (or a HOLD peer close). */
static inline void peer_resume(peer *p) {
  pthread_mutex_lock(&p->mu);
  p->resumed = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

/* Waits (bounded) until the peer thread finished its connection. */
static inline int peer_wait_finished(peer *p, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (!p->finished && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->finished;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

/* Ends the peer: lets it finish, joins it (bounded), closes its sockets. */
static inline void peer_stop(peer *p) {
  peer_resume(p);
  if (!p->finished) shutdown(p->listen_fd, SHUT_RDWR);
  if (!peer_wait_finished(p, 5) && p->conn_fd >= 0) shutdown(p->conn_fd, SHUT_RDWR);
  CHECK(peer_wait_finished(p, 10) || p->conn_fd < 0);
  pthread_join(p->thread, NULL);
  if (p->conn_fd >= 0) close(p->conn_fd);
  close(p->listen_fd);
  free(p->got);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* Fills `b` with the test pattern starting at stream offset `off`. */
static inline void fill_pattern(unsigned char *b, size_t n, size_t off) {
  for (size_t i = 0; i < n; i++) b[i] = pattern_byte(off + i);
}

static inline int is_pattern(const unsigned char *b, size_t n, size_t off) {
  for (size_t i = 0; i < n; i++)
    if (b[i] != pattern_byte(off + i)) return 0;
  return 1;
}

#endif
