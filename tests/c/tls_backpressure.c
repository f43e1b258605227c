/* Flow control over TLS counts plaintext: a TLS client streams to a TLS
 * server whose dispatcher is not run, so the server stops reading at its
 * receive limit and the client's queue fills:
 * - send refuses with NETEV_ERR_BUFFER_FULL past send_buffer_limit
 *   (plaintext bytes), buffered_amount never passes it;
 * - once the host runs the server's dispatcher, every byte arrives in
 *   order, byte-exact, and the client gets one DRAIN per refusal;
 * - a peer that never reads cannot make netev hold more than the limit. */
#include "common_tls.h"

typedef struct sink {
  pthread_mutex_t mu;
  unsigned char *got;
  size_t len, cap;
  int ended;
} sink;

static void sink_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  sink *s = ud;
  pthread_mutex_lock(&s->mu);
  if (e->type == NETEV_EVENT_DATA) {
    if (s->len + e->data_len > s->cap) {
      size_t cap = s->cap ? s->cap : 65536;
      while (cap < s->len + e->data_len) cap *= 2;
      s->got = realloc(s->got, cap);
      if (!s->got) FAIL("out of memory");
      s->cap = cap;
    }
    memcpy(s->got + s->len, e->data, e->data_len);
    s->len += e->data_len;
  }
  if (e->type == NETEV_EVENT_TERMINATE) s->ended = 1;
  pthread_mutex_unlock(&s->mu);
}

static size_t sink_len(sink *s) {
  pthread_mutex_lock(&s->mu);
  size_t n = s->len;
  pthread_mutex_unlock(&s->mu);
  return n;
}

int main(void) {
  watchdog_staged("tls_backpressure", 120);
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  netev_tls_config scfg = tls_server("server.pem", "server.key", NULL, NULL);
  sink s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  netev_connection_options dflt;
  CHECK_OK(netev_connection_options_init(&dflt));
  dflt.on_data = dflt.on_terminate = sink_cb;
  dflt.user_data = &s;
  dflt.tls = scfg;
  dflt.dispatcher = d;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = &dflt;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));

  netev_tls_config ccfg = tls_client("ca.pem", NULL, NULL, NULL);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  o.server_name = "localhost";
  const size_t limit = 256 << 10;
  o.send_buffer_limit = limit;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  TEST_STAGE = "handshake";
  /* the server's handshake needs no dispatcher run: it is netev's I/O */
  CHECK(rec_wait_type(&x.r, NETEV_EVENT_CONNECTION, 10));

  TEST_STAGE = "filling";
  const size_t chunk = 64 << 10;
  const size_t most = (size_t)test_scale(64 << 20, 16 << 20);
  unsigned char *buf = malloc(chunk);
  CHECK(buf != NULL);
  size_t sent = 0;
  int refusals = 0;
  double end = now_seconds() + 30 * test_time_factor();
  /* send until refused (the server holds at most its receive limit, the
   * kernel's buffers the rest): bounded by `most` and by time */
  while (sent < most && now_seconds() < end) {
    fill_pattern(buf, chunk, sent);
    netev_status st = netev_connection_send(c, buf, chunk);
    size_t buffered = 0;
    CHECK_OK(netev_connection_buffered_amount(c, &buffered));
    if (buffered > limit) FAIL("buffered_amount %zu passed the limit %zu", buffered, limit);
    if (st == NETEV_ERR_BUFFER_FULL) {
      refusals++;
      break;
    }
    CHECK_OK(st);
    sent += chunk;
  }
  if (refusals == 0) FAIL("%zu bytes sent and never refused: the peer holds without bound", sent);
  size_t held = sink_len(&s);
  CHECK(held == 0); /* its dispatcher has not run: nothing delivered */

  TEST_STAGE = "draining";
  end = now_seconds() + 60 * test_time_factor();
  while (sink_len(&s) < sent && now_seconds() < end) {
    CHECK_OK(netev_dispatcher_run(d, 0.02, NULL));
    /* refill on DRAIN, keeping the queue near the limit */
    if (rec_count(&x.r, NETEV_EVENT_DRAIN) == refusals && sent < most) {
      fill_pattern(buf, chunk, sent);
      netev_status st = netev_connection_send(c, buf, chunk);
      if (st == NETEV_OK) {
        sent += chunk;
      } else {
        CHECK(st == NETEV_ERR_BUFFER_FULL);
        refusals++;
      }
    }
  }
  if (sink_len(&s) != sent) FAIL("the server got %zu of %zu bytes", sink_len(&s), sent);
  CHECK(is_pattern(s.got, s.len, 0));
  CHECK(rec_count(&x.r, NETEV_EVENT_DRAIN) >= 1);
  CHECK(rec_count(&x.r, NETEV_EVENT_DRAIN) <= refusals);

  TEST_STAGE = "closing";
  CHECK_OK(netev_connection_close(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection drain* close terminate");
  CHECK_OK(netev_connection_release(c));
  end = now_seconds() + 10 * test_time_factor();
  for (;;) {
    pthread_mutex_lock(&s.mu);
    int ended = s.ended;
    pthread_mutex_unlock(&s.mu);
    if (ended || now_seconds() > end) break;
    CHECK_OK(netev_dispatcher_run(d, 0.02, NULL));
  }
  CHECK(s.ended);
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_tls_config_release(scfg));
  CHECK_OK(netev_tls_config_release(ccfg));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK_OK(netev_dispatcher_release(d));
  xrec_done(&x);
  free(buf);
  free(s.got);
  pthread_mutex_destroy(&s.mu);
  printf("tls_backpressure ok (%zu bytes, %d refusals)\n", sent, refusals);
  return 0;
}
