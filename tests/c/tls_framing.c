/* Framing, pause and stats over TLS (issue 12 on top of issue 11): a TLS
 * listener whose connections cut length-prefixed frames and echo each one
 * with send_frame; a TLS client with the same framing sends 400 frames of
 * 0 to 70 000 bytes (records and reads cut them anywhere) and pauses once
 * in the middle. Each echoed frame arrives once, whole, in order; nothing
 * arrives while paused; the counters count plaintext. */
#include "common_tls.h"

#define FRAMES 400

static void echo_frame(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  if (e->type == NETEV_EVENT_DATA) {
    netev_status st = netev_connection_send_frame(c, e->data, e->data_len);
    if (st != NETEV_OK) FAIL("echo send_frame: %s", netev_status_name(st));
  }
}

typedef struct {
  pthread_mutex_t mu;
  size_t got;            /* frames received */
  size_t lens[FRAMES];
  int bad;               /* a frame that differed from what was sent */
  int paused_once;
  size_t at_pause;
  recorder r;
} client;

static size_t frame_len(size_t i) { return (i * 7919u) % 70001u; }

static void on_client(netev_connection c, const netev_event *e, void *ud) {
  client *cl = ud;
  if (e->type == NETEV_EVENT_DATA) {
    pthread_mutex_lock(&cl->mu);
    size_t i = cl->got++;
    if (i >= FRAMES || e->data_len != frame_len(i) || (e->data_len && !is_pattern(e->data, e->data_len, i)))
      cl->bad++;
    if (i == FRAMES / 2 && !cl->paused_once) {
      cl->paused_once = 1;
      cl->at_pause = cl->got;
      CHECK_OK(netev_connection_pause(c));
    }
    pthread_mutex_unlock(&cl->mu);
  }
  rec_event(&cl->r, e);
  rec_done(&cl->r);
}

static size_t got(client *cl) {
  pthread_mutex_lock(&cl->mu);
  size_t n = cl->got;
  pthread_mutex_unlock(&cl->mu);
  return n;
}

int main(void) {
  watchdog_staged("tls_framing", 120);
  netev_tls_config server = tls_server("server.pem", "server.key", NULL, NULL);
  netev_tls_config clientcfg = tls_client("ca.pem", NULL, NULL, NULL);

  netev_connection_options d;
  CHECK_OK(netev_connection_options_init(&d));
  d.tls = server;
  d.framing = NETEV_FRAMING_LENGTH_PREFIX;
  d.max_frame = 100000;
  d.on_data = echo_frame;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = &d;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  client cl;
  memset(&cl, 0, sizeof cl);
  pthread_mutex_init(&cl.mu, NULL);
  rec_init(&cl.r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &cl.r, on_client);
  o.user_data = &cl;
  o.tls = clientcfg;
  o.framing = NETEV_FRAMING_LENGTH_PREFIX;
  o.max_frame = 100000;
  o.send_buffer_limit = 64u << 20;
  netev_connection c;
  CHECK_OK(netev_connection_open("localhost", port, &o, &c));
  CHECK_OK(netev_tls_config_release(clientcfg));

  TEST_STAGE = "send frames";
  size_t sent_bytes = 0;
  unsigned char *buf = malloc(70001);
  CHECK(buf);
  for (size_t i = 0; i < FRAMES; i++) {
    size_t n = frame_len(i);
    fill_pattern(buf, n, i);
    CHECK_OK(netev_connection_send_frame(c, buf, n));
    sent_bytes += 4 + n;
  }
  free(buf);

  TEST_STAGE = "paused in the middle";
  double end = now_seconds() + 60 * test_time_factor();
  while (!cl.paused_once) {
    if (now_seconds() > end) {
      char seq[256];
      rec_sequence(&cl.r, seq, sizeof seq);
      FAIL("only %zu frames came back; events \"%s\"", got(&cl), seq);
    }
    usleep(2000);
  }
  size_t at = got(&cl);
  double quiet = now_seconds() + 0.3;
  while (now_seconds() < quiet) {
    usleep(20000);
    if (got(&cl) != at) FAIL("a frame arrived while paused");
  }
  CHECK_OK(netev_connection_resume(c));

  TEST_STAGE = "every frame back";
  end = now_seconds() + 60 * test_time_factor();
  while (got(&cl) < FRAMES) {
    if (now_seconds() > end) FAIL("only %zu of %d frames came back", got(&cl), FRAMES);
    usleep(2000);
  }
  CHECK(cl.bad == 0);
  netev_connection_stats st;
  CHECK_OK(netev_connection_stats_get(c, &st));
  /* plaintext both ways: the frames with their prefixes */
  CHECK(st.bytes_sent == sent_bytes && st.bytes_received == sent_bytes);
  CHECK(st.data_events == FRAMES);
  CHECK_OK(netev_connection_close(c));
  REC_WAIT_TERMINATED_OR_FAIL(&cl.r, 10);
  CHECK_SEQUENCE(&cl.r, "connection data* close terminate");
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_tls_config_release(server));
  CHECK_OK(netev_runtime_shutdown(5));
  rec_free(&cl.r);
  printf("tls_framing: ok\n");
  return 0;
}
