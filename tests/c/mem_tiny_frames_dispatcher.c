/* A peer that sends nothing but empty (or 1-byte) frames to a
 * dispatcher-bound connection whose host does not dispatch (found by the
 * adversarial review of issue 12: empty frames counted nothing against the
 * receive limit, and a million queued DATA events took 900 MiB).
 *
 * For "\n" and "x\n" frames: while the host does not dispatch, the peer
 * writes 1 MiB (or for 1.5 s); netev stops reading (bytes_received stays under the
 * 1 MiB receive limit) and the process's RSS grows by less than 8 MiB.
 * Then the host dispatches: every frame the peer sent arrives, once, in
 * order, and the connection ends "... end close terminate". */
#include "common_listener.h"

#include <fcntl.h>

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
  size_t frames, bad;
  int ended, terminated;
  const char *payload;
} counter;

static void on_event(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  counter *k = ud;
  size_t want = strlen(k->payload);
  if (e->type == NETEV_EVENT_DATA) {
    k->frames++;
    if (e->data_len != want || (want && memcmp(e->data, k->payload, want) != 0)) k->bad++;
  }
  if (e->type == NETEV_EVENT_END) k->ended = 1;
  if (e->type == NETEV_EVENT_TERMINATE) k->terminated = 1;
}

static void run(const char *payload) {
  TEST_STAGE = payload[0] ? "1-byte frames" : "empty frames";
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 4) == 0);
  counter k = {.payload = payload};
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_data = o.on_end = o.on_terminate = on_event;
  o.user_data = &k;
  o.dispatcher = d;
  o.framing = NETEV_FRAMING_DELIMITER;
  o.delimiter = (const uint8_t *)"\n";
  o.delimiter_len = 1;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", bsd_local_port(lfd), &o, &c));
  struct pollfd p = {lfd, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(10000 * test_time_factor())) == 1);
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  CHECK(fd >= 0);

  static char chunk[65536];
  size_t pl = strlen(payload), n = 0;
  while (n + pl + 1 <= sizeof chunk) {
    memcpy(chunk + n, payload, pl);
    n += pl;
    chunk[n++] = '\n';
  }
  long rss0 = rss_kib();
  size_t sent = 0;
  /* Well past the receive limit; delivering it all afterwards, one frame
   * per callback, must still fit the time (valgrind: a smaller amount). */
  size_t amount = (size_t)test_scale(1 << 20, 256 << 10);
  double end = now_seconds() + 1.5;
  while (now_seconds() < end && sent < amount) {
    ssize_t w = write(fd, chunk + sent % n, n - sent % n);
    if (w > 0) sent += (size_t)w;
    else sleep_ms(5);
  }
  long grew = rss_kib() - rss0;
  netev_connection_stats st;
  CHECK_OK(netev_connection_stats_get(c, &st));
  printf("%s: peer sent %zu bytes, netev read %llu, RSS +%ld KiB\n", TEST_STAGE, sent,
         (unsigned long long)st.bytes_received, grew);
  if (st.bytes_received > (1u << 20) + 65536) FAIL("netev read %llu bytes past the receive limit",
                                                   (unsigned long long)st.bytes_received);
  if (grew > 8 * 1024) FAIL("RSS grew %ld KiB while the host did not dispatch", grew);

  /* The peer ends at a frame boundary: the rest of the chunk, then EOF. */
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  if (sent % n) {
    CHECK(write_all(fd, (const unsigned char *)chunk + sent % n, n - sent % n) == 0);
    sent += n - sent % n;
  }
  shutdown(fd, SHUT_WR);
  size_t want = sent / (pl + 1);
  end = now_seconds() + 60 * test_time_factor();
  while (!k.terminated) {
    if (now_seconds() > end) FAIL("%zu of %zu frames after dispatching", k.frames, want);
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  }
  CHECK(k.frames == want && k.bad == 0 && k.ended);
  close(fd);
  close(lfd);
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_dispatcher_release(d));
}

int main(void) {
  watchdog_staged("mem_tiny_frames_dispatcher", 180);
  run("");
  run("x");
  CHECK_OK(netev_runtime_shutdown(5));
  printf("mem_tiny_frames_dispatcher: ok\n");
  return 0;
}
