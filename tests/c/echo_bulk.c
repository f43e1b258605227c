/* A byte-exact echo of 4 MiB sent in many sends of varied sizes (1..64 KiB,
 * deterministic), the first several issued right after open, before the
 * connection can be up; then shutdown and the full event sequence. */
#include "common_a.h"

#define TOTAL ((size_t)4 << 20)
#define MAX_PIECE ((size_t)64 << 10)
#define EARLY_SENDS 8

/* xorshift32: deterministic piece sizes */
static uint32_t rng_state = 0x9e3779b9u;
static uint32_t next_rand(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  rng_state = x;
  return x;
}

int main(void) {
  watchdog(60);
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.want_port = p.port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);

  unsigned char *all = malloc(TOTAL);
  CHECK(all != NULL);
  fill_pattern(all, TOTAL, 0);

  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  size_t sent = 0;
  int sends = 0;
  int early_before_connection = 0;
  size_t smallest = MAX_PIECE, largest = 0;
  while (sent < TOTAL) {
    size_t n = 1 + (size_t)(next_rand() % MAX_PIECE);
    if (sends % 17 == 3) n = 1; /* make sure tiny pieces are in the mix */
    if (n > TOTAL - sent) n = TOTAL - sent;
    if (sends < EARLY_SENDS && rec_count(&x.r, NETEV_EVENT_CONNECTION) == 0)
      early_before_connection++;
    CHECK_OK(netev_connection_send(c, all + sent, n));
    if (n < smallest) smallest = n;
    if (n > largest) largest = n;
    sent += n;
    sends++;
    if (sends == EARLY_SENDS) {
      /* the bytes of the early sends are queued or written, never lost */
      size_t b = 0;
      CHECK_OK(netev_connection_buffered_amount(c, &b));
      CHECK(b <= sent);
    }
  }
  CHECK(sent == TOTAL);
  CHECK(sends > 100);
  CHECK(smallest == 1 && largest > MAX_PIECE / 2);

  if (!rec_wait_bytes(&x.r, TOTAL, 40))
    FAIL("echoed %zu of %zu bytes", XREC_GET(&x, r.data_len), TOTAL);
  pthread_mutex_lock(&x.r.mu);
  size_t got = x.r.data_len;
  int same = got == TOTAL && memcmp(x.r.data, all, TOTAL) == 0;
  int pattern = got == TOTAL && is_pattern(x.r.data, got, 0);
  pthread_mutex_unlock(&x.r.mu);
  if (!same) {
    size_t i = 0;
    while (i < got && i < TOTAL && x.r.data[i] == all[i]) i++;
    FAIL("echo differs: got %zu bytes of %zu, first difference at %zu", got, TOTAL, i);
  }
  CHECK(pattern);
  size_t b = 1;
  CHECK_OK(netev_connection_buffered_amount(c, &b));
  CHECK(b == 0);

  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 20);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(XREC_GET(&x, r.data_len) == TOTAL); /* nothing extra after the echo */
  CHECK_XREC_CLEAN(&x);
  CHECK(xrec_wait_freed(&x, 10));
  size_t errors = 1;
  CHECK_OK(netev_connection_error_count(c, &errors));
  CHECK(errors == 0);
  CHECK_OK(netev_connection_release(c));
  printf("%d sends, %d of the first %d before CONNECTION, DATA events %d\n", sends,
         early_before_connection, EARLY_SENDS, rec_count(&x.r, NETEV_EVENT_DATA));

  CHECK_OK(netev_runtime_shutdown(10));
  peer_stop(&p);
  CHECK(XREC_GET(&x, free_calls) == 1);
  free(all);
  xrec_free_fields(&x);
  return 0;
}
