/* dlopen("libnetev.so") → use it (a listener, a client, an echo) →
 * netev_runtime_shutdown → dlclose, five times over: the host survives,
 * and each round works as the first. Built without -lnetev: every netev
 * function comes from dlsym. The library path comes from NETEV_LIB_PATH
 * (set by the harness). */
#define _GNU_SOURCE
#include "netev.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

#define FAIL(...)                                                              \
  do {                                                                         \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                            \
    fprintf(stderr, __VA_ARGS__);                                              \
    fprintf(stderr, "\n");                                                     \
    exit(1);                                                                   \
  } while (0)
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) FAIL("CHECK failed: %s", #cond);                              \
  } while (0)

/* The functions used, looked up by name. */
static struct api {
  __typeof__(netev_status_name) *status_name;
  __typeof__(netev_connection_options_init_sized) *conn_options_init;
  __typeof__(netev_connection_open) *conn_open;
  __typeof__(netev_connection_send) *conn_send;
  __typeof__(netev_connection_shutdown) *conn_shutdown;
  __typeof__(netev_connection_wait) *conn_wait;
  __typeof__(netev_connection_release) *conn_release;
  __typeof__(netev_listener_options_init_sized) *lsn_options_init;
  __typeof__(netev_listener_open) *lsn_open;
  __typeof__(netev_listener_port) *lsn_port;
  __typeof__(netev_listener_release) *lsn_release;
  __typeof__(netev_runtime_shutdown) *runtime_shutdown;
  __typeof__(netev_version) *version;
} api;

static void load(void *lib, const char *name, void *slot, size_t size) {
  void *sym = dlsym(lib, name);
  if (!sym) FAIL("dlsym(%s): %s", name, dlerror());
  memcpy(slot, &sym, size); /* object pointer to function pointer, POSIX style */
}
#define LOAD(lib, field, name) load(lib, name, &api.field, sizeof api.field)

#define CHECK_OK(expr)                                                         \
  do {                                                                         \
    netev_status st_ = (expr);                                                 \
    if (st_ != NETEV_OK) FAIL("%s returned %s", #expr, api.status_name(st_)); \
  } while (0)

typedef struct echo {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char got[64];
  size_t len;
  int terminated;
} echo;

/* Server side: echo every DATA back. */
static void server_data(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  if (api.conn_send(c, e->data, e->data_len) != NETEV_OK) FAIL("server echo send failed");
}

static void client_data(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  echo *x = ud;
  pthread_mutex_lock(&x->mu);
  size_t n = e->data_len < sizeof x->got - x->len ? e->data_len : sizeof x->got - x->len;
  memcpy(x->got + x->len, e->data, n);
  x->len += n;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

static void client_terminate(netev_connection c, const netev_event *e, void *ud) {
  (void)c, (void)e;
  echo *x = ud;
  pthread_mutex_lock(&x->mu);
  x->terminated = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

static void round_trip(int round) {
  /* A host that looks the functions up passes its own struct sizes to the
   * _sized initialisers, as the header's macros do. */
  netev_connection_options defaults;
  CHECK_OK(api.conn_options_init(&defaults, sizeof defaults));
  defaults.on_data = server_data;
  netev_listener_options lo;
  CHECK_OK(api.lsn_options_init(&lo, sizeof lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = &defaults;
  netev_listener l;
  CHECK_OK(api.lsn_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(api.lsn_port(l, &port));

  echo x;
  memset(&x, 0, sizeof x);
  pthread_mutex_init(&x.mu, NULL);
  pthread_cond_init(&x.cv, NULL);
  netev_connection_options o;
  CHECK_OK(api.conn_options_init(&o, sizeof o));
  o.on_data = client_data;
  o.on_terminate = client_terminate;
  o.user_data = &x;
  netev_connection c;
  CHECK_OK(api.conn_open("127.0.0.1", port, &o, &c));
  char msg[32];
  snprintf(msg, sizeof msg, "round %d", round);
  size_t n = strlen(msg);
  CHECK_OK(api.conn_send(c, msg, n));
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 20;
  pthread_mutex_lock(&x.mu);
  while (x.len < n) {
    if (pthread_cond_timedwait(&x.cv, &x.mu, &ts) != 0) FAIL("round %d: no echo", round);
  }
  pthread_mutex_unlock(&x.mu);
  CHECK(memcmp(x.got, msg, n) == 0);
  CHECK_OK(api.conn_shutdown(c));
  CHECK_OK(api.conn_wait(c, 20));
  pthread_mutex_lock(&x.mu);
  while (!x.terminated) {
    if (pthread_cond_timedwait(&x.cv, &x.mu, &ts) != 0) FAIL("round %d: no TERMINATE", round);
  }
  pthread_mutex_unlock(&x.mu);
  CHECK_OK(api.conn_release(c));
  CHECK_OK(api.lsn_release(l));
  CHECK_OK(api.runtime_shutdown(10));
  pthread_mutex_destroy(&x.mu);
  pthread_cond_destroy(&x.cv);
}

int main(void) {
  signal(SIGALRM, SIG_DFL);
  const char *tf = getenv("NETEV_TEST_TIME_FACTOR");
  alarm((unsigned)(60 * (tf ? atof(tf) : 1.0)));
  const char *path = getenv("NETEV_LIB_PATH");
  if (!path || !*path) FAIL("NETEV_LIB_PATH is not set (the path of libnetev.so)");
  for (int round = 1; round <= 5; round++) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) FAIL("dlopen(%s): %s", path, dlerror());
    LOAD(lib, status_name, "netev_status_name");
    LOAD(lib, conn_options_init, "netev_connection_options_init_sized");
    LOAD(lib, conn_open, "netev_connection_open");
    LOAD(lib, conn_send, "netev_connection_send");
    LOAD(lib, conn_shutdown, "netev_connection_shutdown");
    LOAD(lib, conn_wait, "netev_connection_wait");
    LOAD(lib, conn_release, "netev_connection_release");
    LOAD(lib, lsn_options_init, "netev_listener_options_init_sized");
    LOAD(lib, lsn_open, "netev_listener_open");
    LOAD(lib, lsn_port, "netev_listener_port");
    LOAD(lib, lsn_release, "netev_listener_release");
    LOAD(lib, runtime_shutdown, "netev_runtime_shutdown");
    LOAD(lib, version, "netev_version");
    CHECK(api.version() != NULL);
    round_trip(round);
    if (dlclose(lib) != 0) FAIL("dlclose: %s", dlerror());
    printf("round %d: dlopen, echo, shutdown, dlclose\n", round);
  }
  return 0;
}
