/* Each way a TLS handshake fails gives ERROR NETEV_ERR_TLS with a message
 * that says which, component "tls" in the errors list, no CONNECTION, no
 * DATA, exactly one TERMINATE:
 * - client side: unknown issuer (self-signed server), name mismatch,
 *   expired certificate, no common ALPN, a plaintext server, a server that
 *   closes during the handshake;
 * - server side: no common ALPN, client certificate missing, client
 *   certificate untrusted, a plaintext client;
 * and the handshake is bounded by connection_timeout. */
#include "common_tls.h"

/* Checks a connection that failed its handshake. */
static void check_failed(xrec *x, netev_connection c, const char *want, const char *side) {
  REC_WAIT_TERMINATED_OR_FAIL(&x->r, 10);
  char seq[256];
  rec_sequence(&x->r, seq, sizeof seq);
  if (strcmp(seq, "error terminate") != 0)
    FAIL("%s (%s): sequence \"%s\", message \"%s\"", want, side, seq, x->message);
  if (x->r.error != NETEV_ERR_TLS)
    FAIL("%s (%s): error %s: %s", want, side, netev_status_name(x->r.error), x->message);
  if (!strstr(x->message, want))
    FAIL("%s (%s): the message does not say it: \"%s\"", want, side, x->message);
  CHECK(x->r.data_len == 0);
  CHECK(rec_count(&x->r, NETEV_EVENT_TERMINATE) == 1);
  netev_error_info info = first_error(c);
  CHECK(info.code == NETEV_ERR_TLS);
  CHECK(strcmp(info.component, "tls") == 0);
  CHECK(strstr(info.message, want) != NULL);
  CHECK(strcmp(tls_prop(c, netev_connection_tls_version), "") == 0);
  CHECK_XREC_CLEAN(x);
}

/* A netev client with `ccfg` to a netev server with `scfg`: the client
 * must fail with `client_want` (NULL: not checked), the server's
 * connection with `server_want` (NULL: not checked). */
static void pair_case(netev_tls_config ccfg, netev_tls_config scfg, const char *name,
                      const char *client_want, const char *server_want) {
  tls_srv s;
  tls_srv_start(&s, scfg, 0);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  o.server_name = name;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", s.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "never", 5)); /* queued, never sent */
  if (client_want) {
    check_failed(&x, c, client_want, "client");
  } else {
    /* TLS 1.3: the client may complete before the server refuses it; it
     * ends in ERROR all the same, and never receives DATA */
    REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
    CHECK(rec_count(&x.r, NETEV_EVENT_ERROR) == 1);
    CHECK(x.r.error == NETEV_ERR_TLS);
    CHECK(x.r.data_len == 0);
  }
  if (server_want) {
    xrec *sx = tls_srv_wait_conn(&s, 0, 10);
    netev_connection sc = s.ids[0];
    (void)sc; /* owned by netev, gone after its TERMINATE: check the record */
    char seq[256];
    rec_sequence(&sx->r, seq, sizeof seq);
    if (strcmp(seq, "error terminate") != 0)
      FAIL("%s (server): sequence \"%s\" (%s)", server_want, seq, sx->message);
    if (sx->r.error != NETEV_ERR_TLS || !strstr(sx->message, server_want))
      FAIL("%s (server): %s \"%s\"", server_want, netev_status_name(sx->r.error), sx->message);
    CHECK(sx->r.data_len == 0);
    CHECK_XREC_CLEAN(sx);
  }
  CHECK_OK(netev_connection_release(c));
  tls_srv_stop(&s);
  xrec_done(&x);
  tls_srv_free(&s);
}

/* A plain TCP peer that answers in plaintext (or closes after reading). */
typedef struct plain_peer {
  int fd;
  uint16_t port;
  pthread_t t;
  int close_only;
} plain_peer;

static void *plain_peer_main(void *arg) {
  plain_peer *p = arg;
  int c = accept(p->fd, NULL, NULL);
  if (c < 0) return NULL;
  unsigned char buf[4096];
  ssize_t n = recv(c, buf, sizeof buf, 0); /* the ClientHello */
  (void)n;
  if (!p->close_only) {
    const char *answer = "HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    write_all(c, (const unsigned char *)answer, strlen(answer));
    while (recv(c, buf, sizeof buf, 0) > 0) {
    }
  }
  close(c);
  return NULL;
}

static void plain_peer_case(int close_only, const char *want) {
  plain_peer p;
  memset(&p, 0, sizeof p);
  p.close_only = close_only;
  p.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(p.fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(p.fd, 4) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(p.fd, (struct sockaddr *)&a, &len) == 0);
  p.port = ntohs(a.sin_port);
  CHECK(pthread_create(&p.t, NULL, plain_peer_main, &p) == 0);
  netev_tls_config ccfg = tls_client("ca.pem", NULL, NULL, NULL);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  check_failed(&x, c, want, "client");
  CHECK_OK(netev_connection_release(c));
  pthread_join(p.t, NULL);
  close(p.fd);
  CHECK_OK(netev_tls_config_release(ccfg));
  xrec_done(&x);
}

/* A plaintext client to a TLS listener. */
static void plain_client_case(void) {
  netev_tls_config scfg = tls_server("server.pem", "server.key", NULL, NULL);
  tls_srv s;
  tls_srv_start(&s, scfg, 0);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(s.port);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  const char *req = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
  CHECK(write_all(fd, (const unsigned char *)req, strlen(req)) == 0);
  xrec *sx = tls_srv_wait_conn(&s, 0, 10);
  char seq[256];
  rec_sequence(&sx->r, seq, sizeof seq);
  if (strcmp(seq, "error terminate") != 0) FAIL("plaintext client: \"%s\"", seq);
  if (sx->r.error != NETEV_ERR_TLS || !strstr(sx->message, "not TLS"))
    FAIL("plaintext client: %s \"%s\"", netev_status_name(sx->r.error), sx->message);
  CHECK(sx->r.data_len == 0);
  close(fd);
  tls_srv_stop(&s);
  CHECK_OK(netev_tls_config_release(scfg));
  tls_srv_free(&s);
}

/* A peer that accepts and never answers: the handshake times out. */
static void handshake_timeout_case(void) {
  peer p;
  peer_start(&p, PEER_HOLD, 0);
  netev_tls_config ccfg = tls_client("ca.pem", NULL, NULL, NULL);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.tls = ccfg;
  o.connection_timeout = 0.3;
  netev_connection c = 0;
  double t0 = now_seconds();
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "error terminate");
  CHECK(x.r.error == NETEV_ERR_TIMEOUT);
  CHECK(strstr(x.message, "handshake") != NULL);
  CHECK(now_seconds() - t0 >= 0.25);
  netev_error_info info = first_error(c);
  CHECK(strcmp(info.component, "tls") == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  CHECK_OK(netev_tls_config_release(ccfg));
  xrec_done(&x);
}

int main(void) {
  watchdog_staged("tls_failures", 120);
  netev_tls_config trusting = tls_client("ca.pem", NULL, NULL, NULL);

  TEST_STAGE = "unknown issuer";
  netev_tls_config self = tls_server("self.pem", "self.key", NULL, NULL);
  pair_case(trusting, self, "localhost", "unknown issuer", NULL);
  CHECK_OK(netev_tls_config_release(self));

  TEST_STAGE = "name mismatch";
  netev_tls_config other = tls_server("other.pem", "other.key", NULL, NULL);
  pair_case(trusting, other, "localhost", "name mismatch", NULL);
  CHECK_OK(netev_tls_config_release(other));

  TEST_STAGE = "expired";
  netev_tls_config expired = tls_server("expired.pem", "expired.key", NULL, NULL);
  pair_case(trusting, expired, "localhost", "expired", NULL);
  CHECK_OK(netev_tls_config_release(expired));

  TEST_STAGE = "no common ALPN";
  netev_tls_config h2 = tls_client("ca.pem", "h2", NULL, NULL);
  netev_tls_config http11 = tls_server("server.pem", "server.key", "http/1.1", NULL);
  pair_case(h2, http11, "localhost", "no common ALPN", "no common ALPN");
  CHECK_OK(netev_tls_config_release(h2));
  CHECK_OK(netev_tls_config_release(http11));

  TEST_STAGE = "client certificate missing";
  netev_tls_config mutual = tls_server("server.pem", "server.key", NULL, "ca.pem");
  pair_case(trusting, mutual, "localhost", NULL, "client certificate missing");

  TEST_STAGE = "client certificate untrusted";
  netev_tls_config rogue = tls_client("ca.pem", NULL, "rogue-client.pem", "rogue-client.key");
  pair_case(rogue, mutual, "localhost", NULL, "unknown issuer");
  CHECK_OK(netev_tls_config_release(rogue));
  CHECK_OK(netev_tls_config_release(mutual));

  TEST_STAGE = "plaintext server";
  plain_peer_case(0, "not TLS");
  TEST_STAGE = "server closes during the handshake";
  plain_peer_case(1, "during the TLS handshake");
  TEST_STAGE = "plaintext client";
  plain_client_case();
  TEST_STAGE = "handshake timeout";
  handshake_timeout_case();

  CHECK_OK(netev_tls_config_release(trusting));
  TEST_STAGE = "runtime shutdown";
  CHECK_OK(netev_runtime_shutdown(10));
  printf("tls_failures ok\n");
  return 0;
}
