/* Seeded random sequences of API calls (NETEV_FUZZ_SEED, default a fixed
 * seed so CI is repeatable; NETEV_FUZZ_STEPS;
 * the seed is printed, so a failure can be replayed): opens with random
 * options (some invalid), sends of random sizes (NULL data too), shutdown,
 * close, wait, retain/release at random moments, property reads with NULL
 * outs, garbage, stale and wrong-kind handles, listeners opened and
 * terminated, dispatchers created, run and released — and from inside
 * callbacks: sends, shutdown, close, release, wait, and the release of the
 * connection's own dispatcher (API.md, "Precise rules": allowed; it must
 * answer NETEV_OK, or NETEV_ERR_INVALID_HANDLE once already released). The
 * peers are a netev echo listener and a BSD peer that echoes and sometimes
 * resets.
 * Also at random moments:
 *  - a log callback is installed, replaced or removed. It parses
 *    "<timestamp> connection <id> ..." lines and calls _closed,
 *    _buffered_amount and _error_count on that connection, and sometimes
 *    sends it a byte (any documented status). Once set_callback returned, a
 *    replaced callback must not be running (calls on other threads have
 *    returned) and must never be entered again.
 *  - a flood episode: a connection bound to a dispatcher that nobody runs
 *    while a BSD peer writes to it continuously and the fuzzer goes on with
 *    other steps; then the dispatcher is serviced again until every byte
 *    the peer had written by then arrived, byte-exact, and the episode ends
 *    (the connection released, the dispatcher released from outside or from
 *    inside the connection's callback, or both handed over to the fuzzer).
 * Invariants: no crash, no hang (watchdog), every status returned is one of
 * 0..15, each callback gets its own event type and connection, no two
 * callbacks of one connection at once, nothing after TERMINATE, and after
 * netev_runtime_shutdown exactly one TERMINATE and one user_data_free for
 * every connection opened successfully or accepted. And the process's RSS
 * once everything is closed stays below its RSS after warm-up + 64 MiB (not
 * asserted under ASan/valgrind, NETEV_TEST_TIME_FACTOR > 1, where the RSS
 * says more about the tool). */
#include "common_b.h"
#include "common_mem.h"
#include "common_listener.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>

#define PAT_MIB ((size_t)1024 * 1024)

#define MAX_CONNS 16384
#define MAX_HANDLES 32768

typedef struct cstate {
  atomic_int in_cb, overlaps, terminates, after_terminate, frees, bad_type, bad_conn, events;
  atomic_int free_before_terminate;
  netev_connection conn; /* 0 until known (accepted: from the accept event) */
  uint64_t rng;          /* used only inside this connection's callbacks */
  int accepted;
  netev_dispatcher disp; /* the dispatcher it is bound to; 0: netev's threads */
  int flood;             /* the connection of a flood episode */
  atomic_int release_disp; /* flood: release `disp` from inside the next callback */
  atomic_size_t got;     /* flood: DATA bytes delivered */
  atomic_size_t bad_at;  /* flood: first stream offset off the pattern, or SIZE_MAX */
} cstate;

static cstate *states[MAX_CONNS];
static atomic_int nstates;
static atomic_int bad_status;
static char bad_status_what[200];
static uint64_t handles[MAX_HANDLES]; /* every handle ever seen, any kind */
static int nhandles;
static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t rng_next(uint64_t *s) {
  uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t rng;
static uint64_t g_seed;
static unsigned rnd(unsigned n) { return (unsigned)(rng_next(&rng) % n); }

/* Every returned status must be a known one. */
static netev_status st_check(netev_status s, const char *what) {
  if ((int)s < 0 || (int)s > 15) {
    if (atomic_fetch_add(&bad_status, 1) == 0)
      snprintf(bad_status_what, sizeof bad_status_what, "%s returned %d", what, (int)s);
  }
  return s;
}
#define ST(expr) st_check((expr), #expr)

static void remember(uint64_t h) {
  if (!h) return;
  pthread_mutex_lock(&handles_mu);
  if (nhandles < MAX_HANDLES) handles[nhandles++] = h;
  pthread_mutex_unlock(&handles_mu);
}

static cstate *new_state(int accepted) {
  int i = atomic_fetch_add(&nstates, 1);
  if (i >= MAX_CONNS) {
    atomic_fetch_sub(&nstates, 1);
    return NULL;
  }
  cstate *s = calloc(1, sizeof *s);
  CHECK(s);
  s->rng = (uint64_t)i * 0x9e3779b97f4a7c15ull ^ rng;
  s->accepted = accepted;
  atomic_store(&s->bad_at, SIZE_MAX);
  states[i] = s;
  return s;
}

static unsigned cb_rnd(cstate *s, unsigned n) { return (unsigned)(rng_next(&s->rng) % n); }

/* ---- releasing a dispatcher from inside its own callbacks ----------------- */

static atomic_int disp_release_ok, disp_release_invalid, disp_release_bad;
static char disp_release_bad_what[300];

/* Releases the dispatcher `s` is bound to, from inside one of its callbacks:
 * NETEV_OK, or NETEV_ERR_INVALID_HANDLE when it was released already (only
 * NETEV_OK when `live`: the caller knows nobody else released it). */
static void release_own_dispatcher(cstate *s, const netev_event *e, int live) {
  netev_status st = ST(netev_dispatcher_release(s->disp));
  if (st == NETEV_OK) {
    atomic_fetch_add(&disp_release_ok, 1);
  } else if (st == NETEV_ERR_INVALID_HANDLE && !live) {
    atomic_fetch_add(&disp_release_invalid, 1);
  } else if (atomic_fetch_add(&disp_release_bad, 1) == 0) {
    snprintf(disp_release_bad_what, sizeof disp_release_bad_what,
             "netev_dispatcher_release(%" PRIu64 ") inside a %s callback of connection %" PRIu64
             " bound to it returned %s%s",
             (uint64_t)s->disp, netev_event_type_name((int32_t)e->type), (uint64_t)e->connection,
             netev_status_name((int32_t)st), live ? " (the dispatcher was live)" : "");
  }
}

/* The callback of a flood connection: checks every byte against the pattern
 * and releases its dispatcher when asked to. */
static void flood_conn_cb(cstate *s, netev_connection c, const netev_event *e) {
  (void)c;
  if (e->type == NETEV_EVENT_DATA && e->data_len > 0) {
    size_t got = atomic_load(&s->got);
    if (atomic_load(&s->bad_at) == SIZE_MAX) {
      size_t i = e->data ? pattern_mismatch(e->data, e->data_len, got) : 0;
      if (i < e->data_len) atomic_store(&s->bad_at, got + i);
    }
    atomic_store(&s->got, got + e->data_len);
  }
  if (e->type == NETEV_EVENT_TERMINATE) atomic_fetch_add(&s->terminates, 1);
  if (atomic_exchange(&s->release_disp, 0)) release_own_dispatcher(s, e, 1);
}

/* The one callback of every slot, connection side. */
static void conn_cb(netev_connection c, const netev_event *e, void *ud) {
  cstate *s = ud;
  if (atomic_exchange(&s->in_cb, 1)) atomic_fetch_add(&s->overlaps, 1);
  atomic_fetch_add(&s->events, 1);
  if (atomic_load(&s->terminates)) atomic_fetch_add(&s->after_terminate, 1);
  if ((int)e->type < 1 || (int)e->type > 7) atomic_fetch_add(&s->bad_type, 1);
  if (e->connection != c || (s->conn && c != s->conn)) atomic_fetch_add(&s->bad_conn, 1);
  if (e->message == NULL) atomic_fetch_add(&s->bad_type, 1);
  if (e->type == NETEV_EVENT_ERROR) st_check(e->error, "event.error");
  if (s->flood) {
    flood_conn_cb(s, c, e);
    atomic_store(&s->in_cb, 0);
    return;
  }
  if (s->disp) {
    /* release our own dispatcher from inside its callback, now and then */
    unsigned odds = e->type == NETEV_EVENT_DATA || e->type == NETEV_EVENT_CONNECTION ? 10 : 30;
    if (cb_rnd(s, odds) == 0) release_own_dispatcher(s, e, 0);
  }
  if (e->type == NETEV_EVENT_TERMINATE) {
    atomic_fetch_add(&s->terminates, 1);
    /* calls on itself are still allowed here */
    if (cb_rnd(s, 4) == 0) ST(netev_connection_send(c, "late", 4));
    atomic_store(&s->in_cb, 0);
    return;
  }
  switch (cb_rnd(s, 12)) {
  case 0:
  case 1:
  case 2:
    if (e->type == NETEV_EVENT_DATA) ST(netev_connection_send(c, e->data, e->data_len));
    break;
  case 3: ST(netev_connection_shutdown(c)); break;
  case 4:
    if (cb_rnd(s, 4) == 0) ST(netev_connection_close(c));
    break;
  case 5: ST(netev_connection_wait(c, 0)); break;
  case 6: {
    size_t n;
    bool b;
    ST(netev_connection_buffered_amount(c, &n));
    ST(netev_connection_closed(c, &b));
    ST(netev_connection_error_count(c, &n));
    break;
  }
  case 7:
    if (s->accepted && cb_rnd(s, 3) == 0) {
      /* take a reference and give it back at once */
      if (ST(netev_connection_retain(c)) == NETEV_OK) ST(netev_connection_release(c));
    }
    break;
  case 8: {
    unsigned char junk[3000];
    size_t n = cb_rnd(s, sizeof junk);
    memset(junk, 'j', n);
    ST(netev_connection_send(c, junk, n));
    break;
  }
  default: break;
  }
  atomic_store(&s->in_cb, 0);
}

static void state_free(void *ud) {
  cstate *s = ud;
  if (!atomic_load(&s->terminates)) atomic_fetch_add(&s->free_before_terminate, 1);
  atomic_fetch_add(&s->frees, 1);
}

static void set_callbacks(netev_connection_options *o, cstate *s) {
  o->on_connection = o->on_data = o->on_shutdown = o->on_error = conn_cb;
  o->on_terminate = o->on_drain = o->on_end = conn_cb;
  o->user_data = s;
  o->user_data_free = state_free;
}

static atomic_int listener_events_bad;

static bool accept_cb(netev_listener l, const netev_event *e, void *ud, netev_connection_options *o) {
  (void)l, (void)ud;
  if (e->type != NETEV_EVENT_CONNECTION || e->connection == 0) atomic_fetch_add(&listener_events_bad, 1);
  cstate *s = new_state(1);
  if (!s) return false;
  s->conn = e->connection;
  s->disp = o->dispatcher;
  set_callbacks(o, s);
  return true;
}

static void listener_cb(netev_listener l, const netev_event *e, void *ud) {
  (void)l, (void)ud;
  if (e->type != NETEV_EVENT_ERROR && e->type != NETEV_EVENT_TERMINATE) atomic_fetch_add(&listener_events_bad, 1);
}

/* ---- the BSD peer: accepts, echoes, sometimes resets --------------------- */

static int bsd_lfd;
static atomic_int bsd_stop;
static pthread_t bsd_thread;

static void *bsd_main(void *arg) {
  (void)arg;
  struct pollfd p[257];
  int n = 0;
  uint64_t r = 12345;
  p[n].fd = bsd_lfd;
  p[n].events = POLLIN;
  n++;
  unsigned char buf[65536];
  while (!atomic_load(&bsd_stop)) {
    int k = poll(p, (nfds_t)n, 20);
    if (k <= 0) continue;
    if ((p[0].revents & POLLIN) && n < 257) {
      int fd = accept(bsd_lfd, NULL, NULL);
      if (fd >= 0) {
        p[n].fd = fd;
        p[n].events = POLLIN;
        p[n].revents = 0;
        n++;
      }
    }
    for (int i = 1; i < n; i++) {
      if (!p[i].revents) continue;
      ssize_t got = recv(p[i].fd, buf, sizeof buf, MSG_DONTWAIT);
      int drop = got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR);
      if (got > 0) {
        if (rng_next(&r) % 50 == 0) {
          struct linger lg = {1, 0};
          setsockopt(p[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
          drop = 1;
        } else {
          send(p[i].fd, buf, (size_t)got, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
      }
      if (drop) {
        close(p[i].fd);
        p[i] = p[--n];
        i--;
      }
    }
  }
  for (int i = 1; i < n; i++) close(p[i].fd);
  return NULL;
}

/* A loopback port with nothing listening: bound once, then closed. */
static uint16_t refused_port_fuzz(void) {
  uint16_t port;
  int fd = listen_loopback(&port, 1);
  close(fd);
  return port;
}

/* ---- the fuzzing loop ----------------------------------------------------- */

typedef struct tracked {
  netev_connection h;
  cstate *s;
  int released;
} tracked;

static tracked conns[MAX_CONNS];
static int nconns;
static netev_dispatcher disps[8];
static int ndisps;
static netev_listener listeners[8];
static int nlisteners;

static uint64_t any_handle(void) {
  switch (rnd(6)) {
  case 0: return 0;
  case 1: return rng_next(&rng);
  case 2: return UINT64_MAX;
  default: {
    pthread_mutex_lock(&handles_mu);
    uint64_t h = nhandles ? handles[rnd((unsigned)nhandles)] : 0;
    pthread_mutex_unlock(&handles_mu);
    return h;
  }
  }
}

static netev_connection pick_conn(void) {
  if (nconns && rnd(4)) return conns[rnd((unsigned)nconns)].h;
  return any_handle();
}

static double random_seconds(void) {
  switch (rnd(8)) {
  case 0: return -1;
  case 1: return NAN;
  case 2: return 0;
  case 3: return 0.001;
  default: return (double)rnd(1000) / 100.0;
  }
}

static void op_open(uint16_t echo_port, uint16_t bsd_port, uint16_t dead_port) {
  if (nconns >= MAX_CONNS - 64) return;
  netev_connection_options o;
  ST(netev_connection_options_init(&o));
  cstate *s = new_state(0);
  if (!s) return;
  set_callbacks(&o, s);
  if (rnd(8) == 0) o.on_data = NULL;
  o.allow_half_open = rnd(2);
  o.no_delay = rnd(2);
  o.connection_timeout = rnd(10) ? 5 : random_seconds();
  o.idle_timeout = rnd(10) ? 0 : random_seconds();
  o.keepalive = rnd(10) ? 0 : random_seconds();
  o.send_buffer_limit = rnd(3) ? 0 : rnd(100000);
  if (rnd(4) == 0) o.dispatcher = ndisps && rnd(3) ? disps[rnd((unsigned)ndisps)] : any_handle();
  if (rnd(30) == 0) o.size = rnd(2) ? 0 : 3;
  uint16_t ports[3] = {echo_port, bsd_port, dead_port};
  uint16_t port = rnd(12) == 0 ? 0 : ports[rnd(3)];
  const char *addr = rnd(20) == 0 ? "\xff\xfe bad utf-8" : "127.0.0.1";
  netev_connection c = 0;
  int with_options = rnd(20) != 0;
  netev_status st = ST(netev_connection_open(rnd(40) == 0 ? NULL : addr, port, with_options ? &o : NULL, &c));
  if (st == NETEV_OK && !with_options) {
    /* defaults: no callbacks, so our state stays unused; track the handle */
    atomic_store(&s->terminates, -1000);
    remember(c);
    conns[nconns].h = c;
    conns[nconns].s = NULL;
    conns[nconns].released = 0;
    nconns++;
    return;
  }
  if (st != NETEV_OK) {
    /* never started: no callback may ever come (checked at the end: events 0) */
    s->conn = 0;
    s->rng = 0;
    atomic_store(&s->terminates, -1000); /* marks "not opened" */
    return;
  }
  if (o.size < sizeof o) FAIL("open with options.size %u succeeded", (unsigned)o.size);
  s->conn = c;
  s->disp = o.dispatcher;
  remember(c);
  conns[nconns].h = c;
  conns[nconns].s = s;
  conns[nconns].released = 0;
  nconns++;
}

static void op_send(void) {
  netev_connection c = pick_conn();
  static unsigned char buf[200000];
  size_t n = rnd(4) == 0 ? rnd(200000) : rnd(2000);
  memset(buf, 'f', n);
  ST(netev_connection_send(c, rnd(30) == 0 ? NULL : buf, rnd(30) == 0 ? 0 : n));
}

static void op_props(void) {
  netev_connection c = pick_conn();
  char b[64];
  size_t n;
  uint16_t p;
  bool bo;
  netev_listener l;
  void *ud;
  netev_error_info info;
  int nul = rnd(5) == 0;
  ST(netev_connection_address(c, nul ? NULL : b, nul ? 0 : rnd(sizeof b), nul && rnd(2) ? NULL : &n));
  ST(netev_connection_port(c, nul ? NULL : &p));
  ST(netev_connection_closed(c, nul ? NULL : &bo));
  ST(netev_connection_no_delay(c, nul ? NULL : &bo));
  ST(netev_connection_listener(c, nul ? NULL : &l));
  ST(netev_connection_user_data(c, nul ? NULL : &ud));
  ST(netev_connection_buffered_amount(c, nul ? NULL : &n));
  ST(netev_connection_error_count(c, nul ? NULL : &n));
  ST(netev_connection_error_at(c, rnd(4), nul ? NULL : &info));
}

static void op_release(void) {
  if (!nconns) return;
  tracked *t = &conns[rnd((unsigned)nconns)];
  netev_status st = ST(netev_connection_release(t->h));
  if (st == NETEV_OK) t->released = 1;
}

static void op_dispatcher(void) {
  switch (rnd(4)) {
  case 0:
    if (ndisps < 8) {
      netev_dispatcher d = 0;
      if (ST(netev_dispatcher_create(rnd(20) ? &d : NULL)) == NETEV_OK && d) {
        disps[ndisps++] = d;
        remember(d);
      }
    }
    break;
  case 1:
  case 2:
    if (ndisps) {
      size_t ran;
      int i = (int)rnd((unsigned)ndisps);
      netev_status st = ST(netev_dispatcher_run(disps[i], rnd(3) ? 0 : 0.005, rnd(2) ? &ran : NULL));
      /* released from inside one of its callbacks: forget it (a stale handle now) */
      if (st == NETEV_ERR_INVALID_HANDLE) disps[i] = disps[--ndisps];
    } else {
      ST(netev_dispatcher_run(any_handle(), 0, NULL));
    }
    break;
  case 3:
    if (ndisps && rnd(4) == 0) {
      int i = (int)rnd((unsigned)ndisps);
      ST(netev_dispatcher_release(disps[i]));
      disps[i] = disps[--ndisps];
    } else {
      int fd;
      ST(netev_dispatcher_fd(any_handle(), rnd(5) ? &fd : NULL));
    }
    break;
  }
}

static void op_listener(void) {
  switch (rnd(3)) {
  case 0:
    if (nlisteners < 8) {
      netev_listener_options lo;
      ST(netev_listener_options_init(&lo));
      lo.on_connection = rnd(4) ? accept_cb : NULL;
      lo.on_error = lo.on_terminate = listener_cb;
      lo.bind_address = rnd(10) ? "127.0.0.1" : (rnd(2) ? "not an address" : NULL);
      lo.backlog = rnd(3) ? 0 : rnd(5);
      if (rnd(5) == 0) lo.dispatcher = ndisps ? disps[rnd((unsigned)ndisps)] : any_handle();
      netev_listener l = 0;
      if (ST(netev_listener_open(0, &lo, &l)) == NETEV_OK) {
        listeners[nlisteners++] = l;
        remember(l);
      }
    }
    break;
  case 1:
    if (nlisteners) {
      int i = (int)rnd((unsigned)nlisteners);
      if (rnd(2)) {
        ST(netev_listener_terminate(listeners[i]));
      } else {
        ST(netev_listener_release(listeners[i]));
        listeners[i] = listeners[--nlisteners];
      }
    }
    break;
  case 2: {
    uint16_t p;
    size_t n;
    netev_error_info info;
    netev_listener l = nlisteners && rnd(2) ? listeners[rnd((unsigned)nlisteners)] : any_handle();
    ST(netev_listener_port(l, rnd(5) ? &p : NULL));
    ST(netev_listener_error_count(l, &n));
    ST(netev_listener_error_at(l, rnd(3), &info));
    ST(netev_listener_terminate(any_handle()));
    break;
  }
  }
}

/* ---- the log callback ------------------------------------------------------ */

/* One installation of the log callback: its user_data. Kept until the end,
 * so that a call after removal is reported rather than a use after free. */
typedef struct logctx {
  atomic_int removed; /* set_callback replaced it and returned */
  atomic_int active;  /* calls running now */
  atomic_long calls;
} logctx;

#define MAX_LOGCTX 4096
static logctx *logctxs[MAX_LOGCTX];
static int nlogctx;
static logctx *log_current; /* main thread only */
static int log_installs, log_removals, log_replacements;
static atomic_int log_after_removal;
static char log_after_removal_what[400];
static atomic_long log_lines, log_conn_lines, log_sends, log_sends_ok, log_nested;
static atomic_ullong log_rng_ctr;
/* Lines from this thread's own calls inside the callback come back into it:
 * those only count (a send could log a line that sends again, forever). */
static _Thread_local int log_depth;

/* "<timestamp> connection <id> <what>": the id. */
static int parse_connection_id(const char *line, netev_connection *id) {
  const char *sp = strchr(line, ' ');
  if (!sp || strncmp(sp + 1, "connection ", 11) != 0) return 0;
  const char *p = sp + 12;
  char *end = NULL;
  unsigned long long v = strtoull(p, &end, 10);
  if (end == p || (*end != ' ' && *end != 0)) return 0;
  *id = (netev_connection)v;
  return 1;
}

static void log_cb(const char *line, void *ud) {
  logctx *x = ud;
  atomic_fetch_add(&x->active, 1);
  if (atomic_load(&x->removed) && atomic_fetch_add(&log_after_removal, 1) == 0)
    snprintf(log_after_removal_what, sizeof log_after_removal_what,
             "a log callback removed or replaced (set_callback returned) was entered again, for "
             "\"%s\"",
             line ? line : "(NULL)");
  atomic_fetch_add(&x->calls, 1);
  atomic_fetch_add(&log_lines, 1);
  netev_connection id;
  if (log_depth > 0) {
    atomic_fetch_add(&log_nested, 1);
  } else if (line && parse_connection_id(line, &id)) {
    log_depth++;
    atomic_fetch_add(&log_conn_lines, 1);
    bool b;
    size_t n;
    ST(netev_connection_closed(id, &b));
    ST(netev_connection_buffered_amount(id, &n));
    ST(netev_connection_error_count(id, &n));
    uint64_t r = atomic_fetch_add(&log_rng_ctr, 1) ^ g_seed;
    if (rng_next(&r) % 12 == 0) {
      atomic_fetch_add(&log_sends, 1);
      if (ST(netev_connection_send(id, "L", 1)) == NETEV_OK) atomic_fetch_add(&log_sends_ok, 1);
    }
    log_depth--;
  }
  atomic_fetch_sub(&x->active, 1);
}

/* Installs `next` (NULL: removes the callback). Once set_callback returned,
 * the one it replaced must have no call running, and is never entered again
 * (log_cb checks its `removed`). */
static void log_switch(logctx *next) {
  logctx *old = log_current;
  CHECK_OK(netev_log_set_callback(next ? log_cb : NULL, next));
  log_current = next;
  if (old) {
    atomic_store(&old->removed, 1);
    int a = atomic_load(&old->active);
    if (a != 0)
      FAIL("netev_log_set_callback returned while %d calls of the callback it replaced were still "
           "running (seed %" PRIu64 ")",
           a, g_seed);
  }
}

static void op_log(void) {
  if (!log_current || rnd(3) == 0) {
    if (nlogctx >= MAX_LOGCTX) return;
    logctx *x = calloc(1, sizeof *x);
    CHECK(x);
    logctxs[nlogctx++] = x;
    if (log_current) log_replacements++;
    log_installs++;
    log_switch(x);
  } else {
    log_removals++;
    log_switch(NULL);
  }
}

/* ---- flood episodes: a dispatcher left unserviced while a peer floods it --- */

typedef struct flood_ep {
  int active;
  pthread_t thread;
  atomic_int stop;
  atomic_size_t written; /* bytes the peer's send() took */
  netev_dispatcher d;
  int dfd;
  netev_connection c;
  cstate *s;
  long start_step, min_steps;
  double t0;
  size_t last_written; /* flood_ripe: the peer's count when last seen */
  double last_change;  /* and when it last changed */
} flood_ep;

static flood_ep fl;
static int flood_lfd = -1;
static uint16_t flood_port;
static int nfloods, flood_mode_count[4];
static size_t flood_max_written, flood_bytes;
static double flood_unserviced_s;

/* The peer: accepts one connection and writes the pattern to it as fast as
 * the socket takes it until told to stop, discarding what it receives (the
 * log callback's bytes). */
static void *flood_main(void *arg) {
  (void)arg;
  int fd = -1;
  while (!atomic_load(&fl.stop)) {
    if (!fd_readable(flood_lfd, 20)) continue;
    fd = accept4(flood_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) break;
  }
  if (fd < 0) return NULL;
  size_t off = 0;
  int eof = 0;
  unsigned char sink[4096];
  while (!atomic_load(&fl.stop)) {
    struct pollfd p = {fd, (short)(POLLOUT | (eof ? 0 : POLLIN)), 0};
    int k = poll(&p, 1, 20);
    if (k <= 0) continue;
    if (p.revents & POLLIN) {
      ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (r == 0) eof = 1;
      if (r < 0 && errno != EAGAIN && errno != EINTR) break;
    }
    if (p.revents & (POLLERR | POLLHUP)) break;
    if (p.revents & POLLOUT) {
      ssize_t w = send(fd, pattern_at(off), PATTERN_RUN_MAX, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0) {
        off += (size_t)w;
        atomic_store(&fl.written, off);
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        break;
      }
    }
  }
  close(fd);
  return NULL;
}

static void flood_start(long step) {
  cstate *s = new_state(0);
  if (!s) return;
  memset(&fl, 0, sizeof fl);
  fl.s = s;
  CHECK_OK(netev_dispatcher_create(&fl.d));
  CHECK_OK(netev_dispatcher_fd(fl.d, &fl.dfd));
  atomic_store(&fl.stop, 0);
  atomic_store(&fl.written, 0);
  CHECK(pthread_create(&fl.thread, NULL, flood_main, NULL) == 0);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  set_callbacks(&o, s);
  o.dispatcher = fl.d;
  o.allow_half_open = rnd(2);
  o.connection_timeout = 10;
  s->flood = 1;
  s->disp = fl.d;
  CHECK_OK(netev_connection_open("127.0.0.1", flood_port, &o, &fl.c));
  s->conn = fl.c;
  fl.start_step = step;
  fl.min_steps = test_scale(100, 10) + (long)rnd((unsigned)test_scale(400, 40));
  fl.t0 = fl.last_change = now_seconds();
  fl.active = 1;
  nfloods++;
}

/* Whether the dispatcher was left alone long enough: some steps went by, and
 * the peer's writes stalled for a while (netev stopped reading at its
 * receive limit and the kernel's buffers filled), or a second passed. */
static int flood_ripe(long step) {
  double now = now_seconds();
  size_t w = atomic_load(&fl.written);
  if (w != fl.last_written) {
    fl.last_written = w;
    fl.last_change = now;
  }
  if (step - fl.start_step < fl.min_steps) return 0;
  /* the quiet time is not stretched under ASan/valgrind: a pause of the
   * peer taken for a stall only ends an episode earlier */
  return (w > 0 && now - fl.last_change >= 0.02) || now - fl.t0 >= 1.0 * test_time_factor();
}

static void flood_stop_peer(void) {
  atomic_store(&fl.stop, 1);
  pthread_join(fl.thread, NULL);
}

static int flood_terminated(void) { return atomic_load(&fl.s->terminates) > 0; }

/* Runs the flood dispatcher until TERMINATE came (or just waits, once it is
 * released); bounded. */
static void flood_wait_terminated(const char *how, int run) {
  double end = now_seconds() + 20 * test_time_factor();
  while (!flood_terminated()) {
    if (now_seconds() > end)
      FAIL("flood episode %d (%s): no TERMINATE within 20 s; %zu bytes delivered (seed %" PRIu64 ")",
           nfloods, how, atomic_load(&fl.s->got), g_seed);
    if (run) {
      netev_status st = ST(netev_dispatcher_run(fl.d, 0.01, NULL));
      if (st != NETEV_OK)
        FAIL("flood episode %d (%s): netev_dispatcher_run returned %s (seed %" PRIu64 ")", nfloods,
             how, netev_status_name((int32_t)st), g_seed);
    } else {
      sleep_ms(2);
    }
  }
}

/* Services the dispatcher again until every byte the peer had written when
 * it started arrived, checks them, and ends the episode one of four ways. */
static void flood_finish(void) {
  cstate *s = fl.s;
  size_t w0 = atomic_load(&fl.written);
  double t_unserviced = now_seconds() - fl.t0;
  flood_unserviced_s += t_unserviced;
  if (w0 > flood_max_written) flood_max_written = w0;
  if (atomic_load(&s->events) != 0)
    FAIL("flood episode %d: %d callbacks ran while nobody serviced the dispatcher (seed %" PRIu64 ")",
         nfloods, atomic_load(&s->events), g_seed);
  /* bytes were written: callbacks are queued (netev's I/O threads may be a
   * little behind the peer, under valgrind: bounded wait) */
  if (w0 > 0 && !fd_readable(fl.dfd, (int)(10000 * test_time_factor())))
    FAIL("flood episode %d: the peer wrote %zu bytes but the dispatcher's fd is not readable "
         "within 10 s (seed %" PRIu64 ")",
         nfloods, w0, g_seed);
  double end = now_seconds() + 60 * test_time_factor();
  while (atomic_load(&s->got) < w0) {
    if (flood_terminated() || now_seconds() > end)
      FAIL("flood episode %d: serviced again, the dispatcher delivered %zu of the %zu bytes "
           "written before (%s; seed %" PRIu64 ")",
           nfloods, atomic_load(&s->got), w0, flood_terminated() ? "TERMINATE came" : "60 s passed",
           g_seed);
    netev_status st = ST(netev_dispatcher_run(fl.d, 0.01, NULL));
    if (st != NETEV_OK)
      FAIL("flood episode %d: netev_dispatcher_run returned %s (seed %" PRIu64 ")", nfloods,
           netev_status_name((int32_t)st), g_seed);
  }
  if (atomic_load(&s->bad_at) != SIZE_MAX)
    FAIL("flood episode %d: byte %zu of the stream is not the pattern (seed %" PRIu64 ")", nfloods,
         atomic_load(&s->bad_at), g_seed);
  flood_bytes += atomic_load(&s->got);

  int mode = (int)rnd(4);
  if (mode == 3 && (ndisps >= 8 || nconns >= MAX_CONNS - 64)) mode = 0;
  flood_mode_count[mode]++;
  switch (mode) {
  case 0: /* release the connection, run the dispatcher to its TERMINATE, release it */
    CHECK_OK(netev_connection_release(fl.c));
    flood_wait_terminated("connection released", 1);
    CHECK_OK(netev_dispatcher_release(fl.d));
    flood_stop_peer();
    break;
  case 1: { /* release the dispatcher from outside: its last callbacks run here */
    double t = now_seconds();
    CHECK_OK(netev_dispatcher_release(fl.d));
    if (now_seconds() - t > 5.5 * test_time_factor())
      FAIL("flood episode %d: netev_dispatcher_release took %.1f s (seed %" PRIu64 ")", nfloods,
           now_seconds() - t, g_seed);
    flood_wait_terminated("dispatcher released", 0);
    CHECK_OK(netev_connection_release(fl.c));
    flood_stop_peer();
    break;
  }
  case 2: { /* release the dispatcher from inside the connection's next callback */
    atomic_store(&s->release_disp, 1);
    double end2 = now_seconds() + 20 * test_time_factor();
    while (atomic_load(&s->release_disp)) {
      if (now_seconds() > end2)
        FAIL("flood episode %d: no callback came to release the dispatcher (seed %" PRIu64 ")",
             nfloods, g_seed);
      netev_status st = ST(netev_dispatcher_run(fl.d, 0.01, NULL));
      if (st != NETEV_OK)
        FAIL("flood episode %d: netev_dispatcher_run returned %s before the release (seed %" PRIu64
             ")",
             nfloods, netev_status_name((int32_t)st), g_seed);
    }
    CHECK_STATUS(netev_dispatcher_run(fl.d, 0, NULL), NETEV_ERR_INVALID_HANDLE);
    flood_wait_terminated("dispatcher released inside a callback", 0);
    CHECK_OK(netev_connection_release(fl.c));
    flood_stop_peer();
    break;
  }
  default: /* hand both to the fuzzer; the peer goes away */
    flood_stop_peer();
    disps[ndisps++] = fl.d;
    conns[nconns].h = fl.c;
    conns[nconns].s = s;
    conns[nconns].released = 0;
    nconns++;
    break;
  }
  if (atomic_load(&s->bad_at) != SIZE_MAX)
    FAIL("flood episode %d: byte %zu of the stream is not the pattern (seed %" PRIu64 ")", nfloods,
         atomic_load(&s->bad_at), g_seed);
  /* stale (or handed over) handles for the other steps to poke at */
  remember(fl.c);
  remember(fl.d);
  fl.active = 0;
}

static void op_misc(void) {
  char b[128];
  switch (rnd(5)) {
  case 0: netev_last_error_message(rnd(3) ? b : NULL, rnd(3) ? sizeof b : 0); break;
  case 1: CHECK(netev_status_name((int32_t)rng_next(&rng)) != NULL); break;
  case 2: CHECK(netev_event_type_name((int32_t)rnd(20) - 5) != NULL); break;
  case 3: ST(netev_connection_retain(any_handle())); break;
  default: ST(netev_connection_close(any_handle())); break;
  }
}

int main(void) {
  const char *seed_s = getenv("NETEV_FUZZ_SEED");
  const char *steps_s = getenv("NETEV_FUZZ_STEPS");
  uint64_t seed = seed_s && *seed_s ? strtoull(seed_s, NULL, 0) : UINT64_C(20261125);
  long steps = steps_s && *steps_s ? strtol(steps_s, NULL, 0) : test_scale(20000, 3000);
  printf("fuzz_api: NETEV_FUZZ_SEED=%" PRIu64 " NETEV_FUZZ_STEPS=%ld\n", seed, steps);
  fflush(stdout);
  fprintf(stderr, "fuzz_api: NETEV_FUZZ_SEED=%" PRIu64 " NETEV_FUZZ_STEPS=%ld\n", seed, steps);
  rng = seed;
  g_seed = seed;
  watchdog((unsigned)(120 + steps / 50));
  raise_nofile();
  pattern_table_init();

  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = accept_cb;
  lo.on_error = lo.on_terminate = listener_cb;
  lo.bind_address = "127.0.0.1";
  netev_listener echo;
  CHECK_OK(netev_listener_open(0, &lo, &echo));
  remember(echo);
  uint16_t echo_port;
  CHECK_OK(netev_listener_port(echo, &echo_port));
  uint16_t bsd_port;
  bsd_lfd = listen_loopback(&bsd_port, 128);
  CHECK(pthread_create(&bsd_thread, NULL, bsd_main, NULL) == 0);
  uint16_t dead_port = refused_port_fuzz();
  flood_lfd = listen_loopback(&flood_port, 4);

  /* RSS after warm-up: the runtime's threads, the allocator's arenas and the
   * peers are up by then. */
  long warm_step = steps / 10, rss_warm = -1;
  double t0 = now_seconds();
  for (long i = 0; i < steps; i++) {
    if (i == warm_step) rss_warm = rss_kib();
    if (fl.active && flood_ripe(i)) flood_finish();
    switch (rnd(18)) {
    case 0:
    case 1:
    case 2: op_open(echo_port, bsd_port, dead_port); break;
    case 3:
    case 4:
    case 5: op_send(); break;
    case 6: ST(netev_connection_shutdown(pick_conn())); break;
    case 7:
      if (rnd(3) == 0) ST(netev_connection_close(pick_conn()));
      break;
    case 8: ST(netev_connection_wait(pick_conn(), rnd(4) ? 0 : (rnd(2) ? 0.005 : NAN))); break;
    case 9: op_props(); break;
    case 10:
      if (rnd(2)) op_release();
      break;
    case 11: op_dispatcher(); break;
    case 12: op_listener(); break;
    case 16:
      if (rnd(3) == 0) op_log();
      break;
    case 17:
      if (!fl.active && rnd(3) == 0) flood_start(i);
      break;
    default: op_misc(); break;
    }
  }
  if (fl.active) { /* the last episode: leave it alone its due time, then service it */
    while (!flood_ripe(fl.start_step + fl.min_steps)) sleep_ms(5);
    flood_finish();
  }
  if (rss_warm < 0) rss_warm = rss_kib();
  printf("%ld steps in %.2f s: %d connections opened, %d states\n", steps, now_seconds() - t0, nconns,
         atomic_load(&nstates));

  /* Wind down: run the dispatchers a little, release everything, shut down. */
  for (int i = 0; i < ndisps; i++) ST(netev_dispatcher_run(disps[i], 0.01, NULL));
  for (int i = 0; i < nconns; i++)
    if (!conns[i].released) ST(netev_connection_release(conns[i].h));
  for (int i = 0; i < ndisps; i++) ST(netev_dispatcher_release(disps[i]));
  CHECK_OK(netev_runtime_shutdown(30));
  log_switch(NULL); /* the log callback, if installed, stayed through the shutdown */
  atomic_store(&bsd_stop, 1);
  pthread_join(bsd_thread, NULL);
  close(bsd_lfd);
  close(flood_lfd);

  if (atomic_load(&bad_status)) FAIL("%d invalid statuses, first: %s", atomic_load(&bad_status), bad_status_what);
  if (atomic_load(&disp_release_bad))
    FAIL("%d dispatcher releases inside callbacks went wrong, first: %s (seed %" PRIu64 ")",
         atomic_load(&disp_release_bad), disp_release_bad_what, seed);
  if (atomic_load(&log_after_removal))
    FAIL("%d log callback calls after removal, first: %s (seed %" PRIu64 ")",
         atomic_load(&log_after_removal), log_after_removal_what, seed);
  CHECK(atomic_load(&listener_events_bad) == 0);
  int n = atomic_load(&nstates), opened = 0;
  for (int i = 0; i < n; i++) {
    cstate *s = states[i];
    int t = atomic_load(&s->terminates);
    if (t < 0) { /* open failed, or opened without our callbacks: nothing may come */
      if (atomic_load(&s->events) || atomic_load(&s->frees))
        FAIL("state %d: an unused state got %d events, %d frees", i, atomic_load(&s->events),
             atomic_load(&s->frees));
      continue;
    }
    opened++;
    if (t != 1 || atomic_load(&s->frees) != 1)
      FAIL("%s connection %" PRIu64 " (state %d): %d TERMINATE, %d user_data_free (seed %" PRIu64 ")",
           s->flood ? "flood" : s->accepted ? "accepted" : "client", (uint64_t)s->conn, i, t,
           atomic_load(&s->frees), seed);
    if (atomic_load(&s->overlaps) || atomic_load(&s->after_terminate) || atomic_load(&s->bad_type) ||
        atomic_load(&s->bad_conn) || atomic_load(&s->free_before_terminate))
      FAIL("connection %" PRIu64 ": overlaps %d, after TERMINATE %d, bad type %d, bad conn %d, early free %d "
           "(seed %" PRIu64 ")",
           (uint64_t)s->conn, atomic_load(&s->overlaps), atomic_load(&s->after_terminate),
           atomic_load(&s->bad_type), atomic_load(&s->bad_conn), atomic_load(&s->free_before_terminate), seed);
    if (s->flood && atomic_load(&s->bad_at) != SIZE_MAX)
      FAIL("flood connection %" PRIu64 ": byte %zu of the stream is not the pattern (seed %" PRIu64 ")",
           (uint64_t)s->conn, atomic_load(&s->bad_at), seed);
  }
  printf("checked %d connections (clients and accepted): one TERMINATE and one free each\n", opened);
  printf("dispatchers released inside their own callbacks: %d (NETEV_OK), %d more found released "
         "already\n",
         atomic_load(&disp_release_ok), atomic_load(&disp_release_invalid));
  printf("log callback: %d installs (%d replacing one), %d removals; %ld lines, %ld about a "
         "connection, %ld nested, %ld sends from it (%ld taken)\n",
         log_installs, log_replacements, log_removals, atomic_load(&log_lines),
         atomic_load(&log_conn_lines), atomic_load(&log_nested), atomic_load(&log_sends),
         atomic_load(&log_sends_ok));
  printf("flood episodes: %d (ends: %d connection released, %d dispatcher released, %d dispatcher "
         "released inside a callback, %d handed over), %.2f s unserviced in all, up to %zu bytes "
         "written while unserviced, %zu bytes delivered and checked\n",
         nfloods, flood_mode_count[0], flood_mode_count[1], flood_mode_count[2], flood_mode_count[3],
         flood_unserviced_s, flood_max_written, flood_bytes);

  /* Everything is closed and netev shut down: what is left must be small. */
  long rss_end = rss_kib();
  const long bound_kib = 64 * 1024;
  int skip = test_time_factor() > 1.0 || env_flag("NETEV_TEST_VALGRIND");
  fprintf(stderr,
          "fuzz_api: RSS after warm-up (step %ld) %ld KiB, at the end %ld KiB (growth %ld KiB); bound "
          "warm-up + %ld KiB%s\n",
          warm_step, rss_warm, rss_end, rss_end - rss_warm, bound_kib,
          skip ? " -- RSS bound not asserted under ASan/valgrind (NETEV_TEST_TIME_FACTOR > 1)" : "");
  CHECK(rss_warm > 0 && rss_end > 0);
  if (!skip && rss_end >= rss_warm + bound_kib)
    FAIL("RSS at the end %ld KiB is not below the RSS after warm-up %ld KiB + %ld KiB (seed %" PRIu64 ")",
         rss_end, rss_warm, bound_kib, seed);

  for (int i = 0; i < n; i++) free(states[i]);
  for (int i = 0; i < nlogctx; i++) free(logctxs[i]);
  return 0;
}
