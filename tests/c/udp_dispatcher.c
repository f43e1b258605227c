/* A dispatcher-bound UDP socket (issue 13): callbacks run on the host's
 * thread only; while the host does not dispatch, a flood of 200 000
 * datagrams leaves RSS bounded (netev stops reading, the kernel drops);
 * once it dispatches, every datagram delivered is whole and from the
 * flooding socket, and a last one sent afterwards arrives. Datagrams
 * received but not delivered when close returns are dropped: no DATA after
 * it; TERMINATE comes once, on the host's thread. */
#include "common_listener.h"

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  CHECK(f);
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kib) == 1) break;
  fclose(f);
  return kib;
}

typedef struct {
  pthread_t host;
  size_t n, bad, last;
  int terminated, wrong_thread;
  uint16_t sender;
} counter;

static void on_udp(netev_udp_socket s, const netev_event *e, void *ud) {
  (void)s;
  counter *k = ud;
  if (!pthread_equal(pthread_self(), k->host)) k->wrong_thread++;
  if (e->type == NETEV_EVENT_DATA) {
    k->n++;
    if (e->data_len == 4 && memcmp(e->data, "last", 4) == 0) k->last++;
    else if (e->data_len != 512 || e->port != k->sender || strcmp(e->ip, "127.0.0.1") != 0) k->bad++;
  }
  if (e->type == NETEV_EVENT_TERMINATE) k->terminated++;
}

int main(void) {
  watchdog_staged("udp_dispatcher", 120);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  counter k;
  memset(&k, 0, sizeof k);
  k.host = pthread_self();
  netev_udp_options o;
  CHECK_OK(netev_udp_options_init(&o));
  o.on_data = o.on_terminate = on_udp;
  o.user_data = &k;
  o.dispatcher = d;
  o.bind_address = "127.0.0.1";
  netev_udp_socket s;
  CHECK_OK(netev_udp_open(0, &o, &s));
  uint16_t port;
  CHECK_OK(netev_udp_port(s, &port));

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in me = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(fd, (struct sockaddr *)&me, sizeof me) == 0);
  k.sender = bsd_local_port(fd);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

  TEST_STAGE = "flood while not dispatching";
  long rss0 = rss_kib();
  static unsigned char dgram[512];
  long count = test_scale(200000, 20000);
  for (long i = 0; i < count; i++) {
    memcpy(dgram, &i, sizeof i);
    if (sendto(fd, dgram, sizeof dgram, 0, (struct sockaddr *)&to, sizeof to) < 0 && errno != ENOBUFS && errno != EAGAIN)
      FAIL("sendto: %s", strerror(errno));
  }
  /* netev has read and queued datagrams for the host: its fd says so */
  int dfd = -1;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  struct pollfd pd = {dfd, POLLIN, 0};
  if (poll(&pd, 1, (int)(10000 * test_time_factor())) != 1) FAIL("netev queued nothing for the host");
  sleep_ms(200); /* a window for it to read more, past its limit if it had none */
  long grew = rss_kib() - rss0;
  printf("%ld datagrams (%ld KiB) sent while not dispatching: RSS +%ld KiB\n", count, count / 2, grew);
  if (grew > 8 * 1024) FAIL("RSS grew %ld KiB while the host did not dispatch", grew);
  CHECK(k.n == 0);

  TEST_STAGE = "dispatching";
  double end = now_seconds() + 30 * test_time_factor();
  CHECK(sendto(fd, "last", 4, 0, (struct sockaddr *)&to, sizeof to) == 4 || errno == ENOBUFS);
  size_t last_sent = 1;
  while (k.last == 0) {
    if (now_seconds() > end) FAIL("the last datagram never arrived (%zu delivered)", k.n);
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
    /* the kernel may have dropped the first "last": send again now that
     * the host dispatches */
    if (k.last == 0 && k.n > 0) {
      sendto(fd, "last", 4, 0, (struct sockaddr *)&to, sizeof to);
      last_sent++;
    }
  }
  printf("%zu datagrams delivered once dispatching (%zu \"last\" sent)\n", k.n, last_sent);
  CHECK(k.bad == 0 && k.wrong_thread == 0 && k.n >= 1);

  TEST_STAGE = "close: received DATA dropped, TERMINATE on the host's thread";
  for (int i = 0; i < 1000; i++) sendto(fd, dgram, sizeof dgram, 0, (struct sockaddr *)&to, sizeof to);
  sleep_ms(100); /* netev reads them into the dispatcher's queue meanwhile */
  size_t at_close = k.n;
  CHECK_OK(netev_udp_close(s));
  end = now_seconds() + 10 * test_time_factor();
  while (k.terminated == 0) {
    if (now_seconds() > end) FAIL("no TERMINATE");
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  CHECK_OK(netev_dispatcher_run(d, 0, NULL));
  CHECK(k.terminated == 1 && k.wrong_thread == 0);
  if (k.n != at_close) FAIL("%zu DATA callbacks after close returned", k.n - at_close);
  CHECK_OK(netev_udp_release(s));
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_runtime_shutdown(5));
  close(fd);
  printf("udp_dispatcher: ok\n");
  return 0;
}
