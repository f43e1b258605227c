/* Bad input to the TLS API never crashes and says what is wrong:
 * - options: NULL, bad sizes, bools that are not 0 or 1;
 * - configs: missing pieces, both file and PEM, unreadable files, bad
 *   PEM, a key that does not match its certificate (and the key never in
 *   the message), require_client_cert without CAs, insecure_skip_verify on
 *   a server, a bad ALPN list; PEM in memory works as files do;
 * - handles: NULL out-pointers, garbage, 0, released, of another kind, a
 *   server config on a client and a client config on a listener;
 * - the getters on plain connections and with NULL arguments;
 * - bad framing and bind fields are refused. */
#include "common_tls.h"

static char last[1024];

static const char *last_error(void) {
  netev_last_error_message(last, sizeof last);
  return last;
}

/* Creates with `o` (client or server) and expects `want`, with `says` in
 * the message (NULL: not checked). */
static void expect(int server, const netev_tls_options *o, netev_status want, const char *says) {
  netev_tls_config c = 12345;
  netev_status got = server ? netev_tls_server_config_create(o, &c)
                            : netev_tls_client_config_create(o, &c);
  if (got != want)
    FAIL("%s config: %s, expected %s (%s)", server ? "server" : "client", netev_status_name(got),
         netev_status_name(want), last_error());
  if (want != NETEV_OK) {
    CHECK(c == 12345); /* nothing written */
    const char *m = last_error();
    if (says && !strstr(m, says)) FAIL("the message does not say \"%s\": %s", says, m);
    if (strstr(m, "PRIVATE KEY") || strstr(m, "MIG")) FAIL("key material in: %s", m);
  } else {
    CHECK_OK(netev_tls_config_release(c));
  }
}

int main(void) {
  watchdog_staged("tls_bad_input", 60);
  netev_tls_options o;
  netev_tls_config c = 0;

  TEST_STAGE = "options";
  CHECK_STATUS(netev_tls_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_tls_options_init_sized(&o, 3), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_tls_options_init(&o));
  CHECK(o.size == sizeof o && o.ca_file == NULL && o.alpn == NULL && !o.insecure_skip_verify);
  CHECK_STATUS(netev_tls_client_config_create(NULL, &c), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_tls_client_config_create(&o, NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_tls_server_config_create(NULL, &c), NETEV_ERR_NULL_ARGUMENT);
  o.size = 0;
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "size");
  CHECK_OK(netev_tls_options_init(&o));
  memset(&o.tls13_only, 7, 1);
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "tls13_only");

  TEST_STAGE = "client configs";
  CHECK_OK(netev_tls_options_init(&o));
  o.ca_file = tls_path("ca.pem");
  expect(0, &o, NETEV_OK, NULL);
  o.tls13_only = true;
  o.alpn = "h2,http/1.1";
  expect(0, &o, NETEV_OK, NULL);
  o.alpn = "h2,,x";
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "alpn");
  o.alpn = NULL;
  o.ca_file = tls_path("missing.pem");
  expect(0, &o, NETEV_ERR_TLS, "missing.pem");
  o.ca_file = tls_path("server.key"); /* a key, no certificate in it */
  expect(0, &o, NETEV_ERR_TLS, "no certificate");
  o.ca_file = "\xff\xfe";
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "UTF-8");
  o.ca_file = tls_path("ca.pem");
  char *ca = read_file(tls_path("ca.pem"), NULL);
  o.ca_pem = ca; /* both: their union */
  expect(0, &o, NETEV_OK, NULL);
  o.ca_file = NULL;
  expect(0, &o, NETEV_OK, NULL);
  o.ca_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
  expect(0, &o, NETEV_ERR_TLS, "bad PEM");
  o.ca_pem = ca;
  o.cert_file = tls_path("client.pem");
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "private key");
  o.key_file = tls_path("client.key");
  expect(0, &o, NETEV_OK, NULL);
  o.key_file = tls_path("other.key");
  expect(0, &o, NETEV_ERR_TLS, "does not match");
  o.cert_file = NULL;
  o.key_file = tls_path("client.key");
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "certificate");
  o.key_file = NULL;
  o.require_client_cert = true;
  expect(0, &o, NETEV_ERR_INVALID_ARGUMENT, "require_client_cert");
  o.require_client_cert = false;
  o.insecure_skip_verify = true;
  o.ca_pem = NULL;
  expect(0, &o, NETEV_OK, NULL);

  TEST_STAGE = "server configs";
  CHECK_OK(netev_tls_options_init(&o));
  expect(1, &o, NETEV_ERR_INVALID_ARGUMENT, "certificate");
  o.cert_file = tls_path("server.pem");
  expect(1, &o, NETEV_ERR_INVALID_ARGUMENT, "private key");
  o.key_file = tls_path("server.key");
  expect(1, &o, NETEV_OK, NULL);
  char *cert = read_file(tls_path("server.pem"), NULL);
  char *key = read_file(tls_path("server.key"), NULL);
  o.cert_pem = cert;
  expect(1, &o, NETEV_ERR_INVALID_ARGUMENT, "cert_file and cert_pem");
  o.cert_file = NULL;
  o.key_file = NULL;
  o.key_pem = key;
  expect(1, &o, NETEV_OK, NULL);
  /* a key that is not a key, and a mismatched one: the key never shows */
  o.key_pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";
  expect(1, &o, NETEV_ERR_TLS, "private key");
  o.key_pem = NULL;
  o.key_file = tls_path("other.key");
  expect(1, &o, NETEV_ERR_TLS, "does not match");
  o.key_file = tls_path("server.key");
  o.require_client_cert = true;
  expect(1, &o, NETEV_ERR_INVALID_ARGUMENT, "ca_file");
  o.ca_file = tls_path("ca.pem");
  expect(1, &o, NETEV_OK, NULL);
  o.insecure_skip_verify = true;
  expect(1, &o, NETEV_ERR_INVALID_ARGUMENT, "insecure_skip_verify");

  TEST_STAGE = "handles";
  CHECK_STATUS(netev_tls_config_release(0), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_tls_config_release(0xdeadbeefcafeULL), NETEV_ERR_INVALID_HANDLE);
  netev_dispatcher d = 0;
  CHECK_OK(netev_dispatcher_create(&d));
  CHECK_STATUS(netev_tls_config_release(d), NETEV_ERR_INVALID_HANDLE); /* another kind */
  netev_tls_config client = tls_client("ca.pem", NULL, NULL, NULL);
  netev_tls_config server = tls_server("server.pem", "server.key", NULL, NULL);
  CHECK_STATUS(netev_dispatcher_release(client), NETEV_ERR_INVALID_HANDLE);

  netev_connection_options co;
  CHECK_OK(netev_connection_options_init(&co));
  netev_connection conn = 0;
  co.tls = server;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  CHECK(strstr(last_error(), "server") != NULL);
  co.tls = d;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_HANDLE);
  co.tls = 0xdeadbeefcafeULL;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_HANDLE);
  co.tls = client;
  co.server_name = "not a name!";
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  co.server_name = "\xff";
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  co.server_name = NULL;
  CHECK(conn == 0);

  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.tls = client;
  lo.connection_defaults = &defaults;
  netev_listener l = 0;
  CHECK_STATUS(netev_listener_open(0, &lo, &l), NETEV_ERR_INVALID_ARGUMENT);
  defaults.tls = 0xdeadbeefcafeULL;
  CHECK_STATUS(netev_listener_open(0, &lo, &l), NETEV_ERR_INVALID_HANDLE);
  CHECK(l == 0);

  /* released: refused by open, and by a second release */
  CHECK_OK(netev_tls_config_release(server));
  CHECK_STATUS(netev_tls_config_release(server), NETEV_ERR_INVALID_HANDLE);
  defaults.tls = server;
  CHECK_STATUS(netev_listener_open(0, &lo, &l), NETEV_ERR_INVALID_HANDLE);

  TEST_STAGE = "bad framing and bind fields";
  CHECK_OK(netev_connection_options_init(&co));
  co.bind_address = "not-an-ip";
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  CHECK(strstr(last_error(), "bind_address") != NULL);
  co.bind_address = NULL;
  co.framing = 1; /* a delimiter is missing */
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  co.framing = 3;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  co.framing = 2;
  co.length_prefix_bytes = 3;
  CHECK_STATUS(netev_connection_open("127.0.0.1", 9, &co, &conn), NETEV_ERR_INVALID_ARGUMENT);
  TEST_STAGE = "getters";
  peer p;
  peer_start(&p, PEER_HOLD, 0);
  CHECK_OK(netev_connection_options_init(&co));
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &co, &conn));
  char buf[64];
  size_t needed = 99;
  CHECK_OK(netev_connection_tls_version(conn, buf, sizeof buf, &needed));
  CHECK(needed == 0 && buf[0] == 0);
  CHECK_OK(netev_connection_alpn(conn, NULL, 0, &needed));
  CHECK(needed == 0);
  CHECK_OK(netev_connection_server_name(conn, buf, sizeof buf, &needed));
  CHECK(needed == 0);
  unsigned char der[4] = {9, 9, 9, 9};
  CHECK_OK(netev_connection_peer_certificate(conn, der, sizeof der, &needed));
  CHECK(needed == 0 && der[0] == 9);
  CHECK_STATUS(netev_connection_tls_version(conn, buf, sizeof buf, NULL),
               NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_connection_peer_certificate(conn, NULL, 4, &needed),
               NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_connection_alpn(0, buf, sizeof buf, &needed), NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_server_name(client, buf, sizeof buf, &needed),
               NETEV_ERR_INVALID_HANDLE);
  CHECK_STATUS(netev_connection_peer_certificate(d, der, sizeof der, &needed),
               NETEV_ERR_INVALID_HANDLE);
  CHECK_OK(netev_connection_release(conn));
  peer_stop(&p);

  CHECK_OK(netev_tls_config_release(client));
  CHECK_OK(netev_dispatcher_release(d));
  free(ca);
  free(cert);
  free(key);
  TEST_STAGE = "runtime shutdown";
  CHECK_OK(netev_runtime_shutdown(10));
  printf("tls_bad_input ok\n");
  return 0;
}
