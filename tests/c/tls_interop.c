/* TLS against peers nobody here wrote, the openssl command:
 * - a netev client against `openssl s_server`: 1 MiB each way (64 KiB
 *   under valgrind), byte-exact; then the client's shutdown;
 * - a netev server (echo) against `openssl s_client`, TLS 1.3 with ALPN
 *   and SNI, and TLS 1.2: 1 MiB echoed byte-exact, the getters;
 * - truncation: s_server killed mid-stream is ERROR NETEV_ERR_TLS
 *   "truncated", never a clean END. */
#include "common_tls.h"

static void start_s_server(child *ch, uint16_t port) {
  char accept_arg[64];
  snprintf(accept_arg, sizeof accept_arg, "127.0.0.1:%u", port);
  char *argv[] = {"openssl", "s_server", "-quiet", "-naccept", "1", "-accept", accept_arg,
                  "-cert", (char *)tls_path("server.pem"), "-key",
                  (char *)tls_path("server.key"), NULL};
  child_start(ch, argv);
  wait_listening(port, 10);
}

static netev_connection open_client(xrec *x, uint16_t port, netev_tls_config cfg) {
  xrec_init(x);
  x->want_ip = "127.0.0.1";
  x->want_port = port;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, x);
  o.tls = cfg;
  o.server_name = "localhost";
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  return c;
}

static void client_vs_s_server(netev_tls_config cfg) {
  uint16_t port = free_port();
  child ch;
  start_s_server(&ch, port);
  xrec x;
  netev_connection c = open_client(&x, port, cfg);
  CHECK(rec_wait_type(&x.r, NETEV_EVENT_CONNECTION, 10));
  CHECK(strcmp(tls_prop(c, netev_connection_tls_version), "TLSv1.3") == 0);

  size_t total = (size_t)test_scale(1 << 20, 64 << 10);
  unsigned char *up = malloc(total), *down = malloc(total);
  CHECK(up && down);
  fill_pattern(up, total, 0);
  fill_pattern(down, total, 12345);
  CHECK_OK(netev_connection_send(c, up, total));
  child_write(&ch, down, total); /* s_server sends its stdin to the client */
  size_t got = child_wait_output(&ch, total, 30);
  if (got != total) FAIL("s_server received %zu of %zu bytes", got, total);
  CHECK(memcmp(ch.out, up, total) == 0);
  if (!rec_wait_bytes(&x.r, total, 30))
    FAIL("netev received %zu of %zu bytes", XREC_GET(&x, r.data_len), total);
  CHECK(x.r.data_len == total && memcmp(x.r.data, down, total) == 0);

  /* close_notify from us; s_server ends its session and exits */
  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  /* s_server answers close_notify with its own: END, then CLOSE */
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  CHECK(child_wait_eof(&ch, 10));
  CHECK_XREC_CLEAN(&x);
  CHECK_OK(netev_connection_release(c));
  child_stop(&ch, SIGTERM);
  free(up);
  free(down);
  xrec_done(&x);
}

static void truncation(netev_tls_config cfg) {
  uint16_t port = free_port();
  child ch;
  start_s_server(&ch, port);
  xrec x;
  netev_connection c = open_client(&x, port, cfg);
  CHECK(rec_wait_type(&x.r, NETEV_EVENT_CONNECTION, 10));
  unsigned char down[1000];
  fill_pattern(down, sizeof down, 0);
  child_write(&ch, down, sizeof down);
  CHECK(rec_wait_bytes(&x.r, sizeof down, 10));
  /* the peer dies: its FIN comes without close_notify */
  child_stop(&ch, SIGKILL);
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* error terminate");
  CHECK(x.r.error == NETEV_ERR_TLS);
  if (!strstr(x.message, "truncated")) FAIL("truncation: \"%s\"", x.message);
  CHECK(x.r.data_len == sizeof down && memcmp(x.r.data, down, sizeof down) == 0);
  netev_error_info info = first_error(c);
  CHECK(strcmp(info.component, "tls") == 0);
  CHECK_XREC_CLEAN(&x);
  CHECK_OK(netev_connection_release(c));
  xrec_done(&x);
}

static void server_vs_s_client(int tls12) {
  netev_tls_config scfg = tls_server("server.pem", "server.key", "h2,http/1.1", NULL);
  tls_srv s;
  tls_srv_start(&s, scfg, 0);
  char connect_arg[64];
  snprintf(connect_arg, sizeof connect_arg, "127.0.0.1:%u", s.port);
  char *argv[] = {"openssl", "s_client", "-quiet", "-connect", connect_arg, "-CAfile",
                  (char *)tls_path("ca.pem"), "-verify_return_error", "-servername",
                  "localhost", "-alpn", "h2", tls12 ? "-tls1_2" : NULL, NULL};
  child ch;
  child_start(&ch, argv);
  size_t total = (size_t)test_scale(1 << 20, 64 << 10);
  unsigned char *up = malloc(total);
  CHECK(up != NULL);
  fill_pattern(up, total, 777);
  child_write(&ch, up, total);
  size_t got = child_wait_output(&ch, total, 30);
  if (got != total) FAIL("s_client got %zu of %zu bytes back", got, total);
  CHECK(memcmp(ch.out, up, total) == 0);
  /* the server received all of it; its close_notify ends s_client */
  xrec *sx = &s.conns[0];
  CHECK(rec_wait_bytes(&sx->r, total, 10));
  CHECK(memcmp(sx->r.data, up, total) == 0);
  CHECK_OK(netev_connection_shutdown(s.ids[0]));
  CHECK(child_wait_eof(&ch, 10));
  sx = tls_srv_wait_conn(&s, 0, 10);
  /* s_client answers close_notify with its own: END, then CLOSE */
  CHECK_SEQUENCE(&sx->r, "connection data* end close terminate");
  CHECK(strcmp(s.sni[0], "localhost") == 0);
  CHECK(strcmp(s.alpn[0], "h2") == 0);
  CHECK(strcmp(s.version[0], tls12 ? "TLSv1.2" : "TLSv1.3") == 0);
  CHECK(s.peer_cert_len[0] == 0);
  CHECK_XREC_CLEAN(sx);
  int status = child_stop(&ch, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  tls_srv_stop(&s);
  CHECK_OK(netev_tls_config_release(scfg));
  free(up);
  tls_srv_free(&s);
}

int main(void) {
  watchdog_staged("tls_interop", 120);
  signal(SIGPIPE, SIG_IGN); /* writes to a child's stdin after it died */
  netev_tls_config cfg = tls_client("ca.pem", NULL, NULL, NULL);
  TEST_STAGE = "netev client vs openssl s_server";
  client_vs_s_server(cfg);
  TEST_STAGE = "truncation";
  truncation(cfg);
  TEST_STAGE = "netev server vs openssl s_client (TLS 1.3)";
  server_vs_s_client(0);
  TEST_STAGE = "netev server vs openssl s_client (TLS 1.2)";
  server_vs_s_client(1);
  CHECK_OK(netev_tls_config_release(cfg));
  TEST_STAGE = "runtime shutdown";
  CHECK_OK(netev_runtime_shutdown(10));
  printf("tls_interop ok\n");
  return 0;
}
