/* Eight host threads send into one connection at once. Each call's bytes
 * stay together (no interleaving inside a message) and each thread's
 * messages arrive in its order; the echoed stream is exactly what was sent. */
#include "common_b.h"

#define THREADS 8
#define MESSAGES 200
#define MAGIC 0x4e455645u /* "NEVE" */

/* Header: magic, thread id, sequence number, payload length (host order). */
#define HEADER 16

static size_t payload_size(unsigned tid) { return 37 + tid * 613; /* 37 .. 4328, all distinct */ }

static unsigned char payload_byte(unsigned tid, unsigned seq, size_t i) {
  return (unsigned char)(tid * 31 + seq * 7 + i * 13 + (i >> 8));
}

typedef struct sender {
  netev_connection c;
  unsigned tid;
  pthread_barrier_t *start;
  netev_status failed; /* first failing status, or NETEV_OK */
} sender;

static void *send_thread(void *arg) {
  sender *s = arg;
  size_t len = HEADER + payload_size(s->tid);
  unsigned char *msg = malloc(len);
  if (!msg) FAIL("out of memory");
  pthread_barrier_wait(s->start);
  for (unsigned seq = 0; seq < MESSAGES; seq++) {
    uint32_t h[4] = {MAGIC, s->tid, seq, (uint32_t)payload_size(s->tid)};
    memcpy(msg, h, HEADER);
    for (size_t i = 0; i < payload_size(s->tid); i++) msg[HEADER + i] = payload_byte(s->tid, seq, i);
    netev_status st = netev_connection_send(s->c, msg, len);
    if (st != NETEV_OK) {
      s->failed = st;
      break;
    }
  }
  free(msg);
  return NULL;
}

int main(void) {
  watchdog(60);
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.no_delay = true;
  o.send_buffer_limit = 64u << 20; /* far above the whole stream: never refused */
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  /* Established first, so the sends race on the direct-write path too. */
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));

  size_t total = 0;
  for (unsigned t = 0; t < THREADS; t++) total += MESSAGES * (HEADER + payload_size(t));
  pthread_barrier_t start;
  CHECK(pthread_barrier_init(&start, NULL, THREADS) == 0);
  sender s[THREADS];
  pthread_t th[THREADS];
  for (unsigned t = 0; t < THREADS; t++) {
    s[t].c = c;
    s[t].tid = t;
    s[t].start = &start;
    s[t].failed = NETEV_OK;
    CHECK(pthread_create(&th[t], NULL, send_thread, &s[t]) == 0);
  }
  for (unsigned t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  pthread_barrier_destroy(&start);
  for (unsigned t = 0; t < THREADS; t++) CHECK_STATUS(s[t].failed, NETEV_OK);

  if (!rec_wait_bytes(&r, total, 30)) FAIL("echo incomplete: %zu of %zu bytes", r.data_len, total);
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  if (r.data_len != total) FAIL("received %zu bytes, sent %zu", r.data_len, total);
  CHECK(r.overlaps == 0 && r.after_terminate == 0);

  /* Re-parse the echoed stream. */
  unsigned next[THREADS] = {0};
  size_t pos = 0;
  int messages = 0;
  while (pos < total) {
    if (total - pos < HEADER) FAIL("truncated header at %zu", pos);
    uint32_t h[4];
    memcpy(h, r.data + pos, HEADER);
    if (h[0] != MAGIC || h[1] >= THREADS) FAIL("no message header at offset %zu: interleaved bytes", pos);
    unsigned tid = h[1];
    if (h[3] != payload_size(tid)) FAIL("thread %u message at %zu has length %u", tid, pos, h[3]);
    if (h[2] != next[tid]) FAIL("thread %u: message %u arrived when %u was due", tid, h[2], next[tid]);
    if (total - pos - HEADER < h[3]) FAIL("truncated payload at %zu", pos);
    const unsigned char *b = r.data + pos + HEADER;
    for (size_t i = 0; i < h[3]; i++)
      if (b[i] != payload_byte(tid, h[2], i))
        FAIL("thread %u message %u: payload byte %zu broken (interleaved?)", tid, h[2], i);
    next[tid]++;
    pos += HEADER + h[3];
    messages++;
  }
  CHECK(pos == total);
  CHECK(messages == THREADS * MESSAGES);
  for (unsigned t = 0; t < THREADS; t++) CHECK(next[t] == MESSAGES);

  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_runtime_shutdown(10));
  peer_stop(&p);
  rec_free(&r);
  return 0;
}
