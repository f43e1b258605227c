/* Many concurrent connections echoing byte-exact: 500 by default (100 under
 * valgrind), 10 000 with NETEV_LOAD=1. The echo server is a netev listener
 * in a child process (forked before netev starts anywhere), so each process
 * needs one descriptor per connection; RLIMIT_NOFILE is raised to its hard
 * limit (the count is cut to fit if that is too low, and says so). Every
 * client sends a 1000-byte message of its own at once, all are open
 * together, each gets exactly its bytes back, then "connection data* end
 * close terminate". RSS of both processes is printed. */
#include "common_b.h"
#include "common_listener.h"

#include <stdatomic.h>
#include <sys/wait.h>

#define MSG 1000

typedef struct cli {
  unsigned char got[MSG];
  size_t len;
  int over, connection, end, close_, error, terminate, overlaps, in_cb;
} cli;

static cli *clients;
static int nclients;
static atomic_long total_bytes;
static atomic_int connected, terminated;

static void client_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  cli *k = ud;
  if (__atomic_exchange_n(&k->in_cb, 1, __ATOMIC_ACQ_REL)) __atomic_add_fetch(&k->overlaps, 1, __ATOMIC_RELAXED);
  switch (e->type) {
  case NETEV_EVENT_CONNECTION:
    k->connection++;
    atomic_fetch_add(&connected, 1);
    break;
  case NETEV_EVENT_DATA:
    if (k->len + e->data_len > MSG) {
      k->over++;
    } else {
      memcpy(k->got + k->len, e->data, e->data_len);
      k->len += e->data_len;
    }
    atomic_fetch_add(&total_bytes, (long)e->data_len);
    break;
  case NETEV_EVENT_END: k->end++; break;
  case NETEV_EVENT_CLOSE: k->close_++; break;
  case NETEV_EVENT_ERROR: k->error++; break;
  case NETEV_EVENT_TERMINATE:
    k->terminate++;
    __atomic_store_n(&k->in_cb, 0, __ATOMIC_RELEASE);
    atomic_fetch_add(&terminated, 1);
    return;
  default: break;
  }
  __atomic_store_n(&k->in_cb, 0, __ATOMIC_RELEASE);
}

static void server_data(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  if (netev_connection_send(c, e->data, e->data_len) != NETEV_OK) {
    fprintf(stderr, "server: echo send failed\n");
    _exit(7);
  }
}

static void server(int port_w, int quit_r, int n) {
  rlim_t lim = raise_nofile();
  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.on_data = server_data;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.backlog = 4096;
  lo.connection_defaults = &defaults;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(write(port_w, &port, sizeof port) == (ssize_t)sizeof port);
  char b;
  struct pollfd p = {quit_r, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(600000 * test_time_factor())) == 1);
  CHECK(read(quit_r, &b, 1) >= 0);
  printf("server: %d connections served, RLIMIT_NOFILE %ld, RSS %ld KiB\n", n, (long)lim, rss_kib());
  fflush(stdout);
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(30));
  exit(0);
}

static int pred_connected(void *a) { (void)a; return atomic_load(&connected) >= nclients; }
static int pred_bytes(void *a) { (void)a; return atomic_load(&total_bytes) >= (long)nclients * MSG; }
static int pred_terminated(void *a) { (void)a; return atomic_load(&terminated) >= nclients; }

int main(void) {
  int load = env_flag("NETEV_LOAD");
  watchdog(load ? 600 : 120);
  nclients = load ? 10000 : (int)test_scale(500, 100);
  rlim_t lim = raise_nofile();
  if (lim < (rlim_t)nclients + 100) {
    printf("RLIMIT_NOFILE hard limit %ld: %d connections instead of %d\n", (long)lim, (int)lim - 100, nclients);
    nclients = (int)lim - 100;
  }
  int port_pipe[2], quit_pipe[2];
  CHECK(pipe(port_pipe) == 0 && pipe(quit_pipe) == 0);
  fflush(stdout);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(port_pipe[0]);
    close(quit_pipe[1]);
    server(port_pipe[1], quit_pipe[0], nclients);
  }
  close(port_pipe[1]);
  close(quit_pipe[0]);
  uint16_t port = 0;
  struct pollfd p = {port_pipe[0], POLLIN, 0};
  CHECK(poll(&p, 1, (int)(20000 * test_time_factor())) == 1);
  CHECK(read(port_pipe[0], &port, sizeof port) == (ssize_t)sizeof port);

  clients = calloc((size_t)nclients, sizeof *clients);
  netev_connection *conns = calloc((size_t)nclients, sizeof *conns);
  CHECK(clients && conns);
  long rss0 = rss_kib();
  double t0 = now_seconds();
  unsigned char msg[MSG];
  for (int i = 0; i < nclients; i++) {
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    o.on_connection = o.on_data = o.on_end = o.on_shutdown = o.on_error = o.on_terminate = client_cb;
    o.user_data = &clients[i];
    o.connection_timeout = 120;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &conns[i]));
    fill_pattern(msg, MSG, (size_t)i * MSG);
    CHECK_OK(netev_connection_send(conns[i], msg, MSG)); /* queued until connected */
  }
  if (!poll_until(pred_connected, NULL, 120)) FAIL("%d of %d connected", atomic_load(&connected), nclients);
  if (!poll_until(pred_bytes, NULL, 120))
    FAIL("%ld of %ld echoed bytes came back", atomic_load(&total_bytes), (long)nclients * MSG);
  double t1 = now_seconds();
  long rss_peak = rss_kib();
  for (int i = 0; i < nclients; i++) CHECK_OK(netev_connection_shutdown(conns[i]));
  if (!poll_until(pred_terminated, NULL, 120)) FAIL("%d of %d terminated", atomic_load(&terminated), nclients);
  for (int i = 0; i < nclients; i++) {
    cli *k = &clients[i];
    if (k->len != MSG || k->over || !is_pattern(k->got, MSG, (size_t)i * MSG))
      FAIL("client %d: echo not byte-exact (%zu bytes)", i, k->len);
    if (k->connection != 1 || k->end != 1 || k->close_ != 1 || k->error != 0 || k->terminate != 1 || k->overlaps)
      FAIL("client %d: connection %d end %d close %d error %d terminate %d overlaps %d", i, k->connection,
           k->end, k->close_, k->error, k->terminate, k->overlaps);
    CHECK_OK(netev_connection_release(conns[i]));
  }
  printf("%d concurrent connections echoed %d bytes each in %.2f s; client RSS %ld KiB before, %ld KiB "
         "with all open (%.1f KiB per connection)\n",
         nclients, MSG, t1 - t0, rss0, rss_peak, (double)(rss_peak - rss0) / nclients);
  CHECK_OK(netev_runtime_shutdown(30));
  CHECK(write(quit_pipe[1], "q", 1) == 1);
  int status = 0;
  double end = now_seconds() + 60 * test_time_factor();
  pid_t w;
  while ((w = waitpid(pid, &status, WNOHANG)) == 0) {
    if (now_seconds() > end) {
      kill(pid, SIGKILL);
      FAIL("the server process did not exit");
    }
    sleep_ms(10);
  }
  CHECK(w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  free(clients);
  free(conns);
  return 0;
}
