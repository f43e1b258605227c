/* File descriptors exhausted (RLIMIT_NOFILE lowered, every free descriptor
 * taken): netev_connection_open either refuses at once with a clear status
 * (never NETEV_OK-then-silence, never a crash or a hang), or the connection
 * ends "error terminate" with NETEV_ERR_IO / os_error EMFILE, also in its
 * errors list. Once descriptors are free, a connection echoes normally. */
#include "common_b.h"
#include "common_listener.h"

#include <sys/resource.h>

#define TRIES 5

static int fds[4096];
static int nfds;

static void exhaust(void) {
  nfds = 0;
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      CHECK(errno == EMFILE);
      break;
    }
    CHECK(nfds < (int)(sizeof fds / sizeof fds[0]));
    fds[nfds++] = fd;
  }
}

static void release_fds(void) {
  for (int i = 0; i < nfds; i++) close(fds[i]);
  nfds = 0;
}

static void echo_once(peer *p, const char *msg) {
  recorder r;
  rec_init(&r);
  netev_connection c = client_open("127.0.0.1", p->port, &r);
  if (!rec_wait_bytes(&r, strlen(msg), 0) ) {
    CHECK_OK(netev_connection_send(c, msg, strlen(msg)));
    if (!rec_wait_bytes(&r, strlen(msg), 5)) {
      char seq[256];
      rec_sequence(&r, seq, sizeof seq);
      FAIL("no echo: seq %s, peer conn_fd %d finished %d accept errno %d", seq, p->conn_fd, p->finished, p->accept_errno);
    }
  }
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 20));
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
}

int main(void) {
  watchdog(90);
  peer p;
  /* The runtime is up (threads, poller) before descriptors run out. */
  peer_start(&p, PEER_ECHO, 0);
  {
    recorder r;
    rec_init(&r);
    netev_connection c = client_open("127.0.0.1", p.port, &r);
    client_echo_round(c, &r, "before");
    CHECK_OK(netev_connection_release(c));
    rec_free(&r);
  }
  peer_stop(&p);
  uint16_t port;
  int lfd = listen_loopback(&port, 64);

  struct rlimit old;
  CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
  struct rlimit low = old;
  low.rlim_cur = 256 < old.rlim_cur ? 256 : old.rlim_cur;
  CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
  exhaust();
  printf("took %d descriptors to exhaust the limit of %ld\n", nfds, (long)low.rlim_cur);

  int refused = 0, failed = 0;
  for (int i = 0; i < TRIES; i++) {
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    o.connection_timeout = 5;
    netev_connection c = 0;
    double t0 = now_seconds();
    netev_status st = netev_connection_open("127.0.0.1", port, &o, &c);
    if (st != NETEV_OK) {
      /* refused at once: a clear status and a message */
      CHECK((int)st > 0 && (int)st <= 15 && st != NETEV_ERR_INTERNAL);
      char msg[256];
      CHECK(netev_last_error_message(msg, sizeof msg) > 0);
      printf("open refused: %s (%s)\n", netev_status_name(st), msg);
      refused++;
      rec_free(&r);
      continue;
    }
    if (!rec_wait_terminated(&r, 10)) {
      char seq[256];
      rec_sequence(&r, seq, sizeof seq);
      FAIL("open %d with no descriptor left: no TERMINATE within 10 s; events: \"%s\"", i, seq);
    }
    CHECK(now_seconds() - t0 < 10 * test_time_factor());
    CHECK_SEQUENCE(&r, "error terminate");
    if (r.error != NETEV_ERR_IO)
      FAIL("ERROR carries %s, expected NETEV_ERR_IO (EMFILE)", netev_status_name(r.error));
    size_t n = 0;
    CHECK_OK(netev_connection_error_count(c, &n));
    CHECK(n >= 1);
    netev_error_info info;
    CHECK_OK(netev_connection_error_at(c, n - 1, &info));
    if (info.code != NETEV_ERR_IO || info.os_error != EMFILE)
      FAIL("errors list: %s os_error %d (%s), expected NETEV_ERR_IO / EMFILE",
           netev_status_name(info.code), (int)info.os_error, info.message);
    CHECK(r.overlaps == 0 && r.after_terminate == 0);
    CHECK_OK(netev_connection_release(c));
    rec_free(&r);
    failed++;
  }
  printf("%d opens refused, %d failed with EMFILE\n", refused, failed);

  release_fds();
  CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
  /* Recovery: a normal echo (the peer starts now: Linux reserves accept's
   * descriptor before it blocks, so it cannot wait through the exhaustion). */
  peer_start(&p, PEER_ECHO, 0);
  echo_once(&p, "after the descriptors came back");
  peer_stop(&p);
  close(lfd);
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
