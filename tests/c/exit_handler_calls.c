/* A host may call netev while it exits: from an atexit handler, as from a
 * C++ static destructor, which glibc runs after it destroyed the main
 * thread's thread-locals. Each call there works as anywhere else: the log
 * callback set and removed (and called), a connection with an owned send
 * still queued released (its free_fn runs once), a dispatcher and a
 * listener released, the runtime shut down, so nothing leaks; objects
 * opened there work as well, also once the runtime was shut down there
 * (it starts afresh), and a failing call leaves its message. */
#include "common_b.h"

#include <stdatomic.h>

static netev_connection conn;
static netev_listener listener;
static netev_dispatcher dispatcher;
static atomic_int frees, lines;
static int never_accepts;
/* More than loopback's socket buffers take: part of it stays queued. */
static char big[16 << 20];

#define AT_EXIT_OK(expr)                                                       \
  do {                                                                         \
    netev_status st_ = (expr);                                                 \
    if (st_ != NETEV_OK) {                                                     \
      fprintf(stderr, "at exit: %s returned %s\n", #expr,                      \
              netev_status_name(st_));                                         \
      _exit(1); /* not exit(): this runs inside exit() */                      \
    }                                                                          \
  } while (0)

static void on_log(const char *line, void *ud) {
  (void)line;
  (void)ud;
  atomic_fetch_add(&lines, 1);
}

static void on_free(void *arg) {
  (void)arg;
  atomic_fetch_add(&frees, 1);
}

static atomic_int datagrams;
static int rounds;

static void on_datagram(netev_udp_socket sock, const netev_event *e, void *ud) {
  (void)sock;
  (void)ud;
  if (e->type == NETEV_EVENT_DATA && e->data_len == 4 && memcmp(e->data, "bye!", 4) == 0)
    atomic_fetch_add(&datagrams, 1);
}

/* Objects made at exit work too: a UDP socket gets a datagram from
 * another, a dispatcher runs, a connection opens and is released. */
static void open_and_use_at_exit(void) {
  netev_udp_options uo;
  AT_EXIT_OK(netev_udp_options_init(&uo));
  uo.bind_address = "127.0.0.1";
  uo.on_data = on_datagram;
  netev_udp_socket rx, tx;
  AT_EXIT_OK(netev_udp_open(0, &uo, &rx));
  AT_EXIT_OK(netev_udp_open(0, &uo, &tx));
  uint16_t rx_port;
  AT_EXIT_OK(netev_udp_port(rx, &rx_port));
  AT_EXIT_OK(netev_udp_send(tx, "bye!", 4, "127.0.0.1", rx_port));
  rounds++;
  for (int i = 0; i < 1000 && atomic_load(&datagrams) < rounds; i++) usleep(10000);
  if (atomic_load(&datagrams) != rounds) {
    fprintf(stderr, "at exit: the datagram sent there did not arrive\n");
    _exit(1);
  }
  AT_EXIT_OK(netev_udp_release(rx));
  AT_EXIT_OK(netev_udp_release(tx));
  netev_dispatcher d2;
  size_t ran = 0;
  AT_EXIT_OK(netev_dispatcher_create(&d2));
  AT_EXIT_OK(netev_dispatcher_run(d2, 0, &ran));
  AT_EXIT_OK(netev_dispatcher_release(d2));
  netev_listener l2;
  AT_EXIT_OK(netev_listener_open(0, NULL, &l2));
  uint16_t port;
  AT_EXIT_OK(netev_listener_port(l2, &port));
  netev_connection_options o;
  AT_EXIT_OK(netev_connection_options_init(&o));
  netev_connection c2;
  AT_EXIT_OK(netev_connection_open("127.0.0.1", port, &o, &c2));
  AT_EXIT_OK(netev_connection_release(c2));
  AT_EXIT_OK(netev_listener_release(l2));
}

/* A failing call there still leaves its words for
 * netev_last_error_message. */
static void last_error_at_exit(void) {
  char msg[256];
  if (netev_connection_release(12345) != NETEV_ERR_INVALID_HANDLE) {
    fprintf(stderr, "at exit: releasing a made-up handle was not INVALID_HANDLE\n");
    _exit(1);
  }
  netev_last_error_message(msg, sizeof msg);
  if (strstr(msg, "NETEV_ERR_INVALID_HANDLE") != msg) {
    fprintf(stderr, "at exit: last error message \"%s\"\n", msg);
    _exit(1);
  }
}

static void at_exit(void) {
  open_and_use_at_exit();
  AT_EXIT_OK(netev_log_set_callback(on_log, NULL));
  AT_EXIT_OK(netev_connection_release(conn));
  AT_EXIT_OK(netev_dispatcher_release(dispatcher));
  AT_EXIT_OK(netev_listener_release(listener));
  AT_EXIT_OK(netev_runtime_shutdown(10));
  last_error_at_exit();
  /* The runtime starts afresh there too, then ends again. */
  open_and_use_at_exit();
  AT_EXIT_OK(netev_runtime_shutdown(10));
  AT_EXIT_OK(netev_log_set_callback(NULL, NULL));
  if (atomic_load(&frees) != 1) {
    fprintf(stderr, "at exit: free_fn ran %d times, expected once\n", atomic_load(&frees));
    _exit(1);
  }
  if (atomic_load(&lines) == 0) {
    fprintf(stderr, "at exit: no log line reached the callback\n");
    _exit(1);
  }
  close(never_accepts);
  printf("every call at exit returned NETEV_OK\n");
  fflush(stdout);
}

int main(void) {
  watchdog(30);
  /* A failure first, so that this thread's message slot exists (and is
   * destroyed at exit, before the handler runs). */
  CHECK_STATUS(netev_connection_release(54321), NETEV_ERR_INVALID_HANDLE);
  CHECK(atexit(at_exit) == 0);
  uint16_t port;
  never_accepts = listen_loopback(&port, 4);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &conn));
  /* Sent from this thread, so netev has used its thread-locals here. */
  CHECK_OK(netev_connection_send_owned(conn, big, sizeof big, on_free, NULL));
  CHECK_OK(netev_dispatcher_create(&dispatcher));
  CHECK_OK(netev_listener_open(0, NULL, &listener));
  printf("returning from main\n");
  fflush(stdout);
  return 0;
}
