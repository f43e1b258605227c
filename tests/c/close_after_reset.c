/* close() (and release() of the last reference) always ends with CLOSE then
 * TERMINATE, never ERROR — also when the peer has just reset the connection
 * and bytes are still queued: "connection close terminate".
 *
 * Each round: a BSD peer with a small receive buffer accepts and never
 * reads; the host sends until NETEV_ERR_BUFFER_FULL (send_buffer_limit
 * 256 KiB), so bytes stay queued; the peer resets (SO_LINGER {1,0}, close);
 * then the host calls close (or release).
 *
 * Two orderings:
 *  - held (strict): the runtime has one I/O thread, and another
 *    connection's DATA callback keeps it busy while the host fills the
 *    queue, the peer resets and the host closes. netev cannot have seen the
 *    reset before close() was called, so every round must be exactly
 *    "connection close terminate".
 *  - free (statistical): the host closes right after the peer's close()
 *    returned (the RST is already in our kernel), with netev's I/O thread
 *    free. netev may legitimately see the reset first and end the
 *    connection with ERROR before close() takes effect, and the host cannot
 *    tell exactly when that happened. Rounds where closed() was already
 *    true just before the call, or whose ERROR callback began before the
 *    call returned, are excluded; of the others (the connection was open
 *    when close() was called), a library that keeps the promise ends
 *    nearly all with CLOSE, losing only the odd sub-microsecond race. The
 *    promise counts as broken when at least half of them (and at least 4)
 *    end in ERROR. */
#include "common_b.h"
#include "common_listener.h"

#include <stdatomic.h>

#define SEND_LIMIT (256u << 10)
#define CHUNK (64u << 10)

/* ---- a connection whose DATA callback holds netev's only I/O thread ----- */

typedef struct blocker {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int hold;      /* the DATA callback waits while this is set */
  int blocked;   /* the DATA callback is waiting */
  int overran;   /* it gave up waiting (bounded) */
  recorder r;
} blocker;

static void blocker_cb(netev_connection c, const netev_event *e, void *ud) {
  blocker *b = ud;
  rec_event(&b->r, e);
  if (e->type == NETEV_EVENT_DATA) {
    /* A slow host: it keeps netev's I/O thread until the test lets it go. */
    double end = now_seconds() + 20 * test_time_factor();
    pthread_mutex_lock(&b->mu);
    b->blocked = 1;
    pthread_cond_broadcast(&b->cv);
    while (b->hold && cond_wait_until(&b->cv, &b->mu, end)) {
    }
    if (b->hold) b->overran++;
    b->blocked = 0;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
  }
  (void)c;
  rec_done(&b->r);
}

static int blocker_wait_blocked(blocker *b, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&b->mu);
  while (!b->blocked && cond_wait_until(&b->cv, &b->mu, end)) {
  }
  int ok = b->blocked;
  pthread_mutex_unlock(&b->mu);
  return ok;
}

static void blocker_let_go(blocker *b) {
  pthread_mutex_lock(&b->mu);
  b->hold = 0;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

/* ---- the connection under test ------------------------------------------ */

typedef struct closing {
  recorder r;
  atomic_int close_called;   /* set just before close/release is called */
  atomic_int close_returned; /* set just after it returned */
  atomic_int error_before;   /* ERROR callbacks that began before the call */
  atomic_int error_during;   /* ... while it ran */
  atomic_int error_after;    /* ... after it returned */
} closing;

static void closing_cb(netev_connection c, const netev_event *e, void *ud) {
  closing *k = ud;
  if (e->type == NETEV_EVENT_ERROR) {
    if (atomic_load(&k->close_returned))
      atomic_fetch_add(&k->error_after, 1);
    else if (atomic_load(&k->close_called))
      atomic_fetch_add(&k->error_during, 1);
    else
      atomic_fetch_add(&k->error_before, 1);
  }
  rec_callback(c, e, &k->r);
}

/* A loopback listening socket whose accepted sockets have a small receive
 * buffer (so the host's bytes back up quickly). */
static int listen_small_rcvbuf(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  int small = 4096;
  CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(fd, 16) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static int accept_one(int lfd) {
  struct pollfd p = {lfd, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(10000 * test_time_factor())) == 1);
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  CHECK(fd >= 0);
  return fd;
}

static void reset_fd(int fd) {
  struct linger lg = {1, 0};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  CHECK(close(fd) == 0);
}

/* Sends pattern bytes until send refuses with BUFFER_FULL; returns the
 * bytes taken. */
static size_t fill_until_full(netev_connection c, const unsigned char *chunk) {
  size_t taken = 0;
  double end = now_seconds() + 20 * test_time_factor();
  for (;;) {
    netev_status st = netev_connection_send(c, chunk, CHUNK);
    if (st == NETEV_ERR_BUFFER_FULL) break;
    if (st != NETEV_OK) FAIL("send returned %s while filling the queue", netev_status_name(st));
    taken += CHUNK;
    if (now_seconds() > end)
      FAIL("send never refused with BUFFER_FULL (%zu bytes taken) though the peer never reads",
           taken);
  }
  size_t queued = 0;
  CHECK_OK(netev_connection_buffered_amount(c, &queued));
  if (queued == 0) FAIL("BUFFER_FULL refused a send, yet nothing is queued");
  return taken;
}

static int handle_invalid(void *arg) {
  uint16_t p;
  return netev_connection_port(*(netev_connection *)arg, &p) == NETEV_ERR_INVALID_HANDLE;
}

typedef struct tally {
  int rounds;
  int ok;            /* "connection close terminate" */
  int error;         /* ended in ERROR after close()/release() was called */
  int error_first;   /* free ordering: netev had ended the connection before the call */
  int error_race;    /* free ordering: ERROR began before the call returned */
  int other;         /* any other sequence */
  netev_status error_status;
  char first_bad[1024];
} tally;

/* One round. `held`: keep netev's I/O thread busy across reset + close.
 * `use_release`: give back the last reference instead of calling close. */
static void round_once(int lfd, uint16_t port, blocker *b, netev_connection bconn, int held,
                       int use_release, const unsigned char *chunk, tally *t) {
  closing *k = calloc(1, sizeof *k);
  CHECK(k);
  rec_init(&k->r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &k->r, closing_cb);
  o.user_data = k;
  o.send_buffer_limit = SEND_LIMIT;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  int fd = accept_one(lfd);
  if (!rec_wait_type(&k->r, NETEV_EVENT_CONNECTION, 10)) FAIL("no CONNECTION within 10 s");

  if (held) {
    /* Hold the I/O thread first, then fill the queue: netev's own task has
     * not met a full socket yet, so when it runs again it writes (and meets
     * the reset) instead of waiting for writability. */
    pthread_mutex_lock(&b->mu);
    b->hold = 1;
    pthread_mutex_unlock(&b->mu);
    CHECK_OK(netev_connection_send(bconn, "h", 1));
    if (!blocker_wait_blocked(b, 10)) FAIL("the echo never reached the blocking DATA callback");
  }
  fill_until_full(c, chunk);
  /* The reset has happened when close() returns (loopback delivers the RST
   * before the call returns); the host closes right after. */
  reset_fd(fd);
  bool already = false; /* netev had ended it (closed is set when it ends) */
  CHECK_OK(netev_connection_closed(c, &already));
  atomic_store(&k->close_called, 1);
  if (use_release)
    CHECK_OK(netev_connection_release(c));
  else
    CHECK_OK(netev_connection_close(c));
  atomic_store(&k->close_returned, 1);
  if (held) blocker_let_go(b);

  if (!rec_wait_terminated(&k->r, 20)) {
    char seq[1024];
    rec_sequence(&k->r, seq, sizeof seq);
    FAIL("%s after the peer's reset: no TERMINATE within 20 s; events so far \"%s\"",
         use_release ? "release()" : "close()", seq);
  }
  char seq[1024];
  rec_sequence(&k->r, seq, sizeof seq);
  CHECK(k->r.overlaps == 0);
  CHECK(rec_count(&k->r, NETEV_EVENT_TERMINATE) == 1);
  t->rounds++;
  if (strcmp(seq, "connection close terminate") == 0) {
    t->ok++;
  } else if (!held && strcmp(seq, "connection error terminate") == 0 &&
             (already || atomic_load(&k->error_after) == 0)) {
    /* netev saw the reset before (or as) close() was called: allowed */
    if (already)
      t->error_first++;
    else
      t->error_race++;
  } else {
    if (rec_count(&k->r, NETEV_EVENT_ERROR) > 0) {
      t->error++;
      t->error_status = k->r.error;
    } else {
      t->other++;
    }
    if (!t->first_bad[0]) snprintf(t->first_bad, sizeof t->first_bad, "%s", seq);
  }
  if (use_release) {
    /* The last reference was given back: the handle dies after TERMINATE. */
    if (!poll_until(handle_invalid, &c, 10)) FAIL("handle still valid after release and TERMINATE");
  } else {
    bool closed = false;
    CHECK_OK(netev_connection_closed(c, &closed));
    CHECK(closed);
    CHECK_OK(netev_connection_release(c));
  }
  rec_free(&k->r);
  free(k);
}

static void summary(const char *what, const tally *t) {
  fprintf(stderr,
          "close_after_reset: %s: %d rounds: %d \"connection close terminate\", %d ERROR after "
          "the call returned%s%s, %d other; not judged: %d ERROR on a connection netev had ended "
          "before the call, %d ERROR begun before the call returned\n",
          what, t->rounds, t->ok, t->error, t->error ? " " : "",
          t->error ? netev_status_name(t->error_status) : "", t->other, t->error_first,
          t->error_race);
}

static void report(const char *what, const tally *t, int held) {
  if (held) {
    if (t->error || t->other)
      FAIL("%s: broken promise \"close() ends with CLOSE then TERMINATE, never ERROR\" (netev "
           "could not have seen the reset before the call): %d of %d rounds ended in ERROR (%s), "
           "%d in another sequence; first: \"%s\"",
           what, t->error, t->rounds, t->error ? netev_status_name(t->error_status) : "-",
           t->other, t->first_bad);
    return;
  }
  if (t->other)
    FAIL("%s: %d of %d rounds ended in an unexpected sequence; first: \"%s\"", what, t->other,
         t->rounds, t->first_bad);
  int open_at_call = t->ok + t->error; /* rounds not excluded as netev-saw-it-first */
  if (open_at_call >= 4 && 2 * t->error >= open_at_call)
    FAIL("%s: broken promise \"close() ends with CLOSE then TERMINATE, never ERROR\": %d of the "
         "%d rounds in which the connection was still open when the call was made ended in "
         "ERROR (%s) instead of CLOSE (%d of %d rounds in all)",
         what, t->error, open_at_call, t->error ? netev_status_name(t->error_status) : "-",
         t->error, t->rounds);
}

int main(void) {
  long rounds = test_scale(20, 5);
  watchdog((unsigned)(30 + rounds * 4 * 2));
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  ro.worker_threads = 1; /* one I/O thread: the blocker can hold it */
  CHECK_OK(netev_runtime_init(&ro));

  unsigned char *chunk = malloc(CHUNK);
  CHECK(chunk);
  fill_pattern(chunk, CHUNK, 0);

  /* The blocker: a connection to an echo peer whose DATA callback holds
   * the I/O thread while told to. */
  peer ep;
  peer_start(&ep, PEER_ECHO, 0);
  blocker *b = calloc(1, sizeof *b);
  CHECK(b);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  rec_init(&b->r);
  netev_connection_options bo;
  CHECK_OK(netev_connection_options_init(&bo));
  rec_set_all(&bo, &b->r, blocker_cb);
  bo.user_data = b;
  netev_connection bconn;
  CHECK_OK(netev_connection_open("127.0.0.1", ep.port, &bo, &bconn));
  CHECK(rec_wait_type(&b->r, NETEV_EVENT_CONNECTION, 10));

  uint16_t port;
  int lfd = listen_small_rcvbuf(&port);

  static const struct {
    const char *what;
    int held, use_release;
  } cases[] = {
      {"close(), reset while the I/O thread was busy", 1, 0},
      {"release(), reset while the I/O thread was busy", 1, 1},
      {"close() right after the reset", 0, 0},
      {"release() right after the reset", 0, 1},
  };
  tally tallies[4];
  memset(tallies, 0, sizeof tallies);
  for (int i = 0; i < 4; i++)
    for (long n = 0; n < rounds; n++)
      round_once(lfd, port, b, bconn, cases[i].held, cases[i].use_release, chunk, &tallies[i]);
  for (int i = 0; i < 4; i++) summary(cases[i].what, &tallies[i]);
  /* The free ordering tests nothing when netev saw the reset first in
   * (nearly) every round: say so. */
  for (int i = 2; i < 4; i++)
    if (tallies[i].ok + tallies[i].error < 4)
      fprintf(stderr, "close_after_reset: note: %s: netev saw the reset first in nearly every round: not judged\n",
              cases[i].what);
  for (int i = 0; i < 4; i++) report(cases[i].what, &tallies[i], cases[i].held);

  CHECK(b->overran == 0);
  CHECK_OK(netev_connection_close(bconn));
  if (!rec_wait_terminated(&b->r, 10)) FAIL("blocker connection: no TERMINATE after close");
  CHECK_OK(netev_connection_release(bconn));
  close(lfd);
  peer_stop(&ep);
  CHECK_OK(netev_runtime_shutdown(10));
  rec_free(&b->r);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
  free(chunk);
  return 0;
}
