// netev::Connection: the event sequence, a byte-exact echo, errors as
// netev::Error, move semantics, release while open, exceptions in callbacks.
#include "test_util.hpp"

#include <memory>
#include <string>

using netev::ConnectionRef;
using netev::Event;

// Sends a message, shuts down once the echo is complete; the whole 4D-like
// sequence arrives, the wait ends, properties read after the end.
static void event_sequence() {
  t::Peer peer(t::Peer::ECHO);
  auto rec = std::make_shared<t::Recorder>();
  const std::string msg = "hello, netev from C++";
  netev::Options o;
  t::Recorder::attach(o, rec, [&msg, rec](ConnectionRef c, const Event &e) {
    if (e.type() == NETEV_EVENT_DATA && rec->data_size() >= msg.size()) c.shutdown();
    if (e.type() == NETEV_EVENT_CONNECTION) CHECK_EQ(e.ip(), std::string_view("127.0.0.1"));
  });
  o.no_delay = true;
  auto c = netev::Connection::open("127.0.0.1", peer.port(), std::move(o));
  CHECK(c);
  c.send(msg);
  CHECK(c.wait(20));
  CHECK(rec->wait_terminated(20));
  CHECK_EQ(rec->sequence(), std::string("connection data* end close terminate"));
  CHECK_EQ(rec->data, msg);
  CHECK_EQ(rec->overlaps, 0);
  CHECK_EQ(rec->after_terminate, 0);
  // Still readable after the end, until released.
  CHECK_EQ(c.address(), std::string("127.0.0.1"));
  CHECK_EQ(c.port(), peer.port());
  CHECK(c.closed());
  CHECK(c.no_delay());
  CHECK_EQ(c.listener(), netev_listener{0});
  CHECK_EQ(c.buffered_amount(), std::size_t{0});
  CHECK(c.errors().empty());
  CHECK_THROWS_STATUS(c.send("late"), NETEV_ERR_CLOSED);
  CHECK_EQ(c.try_send("late"), NETEV_ERR_CLOSED);
}

// 4 MiB of the pattern in uneven pieces, echoed back byte for byte; data()
// and bytes() see the same bytes.
static void echo_byte_exact() {
  t::Peer peer(t::Peer::ECHO);
  const std::size_t total = 4 << 20;
  const std::string all = t::pattern(total);
  auto got = std::make_shared<std::string>();
  auto views_agree = std::make_shared<std::atomic<bool>>(true);
  netev::Options o;
  o.on_data = [got, views_agree, total](ConnectionRef c, const Event &e) {
    netev::Bytes b = e.bytes();
    std::string_view d = e.data();
    if (b.size != d.size() || (b.size && static_cast<const void *>(b.data) != d.data()))
      *views_agree = false;
    std::size_t i = 0;
    for (std::uint8_t x : b)
      if (x != static_cast<std::uint8_t>(d[i++])) *views_agree = false;
    got->append(d);
    if (got->size() >= total) c.shutdown();
  };
  auto c = netev::Connection::open("127.0.0.1", peer.port(), std::move(o));
  std::size_t off = 0, piece = 1;
  while (off < total) {
    std::size_t n = std::min(piece, total - off);
    netev_status st = c.try_send(all.data() + off, n);
    if (st == NETEV_ERR_BUFFER_FULL) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    CHECK_EQ(st, NETEV_OK);
    off += n;
    piece = piece * 3 % 100003 + 1;
  }
  CHECK(c.wait(60));
  CHECK(t::wait_until([&] { return c.closed(); }, 20));
  // The wait ended at shutdown, inside the last DATA callback: its append
  // is done, as callbacks of one connection run one at a time and the
  // shutdown came last. Let TERMINATE pass before reading.
  CHECK(t::wait_until([&] { return netev::live_callback_blocks() == 0; }, 20));
  CHECK_EQ(got->size(), total);
  CHECK(*got == all);
  CHECK(*views_agree);
}

// Bad input throws netev::Error with netev's status and message; no
// callback block is left behind by a refused open.
static void errors() {
  long before = netev::live_callback_blocks();
  netev::Options o;
  o.on_terminate = [](ConnectionRef, const Event &) { FAIL("callback of a refused open"); };
  try {
    netev::Connection::open("127.0.0.1", 0, o);
    FAIL("port 0 accepted");
  } catch (const netev::Error &e) {
    CHECK_EQ(e.status(), NETEV_ERR_INVALID_ARGUMENT);
    CHECK_EQ(std::string(e.status_name()), std::string("NETEV_ERR_INVALID_ARGUMENT"));
    CHECK(!e.message().empty());
    CHECK(std::string(e.what()).find("NETEV_ERR_INVALID_ARGUMENT") != std::string::npos);
    CHECK(std::string(e.what()).find(e.message()) != std::string::npos);
  }
  CHECK_THROWS_STATUS(netev::Connection::open("", 7, o), NETEV_ERR_INVALID_ARGUMENT);
  netev::Options bad = o;
  bad.dispatcher = 0xdead0001;
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 7, bad), NETEV_ERR_INVALID_HANDLE);
  bad = o;
  bad.idle_timeout = -1;
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 7, bad), NETEV_ERR_INVALID_ARGUMENT);
  // A NUL would cut the text short (another host than the caller's): refused.
  const std::string nul_text("127.0.0.1\0.evil", 15);
  CHECK_THROWS_STATUS(netev::Connection::open(nul_text, 7, o), NETEV_ERR_INVALID_ARGUMENT);
  bad = o;
  bad.bind_address = nul_text;
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 7, bad), NETEV_ERR_INVALID_ARGUMENT);
  bad = o;
  bad.server_name = nul_text;
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 7, bad), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_EQ(netev::live_callback_blocks(), before);

  // A stale or empty handle.
  ConnectionRef stale(0xdead0002);
  CHECK_THROWS_STATUS(stale.send("x"), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(stale.port(), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(stale.retain(), NETEV_ERR_INVALID_HANDLE);
  netev::Connection empty;
  CHECK(!empty);
  CHECK_THROWS_STATUS(empty.wait(0), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(empty.address(), NETEV_ERR_INVALID_HANDLE);

  // A refused connect is no exception: ERROR then TERMINATE, and the errors list.
  int port;
  {
    t::Peer p(t::Peer::HOLD);  // a port surely free once this closes
    port = p.port();
  }
  auto rec = std::make_shared<t::Recorder>();
  netev::Options r;
  t::Recorder::attach(r, rec);
  auto c = netev::Connection::open("127.0.0.1", static_cast<std::uint16_t>(port), r);
  CHECK(c.wait(20));
  CHECK(rec->wait_terminated(20));
  CHECK_EQ(rec->sequence(), std::string("error terminate"));
  CHECK_EQ(rec->error, NETEV_ERR_CONNECTION_REFUSED);
  CHECK(!rec->error_message.empty());
  auto errs = c.errors();
  CHECK_EQ(errs.size(), std::size_t{1});
  CHECK_EQ(errs[0].code, NETEV_ERR_CONNECTION_REFUSED);
  CHECK(!errs[0].message.empty());
  CHECK(!errs[0].component.empty());

  // wait() inside a callback on netev's thread: WOULD_DEADLOCK, as an exception.
  t::Peer peer(t::Peer::ECHO);
  auto status = std::make_shared<std::atomic<int>>(-1);
  netev::Options w;
  w.on_connection = [status](ConnectionRef c2, const Event &) {
    try {
      c2.wait(1);
      *status = NETEV_OK;
    } catch (const netev::Error &e) {
      *status = e.status();
    }
    c2.shutdown();
  };
  auto c2 = netev::Connection::open("127.0.0.1", peer.port(), w);
  CHECK(c2.wait(20));
  CHECK_EQ(status->load(), static_cast<int>(NETEV_ERR_WOULD_DEADLOCK));
}

// A moved-from Connection holds 0 and releases nothing; move assignment
// releases what the target held.
static void move_semantics() {
  t::Peer peer(t::Peer::ECHO);
  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  t::Recorder::attach(o, rec);
  netev::Connection b;
  netev_connection h;
  {
    auto a = netev::Connection::open("127.0.0.1", peer.port(), o);
    h = a.handle();
    CHECK(h != 0);
    b = std::move(a);
    CHECK(!a);
    CHECK_EQ(a.handle(), netev_connection{0});
    netev::Connection c(std::move(b));
    b = std::move(c);
    CHECK_EQ(c.handle(), netev_connection{0});
    a.reset();  // empty: nothing
  }             // a and c destroyed: nothing released
  CHECK_EQ(b.handle(), h);
  CHECK(rec->wait_type("connection", 20));
  b.send("still mine");
  CHECK(rec->wait_bytes(10, 20));
  CHECK_EQ(rec->data, std::string("still mine"));
  CHECK(!b.closed());
  CHECK_EQ(rec->count("terminate"), 0);

  // Move-assigning over b releases b's connection: closed, TERMINATE once.
  t::Peer peer2(t::Peer::HOLD);
  b = netev::Connection::open("127.0.0.1", peer2.port());
  CHECK(rec->wait_terminated(20));
  CHECK_EQ(rec->count("terminate"), 1);
  // The handle goes invalid once that TERMINATE returned.
  CHECK(t::wait_until(
      [h] {
        try {
          ConnectionRef(h).port();
          return false;
        } catch (const netev::Error &e) {
          CHECK_EQ(e.status(), NETEV_ERR_INVALID_HANDLE);
          return true;
        }
      },
      20));
  CHECK(b.handle() != h);
  // detach gives up ownership; adopt takes it back.
  netev_connection raw = b.detach();
  CHECK(!b);
  netev::Connection back = netev::Connection::adopt(raw);
  CHECK_EQ(back.port(), peer2.port());
}

// Counts live copies of what the callbacks capture.
struct Tracked {
  static std::atomic<int> live;
  Tracked() { live++; }
  Tracked(const Tracked &) { live++; }
  ~Tracked() { live--; }
};
std::atomic<int> Tracked::live{0};

// Destroying a Connection while it is open: CLOSE and TERMINATE still reach
// the callbacks, once, and the callbacks (and their captures) are freed
// once, after TERMINATE, though the C++ object is long gone.
static void release_while_open() {
  t::Peer peer(t::Peer::HOLD);
  auto rec = std::make_shared<t::Recorder>();
  long blocks = netev::live_callback_blocks();
  {
    Tracked tracked;
    netev::Options o;
    t::Recorder::attach(o, rec);
    o.on_terminate = [rec, tracked](ConnectionRef c, const Event &e) {
      rec->record(e);
      CHECK(Tracked::live >= 1);  // the captures are alive during TERMINATE
      CHECK(c.port() != 0);  // the handle is usable in the last callbacks
    };
    auto c = netev::Connection::open("127.0.0.1", peer.port(), std::move(o));
    CHECK_EQ(netev::live_callback_blocks(), blocks + 1);
    CHECK(rec->wait_type("connection", 20));
  }  // release while open
  CHECK(rec->wait_terminated(20));
  CHECK(t::wait_until([&] { return netev::live_callback_blocks() == blocks; }, 20));
  CHECK(t::wait_until([] { return Tracked::live == 0; }, 20));
  CHECK_EQ(rec->sequence(), std::string("connection close terminate"));
  CHECK_EQ(rec->count("terminate"), 1);
}

// An exception escaping a callback neither crashes nor unwinds into netev:
// the handler sees it and the connection is closed.
static void callback_exceptions() {
  auto previous = netev::set_callback_exception_handler(&t::counting_handler);
  t::caught_exceptions() = 0;
  t::Peer peer(t::Peer::ECHO);
  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  t::Recorder::attach(o, rec, [](ConnectionRef, const Event &e) {
    if (e.type() == NETEV_EVENT_DATA) throw std::runtime_error("thrown from on_data");
    if (e.type() == NETEV_EVENT_TERMINATE) throw 42;  // not even a std::exception
  });
  auto c = netev::Connection::open("127.0.0.1", peer.port(), o);
  c.send("boom");
  CHECK(c.wait(20));
  CHECK(rec->wait_terminated(20));
  CHECK(t::wait_until([] { return t::caught_exceptions() == 2; }, 20));
  CHECK_EQ(rec->count("close"), 1);
  CHECK_EQ(rec->count("terminate"), 1);
  CHECK(c.closed());
  netev::set_callback_exception_handler(previous);
}

// wait() returns false when the time runs out.
static void wait_timeout() {
  t::Peer peer(t::Peer::HOLD);
  auto c = netev::Connection::open("127.0.0.1", peer.port());
  CHECK(!c.wait(0.2));
  CHECK(!c.closed());
  c.close();
  CHECK(c.wait(20));
}

int main() {
  t::watchdog(120);
  std::printf("netev %s\n", netev::Runtime::version());
  TEST(event_sequence);
  TEST(echo_byte_exact);
  TEST(errors);
  TEST(move_semantics);
  TEST(release_while_open);
  TEST(callback_exceptions);
  TEST(wait_timeout);
  t::finish();
  return 0;
}
