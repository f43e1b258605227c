/* A large transfer through a netev echo listener: random send sizes (1 B ..
 * 256 KiB), every echoed byte checked in place and a checksum of each
 * direction compared. 32 MiB by default (4 MiB under valgrind), 1 GiB with
 * NETEV_LOAD=1. The client keeps at most 4 MiB in flight, so the echo
 * server's send queue stays under its 8 MiB limit and never refuses. */
#include "common_b.h"
#include "common_listener.h"

#include <inttypes.h>

#define WINDOW ((size_t)4 << 20)
#define MAX_SEND ((size_t)256 << 10)

static uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* The stream: byte i of a pseudo-random sequence. */
static void fill_stream(unsigned char *b, size_t n, size_t off) {
  for (size_t i = 0; i < n; i++) {
    size_t k = off + i;
    b[i] = (unsigned char)(splitmix(k >> 3) >> ((k & 7) * 8));
  }
}

static uint64_t fnv(uint64_t h, const unsigned char *b, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

typedef struct client {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t received;
  uint64_t sum;
  int mismatch;
  size_t mismatch_at;
  int terminated, ended, errors;
  unsigned char *expect;
  size_t expect_cap;
} client;

static client cl;
static int server_send_failed;

static void server_data(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  if (netev_connection_send(c, e->data, e->data_len) != NETEV_OK) __atomic_add_fetch(&server_send_failed, 1, __ATOMIC_SEQ_CST);
}

static void client_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c, (void)ud;
  pthread_mutex_lock(&cl.mu);
  if (e->type == NETEV_EVENT_DATA) {
    if (e->data_len > cl.expect_cap) {
      cl.expect = realloc(cl.expect, e->data_len);
      CHECK(cl.expect);
      cl.expect_cap = e->data_len;
    }
    fill_stream(cl.expect, e->data_len, cl.received);
    if (!cl.mismatch && memcmp(cl.expect, e->data, e->data_len) != 0) {
      cl.mismatch = 1;
      cl.mismatch_at = cl.received;
    }
    cl.sum = fnv(cl.sum, e->data, e->data_len);
    cl.received += e->data_len;
  } else if (e->type == NETEV_EVENT_END) {
    cl.ended = 1;
  } else if (e->type == NETEV_EVENT_ERROR) {
    cl.errors++;
  } else if (e->type == NETEV_EVENT_TERMINATE) {
    cl.terminated = 1;
  }
  pthread_cond_broadcast(&cl.cv);
  pthread_mutex_unlock(&cl.mu);
}

/* Waits until `pred` holds, failing after `seconds` without progress. */
static void wait_for(int (*pred)(size_t), size_t arg, double seconds, const char *what) {
  pthread_mutex_lock(&cl.mu);
  size_t last = cl.received;
  double deadline = now_seconds() + seconds * test_time_factor();
  while (!pred(arg)) {
    if (cl.received != last) {
      last = cl.received;
      deadline = now_seconds() + seconds * test_time_factor();
    }
    if (now_seconds() > deadline) FAIL("%s: no progress for %.0f s (received %zu)", what, seconds, cl.received);
    struct timespec ts;
    deadline_in(&ts, 0.05);
    pthread_cond_timedwait(&cl.cv, &cl.mu, &ts);
  }
  pthread_mutex_unlock(&cl.mu);
}
static int pred_room(size_t sent) { return sent - cl.received <= WINDOW || cl.terminated; }
static int pred_all(size_t total) { return cl.received >= total || cl.terminated; }
static int pred_term(size_t unused) { (void)unused; return cl.terminated; }

int main(void) {
  size_t total = env_flag("NETEV_LOAD") ? ((size_t)1 << 30) : (size_t)test_scale(32L << 20, 4L << 20);
  watchdog(env_flag("NETEV_LOAD") ? 1200 : 120);
  pthread_mutex_init(&cl.mu, NULL);
  pthread_cond_init(&cl.cv, NULL);
  cl.sum = 0xcbf29ce484222325ull;

  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.on_data = server_data;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = &defaults;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  o.on_data = o.on_end = o.on_error = o.on_terminate = client_cb;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));

  unsigned char *buf = malloc(MAX_SEND);
  CHECK(buf);
  uint64_t rng = 0x243f6a8885a308d3ull, sent_sum = 0xcbf29ce484222325ull;
  size_t sent = 0, sends = 0;
  double t0 = now_seconds();
  while (sent < total) {
    rng = splitmix(rng);
    size_t n = (rng & 3) == 0 ? 1 + (size_t)(rng >> 40) % 64 : 1 + (size_t)(rng >> 20) % MAX_SEND;
    if (n > total - sent) n = total - sent;
    wait_for(pred_room, sent + n, 30, "window");
    CHECK(!cl.terminated);
    fill_stream(buf, n, sent);
    sent_sum = fnv(sent_sum, buf, n);
    CHECK_OK(netev_connection_send(c, buf, n));
    sent += n;
    sends++;
  }
  wait_for(pred_all, total, 30, "the last echoes");
  double secs = now_seconds() - t0;
  CHECK_OK(netev_connection_shutdown(c));
  wait_for(pred_term, 0, 30, "TERMINATE");
  pthread_mutex_lock(&cl.mu);
  if (cl.mismatch) FAIL("echoed stream differs at byte %zu", cl.mismatch_at);
  if (cl.received != total) FAIL("received %zu bytes, sent %zu", cl.received, total);
  if (cl.sum != sent_sum) FAIL("checksum %016" PRIx64 " of the echo, %016" PRIx64 " sent", cl.sum, sent_sum);
  CHECK(cl.ended == 1 && cl.errors == 0);
  pthread_mutex_unlock(&cl.mu);
  CHECK(__atomic_load_n(&server_send_failed, __ATOMIC_SEQ_CST) == 0);
  printf("%zu bytes in %zu sends echoed in %.2f s (%.0f MiB/s each way), checksum %016" PRIx64
         ", RSS %ld KiB\n",
         total, sends, secs, (double)total / secs / 1048576.0, sent_sum, rss_kib());
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(10));
  free(buf);
  free(cl.expect);
  return 0;
}
