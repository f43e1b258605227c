// cpp_echo: netev from C++ with netev.hpp. A listener on 127.0.0.1 echoes
// every byte; a client sends a few lines through it, one round trip at a
// time, then shuts down and waits for the end.
//
//   c++ -std=c++17 -I include examples-c/cpp_echo.cpp -L target/release -lnetev -pthread
#include <netev.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

// What the client's callbacks share with main. Held by shared_ptr: the
// callbacks may outlive any one scope of main (they run until TERMINATE).
struct Client {
  std::mutex mu;
  std::condition_variable cv;
  std::string received;
  bool ended = false;
};

static int run() {
  {
    // The server: each accepted connection echoes what it receives. Callbacks
    // run on netev's I/O threads; send copies the borrowed bytes.
    netev::ListenerOptions lo;
    lo.bind_address = "127.0.0.1";
    lo.on_connection = [](const netev::Event &ev, netev::Options &o) {
      std::printf("server: connection from %.*s:%u\n", static_cast<int>(ev.ip().size()),
                  ev.ip().data(), static_cast<unsigned>(ev.port()));
      o.no_delay = true;
      o.on_data = [](netev::ConnectionRef c, const netev::Event &e) {
        if (c.try_send(e.data()) == NETEV_ERR_BUFFER_FULL) c.close();  // a client that never reads
      };
      o.on_shutdown = [](netev::ConnectionRef, const netev::Event &) {
        std::printf("server: connection closed\n");
      };
      return true;  // false would reject it
    };
    netev::Listener listener = netev::Listener::open(0, std::move(lo));
    std::printf("server: listening on 127.0.0.1:%u\n", static_cast<unsigned>(listener.port()));

    // The client.
    auto state = std::make_shared<Client>();
    netev::Options co;
    co.no_delay = true;
    co.on_connection = [](netev::ConnectionRef c, const netev::Event &) {
      std::printf("client: connected to %s:%u\n", c.address().c_str(),
                  static_cast<unsigned>(c.port()));
    };
    co.on_data = [state](netev::ConnectionRef, const netev::Event &e) {
      std::lock_guard<std::mutex> g(state->mu);
      state->received.append(e.data());  // the event is borrowed: copy
      state->cv.notify_all();
    };
    co.on_error = [](netev::ConnectionRef, const netev::Event &e) {
      std::printf("client: error %s: %.*s\n", netev_status_name(e.error()),
                  static_cast<int>(e.message().size()), e.message().data());
    };
    co.on_terminate = [state](netev::ConnectionRef, const netev::Event &) {
      std::lock_guard<std::mutex> g(state->mu);
      state->ended = true;
      state->cv.notify_all();
    };
    netev::Connection client = netev::Connection::open("127.0.0.1", listener.port(), std::move(co));

    std::size_t expected = 0;
    for (const char *line : {"hello", "from C++", "through netev"}) {
      std::string msg = std::string(line) + "\n";
      client.send(msg);  // queued until connected
      expected += msg.size();
      std::printf("client: sent    \"%s\"\n", line);
      std::unique_lock<std::mutex> g(state->mu);
      if (!state->cv.wait_for(g, std::chrono::seconds(10),
                              [&] { return state->received.size() >= expected || state->ended; }) ||
          state->received.size() < expected) {
        std::fprintf(stderr, "client: no echo within 10 s\n");
        return 1;
      }
      std::string echo = state->received.substr(expected - msg.size(), msg.size() - 1);
      std::printf("client: echoed  \"%s\"\n", echo.c_str());
    }

    client.shutdown();  // the server finishes too once its echo is out
    if (!client.wait(10)) {
      std::fprintf(stderr, "client: did not end within 10 s\n");
      return 1;
    }
    std::printf("client: done, %zu bytes echoed, errors: %zu\n", expected, client.errors().size());
    listener.terminate();  // stop accepting; the port is free now
  }  // the Listener and Connection destructors release their handles here
  return 0;
}

int main() {
  int rc = 1;
  try {  // every netev call throws netev::Error on failure
    rc = run();
  } catch (const netev::Error &e) {
    std::fprintf(stderr, "%s\n", e.what());
  }
  try {
    // Runs every TERMINATE still due (freeing the callbacks) and stops
    // netev's threads: after it, nothing the callbacks use is touched.
    netev::Runtime::shutdown(10);
  } catch (const netev::Error &e) {
    std::fprintf(stderr, "%s\n", e.what());
    rc = 1;
  }
  if (rc == 0) std::printf("done\n");
  return rc;
}
