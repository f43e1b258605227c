/* netev_connection_wait keeps its timeout while a dispatcher-bound
 * connection is busy: with a peer flooding the connection and every DATA
 * callback taking 1 ms (then 100 us), wait(c, 0.2) returns
 * NETEV_ERR_TIMEOUT within 0.2 s + slack (a callback already running
 * finishes, nothing more starts after the deadline), and wait(c, 0) only
 * runs what was ready, returning at once each time instead of keeping up
 * with the peer. netev_dispatcher_run(d, 0.2, &ran) under the same flood
 * returns within its bound too, and `ran` counts what it ran.
 *
 * The peer writes without end (up to 4 GiB) but stops writing a little
 * after each measured call's bound, so that a call which never returns on
 * its own still ends once the data dries up: the test then fails saying how
 * long the call took, instead of hanging. */
#include "common_b.h"

#include <stdatomic.h>

#define BIG_CHUNK (256u << 10)
/* What a dispatcher-bound connection may hold ready: the contract's receive
 * limit (1 MiB undelivered per connection) plus a read's worth of slack
 * (256 KiB) for a read already under way when the limit was reached. */
#define READY_MAX ((size_t)(1u << 20) + (256u << 10))

/* ---- a flood peer that can be paused by a deadline ---------------------- */

typedef struct fpeer {
  int lfd;
  int fd;
  uint16_t port;
  size_t total;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  double pause_at; /* writes stop after this instant, until it is moved */
  int stop;
  size_t written;
  long full;       /* sends that timed out: the pipe to netev is full */
  int finished;
} fpeer;

static void *fpeer_main(void *arg) {
  fpeer *p = arg;
  unsigned char *buf = malloc(BIG_CHUNK);
  CHECK(buf);
  fill_pattern(buf, BIG_CHUNK, 0);
  struct pollfd pf = {p->lfd, POLLIN, 0};
  int fd = -1;
  if (poll(&pf, 1, (int)(10000 * test_time_factor())) == 1) fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd >= 0) {
    /* Short send timeouts: the loop notices pause and stop while netev
     * does not read. */
    struct timeval tv = {0, 50000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    pthread_mutex_lock(&p->mu);
    p->fd = fd;
    pthread_mutex_unlock(&p->mu);
    for (;;) {
      pthread_mutex_lock(&p->mu);
      while (!p->stop && now_seconds() > p->pause_at)
        cond_wait_until(&p->cv, &p->mu, now_seconds() + 0.05);
      int stop = p->stop || p->written >= p->total;
      pthread_mutex_unlock(&p->mu);
      if (stop) break;
      ssize_t w = send(fd, buf, BIG_CHUNK, MSG_NOSIGNAL);
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pthread_mutex_lock(&p->mu);
        p->full++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break; /* netev closed the connection */
      pthread_mutex_lock(&p->mu);
      p->written += (size_t)w;
      pthread_mutex_unlock(&p->mu);
    }
  }
  free(buf);
  pthread_mutex_lock(&p->mu);
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void fpeer_start(fpeer *p, size_t total) {
  memset(p, 0, sizeof *p);
  p->fd = -1;
  p->total = total;
  p->pause_at = 1e300;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->lfd = listen_loopback(&p->port, 4);
  CHECK(pthread_create(&p->thread, NULL, fpeer_main, p) == 0);
}

/* Lets the peer write until `at` (monotonic seconds). */
static void fpeer_pause_at(fpeer *p, double at) {
  pthread_mutex_lock(&p->mu);
  p->pause_at = at;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static size_t fpeer_written(fpeer *p) {
  pthread_mutex_lock(&p->mu);
  size_t w = p->written;
  pthread_mutex_unlock(&p->mu);
  return w;
}

/* Resumes the peer and waits (bounded) until its writes back up: netev's
 * socket buffers are full, and its dispatcher queue holds DATA. */
static void fpeer_fill(fpeer *p, int dispatcher_fd) {
  pthread_mutex_lock(&p->mu);
  p->pause_at = 1e300;
  long full0 = p->full;
  pthread_cond_broadcast(&p->cv);
  double end = now_seconds() + 10 * test_time_factor();
  while (p->full == full0 && !p->finished && cond_wait_until(&p->cv, &p->mu, end)) {
  }
  int ok = p->full != full0;
  pthread_mutex_unlock(&p->mu);
  if (!ok) FAIL("the flood peer never filled the pipe to netev within 10 s");
  if (!fd_readable(dispatcher_fd, (int)(10000 * test_time_factor())))
    FAIL("the dispatcher fd is not readable though the peer's writes back up");
}

static void fpeer_stop(fpeer *p) {
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  shutdown(p->lfd, SHUT_RDWR);
  pthread_join(p->thread, NULL);
  if (p->fd >= 0) close(p->fd);
  close(p->lfd);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* ---- the connection's callbacks ----------------------------------------- */

typedef struct flood_state {
  recorder r;              /* every event but DATA (there are too many) */
  atomic_int in_data;      /* a DATA callback is running */
  atomic_int bad_data;     /* DATA overlapping another callback, or after CLOSE/TERMINATE */
  atomic_int wrong_thread; /* DATA on another thread than the dispatching one */
  long callback_ns;        /* what each DATA callback takes */
  atomic_long data_calls;  /* DATA callbacks run */
  atomic_ulong data_bytes; /* bytes they carried */
  _Atomic double late_after; /* a DATA callback starting after this is late */
  atomic_int late;         /* DATA callbacks that started late */
  _Atomic double last_start;
} flood_state;

static void flood_cb(netev_connection c, const netev_event *e, void *ud) {
  flood_state *s = ud;
  (void)c;
  if (e->type == NETEV_EVENT_DATA) {
    double t = now_seconds();
    atomic_store(&s->last_start, t);
    if (t > atomic_load(&s->late_after)) atomic_fetch_add(&s->late, 1);
    atomic_fetch_add(&s->data_calls, 1);
    atomic_fetch_add(&s->data_bytes, (unsigned long)e->data_len);
    if (atomic_exchange(&s->in_data, 1)) atomic_fetch_add(&s->bad_data, 1);
    pthread_mutex_lock(&s->r.mu);
    if (s->r.in_callback || s->r.terminated || rec_pred_type(&s->r, NETEV_EVENT_CLOSE))
      atomic_fetch_add(&s->bad_data, 1);
    if (!pthread_equal(pthread_self(), s->r.expect_thread)) atomic_fetch_add(&s->wrong_thread, 1);
    pthread_mutex_unlock(&s->r.mu);
    /* A slow host: every DATA callback takes callback_ns. */
    struct timespec ts = {0, s->callback_ns};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    atomic_store(&s->in_data, 0);
    return;
  }
  if (atomic_load(&s->in_data)) atomic_fetch_add(&s->bad_data, 1);
  rec_event(&s->r, e);
  rec_done(&s->r);
}

/* ---- measurements ------------------------------------------------------- */

typedef struct result {
  int calls;       /* measured calls */
  int too_slow;    /* calls that returned past their bound */
  int bad_status;  /* calls that returned something else than expected */
  int late_calls;  /* calls during which a DATA callback started after the deadline,
                    * or (timeout 0) bytes the peer wrote after the call began were delivered */
  double worst;    /* longest call, seconds */
  netev_status worst_status;
} result;

static void result_add(result *res, double took, double bound, netev_status st, netev_status want,
                       int late) {
  res->calls++;
  if (took > bound) res->too_slow++;
  if (st != want) res->bad_status++;
  if (late) res->late_calls++;
  if (took > res->worst) {
    res->worst = took;
    res->worst_status = st;
  }
}

/* Lets the peer flood until a little after the call's bound, so a call that
 * never returns on its own still ends when the data dries up. */
static void arm_peer(fpeer *p, double bound) {
  fpeer_pause_at(p, now_seconds() + bound + 1.0 * test_time_factor());
}

static void run_case(netev_dispatcher d, long callback_ns, const char *label, result *r_wait,
                     result *r_wait0, result *r_run) {
  double f = test_time_factor();
  int dfd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  fpeer p;
  fpeer_start(&p, (size_t)test_scale(4L << 30, 1L << 30));
  flood_state *s = calloc(1, sizeof *s);
  CHECK(s);
  rec_init(&s->r);
  s->r.check_thread = 1;
  s->r.expect_thread = pthread_self();
  s->callback_ns = callback_ns;
  atomic_store(&s->late_after, 1e300);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s->r, flood_cb);
  o.user_data = s;
  o.dispatcher = d;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));

  /* Warm up: dispatch (bounded runs) until DATA flows. */
  double end = now_seconds() + 10 * f;
  while (atomic_load(&s->data_calls) < 20) {
    if (now_seconds() > end) FAIL("%s: no flood of DATA within 10 s", label);
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  CHECK(rec_count(&s->r, NETEV_EVENT_CONNECTION) == 1);

  /* 1. wait(c, 0.2): TIMEOUT within 0.2 s + slack; nothing starts after
   * the deadline (allowing for scheduling: 0.1 s * factor). */
  for (int i = 0; i < 3; i++) {
    fpeer_fill(&p, dfd);
    double timeout = 0.2, bound = timeout + 0.5 * f;
    arm_peer(&p, bound);
    int late0 = atomic_load(&s->late);
    double t0 = now_seconds();
    atomic_store(&s->late_after, t0 + timeout + 0.1 * f);
    netev_status st = netev_connection_wait(c, timeout);
    double took = now_seconds() - t0;
    atomic_store(&s->late_after, 1e300);
    int late = atomic_load(&s->late) - late0;
    fprintf(stderr, "wait_deadline_under_flood: %s: wait(c, 0.2) returned %s after %.3f s (%d DATA callbacks started after the deadline)\n",
            label, netev_status_name(st), took, late);
    result_add(r_wait, took, bound, st, NETEV_ERR_TIMEOUT, late > 0);
  }

  /* 2. wait(c, 0) several times: each runs at most what was ready. What a
   * dispatcher-bound connection holds ready is at most the 1 MiB receive
   * limit (plus a read's worth of slack, READY_MAX), and every byte of
   * it was written by the peer before the call began: delivering more than
   * either means the wait kept going while the peer kept sending. */
  for (int i = 0; i < 5; i++) {
    fpeer_fill(&p, dfd);
    double bound = 0.5 * f;
    arm_peer(&p, bound);
    long calls0 = atomic_load(&s->data_calls);
    unsigned long bytes0 = atomic_load(&s->data_bytes);
    size_t ready = fpeer_written(&p) - (size_t)bytes0;
    if (ready > READY_MAX) ready = READY_MAX; /* at most this was ready */
    double t0 = now_seconds();
    netev_status st = netev_connection_wait(c, 0);
    double took = now_seconds() - t0;
    long ran = atomic_load(&s->data_calls) - calls0;
    size_t delivered = (size_t)(atomic_load(&s->data_bytes) - bytes0);
    fprintf(stderr, "wait_deadline_under_flood: %s: wait(c, 0) returned %s after %.3f s, %ld DATA callbacks, "
            "%zu bytes delivered of at most %zu ready when it began\n",
            label, netev_status_name(st), took, ran, delivered, ready);
    result_add(r_wait0, took, bound, st, NETEV_ERR_TIMEOUT, delivered > ready);
  }

  /* 3. dispatcher_run(d, 0.2, &ran) under the same flood. */
  for (int i = 0; i < 3; i++) {
    fpeer_fill(&p, dfd);
    double bound = 0.2 + 0.5 * f;
    arm_peer(&p, bound);
    long calls0 = atomic_load(&s->data_calls);
    int others0 = s->r.total;
    size_t ran = 0;
    double t0 = now_seconds();
    netev_status st = netev_dispatcher_run(d, 0.2, &ran);
    double took = now_seconds() - t0;
    long data = atomic_load(&s->data_calls) - calls0;
    long events = data + (s->r.total - others0);
    fprintf(stderr, "wait_deadline_under_flood: %s: dispatcher_run(d, 0.2) returned %s after %.3f s, ran %zu (%ld DATA)\n",
            label, netev_status_name(st), took, ran, data);
    if (st == NETEV_OK && ran != (size_t)events)
      FAIL("%s: dispatcher_run reported ran = %zu but %ld callbacks ran", label, ran, events);
    result_add(r_run, took, bound, st, NETEV_OK, 0);
  }

  /* The end: close, dispatch (bounded) until TERMINATE, release. */
  fpeer_pause_at(&p, 1e300);
  CHECK_OK(netev_connection_close(c));
  end = now_seconds() + 20 * f;
  while (!rec_wait(&s->r, rec_pred_terminated, 0, 0)) {
    if (now_seconds() > end) {
      char seq[1024];
      rec_sequence(&s->r, seq, sizeof seq);
      FAIL("%s: no TERMINATE within 20 s of close; events \"%s\"", label, seq);
    }
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  char seq[1024];
  rec_sequence(&s->r, seq, sizeof seq);
  if (strcmp(seq, "connection close terminate") != 0)
    FAIL("%s: event sequence (DATA left out) \"%s\", expected \"connection close terminate\"", label, seq);
  CHECK(s->r.overlaps == 0 && s->r.after_terminate == 0);
  if (atomic_load(&s->bad_data))
    FAIL("%s: %d DATA callbacks overlapped another callback or came after CLOSE", label, atomic_load(&s->bad_data));
  if (s->r.wrong_thread || atomic_load(&s->wrong_thread))
    FAIL("%s: %d callbacks ran on another thread than the dispatching one", label,
         s->r.wrong_thread + atomic_load(&s->wrong_thread));
  CHECK_OK(netev_connection_release(c));
  fpeer_stop(&p);
  rec_free(&s->r);
  free(s);
}

static int report(const char *what, const char *label, const result *r, const char *promise,
                  const char *late_what) {
  if (r->too_slow == 0 && r->bad_status == 0 && r->late_calls == 0) return 0;
  fprintf(stderr,
          "wait_deadline_under_flood: BROKEN (%s): %s, %s: %d of %d calls past the bound "
          "(longest %.3f s, returned %s), %d of %d with another status, %d of %d %s\n",
          promise, label, what, r->too_slow, r->calls, r->worst,
          netev_status_name(r->worst_status), r->bad_status, r->calls, r->late_calls, r->calls,
          late_what);
  return 1;
}

int main(void) {
  watchdog(240);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  static const struct {
    long ns;
    const char *label;
  } cases[] = {{1000000, "1 ms DATA callbacks"}, {100000, "100 us DATA callbacks"}};
  int broken = 0;
  for (int i = 0; i < 2; i++) {
    result w, w0, run;
    memset(&w, 0, sizeof w);
    memset(&w0, 0, sizeof w0);
    memset(&run, 0, sizeof run);
    run_case(d, cases[i].ns, cases[i].label, &w, &w0, &run);
    broken += report("wait(c, 0.2) must return NETEV_ERR_TIMEOUT within 0.2 s + 0.5 s*factor", cases[i].label, &w,
                     "wait keeps its timeout under a flood",
                     "started DATA callbacks more than 0.1 s*factor after the deadline");
    broken += report("wait(c, 0) must return NETEV_ERR_TIMEOUT within 0.5 s*factor", cases[i].label, &w0,
                     "wait(c, 0) only runs what is ready", "delivered more than was ready when the call began");
    broken += report("dispatcher_run(d, 0.2) must return NETEV_OK within 0.2 s + 0.5 s*factor", cases[i].label, &run,
                     "dispatcher_run keeps its timeout under a flood", "-");
  }
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_runtime_shutdown(10));
  if (broken) FAIL("%d promise(s) broken, see above", broken);
  return 0;
}
