/* UDP sockets (issue 13), against plain BSD UDP sockets on loopback.
 *
 * - datagram boundaries both ways for sizes 0 to 65 507, the sender's ip
 *   and port on every DATA, IPv4 and IPv6 senders on a dual-stack socket;
 * - a name ("localhost") and a name that does not resolve (ERROR
 *   NETEV_ERR_HOST_NOT_FOUND, the socket goes on, BUFFER_FULL while its
 *   datagrams wait);
 * - bad input: NULL, port 0, oversized datagrams, garbage and stale
 *   handles, bad options;
 * - close frees the port before it returns; TERMINATE once, last, then
 *   user_data_free once; release from inside a DATA callback; runtime
 *   shutdown with a socket open. */
#include "common_listener.h"

typedef struct {
  pthread_mutex_t mu;
  size_t n;              /* DATA events */
  size_t lens[256];
  unsigned char *bytes;  /* all DATA bytes */
  size_t total, cap;
  char ip[256][NETEV_IP_TEXT_LEN];
  uint16_t port[256];
  int errors, terminated, after_terminate, freed, bad_conn;
  netev_status last_error;
  netev_udp_socket sock;
  int release_in_data;
} urec;

static void urec_init(urec *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
}

static void on_udp(netev_udp_socket s, const netev_event *e, void *ud) {
  urec *r = ud;
  pthread_mutex_lock(&r->mu);
  if (r->terminated) r->after_terminate++;
  if (e->connection != s || (r->sock && s != r->sock)) r->bad_conn++;
  if (e->type == NETEV_EVENT_DATA) {
    if (r->n < 256) {
      r->lens[r->n] = e->data_len;
      memcpy(r->ip[r->n], e->ip, NETEV_IP_TEXT_LEN);
      r->port[r->n] = e->port;
    }
    r->n++;
    if (e->data_len) {
      CHECK(e->data != NULL);
      if (r->total + e->data_len > r->cap) {
        r->cap = (r->total + e->data_len) * 2;
        r->bytes = realloc(r->bytes, r->cap);
        CHECK(r->bytes);
      }
      memcpy(r->bytes + r->total, e->data, e->data_len);
      r->total += e->data_len;
    } else {
      CHECK(e->data == NULL);
    }
  } else if (e->type == NETEV_EVENT_ERROR) {
    r->errors++;
    r->last_error = e->error;
  } else if (e->type == NETEV_EVENT_TERMINATE) {
    r->terminated++;
  }
  int release = e->type == NETEV_EVENT_DATA && r->release_in_data;
  r->release_in_data = 0;
  pthread_mutex_unlock(&r->mu);
  if (release) CHECK_OK(netev_udp_release(s));
}

static void on_free(void *ud) {
  urec *r = ud;
  pthread_mutex_lock(&r->mu);
  if (!r->terminated) FAIL("user_data_free before TERMINATE");
  r->freed++;
  pthread_mutex_unlock(&r->mu);
}

static int urec_get(urec *r, int *field) {
  pthread_mutex_lock(&r->mu);
  int v = *field;
  pthread_mutex_unlock(&r->mu);
  return v;
}

static size_t urec_count(urec *r) {
  pthread_mutex_lock(&r->mu);
  size_t v = r->n;
  pthread_mutex_unlock(&r->mu);
  return v;
}

static int wait_count(urec *r, size_t n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (urec_count(r) < n && now_seconds() < end) sleep_ms(2);
  return urec_count(r) >= n;
}

static int wait_field(urec *r, int *field, int want, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (urec_get(r, field) < want && now_seconds() < end) sleep_ms(2);
  return urec_get(r, field) >= want;
}

static netev_udp_socket open_udp(urec *r, uint16_t port, const char *bind_ip) {
  netev_udp_options o;
  CHECK_OK(netev_udp_options_init(&o));
  o.on_data = o.on_error = o.on_terminate = on_udp;
  o.user_data = r;
  o.user_data_free = on_free;
  o.bind_address = bind_ip;
  netev_udp_socket s = 0;
  CHECK_OK(netev_udp_open(port, &o, &s));
  CHECK(s != 0);
  r->sock = s;
  return s;
}

static int bsd_udp(int family, uint16_t *port) {
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_storage a;
  memset(&a, 0, sizeof a);
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *v4;
  } else {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = in6addr_loopback;
    len = sizeof *v6;
  }
  CHECK(bind(fd, (struct sockaddr *)&a, len) == 0);
  int big = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  *port = bsd_local_port(fd);
  return fd;
}

static void bsd_send(int fd, int family, uint16_t port, const unsigned char *b, size_t n) {
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
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    v6->sin6_addr = in6addr_loopback;
    len = sizeof *v6;
  }
  CHECK(sendto(fd, b, n, 0, (struct sockaddr *)&a, len) == (ssize_t)n);
}

/* Receives one datagram within the bounded time; its length, or -1. */
static ssize_t bsd_recv(int fd, unsigned char *b, size_t cap) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, (int)(5000 * test_time_factor())) != 1) return -1;
  return recv(fd, b, cap, 0);
}

/* ---- the log lines API.md lists for UDP ---- */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_text[1 << 16];
static size_t log_len;

static void on_log(const char *line, void *ud) {
  (void)ud;
  pthread_mutex_lock(&log_mu);
  size_t n = strlen(line);
  if (log_len + n + 2 < sizeof log_text) {
    memcpy(log_text + log_len, line, n);
    log_len += n;
    log_text[log_len++] = '\n';
    log_text[log_len] = 0;
  }
  pthread_mutex_unlock(&log_mu);
}

static int logged(const char *what) {
  pthread_mutex_lock(&log_mu);
  int found = strstr(log_text, what) != NULL;
  pthread_mutex_unlock(&log_mu);
  return found;
}

static void log_lines(void) {
  TEST_STAGE = "log lines";
  CHECK_OK(netev_log_set_callback(on_log, NULL));
  urec r;
  urec_init(&r);
  netev_udp_socket s = open_udp(&r, 0, "127.0.0.1");
  uint16_t port, bport;
  CHECK_OK(netev_udp_port(s, &port));
  int b = bsd_udp(AF_INET, &bport);
  bsd_send(b, AF_INET, port, (const unsigned char *)"abc", 3);
  CHECK(wait_count(&r, 1, 5));
  CHECK_OK(netev_udp_send(s, "hello", 5, "127.0.0.1", bport));
  CHECK_OK(netev_udp_send(s, "x", 1, "no-such-host.invalid", 9));
  CHECK(wait_field(&r, &r.errors, 1, 30));
  CHECK_OK(netev_udp_release(s));
  CHECK(wait_field(&r, &r.terminated, 1, 10));
  char want[128];
  double end = now_seconds() + 5 * test_time_factor();
  while (!logged(" terminated") && now_seconds() < end) sleep_ms(5);
  snprintf(want, sizeof want, "listening 127.0.0.1:%u", port);
  const char *words[] = {" open", want, "received 3 bytes from 127.0.0.1:", "sent 5 bytes to 127.0.0.1:",
                         " error ", " terminated"};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (!logged(words[i])) FAIL("no log line with \"%s\" in:\n%s", words[i], log_text);
  if (!logged("udp ")) FAIL("no line of kind udp in:\n%s", log_text);
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  close(b);
  free(r.bytes);
}

static const size_t SIZES[] = {0, 1, 2, 100, 1400, 1472, 8192, 65000, 65507};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

static void boundaries(void) {
  TEST_STAGE = "boundaries, BSD to netev";
  urec r;
  urec_init(&r);
  netev_udp_socket s = open_udp(&r, 0, NULL);
  uint16_t port;
  CHECK_OK(netev_udp_port(s, &port));
  CHECK(port != 0);
  uint16_t bport;
  int b = bsd_udp(AF_INET, &bport);
  static unsigned char buf[65536];
  size_t want_total = 0;
  for (size_t i = 0; i < NSIZES; i++) {
    fill_pattern(buf, SIZES[i], i);
    bsd_send(b, AF_INET, port, buf, SIZES[i]);
    want_total += SIZES[i];
    /* one at a time: loopback keeps order, but the test must not rely on
     * a queue that large datagrams could overflow */
    if (!wait_count(&r, i + 1, 5)) FAIL("datagram %zu (%zu bytes) did not arrive", i, SIZES[i]);
  }
  pthread_mutex_lock(&r.mu);
  size_t at = 0;
  for (size_t i = 0; i < NSIZES; i++) {
    if (r.lens[i] != SIZES[i]) FAIL("datagram %zu: %zu bytes, expected %zu", i, r.lens[i], SIZES[i]);
    CHECK(is_pattern(r.bytes + at, SIZES[i], i));
    at += SIZES[i];
    CHECK(strcmp(r.ip[i], "127.0.0.1") == 0 && r.port[i] == bport);
  }
  CHECK(r.total == want_total && r.bad_conn == 0);
  pthread_mutex_unlock(&r.mu);

  TEST_STAGE = "boundaries, netev to BSD";
  for (size_t i = 0; i < NSIZES; i++) {
    fill_pattern(buf, SIZES[i], i + 7);
    CHECK_OK(netev_udp_send(s, SIZES[i] ? buf : NULL, SIZES[i], "127.0.0.1", bport));
    static unsigned char got[65536];
    ssize_t n = bsd_recv(b, got, sizeof got);
    if (n != (ssize_t)SIZES[i]) FAIL("BSD got %zd bytes, expected %zu", n, SIZES[i]);
    CHECK(is_pattern(got, SIZES[i], i + 7));
  }

  TEST_STAGE = "a name";
  CHECK_OK(netev_udp_send(s, "by-name", 7, "localhost", bport));
  unsigned char got[64];
  CHECK(bsd_recv(b, got, sizeof got) == 7 && memcmp(got, "by-name", 7) == 0);

  if (ipv6_available()) {
    TEST_STAGE = "IPv6";
    uint16_t b6port;
    int b6 = bsd_udp(AF_INET6, &b6port);
    size_t before = urec_count(&r);
    bsd_send(b6, AF_INET6, port, (const unsigned char *)"six", 3);
    CHECK(wait_count(&r, before + 1, 5));
    pthread_mutex_lock(&r.mu);
    CHECK(strcmp(r.ip[before], "::1") == 0 && r.port[before] == b6port);
    pthread_mutex_unlock(&r.mu);
    CHECK_OK(netev_udp_send(s, "back", 4, "::1", b6port));
    CHECK(bsd_recv(b6, got, sizeof got) == 4 && memcmp(got, "back", 4) == 0);
    close(b6);
  }

  TEST_STAGE = "multicast on loopback";
  {
    netev_status st = netev_udp_join_multicast(s, "239.255.12.34", "127.0.0.1");
    if (st != NETEV_OK) {
      char msg[256];
      netev_last_error_message(msg, sizeof msg);
      printf("multicast join refused here (%s: %s): not checked further\n", netev_status_name(st), msg);
    } else {
      int m = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      struct in_addr lo = {.s_addr = htonl(INADDR_LOOPBACK)};
      CHECK(setsockopt(m, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo) == 0);
      struct sockaddr_in g = {.sin_family = AF_INET, .sin_port = htons(port)};
      inet_pton(AF_INET, "239.255.12.34", &g.sin_addr);
      size_t before = urec_count(&r);
      CHECK(sendto(m, "group", 5, 0, (struct sockaddr *)&g, sizeof g) == 5);
      if (!wait_count(&r, before + 1, 5)) FAIL("a datagram to the joined group did not arrive");
      pthread_mutex_lock(&r.mu);
      CHECK(r.lens[before] == 5 && strcmp(r.ip[before], "127.0.0.1") == 0);
      pthread_mutex_unlock(&r.mu);
      CHECK_OK(netev_udp_leave_multicast(s, "239.255.12.34", "127.0.0.1"));
      CHECK(netev_udp_leave_multicast(s, "239.255.12.34", "127.0.0.1") != NETEV_OK); /* not a member */
      close(m);
    }
  }

  TEST_STAGE = "close frees the port";
  CHECK_OK(netev_udp_close(s));
  CHECK_OK(netev_udp_close(s)); /* harmless */
  int again = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
  if (bind(again, (struct sockaddr *)&a6, sizeof a6) != 0) FAIL("port %u still bound after close: %s", port, strerror(errno));
  close(again);
  CHECK(wait_field(&r, &r.terminated, 1, 5));
  CHECK(wait_field(&r, &r.freed, 1, 5));
  CHECK_STATUS(netev_udp_send(s, "x", 1, "127.0.0.1", bport), NETEV_ERR_CLOSED);
  size_t count = 0;
  CHECK_OK(netev_udp_error_count(s, &count));
  CHECK(count >= 1);
  netev_error_info last;
  CHECK_OK(netev_udp_error_at(s, count - 1, &last));
  CHECK(last.code == NETEV_ERR_CLOSED);
  CHECK_OK(netev_udp_release(s));
  CHECK_STATUS(netev_udp_release(s), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_udp_port(s, &port), NETEV_ERR_INVALID_HANDLE);
  CHECK(r.terminated == 1 && r.after_terminate == 0 && r.freed == 1);
  close(b);
  free(r.bytes);
}

static void names_and_bad_input(void) {
  TEST_STAGE = "a name that does not resolve";
  urec r;
  urec_init(&r);
  netev_udp_options o;
  CHECK_OK(netev_udp_options_init(&o));
  o.on_data = o.on_error = o.on_terminate = on_udp;
  o.user_data = &r;
  netev_udp_options oq; /* the rounds' sockets: no callbacks, errors list only */
  CHECK_OK(netev_udp_options_init(&oq));
  oq.send_buffer_limit = 1500;
  /* A datagram to a name waits for its lookup: a second one sent right
   * after it passes the limit. A resolver may answer between the two (it
   * did under valgrind), so each round takes a fresh socket and a fresh
   * name, until one shows it; that socket goes on below. */
  static unsigned char kb[1000];
  netev_udp_socket s = 0;
  int refused = 0, rounds = 0;
  for (; rounds < 50 && !refused; rounds++) {
    netev_udp_socket sr;
    CHECK_OK(netev_udp_open(0, &oq, &sr));
    char name[64];
    snprintf(name, sizeof name, "no-such-host-%d.invalid", rounds);
    CHECK_OK(netev_udp_send(sr, kb, sizeof kb, name, 9)); /* into an empty queue: taken */
    netev_status st = netev_udp_send(sr, kb, sizeof kb, name, 9);
    if (st == NETEV_ERR_BUFFER_FULL) {
      refused = 1;
      s = sr;
    } else {
      if (st != NETEV_OK) FAIL("send gave %s", netev_status_name(st));
      CHECK_OK(netev_udp_release(sr)); /* its lookups may still run */
    }
  }
  CHECK(refused);
  /* its lookup fails: the entry comes (the socket has no callbacks) */
  double end = now_seconds() + 30 * test_time_factor();
  size_t count = 0, lookups = 0, full = 0;
  netev_error_info info;
  while (lookups == 0) {
    if (now_seconds() > end) FAIL("no ERROR for a name that does not resolve");
    sleep_ms(5);
    CHECK_OK(netev_udp_error_count(s, &count));
    for (size_t i = 0; i < count; i++) {
      CHECK_OK(netev_udp_error_at(s, i, &info));
      if (info.code == NETEV_ERR_HOST_NOT_FOUND && strcmp(info.component, "dns") == 0) lookups++;
    }
  }
  full = 0;
  for (size_t i = 0; i < count; i++) {
    CHECK_OK(netev_udp_error_at(s, i, &info));
    if (info.code == NETEV_ERR_BUFFER_FULL) full++;
  }
  CHECK(full == 1);

  CHECK_STATUS(netev_udp_error_at(s, count, &info), NETEV_ERR_INVALID_ARGUMENT);
  /* the socket goes on */
  uint16_t bport;
  int b = bsd_udp(AF_INET, &bport);
  CHECK_OK(netev_udp_send(s, "still", 5, "127.0.0.1", bport));
  unsigned char got[16];
  CHECK(bsd_recv(b, got, sizeof got) == 5);
  CHECK_OK(netev_udp_release(s));
  CHECK_OK(netev_udp_open(0, &o, &s));
  r.sock = s;

  TEST_STAGE = "bad input";
  static unsigned char big[65528];
  CHECK_STATUS(netev_udp_send(s, big, 65508, "127.0.0.1", bport), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, big, 65528, "::1", bport), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, "x", 1, "127.0.0.1", 0), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, "x", 1, "", bport), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, "x", 1, NULL, bport), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, NULL, 1, "127.0.0.1", bport), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_udp_send(s, "x", 1, "\xff\xfe", bport), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_send(0, "x", 1, "127.0.0.1", bport), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_udp_send(0xdeadbeef00000001ULL, "x", 1, "127.0.0.1", bport), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_udp_port(s, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_udp_error_count(s, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_udp_join_multicast(s, "127.0.0.1", NULL), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_udp_join_multicast(s, NULL, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_udp_join_multicast(s, "239.1.2.3", "nope"), NETEV_ERR_INVALID_ARGUMENT);
  netev_udp_socket s2;
  CHECK_STATUS(netev_udp_open(0, &o, NULL), NETEV_ERR_NULL_ARGUMENT);
  o.bind_address = "not-an-ip";
  CHECK_STATUS(netev_udp_open(0, &o, &s2), NETEV_ERR_INVALID_ARGUMENT);
  o.bind_address = NULL;
  o.dispatcher = 12345;
  CHECK_STATUS(netev_udp_open(0, &o, &s2), NETEV_ERR_INVALID_HANDLE);
  o.dispatcher = 0;
  o.size = 3;
  CHECK_STATUS(netev_udp_open(0, &o, &s2), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_udp_options_init(&o));
  memset(&o.reuse_port, 7, 1);
  CHECK_STATUS(netev_udp_open(0, &o, &s2), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_udp_options_init(&o));
  uint16_t taken;
  CHECK_OK(netev_udp_port(s, &taken));
  CHECK_STATUS(netev_udp_open(taken, &o, &s2), NETEV_ERR_ADDRESS_IN_USE);
  CHECK_STATUS(netev_udp_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);

  TEST_STAGE = "release from inside DATA";
  pthread_mutex_lock(&r.mu);
  r.release_in_data = 1;
  pthread_mutex_unlock(&r.mu);
  uint16_t port;
  CHECK_OK(netev_udp_port(s, &port));
  bsd_send(b, AF_INET, port, (const unsigned char *)"bye", 3);
  CHECK(wait_field(&r, &r.terminated, 1, 10));
  CHECK(r.after_terminate == 0);
  /* released in the callback, terminated: the handle is gone */
  end = now_seconds() + 5 * test_time_factor();
  while (netev_udp_port(s, &port) == NETEV_OK && now_seconds() < end) sleep_ms(2);
  CHECK_STATUS(netev_udp_port(s, &port), NETEV_ERR_INVALID_HANDLE);
  close(b);
  free(r.bytes);

  TEST_STAGE = "released while a lookup is pending";
  {
    urec r4;
    urec_init(&r4);
    netev_udp_socket s4 = open_udp(&r4, 0, NULL);
    CHECK_OK(netev_udp_send(s4, "x", 1, "no-such-host.invalid", 9));
    CHECK_OK(netev_udp_release(s4));
    /* the lookup ends after the socket did: nothing leaks (valgrind, ASan) */
    CHECK(wait_field(&r4, &r4.freed, 1, 10));
  }

  TEST_STAGE = "runtime shutdown with a socket open";
  urec r2;
  urec_init(&r2);
  netev_udp_socket s3 = open_udp(&r2, 0, "127.0.0.1");
  /* generous: the pending lookup above must have returned for NETEV_OK */
  CHECK_OK(netev_runtime_shutdown(60));
  CHECK(r2.terminated == 1 && r2.freed == 1);
  CHECK_STATUS(netev_udp_send(s3, "x", 1, "127.0.0.1", 9), NETEV_ERR_CLOSED);
  CHECK_OK(netev_udp_release(s3));
  CHECK_STATUS(netev_udp_release(s3), NETEV_ERR_INVALID_HANDLE);
}

int main(void) {
  watchdog_staged("udp_basic", 120);
  boundaries();
  log_lines();
  names_and_bad_input();
  printf("udp_basic: ok\n");
  return 0;
}
