/* Releasing a dispatcher inside one of its own callbacks (API.md, "Precise
 * rules", "Dispatch"): every object bound to it still gets its remaining
 * callbacks, TERMINATE last, exactly once each, never two of one object at
 * a time, none lost.
 *
 * 1. In a loop: a dispatcher, several connections bound to it, each to a
 *    BSD echo server (one poll loop), data sent on each; the main thread runs the dispatcher
 *    and inside some DATA callback (chosen pseudo-randomly per round) calls
 *    netev_dispatcher_release on it (NETEV_OK). Then, for every connection,
 *    bounded: exactly one TERMINATE, last; one CLOSE or ERROR before it;
 *    user_data_free exactly once, after TERMINATE; no two callbacks of one
 *    connection at once (an atomic in-callback counter, and the recorder's
 *    flag); the bytes delivered are a prefix of what was sent (the echo,
 *    in order), and include every byte netev had read before the release
 *    (counted from the "received N bytes" log lines). In every other round
 *    the test waits, before running the dispatcher at all, until netev has
 *    read the whole echo of every connection: then every byte must be
 *    delivered. After the release the remaining callbacks run wherever
 *    netev runs them; the test only waits for them.
 * 2. Release from inside the on_connection of a listener bound to the
 *    dispatcher: the listener gets one TERMINATE, the connection it accepted
 *    before gets CLOSE and TERMINATE once, the one being accepted gets its
 *    user_data_free once (and, if it started, one TERMINATE, last), and
 *    both clients see their connection end.
 *
 * NETEV_TEST_SEED=<n> changes the pseudo-random choices;
 * `dispatcher_release_in_callback [data|accept]` runs one part. */
#include "common_a.h"
#include "common_b.h"

#include <stdatomic.h>

static unsigned long long g_seed = 0x9e3779b97f4a7c15ULL;

static unsigned rnd(void) {
  g_seed ^= g_seed << 13;
  g_seed ^= g_seed >> 7;
  g_seed ^= g_seed << 17;
  return (unsigned)(g_seed >> 11);
}

/* ======================================================================== */
/* 1. release inside a DATA callback                                        */
/* ======================================================================== */

#define K 4
#define MAX_SENDS 3

struct bround;

typedef struct bconn {
  xrec x; /* first: the callbacks get the bconn as user_data */
  struct bround *round;
  atomic_int active;  /* callbacks of this connection running now */
  atomic_int overlap; /* times one started while another ran */
  netev_connection c;
  size_t off;         /* pattern offset of its stream */
  size_t total;       /* bytes sent */
  size_t rx_logged;   /* bytes netev logged as received (g_mu) */
  size_t rx_at_release;
  size_t delivered_at_release;
} bconn;

typedef struct bround {
  netev_dispatcher d;
  bconn conns[K];
  atomic_int data_events;
  int trigger;           /* release in the DATA callback with this global number */
  atomic_int released;
  netev_status release_status;
  int release_conn;
  size_t total_all;
  pthread_t main_thread;
} bround;

/* ---- one echo server for every connection ------------------------------ */

/* Echoes what each connection sends and closes it at its end (EOF or an
 * error). One poll loop: a connection closed before it was ever accepted
 * costs nothing. */
#define ES_MAX 256

typedef struct echo_server {
  int lfd;
  uint16_t port;
  int pipefd[2];
  pthread_t t;
} echo_server;

static echo_server g_es;

static void *es_main(void *arg) {
  echo_server *s = arg;
  static int fds[ES_MAX];
  static struct pollfd p[ES_MAX + 2];
  static unsigned char buf[65536];
  int n = 0;
  for (;;) {
    p[0].fd = s->pipefd[0];
    p[1].fd = s->lfd;
    for (int i = 0; i < n; i++) p[2 + i].fd = fds[i];
    for (int i = 0; i < n + 2; i++) {
      p[i].events = POLLIN;
      p[i].revents = 0;
    }
    int k = poll(p, (nfds_t)(n + 2), -1);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) break;
    if (p[0].revents) break;
    if (p[1].revents & POLLIN) {
      int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0 && n < ES_MAX)
        fds[n++] = fd;
      else if (fd >= 0)
        close(fd);
    }
    for (int i = n - 1; i >= 0; i--) {
      if (!p[2 + i].revents) continue;
      ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r > 0 && write_all(fds[i], buf, (size_t)r) == 0) continue;
      close(fds[i]); /* end of stream, reset, or a failed echo */
      fds[i] = fds[--n];
    }
  }
  for (int i = 0; i < n; i++) close(fds[i]);
  return NULL;
}

static void es_start(void) {
  g_es.lfd = listen_loopback(&g_es.port, 1024);
  CHECK(pipe(g_es.pipefd) == 0);
  CHECK(pthread_create(&g_es.t, NULL, es_main, &g_es) == 0);
}

static void es_stop(void) {
  CHECK(write(g_es.pipefd[1], "x", 1) == 1);
  pthread_join(g_es.t, NULL);
  close(g_es.lfd);
  close(g_es.pipefd[0]);
  close(g_es.pipefd[1]);
}

/* The round the log callback counts bytes for. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static bround *g_round;

static void count_log(const char *line, void *ud) {
  (void)ud;
  /* "<timestamp> connection <id> received <N> bytes" */
  const char *sp = strchr(line, ' ');
  if (!sp || strncmp(sp + 1, "connection ", 11) != 0) return;
  char *end = NULL;
  unsigned long long id = strtoull(sp + 12, &end, 10);
  if (!end || strncmp(end, " received ", 10) != 0) return;
  unsigned long long n = strtoull(end + 10, NULL, 10);
  pthread_mutex_lock(&g_mu);
  if (g_round)
    for (int i = 0; i < K; i++)
      if (g_round->conns[i].c == id) g_round->conns[i].rx_logged += (size_t)n;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

static size_t delivered(bconn *b) {
  pthread_mutex_lock(&b->x.r.mu);
  size_t n = b->x.r.data_len;
  pthread_mutex_unlock(&b->x.r.mu);
  return n;
}

static void do_release(bround *R, int who) {
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < K; i++) R->conns[i].rx_at_release = R->conns[i].rx_logged;
  pthread_mutex_unlock(&g_mu);
  for (int i = 0; i < K; i++) R->conns[i].delivered_at_release = delivered(&R->conns[i]);
  R->release_conn = who;
  R->release_status = netev_dispatcher_release(R->d);
}

static void b_cb(netev_connection c, const netev_event *e, void *ud) {
  bconn *b = ud;
  bround *R = b->round;
  if (atomic_fetch_add(&b->active, 1) != 0) atomic_fetch_add(&b->overlap, 1);
  xrec_check_event(&b->x, c, e);
  rec_event(&b->x.r, e);
  if (e->type == NETEV_EVENT_DATA && !atomic_load(&R->released)) {
    int n = atomic_fetch_add(&R->data_events, 1) + 1;
    size_t all = 0;
    for (int i = 0; i < K; i++) all += delivered(&R->conns[i]);
    /* the chosen DATA event, or the last one if fewer came */
    if ((n >= R->trigger || all >= R->total_all) && !atomic_exchange(&R->released, 1))
      do_release(R, (int)(b - R->conns));
  }
  atomic_fetch_sub(&b->active, 1);
  rec_done(&b->x.r);
}

static int rx_all_logged(bround *R) {
  for (int i = 0; i < K; i++)
    if (R->conns[i].rx_logged < R->conns[i].total) return 0;
  return 1;
}

/* One of: [connection] data/drain* [end] (close|error) terminate. */
static int shape_ok(recorder *r, char *why, size_t cap) {
  int i = 0, n = r->n;
  if (r->total != r->n) {
    snprintf(why, cap, "too many events");
    return 0;
  }
  if (i < n && r->types[i] == NETEV_EVENT_CONNECTION) i++;
  while (i < n && (r->types[i] == NETEV_EVENT_DATA || r->types[i] == NETEV_EVENT_DRAIN)) i++;
  if (i < n && r->types[i] == NETEV_EVENT_END) i++;
  if (!(i < n && (r->types[i] == NETEV_EVENT_CLOSE || r->types[i] == NETEV_EVENT_ERROR))) {
    snprintf(why, cap, "no single CLOSE or ERROR where expected (event %d)", i);
    return 0;
  }
  i++;
  if (!(i < n && r->types[i] == NETEV_EVENT_TERMINATE)) {
    snprintf(why, cap, "no TERMINATE right after CLOSE/ERROR");
    return 0;
  }
  i++;
  if (i != n) {
    snprintf(why, cap, "%d events after TERMINATE's place", n - i);
    return 0;
  }
  return 1;
}

#define RULE_RELEASE                                                           \
  "(rule: releasing a dispatcher inside one of its own callbacks: every "      \
  "object bound to it still gets its remaining callbacks, TERMINATE last, "    \
  "exactly once each, never two at a time, none lost)"

static void data_round(long round) {
  bround *R = calloc(1, sizeof *R);
  CHECK(R != NULL);
  R->main_thread = pthread_self();
  int wait_all = (int)(round % 2); /* every other round: the whole echo read first */
  CHECK_OK(netev_dispatcher_create(&R->d));
  pthread_mutex_lock(&g_mu);
  g_round = R;
  pthread_mutex_unlock(&g_mu);
  unsigned char buf[4096];
  for (int i = 0; i < K; i++) {
    bconn *b = &R->conns[i];
    b->round = R;
    xrec_init(&b->x);
    b->x.want_ip = "127.0.0.1";
    b->x.want_port = g_es.port;
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    xrec_set_all(&o, &b->x);
    o.on_connection = o.on_data = o.on_shutdown = o.on_error = b_cb;
    o.on_terminate = o.on_drain = o.on_end = b_cb;
    o.user_data = b;
    o.dispatcher = R->d;
    o.connection_timeout = 10;
    netev_connection c = 0;
    CHECK_OK(netev_connection_open("127.0.0.1", g_es.port, &o, &c));
    pthread_mutex_lock(&g_mu);
    b->c = c;
    pthread_mutex_unlock(&g_mu);
    b->off = (size_t)i * 7919 + (size_t)round * 104729;
    int sends = 1 + (int)(rnd() % MAX_SENDS);
    for (int k = 0; k < sends; k++) {
      size_t n = 1 + rnd() % sizeof buf;
      fill_pattern(buf, n, b->off + b->total);
      CHECK_OK(netev_connection_send(c, buf, n));
      b->total += n;
    }
    R->total_all += b->total;
  }
  R->trigger = 1 + (int)(rnd() % (K * 3));
  if (wait_all) {
    /* nothing dispatched yet: every echoed byte read and queued */
    double end = now_seconds() + 20 * test_time_factor();
    pthread_mutex_lock(&g_mu);
    while (!rx_all_logged(R) && cond_wait_until(&g_cv, &g_mu, end)) {
    }
    int ok = rx_all_logged(R);
    pthread_mutex_unlock(&g_mu);
    if (!ok) FAIL("round %ld: netev did not read the whole echo within 20 s", round);
  }
  double end = now_seconds() + 20 * test_time_factor();
  while (!atomic_load(&R->released)) {
    if (now_seconds() > end) FAIL("round %ld: the releasing DATA callback never ran", round);
    netev_status st = netev_dispatcher_run(R->d, 0.05, NULL);
    if (st != NETEV_OK && !(st == NETEV_ERR_INVALID_HANDLE && atomic_load(&R->released)))
      CHECK_STATUS(st, NETEV_OK);
  }
  if (R->release_status != NETEV_OK)
    FAIL("round %ld: netev_dispatcher_release inside a DATA callback of its own returned %s, "
         "expected NETEV_OK %s",
         round, netev_status_name((int32_t)R->release_status), RULE_RELEASE);
  /* the handle is dead at once */
  CHECK_STATUS(netev_dispatcher_run(R->d, 0, NULL), NETEV_ERR_INVALID_HANDLE);
  /* the remaining callbacks come without anyone dispatching */
  for (int i = 0; i < K; i++) {
    bconn *b = &R->conns[i];
    if (!rec_wait_terminated(&b->x.r, 10)) {
      char seq[1024];
      rec_sequence(&b->x.r, seq, sizeof seq);
      FAIL("round %ld, connection %d (release ran in connection %d's DATA): no TERMINATE "
           "within 10 s after the release; events \"%s\" %s",
           round, i, R->release_conn, seq, RULE_RELEASE);
    }
    if (!xrec_wait_freed(&b->x, 10))
      FAIL("round %ld, connection %d: user_data_free never ran %s", round, i, RULE_RELEASE);
  }
  for (int i = 0; i < K; i++) {
    bconn *b = &R->conns[i];
    recorder *r = &b->x.r;
    char seq[1024];
    rec_sequence(r, seq, sizeof seq);
    pthread_mutex_lock(&r->mu);
    char why[128];
    int shape = shape_ok(r, why, sizeof why);
    int terms = 0;
    for (int k = 0; k < r->n; k++) terms += r->types[k] == NETEV_EVENT_TERMINATE;
    size_t got = r->data_len;
    int prefix = got <= b->total;
    unsigned char *data = r->data;
    int ov = r->overlaps, at = r->after_terminate;
    pthread_mutex_unlock(&r->mu);
    if (terms != 1)
      FAIL("round %ld, connection %d: %d TERMINATE events (\"%s\") %s", round, i, terms, seq,
           RULE_RELEASE);
    if (ov || atomic_load(&b->overlap))
      FAIL("round %ld, connection %d: two of its callbacks ran at once (%d/%d times) %s", round,
           i, ov, atomic_load(&b->overlap), RULE_RELEASE);
    if (at) FAIL("round %ld, connection %d: %d events after TERMINATE %s", round, i, at, RULE_RELEASE);
    if (!shape)
      FAIL("round %ld, connection %d: event sequence \"%s\": %s %s", round, i, seq, why,
           RULE_RELEASE);
    CHECK_XREC_CLEAN(&b->x);
    int fc = XREC_GET(&b->x, free_calls), fe = XREC_GET(&b->x, free_early);
    if (fc != 1 || fe != 0)
      FAIL("round %ld, connection %d: user_data_free ran %d times (%d before TERMINATE "
           "returned), expected once after it",
           round, i, fc, fe);
    if (!prefix || (got > 0 && !is_pattern(data, got, b->off)))
      FAIL("round %ld, connection %d: the %zu bytes delivered are not a prefix of the %zu "
           "echoed (events reordered?) %s",
           round, i, got, b->total, RULE_RELEASE);
    if (got < b->rx_at_release)
      FAIL("round %ld, connection %d: netev had read %zu bytes before the release, only %zu "
           "were delivered (%zu already at the release; DATA lost) %s",
           round, i, b->rx_at_release, got, b->delivered_at_release, RULE_RELEASE);
    if (wait_all && got != b->total)
      FAIL("round %ld, connection %d: the whole echo (%zu bytes) was read before the "
           "dispatcher ran, only %zu were delivered %s",
           round, i, b->total, got, RULE_RELEASE);
  }
  pthread_mutex_lock(&g_mu);
  g_round = NULL;
  pthread_mutex_unlock(&g_mu);
  for (int i = 0; i < K; i++) {
    bconn *b = &R->conns[i];
    bool closed = false;
    CHECK_OK(netev_connection_closed(b->c, &closed));
    CHECK(closed);
    CHECK_OK(netev_connection_release(b->c));
    CHECK_STATUS(netev_connection_release(b->c), NETEV_ERR_INVALID_HANDLE);
    xrec_free_fields(&b->x);
  }
  free(R);
}

static void part_data(void) {
  es_start();
  CHECK_OK(netev_log_set_callback(count_log, NULL));
  long rounds = test_scale(200, 20);
  for (long k = 0; k < rounds; k++) data_round(k);
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  es_stop();
}

/* ======================================================================== */
/* 2. release inside the listener's on_connection                          */
/* ======================================================================== */

typedef struct lrel {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  netev_dispatcher d;
  netev_listener l;
  xrec xs[2];
  int naccept;
  int released;
  netev_status release_status;
  int l_terminates, l_errors, l_after_terminate, l_bad;
  int ltypes[16]; /* listener event types, in order (CONNECTION = on_connection) */
  int nltypes;
} lrel;

static void echo_cb(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  if (e->type == NETEV_EVENT_DATA) netev_connection_send(c, e->data, e->data_len);
  rec_done(&x->r);
}

static bool lrel_accept(netev_listener l, const netev_event *e, void *ud,
                        netev_connection_options *o) {
  lrel *L = ud;
  (void)e;
  pthread_mutex_lock(&L->mu);
  int k = L->naccept < 2 ? L->naccept++ : -1;
  if (l != L->l) L->l_bad++;
  if (L->l_terminates) L->l_after_terminate++;
  if (L->nltypes < 16) L->ltypes[L->nltypes++] = (int)e->type;
  pthread_mutex_unlock(&L->mu);
  if (k < 0) return false;
  xrec_set_all(o, &L->xs[k]);
  o->on_data = echo_cb;
  if (k == 1) {
    netev_status st = netev_dispatcher_release(L->d);
    pthread_mutex_lock(&L->mu);
    L->release_status = st;
    L->released = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
  }
  return true;
}

static void lrel_event(netev_listener l, const netev_event *e, void *ud) {
  lrel *L = ud;
  pthread_mutex_lock(&L->mu);
  if (l != L->l) L->l_bad++;
  if (L->l_terminates) L->l_after_terminate++;
  if (e->type == NETEV_EVENT_TERMINATE) L->l_terminates++;
  if (e->type == NETEV_EVENT_ERROR) L->l_errors++;
  if (L->nltypes < 16) L->ltypes[L->nltypes++] = (int)e->type;
  pthread_cond_broadcast(&L->cv);
  pthread_mutex_unlock(&L->mu);
}

static int lrel_terminated(lrel *L, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&L->mu);
  while (!L->l_terminates && cond_wait_until(&L->cv, &L->mu, end)) {
  }
  int ok = L->l_terminates > 0;
  pthread_mutex_unlock(&L->mu);
  return ok;
}

static int tcp_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  return fd;
}

/* Waits (bounded) for the end of the stream on `fd`: EOF or a reset. */
static int sees_end(int fd, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  unsigned char b[256];
  for (;;) {
    double left = end - now_seconds();
    if (left <= 0) return 0;
    struct pollfd p = {fd, POLLIN, 0};
    int k = poll(&p, 1, (int)(left * 1000) + 1);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return 0;
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (r == 0) return 1;
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return 1; /* reset */
  }
}

static void accept_round(long round) {
  lrel *L = calloc(1, sizeof *L);
  CHECK(L != NULL);
  pthread_mutex_init(&L->mu, NULL);
  pthread_cond_init(&L->cv, NULL);
  xrec_init(&L->xs[0]);
  xrec_init(&L->xs[1]);
  CHECK_OK(netev_dispatcher_create(&L->d));
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = lrel_accept;
  lo.on_error = lrel_event;
  lo.on_terminate = lrel_event;
  lo.user_data = L;
  lo.bind_address = "127.0.0.1";
  lo.dispatcher = L->d;
  pthread_mutex_lock(&L->mu);
  CHECK_OK(netev_listener_open(0, &lo, &L->l));
  pthread_mutex_unlock(&L->mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(L->l, &port));

  /* a first connection, accepted and echoing on the dispatcher */
  int fd1 = tcp_connect(port);
  CHECK(write_all(fd1, (const unsigned char *)"ping", 4) == 0);
  double end = now_seconds() + 10 * test_time_factor();
  while (XREC_GET(&L->xs[0], r.data_len) < 4) {
    if (now_seconds() > end) FAIL("accept round %ld: the first connection got no DATA", round);
    CHECK_OK(netev_dispatcher_run(L->d, 0.05, NULL));
  }
  unsigned char b[4];
  struct timeval tv = {(time_t)(10 * test_time_factor()), 0};
  setsockopt(fd1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  CHECK(recv(fd1, b, 4, MSG_WAITALL) == 4 && memcmp(b, "ping", 4) == 0);

  /* a second one: its on_connection releases the dispatcher */
  int fd2 = tcp_connect(port);
  end = now_seconds() + 10 * test_time_factor();
  for (;;) {
    pthread_mutex_lock(&L->mu);
    int done = L->released;
    pthread_mutex_unlock(&L->mu);
    if (done) break;
    if (now_seconds() > end) FAIL("accept round %ld: the second on_connection never ran", round);
    netev_status st = netev_dispatcher_run(L->d, 0.05, NULL);
    pthread_mutex_lock(&L->mu);
    done = L->released;
    pthread_mutex_unlock(&L->mu);
    if (st != NETEV_OK && !(st == NETEV_ERR_INVALID_HANDLE && done)) CHECK_STATUS(st, NETEV_OK);
  }
  if (L->release_status != NETEV_OK)
    FAIL("accept round %ld: netev_dispatcher_release inside the listener's on_connection "
         "returned %s, expected NETEV_OK",
         round, netev_status_name((int32_t)L->release_status));
  CHECK_STATUS(netev_dispatcher_run(L->d, 0, NULL), NETEV_ERR_INVALID_HANDLE);

  /* everything bound to it ends, without anyone dispatching */
  if (!lrel_terminated(L, 10))
    FAIL("accept round %ld: the listener got no TERMINATE after its dispatcher was released "
         "inside its on_connection %s",
         round, RULE_RELEASE);
  if (!rec_wait_terminated(&L->xs[0].r, 10)) {
    char seq[512];
    rec_sequence(&L->xs[0].r, seq, sizeof seq);
    FAIL("accept round %ld: the connection accepted earlier got no TERMINATE; events \"%s\" %s",
         round, seq, RULE_RELEASE);
  }
  CHECK_SEQUENCE(&L->xs[0].r, "connection data* close terminate");
  CHECK_XREC_CLEAN(&L->xs[0]);
  if (!xrec_wait_freed(&L->xs[0], 10))
    FAIL("accept round %ld: the connection accepted earlier never had its user_data_free called",
         round);
  if (!xrec_wait_freed(&L->xs[1], 10))
    FAIL("accept round %ld: the connection accepted while releasing never had its "
         "user_data_free called",
         round);
  if (XREC_GET(&L->xs[1], r.total) > 0) {
    /* it started: then it ends properly too */
    if (!rec_wait_terminated(&L->xs[1].r, 10))
      FAIL("accept round %ld: the connection accepted while releasing started but got no "
           "TERMINATE",
           round);
    char seq[512], why[128];
    rec_sequence(&L->xs[1].r, seq, sizeof seq);
    pthread_mutex_lock(&L->xs[1].r.mu);
    int shape = shape_ok(&L->xs[1].r, why, sizeof why);
    pthread_mutex_unlock(&L->xs[1].r.mu);
    if (!shape) FAIL("accept round %ld: the second connection's events \"%s\": %s", round, seq, why);
  }
  CHECK_XREC_CLEAN(&L->xs[1]);
  for (int i = 0; i < 2; i++) {
    /* one that never started has no TERMINATE: its user_data_free comes alone */
    int started = XREC_GET(&L->xs[i], r.total) > 0;
    int fc = XREC_GET(&L->xs[i], free_calls), fe = XREC_GET(&L->xs[i], free_early);
    if (fc != 1 || (started && fe != 0))
      FAIL("accept round %ld: connection %d: user_data_free ran %d times (%d too early)", round,
           i, fc, fe);
  }
  if (!sees_end(fd1, 10))
    FAIL("accept round %ld: the first client's connection was not closed by the release", round);
  if (!sees_end(fd2, 10))
    FAIL("accept round %ld: the second client's connection was not closed by the release", round);
  close(fd1);
  close(fd2);
  pthread_mutex_lock(&L->mu);
  int lt = L->l_terminates, la = L->l_after_terminate, lb = L->l_bad;
  char lseq[256];
  size_t used = 0;
  lseq[0] = 0;
  for (int i = 0; i < L->nltypes && used + 16 < sizeof lseq; i++)
    used += (size_t)snprintf(lseq + used, sizeof lseq - used, "%s%s", i ? " " : "",
                             netev_event_type_name(L->ltypes[i]));
  pthread_mutex_unlock(&L->mu);
  if (lt != 1 || la != 0 || lb != 0)
    FAIL("accept round %ld: listener events \"%s\": %d TERMINATE, %d events after it, %d "
         "with a wrong handle (rule: a listener's TERMINATE comes once, last) %s",
         round, lseq, lt, la, lb, RULE_RELEASE);
  /* the listener handle is the host's until released */
  CHECK_OK(netev_listener_release(L->l));
  CHECK_STATUS(netev_listener_release(L->l), NETEV_ERR_INVALID_HANDLE);
  xrec_free_fields(&L->xs[0]);
  xrec_free_fields(&L->xs[1]);
  pthread_mutex_destroy(&L->mu);
  pthread_cond_destroy(&L->cv);
  free(L);
}

static void part_accept(void) {
  long rounds = test_scale(20, 5);
  for (long k = 0; k < rounds; k++) accept_round(k);
}

int main(int argc, char **argv) {
  watchdog(90);
  const char *seed = getenv("NETEV_TEST_SEED");
  if (seed && *seed) g_seed = strtoull(seed, NULL, 0) | 1;
  const char *only = argc > 1 ? argv[1] : NULL;
  if (!only || strcmp(only, "data") == 0) part_data();
  if (!only || strcmp(only, "accept") == 0) part_accept();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
