// netev::Dispatcher: every callback of a listener, its accepted connections
// and a client on the main thread, driven by run() after poll() on fd(), or
// by wait(); WOULD_DEADLOCK inside a callback; release and bad handles.
#include "test_util.hpp"

#include <poll.h>

#include <memory>
#include <string>
#include <thread>

using netev::ConnectionRef;
using netev::Event;

// Records the thread of every callback.
struct Threads {
  std::vector<std::thread::id> ids;  // only touched on the dispatcher's thread
  void note() { ids.push_back(std::this_thread::get_id()); }
  bool all(std::thread::id want) const {
    for (auto &id : ids)
      if (id != want) return false;
    return true;
  }
};

static void all_on_main_thread() {
  const std::thread::id main_id = std::this_thread::get_id();
  auto d = netev::Dispatcher::create();
  CHECK(d);
  int fd = d.fd();
  CHECK(fd >= 0);
  auto threads = std::make_shared<Threads>();
  auto run_status = std::make_shared<netev_status>(NETEV_OK);

  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.dispatcher = d.handle();
  lo.on_connection = [threads](const Event &, netev::Options &o) {
    threads->note();
    o.on_data = [threads](ConnectionRef c, const Event &e) {
      threads->note();
      c.send(e.data());
    };
    o.on_terminate = [threads](ConnectionRef, const Event &) { threads->note(); };
    return true;
  };
  lo.on_terminate = [threads](const Event &) { threads->note(); };
  auto listener = netev::Listener::open(0, std::move(lo));

  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  o.dispatcher = d.handle();
  netev::Dispatcher *dp = &d;  // only used inside a callback, while d lives
  t::Recorder::attach(o, rec, [threads, run_status, dp](ConnectionRef, const Event &e) {
    threads->note();
    if (e.type() == NETEV_EVENT_CONNECTION) {
      try {
        dp->run(0);  // running the dispatcher from its own callback
      } catch (const netev::Error &err) {
        *run_status = err.status();
      }
    }
  });
  auto client = netev::Connection::open("127.0.0.1", listener.port(), std::move(o));
  const std::string msg = "dispatched";
  client.send(msg);

  // The host's event loop: poll the dispatcher's descriptor, run when readable.
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::size_t ran = 0;
  while (rec->data_size() < msg.size() && std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, 100);
    CHECK(r >= 0);
    if (r > 0) ran += d.run(0);
  }
  CHECK(ran > 0);
  CHECK_EQ(rec->data, msg);
  CHECK_EQ(*run_status, NETEV_ERR_WOULD_DEADLOCK);

  // wait() runs the dispatcher's callbacks on this thread too.
  client.shutdown();
  CHECK(client.wait(20));
  while (!rec->terminated && std::chrono::steady_clock::now() < end) d.run(0.1);
  CHECK(rec->terminated);
  CHECK_EQ(rec->sequence(), std::string("connection data* end close terminate"));

  listener.reset();
  while (netev::live_callback_blocks() > 0 && std::chrono::steady_clock::now() < end) d.run(0.1);
  CHECK_EQ(netev::live_callback_blocks(), 0L);
  CHECK(threads->ids.size() >= 6);
  CHECK(threads->all(main_id));
  CHECK(rec->overlaps == 0);
}

// Releasing a dispatcher closes its connections and runs their last
// callbacks on the releasing thread; its handle is then refused.
static void release_runs_last_callbacks() {
  t::Peer peer(t::Peer::HOLD);
  const std::thread::id main_id = std::this_thread::get_id();
  auto d = netev::Dispatcher::create();
  netev_dispatcher h = d.handle();
  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  o.dispatcher = h;
  t::Recorder::attach(o, rec);
  auto c = netev::Connection::open("127.0.0.1", peer.port(), o);
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (rec->count("connection") == 0 && std::chrono::steady_clock::now() < end) d.run(0.1);
  CHECK_EQ(rec->count("connection"), 1);

  netev::Dispatcher moved = std::move(d);  // the moved-from one releases nothing
  CHECK(!d);
  d.reset();
  CHECK(moved.fd() >= 0);
  moved.reset();  // release: CLOSE and TERMINATE run here
  CHECK(rec->terminated);
  CHECK_EQ(rec->sequence(), std::string("connection close terminate"));
  for (auto &id : rec->threads) CHECK(id == main_id);

  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", peer.port(), o), NETEV_ERR_INVALID_HANDLE);
  netev::Dispatcher empty;
  CHECK_THROWS_STATUS(empty.run(0), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(empty.fd(), NETEV_ERR_INVALID_HANDLE);
}

int main() {
  t::watchdog(120);
  TEST(all_on_main_thread);
  TEST(release_runs_last_callbacks);
  t::finish();
  return 0;
}
