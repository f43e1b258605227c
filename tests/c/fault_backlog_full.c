/* Connection timeout against a listener whose backlog is full. The BSD
 * version of this (a listening socket nobody accepts from) is in
 * connect_errors.c; here the listener is netev's own: backlog 1, bound to a
 * dispatcher the host does not run, so netev holds a bounded number of
 * accepted connections for it and then leaves further ones in the kernel's
 * queue, which fills. A client with connection_timeout 0.5 then ends
 * "error terminate" with NETEV_ERR_TIMEOUT (also in its errors list), after
 * about 0.5 s. Once the host dispatches, the queue drains and a new client
 * connects: "connection ... close terminate". */
#include "common_b.h"
#include "common_listener.h"

#include <fcntl.h>

#define FILLERS 100

static int accepted; /* on the dispatcher thread (this one) only */

static bool on_accept(netev_listener l, const netev_event *e, void *ud,
                      netev_connection_options *o) {
  (void)l, (void)e, (void)ud, (void)o;
  accepted++;
  return true;
}

/* The kernel accept queue length of the listening socket on 127.0.0.1:port
 * (rx_queue of its LISTEN line in /proc/net/tcp), or -1. */
static int accept_queue_len(uint16_t port) {
  FILE *f = fopen("/proc/net/tcp", "r");
  CHECK(f);
  char line[512];
  int len = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned lport, st, txq, rxq;
    if (sscanf(line, " %*d: %*8x:%x %*8x:%*x %x %x:%x", &lport, &st, &txq, &rxq) == 4 &&
        lport == port && st == 0x0A)
      len = (int)rxq;
  }
  fclose(f);
  return len;
}

/* Starts a non-blocking connect; returns whether it completed within `ms`. */
static int connect_completes(uint16_t port, int ms, int *fd_out) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  CHECK(fd >= 0);
  *fd_out = fd;
  int r = connect(fd, (struct sockaddr *)&a, sizeof a);
  if (r == 0) return 1;
  CHECK(errno == EINPROGRESS);
  struct pollfd p = {fd, POLLOUT, 0};
  int k;
  do {
    k = poll(&p, 1, ms);
  } while (k < 0 && errno == EINTR);
  return k == 1;
}

int main(void) {
  watchdog(120);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = on_accept;
  lo.bind_address = "127.0.0.1";
  lo.backlog = 1;
  lo.dispatcher = d;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  /* Fill, one connect at a time: netev takes up to its bound of pending
   * accepts for the idle dispatcher, then the kernel queue (backlog + 1 = 2
   * on Linux) fills and further SYNs are dropped. Full means: the queue is
   * at its maximum and a new connect does not complete within 300 ms. */
  int fds[FILLERS];
  int nfill = 0, full = 0;
  while (nfill < FILLERS && !full) {
    int completed = connect_completes(port, 300, &fds[nfill]);
    nfill++;
    full = !completed && accept_queue_len(port) >= 2;
  }
  if (!full) FAIL("the accept queue never filled (%d connects, queue %d)", nfill, accept_queue_len(port));
  int held = nfill - 1;
  printf("%d connects completed before the queue was full (queue length %d)\n", held,
         accept_queue_len(port));

  /* The client times out. */
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.connection_timeout = 0.5;
  netev_connection c;
  double t0 = now_seconds();
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  if (!rec_wait_terminated(&r, 15)) {
    char seq[256];
    rec_sequence(&r, seq, sizeof seq);
    FAIL("no TERMINATE after the connection timeout; events: \"%s\"", seq);
  }
  double took = now_seconds() - t0;
  CHECK_SEQUENCE(&r, "error terminate");
  if (r.error != NETEV_ERR_TIMEOUT) FAIL("ERROR carries %s, expected NETEV_ERR_TIMEOUT", netev_status_name(r.error));
  if (took < 0.4 || took > 5 * test_time_factor()) FAIL("timed out after %.2f s, expected about 0.5 s", took);
  CHECK(has_error_entry(c, NETEV_ERR_TIMEOUT));
  CHECK(r.overlaps == 0 && r.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  CHECK(accepted == 0); /* nothing was dispatched */

  /* Recovery: the host dispatches; the queue drains and a client connects. */
  recorder r2;
  rec_init(&r2);
  o.user_data = &r2;
  o.connection_timeout = 30;
  netev_connection c2;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c2));
  double end = now_seconds() + 30 * test_time_factor();
  while (!rec_wait_type(&r2, NETEV_EVENT_CONNECTION, 0) && !rec_wait_type(&r2, NETEV_EVENT_ERROR, 0)) {
    if (now_seconds() > end) FAIL("the client never connected once the host dispatched");
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  CHECK(rec_wait_type(&r2, NETEV_EVENT_CONNECTION, 0));
  printf("%d connections accepted once dispatching\n", accepted);
  CHECK(accepted >= 2);
  CHECK_OK(netev_connection_close(c2));
  CHECK(rec_wait_terminated(&r2, 10));
  CHECK_SEQUENCE(&r2, "connection close terminate");
  CHECK_OK(netev_connection_release(c2));
  rec_free(&r2);

  for (int i = 0; i < nfill; i++) close(fds[i]);
  CHECK_OK(netev_listener_terminate(l));
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(10)); /* runs the remaining TERMINATEs here */
  CHECK_OK(netev_dispatcher_release(d));
  return 0;
}
