/* Happy eyeballs (RFC 8305, issue 12): a name with an IPv6 and an IPv4
 * address, on loopback.
 *
 * This machine's "localhost" may resolve to one family only, so the test
 * names its own: NETEV_TEST_HOSTS (read by debug builds of netev only)
 * makes "dual.test" resolve to ::1 then 127.0.0.1.
 *
 * - only 127.0.0.1 listens: CONNECTION from 127.0.0.1 (::1 refused at once);
 * - only ::1 listens: CONNECTION from ::1;
 * - both listen: ::1 wins (IPv6 first);
 * - ::1 is a blackhole (a listener whose accept queue is full drops SYNs)
 *   and 127.0.0.1 listens: CONNECTION from 127.0.0.1 after about the
 *   250 ms stagger, far from the 10 s connection_timeout;
 * - both are blackholes: ERROR NETEV_ERR_TIMEOUT after connection_timeout.
 * And "localhost" itself connects to a listener of its first family. */
#include "common_listener.h"

#include <fcntl.h>
#include <netdb.h>

static int listen_on(int family, uint16_t port, int backlog) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_storage a;
  memset(&a, 0, sizeof a);
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *v4;
  } else {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    v6->sin6_addr = in6addr_loopback;
    len = sizeof *v6;
  }
  if (bind(fd, (struct sockaddr *)&a, len) != 0) {
    close(fd);
    return -1;
  }
  CHECK(listen(fd, backlog) == 0);
  return fd;
}

/* A port free on both 127.0.0.1 and ::1. */
static uint16_t free_dual_port(void) {
  for (int tries = 0; tries < 50; tries++) {
    int a = listen_on(AF_INET, 0, 1);
    uint16_t port = bsd_local_port(a);
    int b = listen_on(AF_INET6, port, 1);
    close(a);
    if (b >= 0) {
      close(b);
      return port;
    }
  }
  FAIL("no port free on both families");
}

/* Whether a non-blocking connect to ::1 `port` completes within `ms`. */
static int v6_connect_completes(uint16_t port, int ms, int *fd_out) {
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_loopback;
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  CHECK(fd >= 0);
  *fd_out = fd;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return 1;
  CHECK(errno == EINPROGRESS);
  struct pollfd p = {fd, POLLOUT, 0};
  int k;
  do {
    k = poll(&p, 1, ms);
  } while (k < 0 && errno == EINTR);
  return k == 1;
}

/* Makes the ::1 listener on `port` a blackhole: its accept queue full, so
 * the kernel drops new SYNs. Returns how many filler sockets it holds. */
static int blackhole_v6(uint16_t port, int fillers[], int max) {
  int n = 0;
  while (n < max) {
    int done = v6_connect_completes(port, 300, &fillers[n]);
    n++;
    if (!done) return n;
  }
  FAIL("the ::1 accept queue never filled");
}

typedef struct {
  recorder r;
  char ip[NETEV_IP_TEXT_LEN];
  double connected_at;
} client;

static void client_cb(netev_connection c, const netev_event *e, void *ud) {
  client *cl = ud;
  rec_event(&cl->r, e);
  if (e->type == NETEV_EVENT_CONNECTION) {
    memcpy(cl->ip, e->ip, sizeof cl->ip);
    cl->connected_at = now_seconds();
  }
  (void)c;
  rec_done(&cl->r);
}

/* Connects to `name`:`port`; returns the seconds to CONNECTION (or to the
 * end, for `want_error`) and leaves the peer's ip in `ip`. */
static double connect_to(const char *name, uint16_t port, double timeout, netev_status want_error,
                         char *ip) {
  client cl;
  memset(&cl, 0, sizeof cl);
  rec_init(&cl.r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &cl.r, client_cb);
  o.connection_timeout = timeout;
  netev_connection c;
  double t0 = now_seconds();
  CHECK_OK(netev_connection_open(name, port, &o, &c));
  double took;
  if (want_error) {
    if (!rec_wait_terminated(&cl.r, timeout + 10)) FAIL("no TERMINATE");
    took = now_seconds() - t0;
    CHECK_SEQUENCE(&cl.r, "error terminate");
    if (cl.r.error != want_error)
      FAIL("ERROR %s, expected %s", netev_status_name(cl.r.error), netev_status_name(want_error));
  } else {
    if (!rec_wait_type(&cl.r, NETEV_EVENT_CONNECTION, timeout + 10)) {
      char seq[256];
      rec_sequence(&cl.r, seq, sizeof seq);
      FAIL("no CONNECTION to %s port %u: \"%s\"", name, port, seq);
    }
    took = cl.connected_at - t0;
    CHECK_OK(netev_connection_close(c));
    CHECK(rec_wait_terminated(&cl.r, 10));
    CHECK_SEQUENCE(&cl.r, "connection close terminate");
  }
  strcpy(ip, cl.ip);
  CHECK_OK(netev_connection_release(c));
  rec_free(&cl.r);
  return took;
}

int main(void) {
  watchdog_staged("conn_eyeballs", 120);
  if (!ipv6_available()) {
    printf("conn_eyeballs: no IPv6 loopback on this machine: skipped\n");
    return 0;
  }
  setenv("NETEV_TEST_HOSTS", "dual.test=::1,127.0.0.1", 1);
  char ip[NETEV_IP_TEXT_LEN];
  double f = test_time_factor();

  TEST_STAGE = "only 127.0.0.1 listens";
  uint16_t port = free_dual_port();
  int v4 = listen_on(AF_INET, port, 16);
  CHECK(v4 >= 0);
  double t = connect_to("dual.test", port, 10, NETEV_OK, ip);
  CHECK(strcmp(ip, "127.0.0.1") == 0);
  CHECK(t < 2 * f);

  TEST_STAGE = "both listen";
  int v6 = listen_on(AF_INET6, port, 16);
  CHECK(v6 >= 0);
  connect_to("dual.test", port, 10, NETEV_OK, ip);
  CHECK(strcmp(ip, "::1") == 0);

  TEST_STAGE = "only ::1 listens";
  close(v4);
  connect_to("dual.test", port, 10, NETEV_OK, ip);
  CHECK(strcmp(ip, "::1") == 0);
  close(v6);

  TEST_STAGE = "::1 a blackhole";
  port = free_dual_port();
  v6 = listen_on(AF_INET6, port, 0);
  CHECK(v6 >= 0);
  int fillers[100];
  int nfill = blackhole_v6(port, fillers, 100);
  v4 = listen_on(AF_INET, port, 16);
  CHECK(v4 >= 0);
  t = connect_to("dual.test", port, 10, NETEV_OK, ip);
  printf("::1 blackholed: CONNECTION from %s after %.3f s\n", ip, t);
  CHECK(strcmp(ip, "127.0.0.1") == 0);
  if (t < 0.2) FAIL("connected after %.3f s: the IPv4 attempt did not wait for the stagger", t);
  if (t > 2 * f) FAIL("connected after %.3f s: the stagger did not start the IPv4 attempt", t);

  TEST_STAGE = "both blackholes";
  close(v4);
  int v4fd = listen_on(AF_INET, port, 0);
  CHECK(v4fd >= 0);
  /* fill the IPv4 queue the same way */
  int fillers4[100];
  int n4 = 0;
  for (;;) {
    CHECK(n4 < 100);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    fillers4[n4++] = fd;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) continue;
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, 300) == 0) break;
  }
  t = connect_to("dual.test", port, 1, NETEV_ERR_TIMEOUT, ip);
  printf("both blackholed: TIMEOUT after %.3f s\n", t);
  if (t < 0.9 || t > 3 * f) FAIL("timed out after %.3f s, expected about 1 s", t);
  for (int i = 0; i < n4; i++) close(fillers4[i]);
  for (int i = 0; i < nfill; i++) close(fillers[i]);
  close(v4fd);
  close(v6);

  TEST_STAGE = "localhost";
  struct addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  CHECK(getaddrinfo("localhost", NULL, &hints, &res) == 0);
  int family = res->ai_family;
  freeaddrinfo(res);
  port = free_dual_port();
  int lfd = listen_on(family, port, 16);
  CHECK(lfd >= 0);
  connect_to("localhost", port, 10, NETEV_OK, ip);
  CHECK(strcmp(ip, family == AF_INET ? "127.0.0.1" : "::1") == 0);
  close(lfd);

  CHECK_OK(netev_runtime_shutdown(5));
  printf("conn_eyeballs: ok\n");
  return 0;
}
