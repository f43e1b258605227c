/* Send backpressure: against a peer that does not read, send refuses with
 * NETEV_ERR_BUFFER_FULL at the limit and queues nothing of the refused call;
 * one DRAIN follows once the peer reads; every byte accepted arrives once,
 * in order. A single send larger than the limit into an empty queue is taken. */
#include "common_b.h"

#define LIMIT (256 * 1024)
#define CHUNK (64 * 1024)
/* The whole stream: an odd length, so the last chunk is short. */
#define TOTAL ((size_t)16 * 1024 * 1024 + 12345)
#define MAX_SENDS 100000

/* rec_wait predicate (lock held): at least `n` DRAIN events so far. */
static int drains_at_least(recorder *r, size_t n) {
  size_t k = 0;
  for (int i = 0; i < r->n; i++) k += r->types[i] == NETEV_EVENT_DRAIN;
  return k >= n;
}

static size_t buffered(netev_connection c) {
  size_t n = 0;
  CHECK_OK(netev_connection_buffered_amount(c, &n));
  return n;
}

static void test_limit_and_drain(void) {
  peer p;
  peer_start(&p, PEER_SINK, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.send_buffer_limit = LIMIT;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));

  unsigned char *buf = malloc(TOTAL);
  CHECK(buf);
  fill_pattern(buf, TOTAL, 0);

  /* Fill the socket and the queue until a send is refused. */
  size_t off = 0;
  int refused = 0;
  for (int i = 0; i < MAX_SENDS && off + CHUNK <= TOTAL; i++) {
    size_t before = buffered(c);
    CHECK(before <= LIMIT);
    netev_status s = netev_connection_send(c, buf + off, CHUNK);
    if (s == NETEV_ERR_BUFFER_FULL) {
      /* Nothing of the refused call was queued (the queue may only shrink). */
      size_t after = buffered(c);
      CHECK(after <= before);
      CHECK(before + CHUNK > LIMIT);
      refused = 1;
      break;
    }
    CHECK_STATUS(s, NETEV_OK);
    off += CHUNK;
  }
  if (!refused) FAIL("no NETEV_ERR_BUFFER_FULL after %zu bytes to a peer that does not read", off);
  CHECK(buffered(c) <= LIMIT);
  CHECK(buffered(c) > 0);
  CHECK(has_error_entry(c, NETEV_ERR_BUFFER_FULL));
  /* A second refused send while still full: still nothing queued. */
  size_t before = buffered(c);
  CHECK_STATUS(netev_connection_send(c, buf + off, CHUNK), NETEV_ERR_BUFFER_FULL);
  CHECK(buffered(c) <= before);

  /* The peer reads nothing. Its kernel may still take some of the queue
   * (socket buffers grow as the connection warms up, more so when valgrind
   * slows the sender): DRAIN is due exactly when the queue falls to half the
   * limit, never before. The queue only shrinks, so one still above half
   * now was above half all along. */
  int early = rec_wait_type(&r, NETEV_EVENT_DRAIN, 0.3);
  if (early && buffered(c) > LIMIT / 2)
    FAIL("DRAIN came while %zu bytes were still queued (limit %d)", buffered(c), LIMIT);
  if (!early) CHECK(rec_count(&r, NETEV_EVENT_DRAIN) == 0);

  peer_resume(&p);
  CHECK(rec_wait_type(&r, NETEV_EVENT_DRAIN, 10));
  CHECK(rec_count(&r, NETEV_EVENT_DRAIN) == 1);
  CHECK(buffered(c) <= LIMIT / 2); /* DRAIN came at half the limit; no send since */
  int drains_expected = 1;

  /* The rest of the stream; each refusal waits for its DRAIN, then retries. */
  int sends = 0;
  while (off < TOTAL) {
    if (++sends > MAX_SENDS) FAIL("too many sends");
    size_t k = TOTAL - off < CHUNK ? TOTAL - off : CHUNK;
    netev_status s = netev_connection_send(c, buf + off, k);
    if (s == NETEV_ERR_BUFFER_FULL) {
      drains_expected++;
      if (!rec_wait(&r, drains_at_least, (size_t)drains_expected, 10))
        FAIL("no DRAIN after refusal %d", drains_expected);
      continue;
    }
    CHECK_STATUS(s, NETEV_OK);
    off += k;
  }
  CHECK_OK(netev_connection_shutdown(c));
  CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);

  /* The peer gets the whole stream, once, in order. */
  CHECK(peer_wait_finished(&p, 30));
  pthread_mutex_lock(&p.mu);
  size_t got = p.got_len;
  size_t common = got < TOTAL ? got : TOTAL;
  int in_order = memcmp(p.got, buf, common) == 0;
  pthread_mutex_unlock(&p.mu);
  if (got != TOTAL || !in_order)
    FAIL("peer got %zu bytes (%s), expected %zu", got, in_order ? "in order" : "out of order", TOTAL);
  CHECK(buffered(c) == 0);

  /* The peer closes its side: END, CLOSE, TERMINATE. */
  peer_stop(&p);
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection drain* end close terminate");
  CHECK(rec_count(&r, NETEV_EVENT_DRAIN) == drains_expected);
  CHECK(r.overlaps == 0 && r.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  free(buf);
  rec_free(&r);
}

#define BIG ((size_t)16 * 1024 * 1024)
#define SMALL_LIMIT (64 * 1024)

static void test_big_send_into_empty_queue(void) {
  peer p;
  peer_start(&p, PEER_SINK, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.send_buffer_limit = SMALL_LIMIT;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  unsigned char *buf = malloc(BIG);
  CHECK(buf);
  fill_pattern(buf, BIG, 0);
  CHECK(buffered(c) == 0);
  /* 256 times the limit, into an empty queue: taken. */
  CHECK_OK(netev_connection_send(c, buf, BIG));
  /* The socket cannot hold 16 MiB for a peer that does not read. */
  size_t b = buffered(c);
  CHECK(b > SMALL_LIMIT);
  /* Now the queue is not empty: even one byte is refused. */
  CHECK_STATUS(netev_connection_send(c, buf, 1), NETEV_ERR_BUFFER_FULL);
  CHECK(buffered(c) <= b);
  peer_resume(&p);
  CHECK(rec_wait_type(&r, NETEV_EVENT_DRAIN, 20));
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(peer_wait_finished(&p, 30));
  pthread_mutex_lock(&p.mu);
  int same = p.got_len == BIG && memcmp(p.got, buf, BIG) == 0;
  size_t got = p.got_len;
  pthread_mutex_unlock(&p.mu);
  if (!same) FAIL("peer got %zu bytes, expected %zu in order", got, BIG);
  peer_stop(&p);
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection drain* end close terminate");
  CHECK(rec_count(&r, NETEV_EVENT_DRAIN) == 1);
  CHECK_OK(netev_connection_release(c));
  free(buf);
  rec_free(&r);
}

int main(void) {
  watchdog(60);
  test_limit_and_drain();
  test_big_send_into_empty_queue();
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
