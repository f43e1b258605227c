/* A listener bound to a dispatcher: nothing is accepted-and-delivered until
 * the host dispatches (the client's connect completes, the dispatcher's fd
 * turns readable, the accept callback waits); then the accept callback and
 * every callback of the accepted connection run on the thread that calls
 * netev_dispatcher_run, and echo works. With connection_defaults.dispatcher
 * 0 the accepted connections still use the listener's dispatcher. */
#include "common_listener.h"

static netev_dispatcher d;

/* Runs the dispatcher until pred(arg) holds; bounded. */
static int dispatch_until(int (*pred)(void *), void *arg, double seconds) {
  double end = now_seconds() + seconds;
  while (!pred(arg)) {
    if (now_seconds() >= end) return 0;
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  return 1;
}

typedef struct want_bytes {
  recorder *r;
  size_t n;
} want_bytes;
static int has_bytes(void *arg) {
  want_bytes *w = arg;
  pthread_mutex_lock(&w->r->mu);
  int ok = w->r->data_len >= w->n;
  pthread_mutex_unlock(&w->r->mu);
  return ok;
}
static int both_terminated(void *arg) {
  void **p = arg;
  recorder *client = p[0];
  lsn_server *s = p[1];
  pthread_mutex_lock(&client->mu);
  int ok = client->terminated && !client->in_callback;
  pthread_mutex_unlock(&client->mu);
  return ok && lsn_get(s, &s->conn_terminates) >= 1;
}

/* One echo through listener server `s` at `port`, dispatching meanwhile. */
static void echo_dispatched(lsn_server *s, uint16_t port, int dfd, const char *msg) {
  size_t n = strlen(msg);
  recorder cr; /* the client runs on netev's threads */
  rec_init(&cr);
  netev_connection c = client_open("127.0.0.1", port, &cr);
  CHECK_OK(netev_connection_send(c, msg, n));

  /* The client connects, the accept is queued, and nothing runs it. */
  CHECK(rec_wait_type(&cr, NETEV_EVENT_CONNECTION, 10));
  struct pollfd p = {dfd, POLLIN, 0};
  int k;
  do k = poll(&p, 1, 10000);
  while (k < 0 && errno == EINTR);
  if (k != 1) FAIL("the dispatcher's fd did not become readable for the incoming connection");
  CHECK(lsn_get(s, &s->accepts) == 0);
  CHECK(!rec_wait_bytes(&cr, 1, 0.3)); /* no echo while the host does not dispatch */
  CHECK(lsn_get(s, &s->accepts) == 0);
  CHECK(lsn_get(s, &s->nconns) == 0);

  /* Dispatching accepts, delivers, echoes. */
  want_bytes w = {&cr, n};
  if (!dispatch_until(has_bytes, &w, 10)) FAIL("no echo while dispatching");
  CHECK(lsn_get(s, &s->accepts) == 1);
  CHECK_OK(netev_connection_shutdown(c));
  void *both[2] = {&cr, s};
  if (!dispatch_until(both_terminated, both, 10)) FAIL("no TERMINATE on both sides");
  CHECK_SEQUENCE(&cr, "connection data* end close terminate");
  CHECK(cr.data_len == n && memcmp(cr.data, msg, n) == 0);
  lsn_conn *lc = lsn_conn_at(s, 0, 1);
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(lc->r.data_len == n && memcmp(lc->r.data, msg, n) == 0);
  CHECK(pthread_equal(lc->conn_thread, pthread_self()));
  CHECK(pthread_equal(lc->r.last_thread, pthread_self()));
  CHECK_OK(netev_connection_release(c));
  rec_free(&cr);
}

static netev_listener open_dispatched(lsn_server *s, netev_dispatcher defaults_dispatcher,
                                      uint16_t *port) {
  s->check_thread = 1;
  s->expect_thread = pthread_self();
  s->check_dispatcher = 1;
  s->want_dispatcher = d;
  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.dispatcher = defaults_dispatcher;
  netev_listener_options o;
  lsn_options(s, &o);
  o.bind_address = "127.0.0.1";
  o.dispatcher = d;
  o.connection_defaults = &defaults;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  pthread_mutex_lock(&s->mu);
  s->listener = l;
  pthread_mutex_unlock(&s->mu);
  CHECK_OK(netev_listener_port(l, port));
  return l;
}

static int listener_terminated(void *arg) {
  lsn_server *s = arg;
  return lsn_get(s, &s->terminates) > 0;
}

int main(void) {
  watchdog(60);
  CHECK_OK(netev_dispatcher_create(&d));
  int dfd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  CHECK(dfd >= 0);

  /* connection_defaults.dispatcher = the listener's dispatcher. */
  lsn_server s;
  lsn_init(&s);
  uint16_t port;
  netev_listener l = open_dispatched(&s, d, &port);
  echo_dispatched(&s, port, dfd, "dispatched echo");
  lsn_check_clean(&s);
  CHECK(lsn_get(&s, &s.wrong_thread) == 0);
  CHECK_OK(netev_listener_release(l));
  if (!dispatch_until(listener_terminated, &s, 10)) FAIL("no listener TERMINATE");
  CHECK_LSN_SEQUENCE(&s, "connection terminate");
  CHECK(lsn_get(&s, &s.wrong_thread) == 0);

  /* connection_defaults.dispatcher = 0: the listener's dispatcher still. */
  lsn_server s2;
  lsn_init(&s2);
  uint16_t port2;
  netev_listener l2 = open_dispatched(&s2, 0, &port2);
  echo_dispatched(&s2, port2, dfd, "inherited dispatcher");
  lsn_check_clean(&s2);
  CHECK(lsn_get(&s2, &s2.wrong_thread) == 0);
  CHECK_OK(netev_listener_release(l2));
  if (!dispatch_until(listener_terminated, &s2, 10)) FAIL("no listener TERMINATE");
  CHECK(lsn_get(&s2, &s2.wrong_thread) == 0);

  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&s, &s.terminates) == 1 && lsn_get(&s2, &s2.terminates) == 1);
  lsn_free(&s);
  lsn_free(&s2);
  return 0;
}
