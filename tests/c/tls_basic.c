/* TLS between a netev client and a netev server (a listener whose
 * connection_defaults name a server config):
 * - 1.5 MiB (64 KiB under valgrind) echoed byte-exact; CONNECTION only
 *   after the handshake, the getters (version, ALPN, SNI, peer
 *   certificate) before and after; the full event sequences on both sides
 *   when the client shuts down (close_notify is END on the other side);
 * - configs released right after use: connections keep them alive, a new
 *   open naming a released one gets NETEV_ERR_INVALID_HANDLE;
 * - mutual TLS: the server sees the client's certificate;
 * - one `tls` log line per handshake (version, cipher suite, ALPN), and no
 *   key material in any log line;
 * - a dispatcher-bound TLS client: same bytes, callbacks on the host thread. */
#include "common_tls.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int tls_lines;
static int key_lines;
static char last_tls_line[512];

static void on_log(const char *line, void *ud) {
  (void)ud;
  pthread_mutex_lock(&log_mu);
  if (strstr(line, " tls ")) {
    tls_lines++;
    snprintf(last_tls_line, sizeof last_tls_line, "%s", line);
  }
  if (strstr(line, "PRIVATE") || strstr(line, "BEGIN")) key_lines++;
  pthread_mutex_unlock(&log_mu);
}

static int get_tls_lines(void) {
  pthread_mutex_lock(&log_mu);
  int n = tls_lines;
  pthread_mutex_unlock(&log_mu);
  return n;
}

/* The DER of the PEM certificate file `name`, through openssl. */
static unsigned char *der_of(const char *name, size_t *len) {
  char cmd[1024];
  char out[600];
  snprintf(out, sizeof out, "%s.der", tls_path(name));
  snprintf(cmd, sizeof cmd, "openssl x509 -in '%s' -outform DER -out '%s'", tls_path(name), out);
  CHECK(system(cmd) == 0);
  return (unsigned char *)read_file(out, len);
}

static void echo_case(int mutual) {
  netev_tls_config scfg = tls_server("server.pem", "server.key", "h2,http/1.1",
                                     mutual ? "ca.pem" : NULL);
  tls_srv s;
  tls_srv_start(&s, scfg, 0);
  /* the listener holds it: released at once */
  CHECK_OK(netev_tls_config_release(scfg));

  netev_tls_config ccfg = mutual ? tls_client("ca.pem", "h2", "client.pem", "client.key")
                                 : tls_client("ca.pem", "h2", NULL, NULL);
  xrec x;
  xrec_init(&x);
  x.want_ip = "127.0.0.1";
  x.check_data_null = 1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  o.server_name = "localhost";
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", s.port, &o, &c));
  /* the connection holds its config: released at once */
  CHECK_OK(netev_tls_config_release(ccfg));
  CHECK_STATUS(netev_tls_config_release(ccfg), NETEV_ERR_INVALID_HANDLE);
  netev_connection c2 = 0;
  CHECK_STATUS(netev_connection_open("127.0.0.1", s.port, &o, &c2), NETEV_ERR_INVALID_HANDLE);
  CHECK(c2 == 0);

  size_t total = (size_t)test_scale(3 << 19, 64 << 10);
  unsigned char *msg = malloc(total);
  CHECK(msg != NULL);
  fill_pattern(msg, total, 0);
  /* sent before the handshake completed: queued, then sent after it */
  size_t first = 1000;
  CHECK_OK(netev_connection_send(c, msg, first));
  CHECK(rec_wait_type(&x.r, NETEV_EVENT_CONNECTION, 10));
  CHECK(strcmp(tls_prop(c, netev_connection_tls_version), "TLSv1.3") == 0);
  CHECK(strcmp(tls_prop(c, netev_connection_alpn), "h2") == 0);
  CHECK(strcmp(tls_prop(c, netev_connection_server_name), "") == 0); /* client side */
  size_t len = 0, der_len = 0;
  CHECK_OK(netev_connection_peer_certificate(c, NULL, 0, &len));
  unsigned char *der = der_of("server.pem", &der_len);
  CHECK(len == der_len);
  unsigned char *got = malloc(len);
  CHECK(got != NULL);
  size_t len2 = 0;
  CHECK_OK(netev_connection_peer_certificate(c, got, len, &len2));
  CHECK(len2 == len && memcmp(got, der, len) == 0);
  /* a short buffer: cut, the full length reported */
  unsigned char small[8] = {0};
  CHECK_OK(netev_connection_peer_certificate(c, small, sizeof small, &len2));
  CHECK(len2 == len && memcmp(small, der, sizeof small) == 0);
  free(got);
  free(der);

  /* the rest in pieces from this thread while the loop writes */
  for (size_t off = first; off < total;) {
    size_t k = total - off < 100000 ? total - off : 100000;
    CHECK_OK(netev_connection_send(c, msg + off, k));
    off += k;
  }
  if (!rec_wait_bytes(&x.r, total, 30))
    FAIL("echoed %zu of %zu bytes", XREC_GET(&x, r.data_len), total);
  CHECK(x.r.data_len == total && memcmp(x.r.data, msg, total) == 0);
  size_t buffered = 1;
  CHECK_OK(netev_connection_buffered_amount(c, &buffered));
  CHECK(buffered == 0);

  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK_XREC_CLEAN(&x);
  /* the getters still answer after the end */
  CHECK(strcmp(tls_prop(c, netev_connection_tls_version), "TLSv1.3") == 0);

  xrec *sx = tls_srv_wait_conn(&s, 0, 10);
  CHECK_SEQUENCE(&sx->r, "connection data* end close terminate");
  CHECK(sx->r.data_len == total && memcmp(sx->r.data, msg, total) == 0);
  CHECK(strcmp(s.sni[0], "localhost") == 0);
  CHECK(strcmp(s.alpn[0], "h2") == 0);
  CHECK(strcmp(s.version[0], "TLSv1.3") == 0);
  if (mutual) {
    size_t cl = 0;
    unsigned char *cder = der_of("client.pem", &cl);
    CHECK(s.peer_cert_len[0] == cl);
    free(cder);
  } else {
    CHECK(s.peer_cert_len[0] == 0);
  }
  CHECK_XREC_CLEAN(sx);
  CHECK_OK(netev_connection_release(c));
  tls_srv_stop(&s);
  free(msg);
  xrec_done(&x);
  tls_srv_free(&s);
}

/* A dispatcher-bound client: callbacks on this thread, bytes exact. */
static void dispatcher_case(void) {
  netev_tls_config scfg = tls_server("server.pem", "server.key", NULL, NULL);
  tls_srv s;
  tls_srv_start(&s, scfg, 0);
  netev_tls_config ccfg = tls_client("ca.pem", NULL, NULL, NULL);
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  xrec x;
  xrec_init(&x);
  x.r.check_thread = 1;
  x.r.expect_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  o.dispatcher = d;
  netev_connection c = 0;
  /* "localhost": the name is sent and verified */
  CHECK_OK(netev_connection_open("localhost", s.port, &o, &c));
  size_t total = (size_t)test_scale(1 << 20, 64 << 10);
  unsigned char *msg = malloc(total);
  CHECK(msg != NULL);
  fill_pattern(msg, total, 0);
  CHECK_OK(netev_connection_send(c, msg, total));
  double end = now_seconds() + 30 * test_time_factor();
  while (XREC_GET(&x, r.data_len) < total && now_seconds() < end)
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  CHECK(x.r.data_len == total && memcmp(x.r.data, msg, total) == 0);
  CHECK_OK(netev_connection_shutdown(c));
  end = now_seconds() + 10 * test_time_factor();
  while (!XREC_GET(&x, r.terminated) && now_seconds() < end)
    CHECK_OK(netev_dispatcher_run(d, 0.05, NULL));
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(XREC_GET(&x, r.wrong_thread) == 0);
  CHECK_OK(netev_connection_release(c));
  tls_srv_wait_conn(&s, 0, 10);
  CHECK(strcmp(s.sni[0], "localhost") == 0);
  tls_srv_stop(&s);
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_tls_config_release(scfg));
  CHECK_OK(netev_tls_config_release(ccfg));
  free(msg);
  xrec_done(&x);
  tls_srv_free(&s);
}

int main(void) {
  watchdog_staged("tls_basic", 120);
  CHECK_OK(netev_log_set_callback(on_log, NULL));
  TEST_STAGE = "echo";
  echo_case(0);
  CHECK(get_tls_lines() == 2); /* one per side */
  pthread_mutex_lock(&log_mu);
  if (!strstr(last_tls_line, "TLSv1.3 TLS13_") || !strstr(last_tls_line, "alpn h2"))
    FAIL("tls log line: %s", last_tls_line);
  pthread_mutex_unlock(&log_mu);
  TEST_STAGE = "mutual TLS";
  echo_case(1);
  CHECK(get_tls_lines() == 4);
  TEST_STAGE = "dispatcher";
  dispatcher_case();
  CHECK(get_tls_lines() == 6);
  CHECK(key_lines == 0);
  TEST_STAGE = "runtime shutdown";
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  CHECK_OK(netev_runtime_shutdown(10));
  printf("tls_basic ok\n");
  return 0;
}
