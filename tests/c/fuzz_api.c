/* Seeded random sequences of API calls (NETEV_FUZZ_SEED, default a fixed
 * seed so CI is repeatable; NETEV_FUZZ_STEPS;
 * the seed is printed, so a failure can be replayed): opens with random
 * options (some invalid), sends of random sizes (NULL data too), shutdown,
 * close, wait, retain/release at random moments, property reads with NULL
 * outs, garbage, stale and wrong-kind handles, listeners opened and
 * terminated, dispatchers created, run and released — and from inside
 * callbacks: sends, shutdown, close, release, wait. The peers are a netev
 * echo listener and a BSD peer that echoes and sometimes resets.
 * Invariants: no crash, no hang (watchdog), every status returned is one of
 * 0..15, each callback gets its own event type and connection, no two
 * callbacks of one connection at once, nothing after TERMINATE, and after
 * netev_runtime_shutdown exactly one TERMINATE and one user_data_free for
 * every connection opened successfully or accepted. */
#include "common_b.h"
#include "common_listener.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>

#define MAX_CONNS 4096
#define MAX_HANDLES 8192

typedef struct cstate {
  atomic_int in_cb, overlaps, terminates, after_terminate, frees, bad_type, bad_conn, events;
  atomic_int free_before_terminate;
  netev_connection conn; /* 0 until known (accepted: from the accept event) */
  uint64_t rng;          /* used only inside this connection's callbacks */
  int accepted;
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
  states[i] = s;
  return s;
}

static unsigned cb_rnd(cstate *s, unsigned n) { return (unsigned)(rng_next(&s->rng) % n); }

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
      ST(netev_dispatcher_run(disps[rnd((unsigned)ndisps)], rnd(3) ? 0 : 0.005, rnd(2) ? &ran : NULL));
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
  long steps = steps_s && *steps_s ? strtol(steps_s, NULL, 0) : test_scale(5000, 500);
  printf("fuzz_api: NETEV_FUZZ_SEED=%" PRIu64 " NETEV_FUZZ_STEPS=%ld\n", seed, steps);
  fflush(stdout);
  fprintf(stderr, "fuzz_api: NETEV_FUZZ_SEED=%" PRIu64 " NETEV_FUZZ_STEPS=%ld\n", seed, steps);
  rng = seed;
  watchdog((unsigned)(120 + steps / 50));
  raise_nofile();

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

  double t0 = now_seconds();
  for (long i = 0; i < steps; i++) {
    switch (rnd(16)) {
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
    default: op_misc(); break;
    }
  }
  printf("%ld steps in %.2f s: %d connections opened, %d states\n", steps, now_seconds() - t0, nconns,
         atomic_load(&nstates));

  /* Wind down: run the dispatchers a little, release everything, shut down. */
  for (int i = 0; i < ndisps; i++) ST(netev_dispatcher_run(disps[i], 0.01, NULL));
  for (int i = 0; i < nconns; i++)
    if (!conns[i].released) ST(netev_connection_release(conns[i].h));
  for (int i = 0; i < ndisps; i++) ST(netev_dispatcher_release(disps[i]));
  CHECK_OK(netev_runtime_shutdown(30));
  atomic_store(&bsd_stop, 1);
  pthread_join(bsd_thread, NULL);
  close(bsd_lfd);

  if (atomic_load(&bad_status)) FAIL("%d invalid statuses, first: %s", atomic_load(&bad_status), bad_status_what);
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
           s->accepted ? "accepted" : "client", (uint64_t)s->conn, i, t, atomic_load(&s->frees), seed);
    if (atomic_load(&s->overlaps) || atomic_load(&s->after_terminate) || atomic_load(&s->bad_type) ||
        atomic_load(&s->bad_conn) || atomic_load(&s->free_before_terminate))
      FAIL("connection %" PRIu64 ": overlaps %d, after TERMINATE %d, bad type %d, bad conn %d, early free %d "
           "(seed %" PRIu64 ")",
           (uint64_t)s->conn, atomic_load(&s->overlaps), atomic_load(&s->after_terminate),
           atomic_load(&s->bad_type), atomic_load(&s->bad_conn), atomic_load(&s->free_before_terminate), seed);
  }
  printf("checked %d connections (clients and accepted): one TERMINATE and one free each\n", opened);
  for (int i = 0; i < n; i++) free(states[i]);
  return 0;
}
