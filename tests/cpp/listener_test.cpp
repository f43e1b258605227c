// netev::Listener with netev::Connection clients: echo through the wrapper,
// per-connection callbacks from on_connection, an accepted connection
// retained past its end, defaults copied per connection, rejection,
// exceptions in on_connection, errors.
#include "test_util.hpp"

#include <memory>
#include <mutex>
#include <string>
#include <vector>

using netev::ConnectionRef;
using netev::Event;

// The server's shared state: what a test inspects after the fact.
struct Server {
  std::mutex mu;
  std::vector<netev::Connection> retained;  // accepted connections we keep
  std::vector<std::string> peers;           // "ip:port" seen by on_connection
  std::shared_ptr<t::Recorder> rec = std::make_shared<t::Recorder>();
  std::atomic<int> terminated{0};
};

// A client sends a few messages through a wrapper listener that echoes; the
// accepted connection is retained (Connection::retain) in its own
// on_connection and still readable after it ended.
static void echo_and_retain() {
  auto srv = std::make_shared<Server>();
  auto listener_terminated = std::make_shared<std::atomic<int>>(0);
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.on_connection = [srv](const Event &e, netev::Options &o) {
    CHECK_EQ(e.type(), NETEV_EVENT_CONNECTION);
    CHECK(e.connection_handle() != 0);
    {
      std::lock_guard<std::mutex> g(srv->mu);
      srv->peers.push_back(std::string(e.ip()) + ":" + std::to_string(e.port()));
    }
    t::Recorder::attach(o, srv->rec, [srv](ConnectionRef c, const Event &ev) {
      switch (ev.type()) {
        case NETEV_EVENT_CONNECTION: {
          auto kept = c.retain();  // now valid past TERMINATE
          std::lock_guard<std::mutex> g(srv->mu);
          srv->retained.push_back(std::move(kept));
          break;
        }
        case NETEV_EVENT_DATA:
          c.send(ev.data());  // send copies the borrowed bytes
          break;
        case NETEV_EVENT_TERMINATE:
          srv->terminated++;
          break;
        default:
          break;
      }
    });
    o.no_delay = true;
    return true;
  };
  lo.on_terminate = [listener_terminated](const Event &e) {
    CHECK_EQ(e.type(), NETEV_EVENT_TERMINATE);
    (*listener_terminated)++;
  };
  auto listener = netev::Listener::open(0, std::move(lo));
  std::uint16_t port = listener.port();
  CHECK(port != 0);

  auto client_rec = std::make_shared<t::Recorder>();
  netev::Options co;
  t::Recorder::attach(co, client_rec);
  auto client = netev::Connection::open("127.0.0.1", port, std::move(co));
  std::string sent;
  for (int i = 0; i < 5; i++) {
    std::string m = "message " + std::to_string(i) + "\n";
    client.send(m);
    sent += m;
    CHECK(client_rec->wait_bytes(sent.size(), 20));  // one round trip at a time
  }
  client.shutdown();
  CHECK(client.wait(20));
  CHECK(client_rec->wait_terminated(20));
  CHECK(srv->rec->wait_terminated(20));
  CHECK_EQ(client_rec->data, sent);
  CHECK_EQ(srv->rec->data, sent);
  CHECK_EQ(client_rec->sequence(), std::string("connection data* end close terminate"));
  CHECK_EQ(srv->rec->sequence(), std::string("connection data* end close terminate"));
  // The recorder sees TERMINATE before the callback's own count runs.
  CHECK(t::wait_until([srv] { return srv->terminated.load() >= 1; }, 20));
  CHECK_EQ(srv->terminated.load(), 1);

  // The retained accepted connection: still readable after its end.
  std::lock_guard<std::mutex> g(srv->mu);
  CHECK_EQ(srv->retained.size(), std::size_t{1});
  netev::Connection &acc = srv->retained[0];
  CHECK_EQ(acc.address(), std::string("127.0.0.1"));
  CHECK_EQ(acc.listener(), listener.handle());
  CHECK(acc.closed());
  CHECK(acc.no_delay());
  CHECK_EQ(srv->peers.size(), std::size_t{1});
  CHECK_EQ(srv->peers[0], "127.0.0.1:" + std::to_string(acc.port()));
  netev_connection h = acc.handle();
  srv->retained.clear();  // release: the handle is gone
  CHECK_THROWS_STATUS(ConnectionRef(h).port(), NETEV_ERR_INVALID_HANDLE);

  listener.terminate();  // the port is free now
  CHECK(t::wait_until([&] { return listener_terminated->load() == 1; }, 20));
  CHECK_EQ(listener.port(), port);  // readable until released
  listener.reset();
  CHECK(!listener);
  CHECK_EQ(listener_terminated->load(), 1);
}

// Without on_connection every accepted connection gets connection_defaults:
// its own copy of the callbacks, freed after its own TERMINATE.
static void defaults_per_connection() {
  auto accepted = std::make_shared<std::atomic<int>>(0);
  auto ended = std::make_shared<std::atomic<int>>(0);
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults.on_connection = [accepted](ConnectionRef, const Event &) { (*accepted)++; };
  lo.connection_defaults.on_data = [](ConnectionRef c, const Event &e) { c.send(e.data()); };
  lo.connection_defaults.on_terminate = [ended](ConnectionRef, const Event &) { (*ended)++; };
  long blocks = netev::live_callback_blocks();
  auto listener = netev::Listener::open(0, std::move(lo));
  CHECK_EQ(netev::live_callback_blocks(), blocks + 1);  // the listener's

  const int n = 8;
  std::vector<std::shared_ptr<t::Recorder>> recs;
  std::vector<netev::Connection> clients;
  for (int i = 0; i < n; i++) {
    recs.push_back(std::make_shared<t::Recorder>());
    netev::Options o;
    t::Recorder::attach(o, recs.back());
    clients.push_back(netev::Connection::open("127.0.0.1", listener.port(), std::move(o)));
    clients.back().send("client " + std::to_string(i));
    clients.back().shutdown();
  }
  for (int i = 0; i < n; i++) {
    CHECK(clients[i].wait(20));
    CHECK(recs[i]->wait_terminated(20));
    CHECK_EQ(recs[i]->data, "client " + std::to_string(i));
  }
  CHECK(t::wait_until([&] { return ended->load() == n; }, 20));
  CHECK_EQ(accepted->load(), n);
  clients.clear();
  // Only the listener's block is left once every connection ended.
  CHECK(t::wait_until([&] { return netev::live_callback_blocks() == blocks + 1; }, 20));
  listener.reset();
  CHECK(t::wait_until([&] { return netev::live_callback_blocks() == blocks; }, 20));
}

// on_connection returning false or throwing rejects: the client sees the
// connection end at once.
static void reject_and_throw() {
  auto previous = netev::set_callback_exception_handler(&t::counting_handler);
  t::caught_exceptions() = 0;
  auto offers = std::make_shared<std::atomic<int>>(0);
  auto server_events = std::make_shared<std::atomic<int>>(0);
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults.on_terminate = [server_events](ConnectionRef, const Event &) {
    (*server_events)++;
  };
  lo.on_connection = [offers](const Event &, netev::Options &) -> bool {
    if ((*offers)++ == 0) return false;
    throw std::logic_error("thrown from the listener's on_connection");
  };
  auto listener = netev::Listener::open(0, std::move(lo));
  for (int i = 0; i < 2; i++) {
    auto rec = std::make_shared<t::Recorder>();
    netev::Options o;
    t::Recorder::attach(o, rec);
    auto c = netev::Connection::open("127.0.0.1", listener.port(), std::move(o));
    CHECK(c.wait(20));
    CHECK(rec->wait_terminated(20));
    std::string seq = rec->sequence();
    // Closed by the server before or after the client saw it established.
    CHECK(seq == "connection end close terminate" || seq == "connection close terminate" ||
          seq == "connection error terminate" || seq == "error terminate");
  }
  CHECK_EQ(offers->load(), 2);
  CHECK_EQ(t::caught_exceptions().load(), 1);
  CHECK_EQ(server_events->load(), 0);  // never started
  netev::set_callback_exception_handler(previous);
}

// Listener errors are netev::Error with netev's status.
static void listener_errors() {
  auto a = netev::Listener::open(0, [] {
    netev::ListenerOptions o;
    o.bind_address = "127.0.0.1";
    return o;
  }());
  long blocks = netev::live_callback_blocks();
  netev::ListenerOptions same;
  same.bind_address = "127.0.0.1";
  same.on_terminate = [](const Event &) { FAIL("callback of a refused listener"); };
  CHECK_THROWS_STATUS(netev::Listener::open(a.port(), same), NETEV_ERR_ADDRESS_IN_USE);
  netev::ListenerOptions bad;
  bad.bind_address = "not an address";
  CHECK_THROWS_STATUS(netev::Listener::open(0, bad), NETEV_ERR_INVALID_ARGUMENT);
  bad = netev::ListenerOptions();
  bad.dispatcher = 0xdead0003;
  CHECK_THROWS_STATUS(netev::Listener::open(0, bad), NETEV_ERR_INVALID_HANDLE);
  bad = netev::ListenerOptions();
  bad.connection_defaults.keepalive = -5;
  CHECK_THROWS_STATUS(netev::Listener::open(0, bad), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_EQ(netev::live_callback_blocks(), blocks);  // refused: the blocks were freed
  CHECK(a.errors().empty());

  // Move: the moved-from listener releases nothing.
  netev::Listener b = std::move(a);
  CHECK(!a);
  a.reset();
  CHECK(b.port() != 0);
  netev::Listener empty;
  CHECK_THROWS_STATUS(empty.port(), NETEV_ERR_INVALID_HANDLE);
}

int main() {
  t::watchdog(120);
  TEST(echo_and_retain);
  TEST(defaults_per_connection);
  TEST(reject_and_throw);
  TEST(listener_errors);
  t::finish();
  return 0;
}
