/* More helpers for netev's C tests, on top of common.h: a flood peer that
 * reports its progress, a peer that accepts and holds many connections,
 * bounded waits on a peer's received bytes, and the process's resident size.
 * Every wait here is bounded. */
#ifndef NETEV_TEST_COMMON_B_H
#define NETEV_TEST_COMMON_B_H

#include "common.h"

#include <poll.h>

/* Fills `ts` with the CLOCK_REALTIME instant `seconds` from now (for timed waits). */
static inline void deadline_in(struct timespec *ts, double seconds) {
  clock_gettime(CLOCK_REALTIME, ts);
  long ns = ts->tv_nsec + (long)(seconds * 1e9);
  ts->tv_sec += ns / 1000000000L;
  ts->tv_nsec = ns % 1000000000L;
}

/* Pacing only (never a stand-in for a condition). */
static inline void pause_seconds(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Resident set size of this process in KiB (VmRSS of /proc/self/status), or -1. */
static inline long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kib = strtol(line + 6, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kib;
}

/* Whether `fd` is readable within `timeout_ms` (0: right now). */
static inline int fd_readable(int fd, int timeout_ms) {
  struct pollfd p;
  p.fd = fd;
  p.events = POLLIN;
  p.revents = 0;
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* Waits (bounded) until a common.h peer has kept at least `n` bytes. */
static inline int peer_wait_got(peer *p, size_t n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (p->got_len < n && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->got_len >= n;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

/* Binds a loopback listening socket on an ephemeral port. */
static inline int listen_loopback(uint16_t *port, int backlog) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(fd, backlog) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

/* ---- a flood peer that reports how far it got ------------------------- */

/* Accepts one connection, writes `total` pattern bytes (counting each byte
 * the kernel took in `written`), shuts down its write side, reads to EOF. */
typedef struct flood_peer {
  int listen_fd;
  int conn_fd;
  uint16_t port;
  size_t total;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t written;
  int write_done; /* all `total` bytes written and the write side shut */
  int finished;
  int stopping;
} flood_peer;

static inline void *flood_peer_main(void *arg) {
  flood_peer *p = arg;
  unsigned char buf[65536];
  int fd = accept(p->listen_fd, NULL, NULL);
  if (fd >= 0) {
    pthread_mutex_lock(&p->mu);
    p->conn_fd = fd;
    pthread_mutex_unlock(&p->mu);
    size_t sent = 0;
    int ok = 1;
    while (sent < p->total) {
      size_t k = p->total - sent < sizeof buf ? p->total - sent : sizeof buf;
      fill_pattern(buf, k, sent);
      size_t off = 0;
      while (off < k) {
        ssize_t w = send(fd, buf + off, k - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          ok = 0;
          break;
        }
        off += (size_t)w;
        pthread_mutex_lock(&p->mu);
        p->written += (size_t)w;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
      }
      if (!ok) break;
      sent += k;
    }
    if (ok) {
      shutdown(fd, SHUT_WR);
      pthread_mutex_lock(&p->mu);
      p->write_done = 1;
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
      while (recv(fd, buf, sizeof buf, 0) > 0) {
      }
    }
  }
  pthread_mutex_lock(&p->mu);
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static inline void flood_peer_start(flood_peer *p, size_t total) {
  memset(p, 0, sizeof *p);
  p->total = total;
  p->conn_fd = -1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->listen_fd = listen_loopback(&p->port, 16);
  CHECK(pthread_create(&p->thread, NULL, flood_peer_main, p) == 0);
}

static inline size_t flood_peer_written(flood_peer *p) {
  pthread_mutex_lock(&p->mu);
  size_t w = p->written;
  pthread_mutex_unlock(&p->mu);
  return w;
}

/* Waits until the peer has written something and then `quiet` seconds pass
 * without its count growing (its writes stalled), or until it wrote
 * everything, at most `seconds` in all. Returns 1 when it stalled, 0 when it
 * finished writing, -1 when the time ran out. */
static inline int flood_peer_wait_stall(flood_peer *p, double quiet, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  size_t last = p->written;
  double last_change = now_seconds();
  int result = -1;
  for (;;) {
    double now = now_seconds();
    if (p->write_done) {
      result = 0;
      break;
    }
    if (p->written != last) {
      last = p->written;
      last_change = now;
    } else if (last > 0 && now - last_change >= quiet) {
      result = 1;
      break;
    }
    if (now >= end) break;
    struct timespec ts;
    deadline_in(&ts, 0.02);
    pthread_cond_timedwait(&p->cv, &p->mu, &ts);
  }
  pthread_mutex_unlock(&p->mu);
  return result;
}

static inline int flood_peer_wait_finished(flood_peer *p, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (!p->finished && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->finished;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

/* Ends the peer (bounded), joins it and closes its sockets. */
static inline void flood_peer_stop(flood_peer *p) {
  shutdown(p->listen_fd, SHUT_RDWR);
  if (!flood_peer_wait_finished(p, 5)) {
    pthread_mutex_lock(&p->mu);
    if (p->conn_fd >= 0) shutdown(p->conn_fd, SHUT_RDWR);
    pthread_mutex_unlock(&p->mu);
  }
  CHECK(flood_peer_wait_finished(p, 10));
  pthread_join(p->thread, NULL);
  if (p->conn_fd >= 0) close(p->conn_fd);
  close(p->listen_fd);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* ---- a peer that accepts and holds many connections -------------------- */

#define MULTI_PEER_MAX 256

/* Accepts up to `max` connections and holds them (never reads or writes)
 * until multi_peer_stop closes them. */
typedef struct multi_peer {
  int listen_fd;
  uint16_t port;
  int max;
  int fds[MULTI_PEER_MAX];
  int accepted;
  int finished;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} multi_peer;

static inline void *multi_peer_main(void *arg) {
  multi_peer *p = arg;
  while (p->accepted < p->max) {
    int fd = accept(p->listen_fd, NULL, NULL);
    if (fd < 0 && errno == EINTR) continue;
    if (fd < 0) break;
    pthread_mutex_lock(&p->mu);
    p->fds[p->accepted++] = fd;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_lock(&p->mu);
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static inline void multi_peer_start(multi_peer *p, int max) {
  CHECK(max > 0 && max <= MULTI_PEER_MAX);
  memset(p, 0, sizeof *p);
  p->max = max;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->listen_fd = listen_loopback(&p->port, max);
  CHECK(pthread_create(&p->thread, NULL, multi_peer_main, p) == 0);
}

/* Waits (bounded) until `n` connections were accepted. */
static inline int multi_peer_wait_accepted(multi_peer *p, int n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (p->accepted < n && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->accepted >= n;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

static inline void multi_peer_stop(multi_peer *p) {
  shutdown(p->listen_fd, SHUT_RDWR);
  pthread_join(p->thread, NULL);
  for (int i = 0; i < p->accepted; i++) close(p->fds[i]);
  close(p->listen_fd);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* ---- errors list -------------------------------------------------------- */

/* Whether the connection's errors list holds an entry with `code`. */
static inline int has_error_entry(netev_connection c, netev_status code) {
  size_t n = 0;
  CHECK_OK(netev_connection_error_count(c, &n));
  for (size_t i = 0; i < n; i++) {
    netev_error_info info;
    CHECK_OK(netev_connection_error_at(c, i, &info));
    if (info.code == code) return 1;
  }
  return 0;
}

#endif
