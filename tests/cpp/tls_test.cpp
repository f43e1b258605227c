// netev::TlsConfig: a TLS echo between a netev::Listener (server config in
// its connection_defaults) and a netev::Connection (client config, SNI),
// byte-exact, the TLS getters, configs destroyed right after use, and bad
// configurations throwing netev::Error with NETEV_ERR_TLS or
// NETEV_ERR_INVALID_ARGUMENT. Certificates: tests/c/tls_certs.sh (openssl),
// run here into a temporary directory.
#include "test_util.hpp"

#include <sys/stat.h>

using netev::ConnectionRef;
using netev::Event;

static std::string certs;

static std::string path(const char *name) { return certs + "/" + name; }

static void make_certs() {
  const char *script = std::getenv("NETEV_TLS_CERTS_SCRIPT");
  CHECK(script != nullptr);
  char dir[] = "/tmp/netev-cpp-tls-XXXXXX";
  CHECK(mkdtemp(dir) != nullptr);
  certs = std::string(dir) + "/certs";
  std::string cmd = std::string("sh '") + script + "' '" + certs + "' >/dev/null 2>&1";
  CHECK(std::system(cmd.c_str()) == 0);
}

static void remove_certs() {
  std::string cmd = "rm -rf '" + certs.substr(0, certs.rfind('/')) + "'";
  CHECK(std::system(cmd.c_str()) == 0);
}

static void echo() {
  netev::TlsOptions so;
  so.cert_file = path("server.pem");
  so.key_file = path("server.key");
  so.alpn = "h2,http/1.1";
  auto server_tls = netev::TlsConfig::server(so);
  auto server_rec = std::make_shared<t::Recorder>();
  auto sni = std::make_shared<std::string>();
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults.tls = server_tls.handle();
  lo.on_connection = [server_rec, sni](const Event &, netev::Options &o) {
    t::Recorder::attach(o, server_rec, [sni](ConnectionRef c, const Event &ev) {
      if (ev.type() == NETEV_EVENT_CONNECTION) *sni = c.server_name();
      if (ev.type() == NETEV_EVENT_DATA) c.send(ev.data());
    });
    return true;
  };
  auto listener = netev::Listener::open(0, std::move(lo));
  server_tls.reset();  // the listener keeps its own reference

  netev::TlsOptions co;
  co.ca_file = path("ca.pem");
  co.alpn = "h2";
  auto client_tls = netev::TlsConfig::client(co);
  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  t::Recorder::attach(o, rec);
  o.tls = client_tls.handle();
  o.server_name = "localhost";
  auto c = netev::Connection::open("127.0.0.1", listener.port(), std::move(o));
  client_tls = netev::TlsConfig();  // moved-over: released, the connection keeps it
  std::string msg = t::pattern(300000);
  c.send(msg);
  CHECK(rec->wait_bytes(msg.size(), 20));
  CHECK(rec->data == msg);
  CHECK_EQ(c.tls_version(), std::string("TLSv1.3"));
  CHECK_EQ(c.alpn(), std::string("h2"));
  CHECK(c.peer_certificate().size() > 100);
  c.shutdown();
  CHECK(rec->wait_terminated(20));
  CHECK_EQ(rec->sequence(), std::string("connection data* end close terminate"));
  CHECK(server_rec->wait_terminated(20));
  CHECK_EQ(*sni, std::string("localhost"));
}

static void bad_configs() {
  netev::TlsOptions o;
  o.ca_file = path("missing.pem");
  CHECK_THROWS_STATUS(netev::TlsConfig::client(o), NETEV_ERR_TLS);
  netev::TlsOptions s;
  s.cert_file = path("server.pem");
  CHECK_THROWS_STATUS(netev::TlsConfig::server(s), NETEV_ERR_INVALID_ARGUMENT);
  s.key_file = path("other.key");
  CHECK_THROWS_STATUS(netev::TlsConfig::server(s), NETEV_ERR_TLS);
  // a server config on a client connection
  s.key_file = path("server.key");
  auto server = netev::TlsConfig::server(s);
  netev::Options co;
  co.tls = server.handle();
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 9, std::move(co)),
                      NETEV_ERR_INVALID_ARGUMENT);
}

int main() {
  t::watchdog(120);
  make_certs();
  TEST(echo);
  TEST(bad_configs);
  remove_certs();
  t::finish();
  return 0;
}
