/* loadgen: the benchmark's load generator. C, epoll, no dependencies.
 *
 * Usage: loadgen MODE --port P [options]
 *
 * Modes
 *   pingpong  --conns N --size S     each connection sends an S-byte message,
 *                                    waits for the whole echo, repeats.
 *             [--prefix]             each message starts with its payload's
 *                                    length (S - 4) as 4 big-endian bytes:
 *                                    length-prefix frames for a framing server.
 *                                    Round trips/s, p50/p99/p99.9 latency.
 *   bulk      --conns N              each connection streams and reads back at
 *                                    once, at most --window bytes in flight.
 *                                    MiB/s echoed.
 *   connect   --concurrency K        connect, 1 byte each way, close, again;
 *                                    K at a time. Connections/s.
 *   idle      --conns N              open N connections, ping each once, print
 *                                    "ready", hold them until stdin ends (or a
 *                                    line arrives), then close them.
 *   udp       --conns N --size S     N UDP sockets (default 8), each keeping
 *             --inflight W           W datagrams of S bytes (default 8, 64) in
 *                                    flight to an echo server. Every reply is
 *                                    checked: its first 16 bytes name the
 *                                    socket, the window slot and the sequence
 *                                    number, the rest is the pattern for that
 *                                    socket and sequence. A datagram with no
 *                                    reply within --loss-timeout SEC (1) is
 *                                    counted lost and its slot reused; a reply
 *                                    that comes after that is counted late. Loss above
 *                                    --max-loss FRACTION (0.01) of the
 *                                    datagrams sent fails the run.
 *                                    Datagrams/s, p50/p99/p99.9 latency.
 *
 * Common: --host A (127.0.0.1), --duration SEC (5), --warmup SEC (0.5),
 * --server-pid PID: read the server's utime+stime from /proc/PID/stat at the
 * start and the end of the measured window and report it per unit of work.
 *
 * Every echoed byte is compared with what was sent (a per-connection
 * pseudo-random stream); a mismatch, an early close or an error exits 1
 * (for udp: a reply of the wrong size or content, for a datagram never sent,
 * or twice).
 * The last line on stdout is "result key=value ...", for scripts.
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 65521u /* prime: streams never line up with power-of-two sizes */
#define MAXIO 65536u
static uint8_t pattern[PERIOD + MAXIO];

static const char *mode;
static const char *host = "127.0.0.1";
static int port = -1, nconns = -1, msg_size = 64, concurrency = 16, prefix = 0, inflight = 8;
static double duration = 5, warmup = 0.5, loss_timeout = 1, max_loss = 0.01;
static size_t window = 256 * 1024;
static pid_t server_pid = 0;
static struct sockaddr_in target;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loadgen %s: ", mode ? mode : "");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The server's user+system CPU time in microseconds (all its threads). */
static double server_cpu_us(void) {
  if (!server_pid) return 0;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)server_pid);
  FILE *f = fopen(path, "r");
  if (!f) die("cannot read %s: %s", path, strerror(errno));
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) die("cannot parse %s", path);
  unsigned long long utime = 0, stime = 0;
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
    die("cannot parse %s", path);
  return (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

static const uint8_t *pat(uint64_t off, uint32_t seed) { return pattern + (off + seed) % PERIOD; }

static int open_socket(int nonblock) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Loopback connections from one source address soon fill the ephemeral
 * port range with TIME_WAIT sockets, and connect() then spends its time
 * searching for a free port. Spreading the source over 127.0.0.2-201 keeps
 * that search short (the port is still picked at connect time). */
static void spread_source(int fd, uint64_t n) {
  if ((ntohl(target.sin_addr.s_addr) >> 24) != 127) return;
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(n % 200))};
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind 127.0.0.x: %s", strerror(errno));
}

/* A blocking connect; the `n`th one of a run picks its source address with
 * spread_source, so a run can hold more connections than one address has
 * ephemeral ports. */
static int connect_blocking(uint64_t n) {
  int fd = open_socket(0);
  spread_source(fd, n);
  for (int tries = 0;; tries++) {
    if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0) break;
    if (errno == EINTR) continue;
    die("connect %s:%d: %s", host, port, strerror(errno));
  }
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* ---- pingpong and bulk: N long-lived connections on one epoll ---- */

typedef struct {
  int fd;
  uint32_t seed;
  uint64_t sent, recvd, msg_end, t0;
  int want_out;
  uint8_t *msg; /* --prefix: the message in flight, prefix included */
  uint64_t msg_start;
} conn;

/* The bytes the stream holds at `off`: the pattern, or with --prefix the
 * message in flight (pingpong has one at a time). */
static const uint8_t *src(conn *c, uint64_t off) {
  return c->msg ? c->msg + (off - c->msg_start) : pat(off, c->seed);
}

static int ep;
static conn *conns;
static int bulk, active = 1;
static uint64_t *lat;
static size_t nlat, caplat;

static void set_out(conn *c, int want) {
  if (c->want_out == want) return;
  c->want_out = want;
  struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
}

static uint64_t send_target(conn *c) {
  if (!bulk) return c->msg_end;
  return active ? c->recvd + window : c->sent;
}

static void pump(conn *c) {
  uint64_t goal = send_target(c);
  while (c->sent < goal) {
    size_t n = goal - c->sent > MAXIO ? MAXIO : (size_t)(goal - c->sent);
    ssize_t w = write(c->fd, src(c, c->sent), n);
    if (w > 0) {
      c->sent += (uint64_t)w;
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && errno == EAGAIN) {
      set_out(c, 1);
      return;
    } else {
      die("write: %s", w < 0 ? strerror(errno) : "0 bytes");
    }
  }
  set_out(c, 0);
}

static void start_message(conn *c, uint64_t t) {
  if (prefix) {
    if (!c->msg && !(c->msg = malloc((size_t)msg_size))) die("out of memory");
    uint32_t len = (uint32_t)msg_size - 4;
    uint8_t be[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    memcpy(c->msg, be, 4);
    memcpy(c->msg + 4, pat(c->sent, c->seed), (size_t)msg_size - 4);
    c->msg_start = c->sent;
  }
  c->msg_end = c->sent + (uint64_t)msg_size;
  c->t0 = t;
  pump(c);
}

static uint64_t t_go, t_stop, done_rt;
static int measuring;

static void on_readable(conn *c) {
  static uint8_t buf[MAXIO];
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n == 0) die("the server closed a connection (%llu of %llu bytes back)", (unsigned long long)c->recvd,
                    (unsigned long long)c->sent);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      die("read: %s", strerror(errno));
    }
    if ((uint64_t)n > c->sent - c->recvd) die("the server sent back more than it was sent");
    if (memcmp(buf, src(c, c->recvd), (size_t)n) != 0)
      die("echoed bytes differ from those sent (connection offset %llu)", (unsigned long long)c->recvd);
    c->recvd += (uint64_t)n;
    if (bulk) {
      pump(c);
    } else if (c->recvd == c->msg_end) {
      uint64_t t = now_ns();
      if (measuring && t < t_stop) {
        if (nlat == caplat) {
          caplat = caplat ? caplat * 2 : 1 << 16;
          lat = realloc(lat, caplat * sizeof *lat);
          if (!lat) die("out of memory");
        }
        lat[nlat++] = t - c->t0;
        done_rt++;
      }
      if (active) start_message(c, t);
      return;
    }
    if ((size_t)n < sizeof buf) return;
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (!nlat) return 0;
  size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
  return (double)lat[i] / 1000.0;
}

static int run_streams(void) {
  bulk = strcmp(mode, "bulk") == 0;
  if (nconns < 0) nconns = bulk ? 1 : 50;
  if (!bulk && (msg_size < 1 || (unsigned)msg_size > MAXIO)) die("--size must be 1..%u", MAXIO);
  if (prefix && (bulk || msg_size < 4)) die("--prefix is for pingpong, with --size 4 or more");
  ep = epoll_create1(EPOLL_CLOEXEC);
  conns = calloc((size_t)nconns, sizeof *conns);
  for (int i = 0; i < nconns; i++) {
    conn *c = &conns[i];
    c->fd = connect_blocking((uint64_t)i);
    set_nonblock(c->fd);
    c->seed = (uint32_t)i * 4099u + 17u;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
  }
  uint64_t t0 = now_ns();
  t_go = t0 + (uint64_t)(warmup * 1e9);
  t_stop = t_go + (uint64_t)(duration * 1e9);
  for (int i = 0; i < nconns; i++) {
    if (bulk) pump(&conns[i]);
    else start_message(&conns[i], t0);
  }
  double cpu0 = 0, cpu1 = 0;
  uint64_t bytes0 = 0, bytes1 = 0, drain_deadline = 0;
  struct epoll_event evs[256];
  for (;;) {
    uint64_t t = now_ns();
    if (!measuring && active && t >= t_go) {
      measuring = 1;
      cpu0 = server_cpu_us();
      for (int i = 0; i < nconns; i++) bytes0 += conns[i].recvd;
    }
    if (active && t >= t_stop) {
      cpu1 = server_cpu_us();
      for (int i = 0; i < nconns; i++) bytes1 += conns[i].recvd;
      active = 0;
      measuring = 0;
      drain_deadline = t + 10000000000ull;
      for (int i = 0; i < nconns; i++) set_out(&conns[i], 0);
    }
    if (!active) {
      int pending = 0;
      for (int i = 0; i < nconns; i++) pending |= conns[i].recvd != conns[i].sent;
      if (!pending) break;
      if (t > drain_deadline) die("echoes still missing 10 s after the end");
    }
    int n = epoll_wait(ep, evs, 256, 5);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
      if (evs[i].events & EPOLLOUT) pump(c);
    }
  }
  for (int i = 0; i < nconns; i++) close(conns[i].fd);
  double secs = (double)(t_stop - t_go) / 1e9, cpu = cpu1 - cpu0;
  if (bulk) {
    double bytes = (double)(bytes1 - bytes0), mib = bytes / 1048576.0;
    printf("bulk: %d connections, %.1f MiB/s echoed; server CPU %.1f ms/GiB\n", nconns, mib / secs,
           bytes > 0 ? cpu / 1000.0 / (bytes / 1073741824.0) : 0);
    printf("result mode=bulk conns=%d seconds=%.3f bytes=%.0f mib_per_s=%.3f server_cpu_us=%.0f cpu_ms_per_gib=%.4f\n",
           nconns, secs, bytes, mib / secs, cpu, bytes > 0 ? cpu / 1000.0 / (bytes / 1073741824.0) : 0);
  } else {
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double per = done_rt ? cpu / (double)done_rt : 0;
    printf("pingpong: %d connections, %d-byte messages: %.0f round trips/s, p50 %.1f us, p99 %.1f us, p99.9 %.1f us; "
           "server CPU %.2f us/round trip\n",
           nconns, msg_size, (double)done_rt / secs, pct(50), pct(99), pct(99.9), per);
    printf("result mode=pingpong conns=%d size=%d seconds=%.3f rt=%llu rt_per_s=%.1f p50_us=%.2f p99_us=%.2f "
           "p999_us=%.2f server_cpu_us=%.0f cpu_us_per_rt=%.4f\n",
           nconns, msg_size, secs, (unsigned long long)done_rt, (double)done_rt / secs, pct(50), pct(99), pct(99.9),
           cpu, per);
  }
  return 0;
}

/* ---- udp: N sockets, each keeping W datagrams in flight ---- */

/* Each datagram starts with a header, in host order: the socket's index (4
 * bytes), the window slot it occupies (4) and its sequence number (8). */
#define UDP_HDR 16
#define UDP_WMAX 256 /* the most --inflight takes */
#define UDP_SIZE_MAX 65507

typedef struct {
  uint64_t seq, sent_ns;
  uint8_t state; /* 0 free (never used, answered or declared lost), 1 in flight */
  uint8_t lost;  /* the last sequence here was declared lost */
  uint8_t hdr[UDP_HDR];
} uslot;

typedef struct {
  int fd;
  uint32_t index;
  uint64_t next;   /* the next sequence number */
  unsigned nfree;  /* free slots, their numbers in free_slots[0..nfree) */
  uint32_t free_slots[UDP_WMAX];
  uslot slots[UDP_WMAX];
} usock;

static usock *usocks;
static uint64_t udp_sent, udp_lost, udp_late;

/* The bytes after the header: the pattern, from a place that depends on the
 * socket and the sequence number. */
static const uint8_t *udp_payload(uint32_t index, uint64_t seq) { return pat(seq * 131u, index * 7919u); }

/* Sends a datagram from each free slot (none past the end). A datagram
 * waiting for its reply holds its slot only: a lost one never stops the
 * others. */
static void udp_refill(usock *u, uint64_t now) {
  static struct mmsghdr m[UDP_WMAX];
  static struct iovec io[UDP_WMAX][2];
  static uint32_t taken[UDP_WMAX];
  unsigned k = 0;
  while (active && u->nfree > 0) {
    uint32_t slot = u->free_slots[--u->nfree];
    uslot *x = &u->slots[slot];
    uint64_t seq = u->next++;
    x->seq = seq;
    x->sent_ns = now;
    x->state = 1;
    x->lost = 0;
    memcpy(x->hdr, &u->index, 4);
    memcpy(x->hdr + 4, &slot, 4);
    memcpy(x->hdr + 8, &seq, 8);
    io[k][0] = (struct iovec){.iov_base = x->hdr, .iov_len = UDP_HDR};
    io[k][1] = (struct iovec){.iov_base = (void *)udp_payload(u->index, seq), .iov_len = (size_t)msg_size - UDP_HDR};
    m[k].msg_hdr = (struct msghdr){.msg_iov = io[k], .msg_iovlen = 2};
    taken[k++] = slot;
  }
  unsigned off = 0;
  while (off < k) {
    int n = sendmmsg(u->fd, m + off, k - off, 0);
    if (n > 0) {
      off += (unsigned)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
      /* The socket's send buffer is full: give the unsent ones their slots
       * (and sequence numbers) back; a later turn sends them. */
      for (unsigned i = k; i-- > off;) {
        u->slots[taken[i]].state = 0;
        u->free_slots[u->nfree++] = taken[i];
      }
      u->next -= k - off;
      break;
    } else {
      die("send to %s:%d: %s", host, port, n < 0 ? strerror(errno) : "nothing sent");
    }
  }
  udp_sent += off;
}

static void udp_readable(usock *u) {
  static struct mmsghdr m[UDP_WMAX];
  static struct iovec io[UDP_WMAX];
  static uint8_t *bufs;
  if (!bufs && !(bufs = malloc((size_t)UDP_WMAX * (UDP_SIZE_MAX + 1)))) die("out of memory");
  for (;;) {
    for (int i = 0; i < inflight; i++) {
      io[i] = (struct iovec){.iov_base = bufs + (size_t)i * (UDP_SIZE_MAX + 1), .iov_len = (size_t)msg_size + 1};
      m[i].msg_hdr = (struct msghdr){.msg_iov = &io[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(u->fd, m, (unsigned)inflight, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      die("receive: %s", strerror(errno));
    }
    uint64_t now = now_ns();
    for (int i = 0; i < n; i++) {
      const uint8_t *b = io[i].iov_base;
      unsigned len = m[i].msg_len;
      if (len != (unsigned)msg_size || (m[i].msg_hdr.msg_flags & MSG_TRUNC))
        die("socket %u: a reply of %u bytes, expected %d", u->index, len, msg_size);
      uint32_t index, slot;
      uint64_t seq;
      memcpy(&index, b, 4);
      memcpy(&slot, b + 4, 4);
      memcpy(&seq, b + 8, 8);
      if (index != u->index) die("socket %u got the reply meant for socket %u", u->index, index);
      if (seq >= u->next || slot >= (uint32_t)inflight)
        die("socket %u: a reply for sequence %llu (slot %u), never sent", u->index, (unsigned long long)seq, slot);
      if (memcmp(b + UDP_HDR, udp_payload(index, seq), (size_t)msg_size - UDP_HDR) != 0)
        die("socket %u: the reply for sequence %llu differs from what was sent", u->index, (unsigned long long)seq);
      uslot *x = &u->slots[slot];
      if (x->seq != seq || x->state == 0) {
        /* Not in flight: a reply that came after its datagram was declared
         * lost (its slot perhaps reused since), or a second reply. */
        if (x->seq == seq && !x->lost)
          die("socket %u: two replies for sequence %llu", u->index, (unsigned long long)seq);
        if (x->seq == seq) x->lost = 0; /* so that a third is caught */
        udp_late++;
        continue;
      }
      x->state = 0;
      u->free_slots[u->nfree++] = slot;
      if (measuring && now < t_stop) {
        if (nlat == caplat) {
          caplat = caplat ? caplat * 2 : 1 << 16;
          lat = realloc(lat, caplat * sizeof *lat);
          if (!lat) die("out of memory");
        }
        lat[nlat++] = now - x->sent_ns;
        done_rt++;
      }
    }
    udp_refill(u, now);
    if (n < inflight) break;
  }
}

/* Declares lost what waited past --loss-timeout, and refills. */
static void udp_expire(uint64_t now) {
  uint64_t limit = (uint64_t)(loss_timeout * 1e9);
  for (int i = 0; i < nconns; i++) {
    usock *u = &usocks[i];
    for (uint32_t slot = 0; slot < (uint32_t)inflight; slot++) {
      uslot *x = &u->slots[slot];
      if (x->state == 1 && now - x->sent_ns > limit) {
        x->state = 0;
        x->lost = 1;
        u->free_slots[u->nfree++] = slot;
        udp_lost++;
      }
    }
    udp_refill(u, now);
  }
}

static int run_udp(void) {
  if (nconns < 0) nconns = 8;
  if (msg_size < UDP_HDR || msg_size > UDP_SIZE_MAX) die("--size must be %d..%d for udp", UDP_HDR, UDP_SIZE_MAX);
  if (inflight < 1 || inflight > UDP_WMAX) die("--inflight must be 1..%d", UDP_WMAX);
  if (!(loss_timeout > 0) || !(max_loss >= 0)) die("bad --loss-timeout or --max-loss");
  ep = epoll_create1(EPOLL_CLOEXEC);
  usocks = calloc((size_t)nconns, sizeof *usocks);
  if (!usocks) die("out of memory");
  for (int i = 0; i < nconns; i++) {
    usock *u = &usocks[i];
    u->index = (uint32_t)i;
    for (int k = inflight; k-- > 0;) u->free_slots[u->nfree++] = (uint32_t)k;
    u->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0) die("socket: %s", strerror(errno));
    /* Connected: the kernel takes only the server's replies, and send and
     * receive need no address. */
    if (connect(u->fd, (struct sockaddr *)&target, sizeof target) != 0) die("connect: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = u};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, u->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
  }
  uint64_t t0 = now_ns(), last_expire = t0;
  t_go = t0 + (uint64_t)(warmup * 1e9);
  t_stop = t_go + (uint64_t)(duration * 1e9);
  for (int i = 0; i < nconns; i++) udp_refill(&usocks[i], t0);
  double cpu0 = 0, cpu1 = 0;
  uint64_t drain_deadline = 0;
  struct epoll_event evs[256];
  for (;;) {
    uint64_t t = now_ns();
    if (!measuring && active && t >= t_go) {
      measuring = 1;
      cpu0 = server_cpu_us();
    }
    if (active && t >= t_stop) {
      cpu1 = server_cpu_us();
      active = 0;
      measuring = 0;
      drain_deadline = t + (uint64_t)(loss_timeout * 1e9) + 1000000000ull;
    }
    if (t - last_expire >= 10000000ull) {
      udp_expire(t);
      last_expire = t;
    }
    if (!active) {
      int pending = 0;
      for (int i = 0; i < nconns; i++) pending |= usocks[i].nfree != (unsigned)inflight;
      if (!pending) break;
      if (t > drain_deadline) die("datagrams still unresolved past the loss timeout");
    }
    int n = epoll_wait(ep, evs, 256, 5);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) udp_readable(evs[i].data.ptr);
  }
  for (int i = 0; i < nconns; i++) close(usocks[i].fd);
  double secs = (double)(t_stop - t_go) / 1e9, cpu = cpu1 - cpu0;
  qsort(lat, nlat, sizeof *lat, cmp_u64);
  double per = done_rt ? cpu / (double)done_rt : 0;
  double loss = udp_sent ? (double)udp_lost / (double)udp_sent : 0;
  printf("udp: %d sockets x %d in flight, %d-byte datagrams: %.0f datagrams/s, p50 %.1f us, p99 %.1f us; "
         "server CPU %.2f us/datagram; %llu of %llu lost (%llu came late)\n",
         nconns, inflight, msg_size, (double)done_rt / secs, pct(50), pct(99), per, (unsigned long long)udp_lost,
         (unsigned long long)udp_sent, (unsigned long long)udp_late);
  printf("result mode=udp conns=%d inflight=%d size=%d seconds=%.3f dgrams=%llu dgrams_per_s=%.1f p50_us=%.2f "
         "p99_us=%.2f p999_us=%.2f server_cpu_us=%.0f cpu_us_per_dgram=%.4f sent=%llu lost=%llu late=%llu "
         "loss_pct=%.4f\n",
         nconns, inflight, msg_size, secs, (unsigned long long)done_rt, (double)done_rt / secs, pct(50), pct(99),
         pct(99.9), cpu, per, (unsigned long long)udp_sent, (unsigned long long)udp_lost,
         (unsigned long long)udp_late, loss * 100);
  if (loss > max_loss)
    die("%llu of %llu datagrams lost (%.2f %%), more than --max-loss %.2f %%", (unsigned long long)udp_lost,
        (unsigned long long)udp_sent, loss * 100, max_loss * 100);
  return 0;
}

/* ---- connect: connect, 1 byte each way, close, K at a time ---- */

typedef struct {
  int fd, state; /* 0 connecting, 1 waiting for the byte */
  uint8_t byte;
} slot;

static int run_connect(void) {
  ep = epoll_create1(EPOLL_CLOEXEC);
  slot *slots = calloc((size_t)concurrency, sizeof *slots);
  uint64_t count = 0, started = 0, done = 0;
  int live = 0;
  uint64_t t0 = now_ns();
  t_go = t0 + (uint64_t)(warmup * 1e9);
  t_stop = t_go + (uint64_t)(duration * 1e9);
  double cpu0 = 0, cpu1 = 0;
#define START(i)                                                                                                       \
  do {                                                                                                                 \
    slot *s_ = &slots[i];                                                                                              \
    s_->fd = open_socket(1);                                                                                           \
    s_->state = 0;                                                                                                     \
    s_->byte = (uint8_t)(started * 131u + 7u);                                                                         \
    spread_source(s_->fd, started++);                                                                                  \
    if (connect(s_->fd, (struct sockaddr *)&target, sizeof target) != 0 && errno != EINPROGRESS)                      \
      die("connect: %s", strerror(errno));                                                                             \
    struct epoll_event ev_ = {.events = EPOLLOUT, .data.u32 = (uint32_t)(i)};                                          \
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s_->fd, &ev_) != 0) die("epoll_ctl: %s", strerror(errno));                        \
    live++;                                                                                                            \
  } while (0)
  for (int i = 0; i < concurrency; i++) START(i);
  struct epoll_event evs[256];
  while (live > 0) {
    uint64_t t = now_ns();
    if (!measuring && active && t >= t_go) {
      measuring = 1;
      cpu0 = server_cpu_us();
      count = 0;
    }
    if (active && t >= t_stop) {
      cpu1 = server_cpu_us();
      done = count;
      active = 0;
      measuring = 0;
    }
    int n = epoll_wait(ep, evs, 256, 5);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      slot *s = &slots[i];
      if (s->state == 0) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) die("connect: %s", strerror(err));
        if (write(s->fd, &s->byte, 1) != 1) die("write: %s", strerror(errno));
        s->state = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
      } else {
        uint8_t b;
        ssize_t r = read(s->fd, &b, 1);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r == 0) die("the server closed before echoing");
        if (r < 0) die("read: %s", strerror(errno));
        if (b != s->byte) die("echoed byte differs from the one sent");
        close(s->fd);
        live--;
        count++;
        if (active) START(i);
      }
    }
  }
  double secs = (double)(t_stop - t_go) / 1e9, cpu = cpu1 - cpu0;
  double per = done ? cpu / (double)done : 0;
  printf("connect: %d at a time: %.0f connections/s; server CPU %.2f us/connection\n", concurrency,
         (double)done / secs, per);
  printf("result mode=connect concurrency=%d seconds=%.3f conns=%llu conns_per_s=%.1f server_cpu_us=%.0f "
         "cpu_us_per_conn=%.4f\n",
         concurrency, secs, (unsigned long long)done, (double)done / secs, cpu, per);
  return 0;
}

/* ---- idle: hold N connections ---- */

static int run_idle(void) {
  if (nconns < 0) nconns = 10000;
  int *fds = malloc((size_t)nconns * sizeof *fds);
  const int batch = 128;
  uint64_t t0 = now_ns();
  for (int base = 0; base < nconns; base += batch) {
    int end = base + batch < nconns ? base + batch : nconns;
    for (int i = base; i < end; i++) {
      fds[i] = connect_blocking((uint64_t)i);
      uint8_t b = (uint8_t)(i * 37 + 1);
      if (write(fds[i], &b, 1) != 1) die("write: %s", strerror(errno));
    }
    for (int i = base; i < end; i++) {
      uint8_t b;
      ssize_t r = read(fds[i], &b, 1);
      if (r != 1) die("connection %d: no echo: %s", i, r < 0 ? strerror(errno) : "closed");
      if (b != (uint8_t)(i * 37 + 1)) die("echoed byte differs from the one sent");
    }
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  printf("ready %d\n", nconns);
  fflush(stdout);
  char line[64];
  (void)!read(0, line, sizeof line); /* a line or EOF: done */
  for (int i = 0; i < nconns; i++) close(fds[i]);
  printf("result mode=idle conns=%d open_seconds=%.3f\n", nconns, secs);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s pingpong|bulk|connect|idle|udp --port P [--host A] [--conns N] [--size S] "
                    "[--duration SEC] [--warmup SEC] [--window BYTES] [--concurrency K] [--inflight W] "
                    "[--loss-timeout SEC] [--max-loss FRACTION] [--server-pid PID]\n",
            argv[0]);
    return 2;
  }
  mode = argv[1];
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--prefix")) {
      prefix = 1;
      continue;
    }
    if (!v) die("%s needs a value", a);
    i++;
    if (!strcmp(a, "--port")) port = atoi(v);
    else if (!strcmp(a, "--host")) host = v;
    else if (!strcmp(a, "--conns")) nconns = atoi(v);
    else if (!strcmp(a, "--size")) msg_size = atoi(v);
    else if (!strcmp(a, "--duration")) duration = atof(v);
    else if (!strcmp(a, "--warmup")) warmup = atof(v);
    else if (!strcmp(a, "--window")) window = (size_t)atol(v);
    else if (!strcmp(a, "--concurrency")) concurrency = atoi(v);
    else if (!strcmp(a, "--server-pid")) server_pid = (pid_t)atoi(v);
    else if (!strcmp(a, "--inflight")) inflight = atoi(v);
    else if (!strcmp(a, "--loss-timeout")) loss_timeout = atof(v);
    else if (!strcmp(a, "--max-loss")) max_loss = atof(v);
    else die("unknown option %s", a);
  }
  if (port <= 0 || port > 65535) die("--port is required");
  if (nconns == 0 || concurrency < 1 || window < 1) die("bad count");
  memset(&target, 0, sizeof target);
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &target.sin_addr) != 1) die("--host must be an IPv4 address");
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < PERIOD; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    pattern[i] = (uint8_t)x;
  }
  /* Repeat the start after the period: any slice of <= MAXIO bytes from an
   * offset < PERIOD is then contiguous. */
  for (size_t i = PERIOD; i < sizeof pattern; i++) pattern[i] = pattern[i - PERIOD];
  if (!strcmp(mode, "pingpong") || !strcmp(mode, "bulk")) return run_streams();
  if (!strcmp(mode, "connect")) return run_connect();
  if (!strcmp(mode, "idle")) return run_idle();
  if (!strcmp(mode, "udp")) return run_udp();
  die("unknown mode (pingpong, bulk, connect, idle, udp)");
}
