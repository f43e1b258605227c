// netev objects and calls in a C++ program's exit: static destructors run
// after glibc destroyed the main thread's thread-locals, and netev works
// there as anywhere else. A global Connection and Listener are released by
// their destructors (the connection ends with TERMINATE, the listener's
// port is free again), then a guard's destructor removes the log callback
// and shuts the runtime down. None of them may throw: a destructor that
// throws ends the program in std::terminate, which the harness sees.
#include "test_util.hpp"

#include <cstdio>

static std::atomic<int> terminated{0};
static std::uint16_t port;

static bool port_is_free() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0 && ::listen(fd, 1) == 0;
  ::close(fd);
  return ok;
}

static void fail_at_exit(const char *why) {
  std::fprintf(stderr, "at exit: %s\n", why);
  std::_Exit(1);  // not exit(): this runs inside it
}

// Constructed first, so destroyed last: after the objects below.
struct ExitGuard {
  ~ExitGuard() {
    if (!port_is_free()) fail_at_exit("the global Listener's destructor left its port bound");
    netev::set_log_callback(nullptr);
    netev::Runtime::shutdown(10);
    if (terminated.load() != 1) fail_at_exit("the global Connection never reached TERMINATE");
    std::printf("every netev call in the static destructors worked: ok\n");
    std::fflush(stdout);
  }
} guard;

static netev::Listener listener;
static netev::Connection client;

int main() {
  t::watchdog(30);
  netev::set_log_callback([](std::string_view) {});
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  listener = netev::Listener::open(0, lo);
  port = listener.port();
  netev::Options co;
  co.on_terminate = [](netev::ConnectionRef, const netev::Event &) { terminated.fetch_add(1); };
  client = netev::Connection::open("127.0.0.1", port, co);
  client.send("at exit");
  std::printf("returning from main\n");
  std::fflush(stdout);
  return 0;
}
