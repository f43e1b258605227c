/* Helpers of the mem_* tests (memory bounds of API.md's "Precise rules":
 * what netev holds for one connection stays within send_buffer_limit +
 * 1 MiB + a fixed overhead whatever the traffic pattern): a fast pattern
 * source and checker, a loopback listener with a chosen SO_RCVBUF, a BSD
 * reader peer that checks every byte, a host that streams at the send limit
 * resuming on each DRAIN, and the RSS verdict. Every wait is bounded. */
#ifndef NETEV_TEST_COMMON_MEM_H
#define NETEV_TEST_COMMON_MEM_H

#include "common_b.h"

#include <stdint.h>

#define MEM_MIB (1024L * 1024L)
#define MEM_KIB 1024L

/* ---- the pattern, fast ---------------------------------------------------- */

/* pattern_byte(i) = (7i + i/251) mod 256 repeats every 251 * 256 bytes:
 * 7 * 64256 is a multiple of 256 and (i + 64256) / 251 = i / 251 + 256. So a
 * table of one period plus the longest run asked for serves any offset with
 * a pointer, and checking is a memcmp. pattern_table_init verifies this. */
#define PATTERN_PERIOD ((size_t)251 * 256)
#define PATTERN_RUN_MAX ((size_t)64 * 1024) /* longest run pattern_at serves */

static unsigned char pattern_table[PATTERN_PERIOD + PATTERN_RUN_MAX];

static inline void pattern_table_init(void) {
  fill_pattern(pattern_table, sizeof pattern_table, 0);
  for (size_t i = 0; i < PATTERN_RUN_MAX; i++)
    CHECK(pattern_table[PATTERN_PERIOD + i] == pattern_byte(i));
  for (size_t i = 0; i < 4096; i++) {
    size_t far = (size_t)987654321 + i * 7919;
    CHECK(pattern_table[far % PATTERN_PERIOD] == pattern_byte(far));
  }
}

/* The pattern bytes from stream offset `off` on; at most PATTERN_RUN_MAX of them. */
static inline const unsigned char *pattern_at(size_t off) {
  return pattern_table + off % PATTERN_PERIOD;
}

/* Index of the first byte of b[0..n) that is not the pattern at stream
 * offset `off`, or n when they all are. */
static inline size_t pattern_mismatch(const unsigned char *b, size_t n, size_t off) {
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < PATTERN_RUN_MAX ? n - done : PATTERN_RUN_MAX;
    if (memcmp(b + done, pattern_at(off + done), k) != 0) {
      for (size_t i = 0; i < k; i++)
        if (b[done + i] != pattern_byte(off + done + i)) return done + i;
    }
    done += k;
  }
  return n;
}

/* ---- the RSS verdict ------------------------------------------------------ */

/* Under ASan (time factor 3) and valgrind (10) the process's resident size
 * says more about the tool than about netev: the RSS bound is not asserted
 * there (every other check is). */
static inline int mem_rss_check_skipped(void) {
  return test_time_factor() > 1.0 || env_flag("NETEV_TEST_VALGRIND");
}

/* Prints the growth and the bound on one line of stderr, then fails when the
 * growth passed the bound (unless skipped, which it says). */
static inline void mem_check_rss(const char *test, long growth_kib, long bound_kib) {
  int skip = mem_rss_check_skipped();
  fprintf(stderr, "%s: RSS growth %ld KiB (%.1f MiB), bound %ld KiB (%.1f MiB)%s\n", test,
          growth_kib, (double)growth_kib / 1024.0, bound_kib, (double)bound_kib / 1024.0,
          skip ? " -- RSS bound not asserted under ASan/valgrind" : "");
  if (!skip && growth_kib > bound_kib)
    FAIL("%s: RSS grew by %ld KiB, past the bound of %ld KiB", test, growth_kib, bound_kib);
}

/* ---- a loopback listener with a small receive buffer ---------------------- */

/* Like listen_loopback, with SO_RCVBUF = `rcvbuf` set before listen() so
 * that accepted sockets inherit it (and their window scale fits it). */
static inline int listen_loopback_rcvbuf(uint16_t *port, int backlog, int rcvbuf) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
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

/* ---- a reader peer that checks every byte --------------------------------- */

/* Accepts one connection, waits (when `gated`; bounded) until
 * reader_peer_open_gate, reads it to EOF `read_size` bytes at a time
 * (pausing `pause_s` every `pause_every` reads: pacing only), checks every
 * byte against the pattern at its stream offset, then shuts down its write
 * side (the host sees END) and keeps the socket until reader_peer_stop. */
typedef struct reader_peer {
  int listen_fd;
  int conn_fd;
  uint16_t port;
  int rcvbuf;           /* SO_RCVBUF asked for */
  int rcvbuf_effective; /* what getsockopt said on the accepted socket */
  size_t read_size;
  int pause_every;
  double pause_s;
  unsigned char *buf;
  int gated;        /* read nothing until the gate opens */
  int gate_open;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t got;       /* bytes read */
  size_t reads;     /* recv calls that returned bytes */
  size_t bad_at;    /* first stream offset that broke the pattern, or SIZE_MAX */
  int read_errno;   /* errno of a failed recv or accept, else 0 */
  int eof;          /* the stream ended properly */
  int finished;     /* the thread is done with the connection */
} reader_peer;

static inline void *reader_peer_main(void *arg) {
  reader_peer *p = arg;
  int fd = accept(p->listen_fd, NULL, NULL);
  if (fd < 0) {
    pthread_mutex_lock(&p->mu);
    p->read_errno = errno;
    p->finished = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
  }
  int eff = 0;
  socklen_t elen = sizeof eff;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &eff, &elen);
  pthread_mutex_lock(&p->mu);
  p->conn_fd = fd;
  p->rcvbuf_effective = eff;
  double gate_end = now_seconds() + 60 * test_time_factor();
  while (p->gated && !p->gate_open && cond_wait_until(&p->cv, &p->mu, gate_end)) {
  }
  pthread_mutex_unlock(&p->mu);
  size_t off = 0, reads = 0, bad_at = SIZE_MAX;
  int err = 0, eof = 0;
  for (;;) {
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
    reads++;
    if ((reads & 63) == 0) { /* progress for the host's messages, now and then */
      pthread_mutex_lock(&p->mu);
      p->got = off;
      p->reads = reads;
      pthread_mutex_unlock(&p->mu);
    }
    if (p->pause_every > 0 && reads % (size_t)p->pause_every == 0) pause_seconds(p->pause_s);
  }
  if (eof) shutdown(fd, SHUT_WR);
  pthread_mutex_lock(&p->mu);
  p->got = off;
  p->reads = reads;
  p->bad_at = bad_at;
  p->read_errno = err;
  p->eof = eof;
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static inline void reader_peer_start(reader_peer *p, int rcvbuf, size_t read_size,
                                     int pause_every, double pause_s, int gated) {
  memset(p, 0, sizeof *p);
  p->gated = gated;
  p->conn_fd = -1;
  p->rcvbuf = rcvbuf;
  p->read_size = read_size;
  p->pause_every = pause_every;
  p->pause_s = pause_s;
  p->bad_at = SIZE_MAX;
  p->buf = malloc(read_size);
  CHECK(p->buf);
  memset(p->buf, 0, read_size); /* resident before any baseline is taken */
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->listen_fd = listen_loopback_rcvbuf(&p->port, 4, rcvbuf);
  CHECK(pthread_create(&p->thread, NULL, reader_peer_main, p) == 0);
}

/* Lets a gated peer start reading. */
static inline void reader_peer_open_gate(reader_peer *p) {
  pthread_mutex_lock(&p->mu);
  p->gate_open = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static inline size_t reader_peer_got(reader_peer *p) {
  pthread_mutex_lock(&p->mu);
  size_t g = p->got;
  pthread_mutex_unlock(&p->mu);
  return g;
}

static inline int reader_peer_wait_finished(reader_peer *p, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&p->mu);
  while (!p->finished && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->finished;
  pthread_mutex_unlock(&p->mu);
  return ok;
}

/* Ends the peer (bounded), joins it, closes its sockets, frees its buffer. */
static inline void reader_peer_stop(reader_peer *p) {
  reader_peer_open_gate(p);
  shutdown(p->listen_fd, SHUT_RDWR); /* wakes an accept that never got a connection */
  if (!reader_peer_wait_finished(p, 5)) {
    pthread_mutex_lock(&p->mu);
    if (p->conn_fd >= 0) shutdown(p->conn_fd, SHUT_RDWR);
    pthread_mutex_unlock(&p->mu);
  }
  CHECK(reader_peer_wait_finished(p, 10));
  pthread_join(p->thread, NULL);
  if (p->conn_fd >= 0) close(p->conn_fd);
  close(p->listen_fd);
  free(p->buf);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* ---- a host that streams at the send limit -------------------------------- */

#define STREAM_CHUNK ((size_t)64 * 1024)

/* The connection's events; `r` must stay the first member (rec_wait). */
typedef struct stream_host {
  recorder r;
  int drains; /* DRAIN events (under r.mu) */
} stream_host;

static inline void stream_host_cb(netev_connection c, const netev_event *e, void *ud) {
  stream_host *h = ud;
  (void)c;
  rec_event(&h->r, e);
  if (e->type == NETEV_EVENT_DRAIN) {
    pthread_mutex_lock(&h->r.mu);
    h->drains++;
    pthread_mutex_unlock(&h->r.mu);
  }
  rec_done(&h->r); /* wakes rec_wait */
}

/* rec_wait predicate (lock held): at least `n` DRAIN events so far. */
static inline int stream_host_pred_drains(recorder *r, size_t n) {
  return (size_t)((stream_host *)r)->drains >= n;
}

typedef struct stream_params {
  const char *test;  /* name for the messages */
  size_t total;      /* bytes to stream */
  int rcvbuf;        /* the peer's SO_RCVBUF */
  size_t read_size;  /* the peer's recv size */
  int pause_every;   /* the peer pauses every this many reads (0: never) */
  double pause_s;    /* for this long */
  bool no_delay;     /* the connection's no_delay */
} stream_params;

/* The whole test of mem_send_streaming and mem_slow_reader: a netev client
 * with the default send_buffer_limit (8 MiB) and an on_drain callback streams
 * `total` pattern bytes in 64 KiB sends to a reader_peer (which starts
 * reading at the first refusal); on NETEV_ERR_BUFFER_FULL it waits (bounded)
 * for the DRAIN and resends the same chunk, so the queue never empties. RSS is sampled before the stream (the
 * connection up) and after every send and every DRAIN; its growth must
 * stay within the limit + 2 MiB + 16 MiB. The peer must get exactly `total`
 * bytes, byte-exact; then END, CLOSE, TERMINATE. */
static inline void stream_at_limit(const stream_params *sp) {
  const long limit_kib = 8 * 1024; /* NETEV_DEFAULT_SEND_BUFFER_LIMIT: 8 MiB */
  const long bound_kib = limit_kib + 2 * 1024 + 16 * 1024;
  pattern_table_init();

  reader_peer p;
  /* The peer reads nothing until the first refusal: the stream reaches the
   * limit at least once however fast the peer is next to the host (under
   * valgrind the host is the slow one). */
  reader_peer_start(&p, sp->rcvbuf, sp->read_size, sp->pause_every, sp->pause_s, 1);
  stream_host *h = calloc(1, sizeof *h);
  CHECK(h);
  rec_init(&h->r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &h->r, stream_host_cb);
  o.user_data = h;
  o.connection_timeout = 10;
  o.no_delay = sp->no_delay;
  /* o.send_buffer_limit stays 0: the default, 8 MiB */
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  if (!rec_wait_type(&h->r, NETEV_EVENT_CONNECTION, 10)) FAIL("%s: no CONNECTION", sp->test);

  long rss_before = rss_kib();
  CHECK(rss_before > 0);
  long rss_max = rss_before;
  double t0 = now_seconds();
  size_t off = 0;
  int refusals = 0;
  unsigned long empties = 0; /* sends after the first refusal that found the queue empty */
  while (off < sp->total) {
    size_t k = sp->total - off < STREAM_CHUNK ? sp->total - off : STREAM_CHUNK;
    if (refusals > 0) {
      size_t queued = 0;
      CHECK_OK(netev_connection_buffered_amount(c, &queued));
      empties += queued == 0;
    }
    netev_status s = netev_connection_send(c, pattern_at(off), k);
    if (s == NETEV_ERR_BUFFER_FULL) {
      if (refusals++ == 0) reader_peer_open_gate(&p);
      if (!rec_wait(&h->r, stream_host_pred_drains, (size_t)refusals, 30))
        FAIL("%s: no DRAIN after refusal %d (%zu of %zu bytes sent, peer read %zu)", sp->test,
             refusals, off, sp->total, reader_peer_got(&p));
    } else {
      CHECK_STATUS(s, NETEV_OK);
      off += k;
    }
    long now = rss_kib();
    if (now > rss_max) rss_max = now;
  }
  long now = rss_kib();
  if (now > rss_max) rss_max = now;
  double t_sent = now_seconds() - t0;
  reader_peer_open_gate(&p); /* in case no send was refused (a failure, below) */
  CHECK_OK(netev_connection_shutdown(c));

  /* The peer reads the whole stream, checks it, and ends its side. */
  if (!reader_peer_wait_finished(&p, 120))
    FAIL("%s: the peer did not reach EOF: read %zu of %zu bytes", sp->test, reader_peer_got(&p),
         sp->total);
  double t_all = now_seconds() - t0;
  now = rss_kib();
  if (now > rss_max) rss_max = now;
  pthread_mutex_lock(&p.mu);
  size_t got = p.got, bad_at = p.bad_at, reads = p.reads;
  int err = p.read_errno, eof = p.eof, eff = p.rcvbuf_effective;
  pthread_mutex_unlock(&p.mu);
  pthread_mutex_lock(&h->r.mu);
  int drains = h->drains;
  pthread_mutex_unlock(&h->r.mu);
  fprintf(stderr,
          "%s: streamed %zu bytes (%.1f MiB) in %.2f s (all sent after %.2f s); %d refusals, "
          "%d DRAINs, queue found empty by %lu sends; peer SO_RCVBUF %d (effective %d), %zu reads, "
          "got %zu bytes\n",
          sp->test, sp->total, (double)sp->total / (double)MEM_MIB, t_all, t_sent, refusals,
          drains, empties, sp->rcvbuf, eff, reads, got);
  fprintf(stderr, "%s: RSS before the stream %ld KiB, max during it %ld KiB\n", sp->test,
          rss_before, rss_max);
  if (err != 0) FAIL("%s: the peer's recv failed: %s", sp->test, strerror(err));
  if (!eof) FAIL("%s: the peer saw no EOF", sp->test);
  if (bad_at != SIZE_MAX) FAIL("%s: pattern broken at stream offset %zu", sp->test, bad_at);
  if (got != sp->total) FAIL("%s: the peer got %zu bytes, expected %zu", sp->test, got, sp->total);
  fprintf(stderr, "%s: the peer got all %zu bytes, byte-exact\n", sp->test, got);
  if (refusals == 0)
    FAIL("%s: no send was refused: the stream never reached the send limit", sp->test);

  /* The peer ended its side after EOF: END, CLOSE, TERMINATE. */
  if (!rec_wait_terminated(&h->r, 20)) {
    char seq[1024];
    rec_sequence(&h->r, seq, sizeof seq);
    FAIL("%s: no TERMINATE; events so far: \"%s\"", sp->test, seq);
  }
  CHECK_SEQUENCE(&h->r, "connection drain* end close terminate");
  CHECK(h->drains == refusals);
  CHECK(h->r.overlaps == 0 && h->r.after_terminate == 0);

  mem_check_rss(sp->test, rss_max - rss_before, bound_kib);

  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_runtime_shutdown(10));
  reader_peer_stop(&p);
  rec_free(&h->r);
  free(h);
}

#endif
