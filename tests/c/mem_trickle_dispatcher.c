/* Memory bound with a 1-byte trickle to a host that does not dispatch: 8
 * netev client connections bound to one dispatcher that nobody runs, and a
 * BSD peer that writes to them round-robin one byte per send() (TCP_NODELAY:
 * one segment each), each byte only once netev has read the one before (so
 * every read of netev's gets one byte), until each connection took its byte
 * budget or stalled (netev stopped reading it; the peer then fills the
 * kernel's buffers until EAGAIN). What netev holds for one connection
 * (received undelivered bytes and the bookkeeping for them: queue entries,
 * boxed jobs, buffer slack) must stay within 1 MiB + a fixed overhead
 * (API.md, "Precise rules"): the process may grow by at most
 * 8 * (1 MiB + 1 MiB) + 8 MiB. Then the host dispatches: every byte the peer
 * wrote arrives, byte-exact, on the right connection, then END, CLOSE and
 * TERMINATE. */
#include "common_mem.h"

#include <dirent.h>
#include <sched.h>
#include <sys/ioctl.h>

#define NCONN 8

enum { MODE_PACED, MODE_FILL };

typedef struct tconn {
  netev_connection c;
  int fd;             /* the peer's end */
  int netev_fd;       /* netev's end (found in /proc/self/fd; only looked at) */
  int mode;           /* MODE_PACED, then MODE_FILL once netev stopped reading */
  int blocked;        /* FILL: the last send met EAGAIN; skipped until POLLOUT */
  double last_write;  /* when the peer last wrote a byte to it */
  size_t paced_bytes; /* bytes written while PACED */
  size_t written;     /* bytes the peer's send() took */
  size_t sends_again; /* sends refused with EAGAIN */
  size_t got;         /* DATA bytes delivered */
  size_t data_events;
  size_t bad_at;      /* first stream offset that broke the pattern, or SIZE_MAX */
  int connected, ended, closed, errors, terminated;
  int bad;            /* events out of order, on the wrong handle, or after TERMINATE */
  netev_status error;
} tconn;

static pthread_t main_thread;
static int wrong_thread; /* callbacks off the dispatching thread */

/* Every callback slot. Runs only inside netev_dispatcher_run (or
 * netev_runtime_shutdown) on the main thread. */
static void trickle_cb(netev_connection c, const netev_event *e, void *ud) {
  tconn *t = ud;
  if (!pthread_equal(pthread_self(), main_thread)) wrong_thread++;
  if (c != t->c || e->connection != t->c || t->terminated) t->bad++;
  switch (e->type) {
  case NETEV_EVENT_CONNECTION:
    t->connected++;
    break;
  case NETEV_EVENT_DATA:
    if (!t->connected || t->ended || e->data == NULL || e->data_len == 0) {
      t->bad++;
      break;
    }
    if (t->bad_at == SIZE_MAX) {
      size_t i = pattern_mismatch(e->data, e->data_len, t->got);
      if (i < e->data_len) t->bad_at = t->got + i;
    }
    t->got += e->data_len;
    t->data_events++;
    break;
  case NETEV_EVENT_END:
    t->ended++;
    break;
  case NETEV_EVENT_CLOSE:
    t->closed++;
    break;
  case NETEV_EVENT_ERROR:
    t->errors++;
    t->error = e->error;
    break;
  case NETEV_EVENT_TERMINATE:
    t->terminated++;
    break;
  default:
    t->bad++;
  }
}

/* netev's socket of the connection whose peer end is `peer_fd`: the fd of
 * this process whose local port is the peer end's remote port and whose
 * remote port is the peer's listening port. */
static int find_netev_socket(int peer_fd, uint16_t listen_port) {
  struct sockaddr_in pa;
  socklen_t len = sizeof pa;
  CHECK(getpeername(peer_fd, (struct sockaddr *)&pa, &len) == 0);
  DIR *dir = opendir("/proc/self/fd");
  CHECK(dir);
  int found = -1;
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    char *end;
    long fd = strtol(de->d_name, &end, 10);
    if (*end != 0 || end == de->d_name || fd == dirfd(dir)) continue;
    struct sockaddr_in la, ra;
    socklen_t ll = sizeof la, rl = sizeof ra;
    if (getsockname((int)fd, (struct sockaddr *)&la, &ll) != 0 || la.sin_family != AF_INET)
      continue;
    if (getpeername((int)fd, (struct sockaddr *)&ra, &rl) != 0) continue;
    if (la.sin_port == pa.sin_port && ntohs(ra.sin_port) == listen_port) {
      found = (int)fd; /* the first will do: any fd of that socket tells the same */
      break;
    }
  }
  closedir(dir);
  if (found < 0) FAIL("netev's socket for local port %d not found", ntohs(pa.sin_port));
  return found;
}

/* Runs the dispatcher (on this thread) until `done(t)` holds or `seconds`
 * pass; returns whether it held. */
static int dispatch_until(netev_dispatcher d, int dfd, tconn *t, int (*done)(tconn *),
                          double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (!done(t)) {
    if (now_seconds() > end) return 0;
    fd_readable(dfd, 50);
    CHECK_OK(netev_dispatcher_run(d, 0, NULL));
  }
  return 1;
}

static int all_connected(tconn *t) {
  for (int i = 0; i < NCONN; i++)
    if (!t[i].connected && !t[i].errors) return 0;
  return 1;
}

static int all_delivered(tconn *t) {
  for (int i = 0; i < NCONN; i++)
    if (t[i].got < t[i].written && !t[i].errors && !t[i].terminated) return 0;
  return 1;
}

static int all_terminated(tconn *t) {
  for (int i = 0; i < NCONN; i++)
    if (!t[i].terminated) return 0;
  return 1;
}

int main(void) {
  watchdog(150);
  main_thread = pthread_self();
  pattern_table_init();
  /* Bytes the peer writes to one connection at most. Paced, one byte per
   * read of netev's, the peer manages about 50,000 bytes a second over all
   * connections (each byte wakes a netev thread): 64 KiB each is 512 KiB,
   * about 10 s, and 512 Ki reads, far more bookkeeping than the bound allows
   * if netev keeps a job per read. */
  const size_t budget = (size_t)test_scale(64L * MEM_KIB, 4L * MEM_KIB);
  const long bound_kib = NCONN * (1024 + 1024) + 8 * 1024;

  uint16_t port;
  int lfd = listen_loopback(&port, 16);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int dfd;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));

  tconn t[NCONN];
  memset(t, 0, sizeof t);
  for (int i = 0; i < NCONN; i++) {
    t[i].fd = -1;
    t[i].bad_at = SIZE_MAX;
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    o.on_connection = o.on_data = o.on_shutdown = o.on_error = trickle_cb;
    o.on_terminate = o.on_drain = o.on_end = trickle_cb;
    o.user_data = &t[i];
    o.dispatcher = d;
    o.connection_timeout = 10;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &t[i].c));
    /* One connection at a time, so that accepted socket i is connection i. */
    if (!fd_readable(lfd, (int)(10000 * test_time_factor())))
      FAIL("connection %d never reached the peer", i);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    CHECK(fd >= 0);
    int one = 1;
    CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
    t[i].fd = fd;
  }
  if (!dispatch_until(d, dfd, t, all_connected, 10)) FAIL("not every connection got CONNECTION");
  for (int i = 0; i < NCONN; i++)
    if (t[i].errors) FAIL("connection %d: ERROR %s", i, netev_status_name(t[i].error));

  /* netev's own socket of each connection, to see whether netev has read
   * what the peer wrote (FIONREAD only looks; it takes nothing). */
  for (int i = 0; i < NCONN; i++) t[i].netev_fd = find_netev_socket(t[i].fd, port);

  /* The trickle; nobody dispatches from here until the RSS is measured.
   * Each connection is first PACED: one byte, then the next only once netev
   * has read it, so that every read of netev's gets one byte (unpaced, netev
   * falls behind and reads the bytes in runs, and how long the runs are is
   * up to the scheduler). When netev leaves a byte unread for `quiet`
   * seconds it has stopped reading that socket: the connection goes to FILL,
   * one byte per send() until the kernel's buffers are full (EAGAIN, and no
   * POLLOUT for `quiet` seconds) or the byte budget is spent. */
  long rss_before = rss_kib();
  CHECK(rss_before > 0);
  double t0 = now_seconds();
  double quiet = 0.3 * test_time_factor();
  double trickle_end = t0 + 60 * test_time_factor(); /* a time budget besides the byte budget */
  const char *why = NULL;
  unsigned long rounds = 0, pauses = 0;
  for (;;) {
    int open = 0, paced_waiting = 0, progress = 0;
    double now = now_seconds();
    for (int i = 0; i < NCONN; i++) {
      tconn *c = &t[i];
      if (c->written >= budget) continue;
      open++;
      if (c->mode == MODE_PACED) {
        int unread = 0;
        if (ioctl(c->netev_fd, FIONREAD, &unread) != 0)
          FAIL("FIONREAD on netev's socket of connection %d: %s", i, strerror(errno));
        if (unread > 0) {
          if (now - c->last_write > quiet) {
            c->mode = MODE_FILL; /* netev stopped reading this socket */
            c->paced_bytes = c->written;
          } else {
            paced_waiting++;
            continue;
          }
        }
      } else if (c->blocked) {
        continue;
      }
      unsigned char b = pattern_byte(c->written);
      ssize_t w = send(c->fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w == 1) {
        c->written++;
        c->last_write = now;
        progress = 1;
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->sends_again++;
        c->blocked = 1;
        if (c->mode == MODE_PACED) {
          c->mode = MODE_FILL;
          c->paced_bytes = c->written;
        }
      } else if (!(w < 0 && errno == EINTR)) {
        FAIL("the peer's send to connection %d failed: %s", i, strerror(errno));
      }
    }
    if (open == 0) {
      why = "every connection took its byte budget";
      break;
    }
    if ((++rounds & 255) == 0 && now_seconds() > trickle_end) {
      why = "the time budget ran out";
      break;
    }
    if (progress) continue;
    if (paced_waiting) {
      /* Pacing: netev has bytes of ours to read; give it a moment. */
      sched_yield();
      pauses++;
      continue;
    }
    /* Every connection under its budget is full: wait for room on any. */
    struct pollfd pf[NCONN];
    int idx[NCONN];
    int np = 0;
    for (int i = 0; i < NCONN; i++)
      if (t[i].written < budget) {
        pf[np].fd = t[i].fd;
        pf[np].events = POLLOUT;
        pf[np].revents = 0;
        idx[np++] = i;
      }
    int k = poll(pf, (nfds_t)np, (int)(quiet * 1000));
    if (k < 0 && errno == EINTR) continue;
    CHECK(k >= 0);
    if (k == 0) {
      why = "every connection under its budget stalled";
      break;
    }
    for (int j = 0; j < np; j++)
      if (pf[j].revents) t[idx[j]].blocked = 0;
  }
  double t_trickle = now_seconds() - t0;
  long rss_stalled = rss_kib();
  CHECK(rss_stalled > 0);
  size_t total = 0;
  for (int i = 0; i < NCONN; i++) total += t[i].written;
  fprintf(stderr,
          "mem_trickle_dispatcher: the peer wrote %zu bytes in 1-byte sends to %d connections in "
          "%.2f s (budget %zu each); stopped: %s\n",
          total, NCONN, t_trickle, budget, why);
  for (int i = 0; i < NCONN; i++)
    fprintf(stderr,
            "  connection %d: %zu bytes written, %zu of them paced (%s), %zu sends refused "
            "(EAGAIN)\n",
            i, t[i].written, t[i].mode == MODE_PACED ? t[i].written : t[i].paced_bytes,
            t[i].mode == MODE_PACED ? "netev read each one" : "then netev stopped reading",
            t[i].sends_again);
  fprintf(stderr, "mem_trickle_dispatcher: %lu rounds, %lu pacing pauses\n", rounds, pauses);
  fprintf(stderr, "mem_trickle_dispatcher: RSS before the trickle %ld KiB, after it %ld KiB\n",
          rss_before, rss_stalled);
  for (int i = 0; i < NCONN; i++) CHECK(t[i].got == 0); /* nobody dispatched */
  CHECK(total > 0);
  CHECK(fd_readable(dfd, 0)); /* but callbacks are queued */
  mem_check_rss("mem_trickle_dispatcher", rss_stalled - rss_before, bound_kib);

  /* Now dispatch until every byte the peer wrote was delivered. */
  double t1 = now_seconds();
  if (!dispatch_until(d, dfd, t, all_delivered, 60)) {
    for (int i = 0; i < NCONN; i++)
      fprintf(stderr, "  connection %d: %zu of %zu bytes delivered\n", i, t[i].got, t[i].written);
    FAIL("not every byte was delivered once the host dispatched");
  }
  size_t events = 0;
  for (int i = 0; i < NCONN; i++) {
    if (t[i].errors) FAIL("connection %d: ERROR %s", i, netev_status_name(t[i].error));
    if (t[i].bad_at != SIZE_MAX)
      FAIL("connection %d: pattern broken at stream offset %zu", i, t[i].bad_at);
    if (t[i].got != t[i].written)
      FAIL("connection %d: %zu bytes delivered, the peer wrote %zu", i, t[i].got, t[i].written);
    events += t[i].data_events;
  }
  fprintf(stderr,
          "mem_trickle_dispatcher: all %zu bytes delivered, byte-exact, in %zu DATA events "
          "(%.2f s); RSS now %ld KiB\n",
          total, events, now_seconds() - t1, rss_kib());

  /* The peer ends each stream: END, then (not half-open) CLOSE, TERMINATE. */
  for (int i = 0; i < NCONN; i++) CHECK(shutdown(t[i].fd, SHUT_WR) == 0);
  if (!dispatch_until(d, dfd, t, all_terminated, 20)) FAIL("not every connection terminated");
  for (int i = 0; i < NCONN; i++) {
    if (t[i].connected != 1 || t[i].ended != 1 || t[i].closed != 1 || t[i].errors != 0 ||
        t[i].terminated != 1 || t[i].bad != 0)
      FAIL("connection %d: CONNECTION %d, END %d, CLOSE %d, ERROR %d, TERMINATE %d, bad %d", i,
           t[i].connected, t[i].ended, t[i].closed, t[i].errors, t[i].terminated, t[i].bad);
    if (t[i].got != t[i].written)
      FAIL("connection %d: %zu bytes delivered, the peer wrote %zu", i, t[i].got, t[i].written);
  }
  CHECK(wrong_thread == 0);

  for (int i = 0; i < NCONN; i++) CHECK_OK(netev_connection_release(t[i].c));
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_runtime_shutdown(10));
  for (int i = 0; i < NCONN; i++) close(t[i].fd);
  close(lfd);
  return 0;
}
