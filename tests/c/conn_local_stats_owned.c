/* Local address and port, bind_address/bind_port, statistics, and
 * send_owned (issue 12).
 *
 * - local address/port: "" and 0 after the end; during the connection the
 *   socket's own, equal to what the peer sees (IPv4 and IPv6).
 * - bind_address 127.0.0.2: the peer sees that address; bind_port: the
 *   peer sees that port; a bind_address of the other family: ERROR; a port
 *   in use: ERROR NETEV_ERR_ADDRESS_IN_USE.
 * - stats: bytes each way equal to what was sent and echoed, data_events
 *   equal to the DATA callbacks, rtt > 0 while connected; the sized rules.
 * - send_owned: echoed byte-exact in order with copied sends between them;
 *   free_fn exactly once per accepted call (written, dropped at close,
 *   dropped at runtime shutdown), never for a refused call. */
#include "common_listener.h"

/* ---- a BSD listener that records the peer address of what it accepts ---- */

typedef struct {
  int fd;
  uint16_t port;
  char peer_ip[64];
  uint16_t peer_port;
} bsd_server;

static void bsd_listen(bsd_server *s, int family) {
  memset(s, 0, sizeof *s);
  s->fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(s->fd >= 0);
  struct sockaddr_storage a;
  memset(&a, 0, sizeof a);
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_ANY); /* 127.0.0.2 must reach it too */
    len = sizeof *v4;
  } else {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = in6addr_loopback;
    len = sizeof *v6;
  }
  CHECK(bind(s->fd, (struct sockaddr *)&a, len) == 0);
  CHECK(listen(s->fd, 16) == 0);
  len = sizeof a;
  CHECK(getsockname(s->fd, (struct sockaddr *)&a, &len) == 0);
  s->port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
                                    : ((struct sockaddr_in6 *)&a)->sin6_port);
}

/* Accepts one connection (bounded) and records its peer's address. */
static int bsd_accept(bsd_server *s) {
  struct pollfd p = {s->fd, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(10000 * test_time_factor())) == 1);
  struct sockaddr_storage a;
  socklen_t len = sizeof a;
  int fd = accept4(s->fd, (struct sockaddr *)&a, &len, SOCK_CLOEXEC);
  CHECK(fd >= 0);
  if (a.ss_family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
    inet_ntop(AF_INET, &v4->sin_addr, s->peer_ip, sizeof s->peer_ip);
    s->peer_port = ntohs(v4->sin_port);
  } else {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    inet_ntop(AF_INET6, &v6->sin6_addr, s->peer_ip, sizeof s->peer_ip);
    s->peer_port = ntohs(v6->sin6_port);
  }
  return fd;
}

static void local_of(netev_connection c, char *ip, size_t cap, uint16_t *port) {
  size_t needed = 0;
  CHECK_OK(netev_connection_local_address(c, ip, cap, &needed));
  CHECK(needed < cap);
  CHECK_OK(netev_connection_local_port(c, port));
}

static netev_connection open_client(const char *ip, uint16_t port, recorder *r, const char *bind_ip,
                                    uint16_t bind_port) {
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, r, rec_callback);
  o.bind_address = bind_ip;
  o.bind_port = bind_port;
  o.connection_timeout = 10;
  netev_connection c;
  CHECK_OK(netev_connection_open(ip, port, &o, &c));
  return c;
}

static void local_and_bind(void) {
  TEST_STAGE = "local address, IPv4";
  bsd_server s;
  bsd_listen(&s, AF_INET);
  recorder r;
  rec_init(&r);
  netev_connection c = open_client("127.0.0.1", s.port, &r, NULL, 0);
  int fd = bsd_accept(&s);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  char ip[64];
  uint16_t port;
  local_of(c, ip, sizeof ip, &port);
  CHECK(strcmp(ip, "127.0.0.1") == 0 && strcmp(s.peer_ip, "127.0.0.1") == 0);
  CHECK(port == s.peer_port && port != 0);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  local_of(c, ip, sizeof ip, &port);
  CHECK(ip[0] == 0 && port == 0);
  CHECK_OK(netev_connection_release(c));
  close(fd);
  rec_free(&r);

  TEST_STAGE = "bind_address 127.0.0.2";
  rec_init(&r);
  c = open_client("127.0.0.1", s.port, &r, "127.0.0.2", 0);
  fd = bsd_accept(&s);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  local_of(c, ip, sizeof ip, &port);
  CHECK(strcmp(ip, "127.0.0.2") == 0 && strcmp(s.peer_ip, "127.0.0.2") == 0 && port == s.peer_port);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_OK(netev_connection_release(c));
  close(fd);
  rec_free(&r);

  TEST_STAGE = "bind_port";
  /* A port nobody holds: bound and released here, then bound by netev. */
  int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(probe, (struct sockaddr *)&a, sizeof a) == 0);
  uint16_t free_port = bsd_local_port(probe);
  close(probe);
  rec_init(&r);
  c = open_client("127.0.0.1", s.port, &r, "127.0.0.1", free_port);
  fd = bsd_accept(&s);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  CHECK(s.peer_port == free_port);
  local_of(c, ip, sizeof ip, &port);
  CHECK(port == free_port);

  TEST_STAGE = "bind_port in use";
  recorder r2;
  rec_init(&r2);
  netev_connection c2 = open_client("127.0.0.1", s.port, &r2, "127.0.0.1", free_port);
  CHECK(rec_wait_terminated(&r2, 10));
  CHECK_SEQUENCE(&r2, "error terminate");
  if (r2.error != NETEV_ERR_ADDRESS_IN_USE) FAIL("bind to a port in use gave %s", netev_status_name(r2.error));
  CHECK_OK(netev_connection_release(c2));
  rec_free(&r2);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_OK(netev_connection_release(c));
  close(fd);
  rec_free(&r);

  TEST_STAGE = "bind_address of the other family";
  rec_init(&r);
  c = open_client("127.0.0.1", s.port, &r, "::1", 0);
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "error terminate");
  CHECK(r.error == NETEV_ERR_HOST_NOT_FOUND);
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  close(s.fd);

  if (!ipv6_available()) {
    printf("no IPv6 loopback: IPv6 local address not checked\n");
    return;
  }
  TEST_STAGE = "local address, IPv6";
  bsd_listen(&s, AF_INET6);
  rec_init(&r);
  c = open_client("::1", s.port, &r, NULL, 0);
  fd = bsd_accept(&s);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  local_of(c, ip, sizeof ip, &port);
  CHECK(strcmp(ip, "::1") == 0 && port == s.peer_port);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_OK(netev_connection_release(c));
  close(fd);
  close(s.fd);
  rec_free(&r);
}

/* ---- send_owned and stats ---- */

static pthread_mutex_t frees_mu = PTHREAD_MUTEX_INITIALIZER;
static int frees[64]; /* free_fn calls per buffer index */

static void count_free(void *arg) {
  int i = (int)(intptr_t)arg;
  pthread_mutex_lock(&frees_mu);
  frees[i]++;
  pthread_mutex_unlock(&frees_mu);
}

static int free_count(int i) {
  pthread_mutex_lock(&frees_mu);
  int n = frees[i];
  pthread_mutex_unlock(&frees_mu);
  return n;
}

static int wait_freed(int i, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (free_count(i) == 0 && now_seconds() < end) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return free_count(i);
}

static void owned_and_stats(void) {
  TEST_STAGE = "send_owned to an echo peer";
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection c = open_client("127.0.0.1", p.port, &r, NULL, 0);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  /* owned 1 MiB, copied 1000, owned 100 (copied inside: under 4 KiB), owned 300 KiB */
  size_t sizes[4] = {1u << 20, 1000, 100, 300u << 10};
  size_t total = 0;
  unsigned char *bufs[4];
  for (int i = 0; i < 4; i++) {
    bufs[i] = malloc(sizes[i]);
    CHECK(bufs[i]);
    fill_pattern(bufs[i], sizes[i], total);
    total += sizes[i];
  }
  CHECK_OK(netev_connection_send_owned(c, bufs[0], sizes[0], count_free, (void *)(intptr_t)0));
  CHECK_OK(netev_connection_send(c, bufs[1], sizes[1]));
  CHECK_OK(netev_connection_send_owned(c, bufs[2], sizes[2], count_free, (void *)(intptr_t)2));
  CHECK_OK(netev_connection_send_owned(c, bufs[3], sizes[3], count_free, (void *)(intptr_t)3));
  CHECK_OK(netev_connection_send_owned(c, NULL, 0, count_free, (void *)(intptr_t)4));
  CHECK_STATUS(netev_connection_send_owned(c, NULL, 5, count_free, (void *)(intptr_t)5),
               NETEV_ERR_NULL_ARGUMENT);
  if (!rec_wait_bytes(&r, total, 30)) FAIL("echo incomplete: %zu of %zu", r.data_len, total);
  CHECK(r.data_len == total && is_pattern(r.data, total, 0));
  CHECK(wait_freed(0, 10) == 1 && wait_freed(2, 10) == 1 && wait_freed(3, 10) == 1);
  CHECK(wait_freed(4, 10) == 1); /* 0 bytes: freed at once */
  CHECK(free_count(5) == 0);     /* refused: never */

  TEST_STAGE = "stats";
  netev_connection_stats st;
  CHECK_OK(netev_connection_stats_get(c, &st));
  CHECK(st.size == sizeof st);
  CHECK(st.bytes_sent == total && st.bytes_received == total);
  CHECK(st.data_events == (uint64_t)rec_count(&r, NETEV_EVENT_DATA));
  CHECK(st.buffered_amount == 0);
  CHECK(st.rtt_us > 0);
  /* A smaller struct (an older header's): only its bytes are written. */
  unsigned char small[24];
  memset(small, 0xAB, sizeof small);
  CHECK_OK(netev_connection_stats_get_sized(c, (netev_connection_stats *)(void *)small, 16));
  uint32_t sz;
  memcpy(&sz, small, 4);
  CHECK(sz == 16);
  uint64_t sent;
  memcpy(&sent, small + 8, 8);
  CHECK(sent == total);
  for (size_t i = 16; i < sizeof small; i++) CHECK(small[i] == 0xAB);
  CHECK_STATUS(netev_connection_stats_get_sized(c, &st, 3), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_connection_stats_get_sized(c, &st, 1u << 20), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_connection_stats_get(c, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_connection_stats_get(0, &st), NETEV_ERR_INVALID_HANDLE);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_OK(netev_connection_stats_get(c, &st)); /* kept after the end */
  CHECK(st.bytes_sent == total && st.rtt_us == 0);
  CHECK_STATUS(netev_connection_send_owned(c, bufs[1], 10, count_free, (void *)(intptr_t)6),
               NETEV_ERR_CLOSED);
  CHECK(free_count(6) == 0);
  CHECK_OK(netev_connection_release(c));
  CHECK_STATUS(netev_connection_send_owned(c, bufs[1], 10, count_free, (void *)(intptr_t)6),
               NETEV_ERR_INVALID_HANDLE);
  CHECK(free_count(6) == 0);
  peer_stop(&p);
  rec_free(&r);
  for (int i = 0; i < 4; i++) free(bufs[i]);

  TEST_STAGE = "send_owned dropped at close, refused when full";
  peer_start(&p, PEER_HOLD, 0); /* never reads */
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.send_buffer_limit = 1u << 20;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  static unsigned char big[8u << 20];
  int accepted = 0, refused = 0;
  for (int i = 10; i < 40 && !refused; i++) {
    netev_status s = netev_connection_send_owned(c, big, 1u << 20, count_free, (void *)(intptr_t)i);
    if (s == NETEV_OK) accepted++;
    else if (s == NETEV_ERR_BUFFER_FULL) refused = i;
    else FAIL("send_owned gave %s", netev_status_name(s));
  }
  CHECK(refused && accepted >= 1);
  CHECK(free_count(refused) == 0);
  CHECK_OK(netev_connection_close(c));
  CHECK(rec_wait_terminated(&r, 10));
  for (int i = 10; i < 10 + accepted; i++)
    if (wait_freed(i, 10) != 1) FAIL("buffer %d freed %d times", i, free_count(i));
  CHECK(free_count(refused) == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);

  TEST_STAGE = "send_owned dropped at runtime shutdown";
  peer_start(&p, PEER_HOLD, 0);
  rec_init(&r);
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  accepted = 0;
  for (int i = 50; i < 60; i++)
    if (netev_connection_send_owned(c, big, 1u << 20, count_free, (void *)(intptr_t)i) == NETEV_OK) accepted++;
  CHECK(accepted >= 1);
  CHECK_OK(netev_runtime_shutdown(5));
  for (int i = 50; i < 50 + accepted; i++)
    if (free_count(i) != 1) FAIL("buffer %d freed %d times after shutdown", i, free_count(i));
  for (int i = 50 + accepted; i < 60; i++) CHECK(free_count(i) == 0);
  CHECK(rec_wait_terminated(&r, 1));
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

int main(void) {
  watchdog_staged("conn_local_stats_owned", 120);
  local_and_bind();
  owned_and_stats();
  printf("conn_local_stats_owned: ok\n");
  return 0;
}
