/* Nothing of netev runs at exit: a host that opens a listener and
 * connections (one echoing, one still connecting to a peer that never
 * accepts, data queued) and returns from main without
 * netev_runtime_shutdown exits 0 at once, without a crash or a hang. Its own
 * atexit handler runs and prints a marker the harness looks for. (Leak
 * checking is off for this one: it leaves everything open on purpose.) */
#include "common_b.h"
#include "common_listener.h"

/* Static, not on main's stack: callbacks may still run on netev's threads
 * while the process exits, and must find these alive. */
static lsn_server s;
static recorder r, r2;

static void bye(void) {
  printf("atexit handler ran\n");
  fflush(stdout);
}

int main(void) {
  watchdog(30);
  CHECK(atexit(bye) == 0);
  lsn_init(&s);
  uint16_t port = lsn_open(&s, "127.0.0.1");
  rec_init(&r);
  netev_connection c = client_open("127.0.0.1", port, &r);
  CHECK_OK(netev_connection_send(c, "ping", 4));
  CHECK(rec_wait_bytes(&r, 4, 10));
  /* One more, queued and probably in flight at exit. */
  CHECK_OK(netev_connection_send(c, "in flight", 9));
  /* A connection to a full BSD queue: still connecting at exit. */
  uint16_t full;
  int lfd = listen_loopback(&full, 0);
  rec_init(&r2);
  netev_connection c2 = client_open("127.0.0.1", full, &r2);
  CHECK_OK(netev_connection_send(c2, "queued", 6));
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  (void)c2;
  (void)lfd;
  printf("exiting without netev_runtime_shutdown\n");
  fflush(stdout);
  return 0;
}
