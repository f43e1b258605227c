// Helpers for the C++ test programs (run by tests/cpp_programs.rs): checks
// that exit non-zero, a watchdog, bounded waits, an event recorder and a
// plain-socket loopback echo peer.
#ifndef NETEV_CPP_TEST_UTIL_HPP
#define NETEV_CPP_TEST_UTIL_HPP

#include <netev.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define FAIL(...)                                        \
  do {                                                   \
    std::fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
    std::fprintf(stderr, __VA_ARGS__);                   \
    std::fprintf(stderr, "\n");                          \
    std::exit(1);                                        \
  } while (0)

#define CHECK(cond)                                \
  do {                                             \
    if (!(cond)) FAIL("CHECK failed: %s", #cond);  \
  } while (0)

#define CHECK_EQ(a, b)                                                        \
  do {                                                                        \
    auto a_ = (a);                                                            \
    auto b_ = (b);                                                            \
    if (!(a_ == b_))                                                          \
      FAIL("CHECK_EQ failed: %s == %s (%s vs %s)", #a, #b, ::t::show(a_).c_str(), \
           ::t::show(b_).c_str());                                            \
  } while (0)

// Runs `expr`, which must throw netev::Error with status `want`.
#define CHECK_THROWS_STATUS(expr, want)                                              \
  do {                                                                               \
    bool thrown_ = false;                                                            \
    try {                                                                            \
      (void)(expr);                                                                  \
    } catch (const netev::Error &e_) {                                               \
      thrown_ = true;                                                                \
      if (e_.status() != (want))                                                     \
        FAIL("%s threw %s, expected %s (%s)", #expr, e_.status_name(),               \
             netev_status_name(want), e_.what());                                    \
    }                                                                                \
    if (!thrown_) FAIL("%s did not throw, expected %s", #expr, netev_status_name(want)); \
  } while (0)

// Runs one test once the previous one's callback blocks are gone: releases
// do not wait for TERMINATE, so the blocks of a test's last objects may
// still be freed just after it returned.
#define TEST(name)                                                                  \
  do {                                                                              \
    std::printf("-- %s\n", #name);                                                  \
    std::fflush(stdout);                                                            \
    if (!::t::wait_until([] { return netev::live_callback_blocks() == 0; }, 20))    \
      FAIL("callback blocks left before %s: %ld", #name, netev::live_callback_blocks()); \
    name();                                                                         \
  } while (0)

namespace t {

inline std::string show(const std::string &s) { return "\"" + s + "\""; }
inline std::string show(std::string_view s) { return show(std::string(s)); }
inline std::string show(const char *s) { return show(std::string(s)); }
inline std::string show(bool b) { return b ? "true" : "false"; }
inline std::string show(netev_status s) { return netev_status_name(s); }
template <class T>
std::string show(const T &v) {
  return std::to_string(v);
}

// Kills the program after `seconds`: a hang is a failure.
inline void watchdog(unsigned seconds) {
  signal(SIGALRM, SIG_DFL);
  alarm(seconds);
}

// Polls `pred` until it holds or `seconds` pass; returns whether it held.
inline bool wait_until(const std::function<bool()> &pred, double seconds) {
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= end) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The byte at stream offset i of the test pattern.
inline char pattern_byte(std::size_t i) { return static_cast<char>((i * 7 + i / 251) & 0xff); }
inline std::string pattern(std::size_t n, std::size_t off = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; i++) s[i] = pattern_byte(off + i);
  return s;
}

// Records the events of one object; shared (by shared_ptr) between the
// test and the callbacks, so it outlives whichever finishes last.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> types;
  std::string data;
  std::vector<std::thread::id> threads;
  netev_status error = NETEV_OK;
  std::string error_message;
  int in_callback = 0;
  int overlaps = 0;
  int after_terminate = 0;
  bool terminated = false;

  void record(const netev::Event &e) {
    std::lock_guard<std::mutex> g(mu);
    if (in_callback) overlaps++;
    if (terminated) after_terminate++;
    types.push_back(e.type_name());
    threads.push_back(std::this_thread::get_id());
    if (e.type() == NETEV_EVENT_DATA) data.append(e.data());
    if (e.type() == NETEV_EVENT_ERROR) {
      error = e.error();
      error_message = std::string(e.message());
    }
    if (e.type() == NETEV_EVENT_TERMINATE) terminated = true;
    cv.notify_all();
  }

  // "connection data* end close terminate": runs of DATA folded.
  std::string sequence() {
    std::lock_guard<std::mutex> g(mu);
    std::string s;
    for (std::size_t i = 0; i < types.size(); i++) {
      if ((types[i] == "data" || types[i] == "drain") && i > 0 && types[i - 1] == types[i]) continue;
      if (!s.empty()) s += ' ';
      s += types[i];
      if (types[i] == "data" || types[i] == "drain") s += '*';
    }
    return s;
  }
  int count(const std::string &type) {
    std::lock_guard<std::mutex> g(mu);
    int n = 0;
    for (auto &x : types) n += x == type;
    return n;
  }
  std::size_t data_size() {
    std::lock_guard<std::mutex> g(mu);
    return data.size();
  }
  bool wait_for(const std::function<bool()> &pred, double seconds) {
    std::unique_lock<std::mutex> g(mu);
    return cv.wait_for(g, std::chrono::duration<double>(seconds), pred);
  }
  bool wait_terminated(double seconds) {
    return wait_for([this] { return terminated; }, seconds);
  }
  bool wait_type(const std::string &type, double seconds) {
    return wait_for(
        [&] {
          for (auto &x : types)
            if (x == type) return true;
          return false;
        },
        seconds);
  }
  bool wait_bytes(std::size_t n, double seconds) {
    return wait_for([&] { return data.size() >= n; }, seconds);
  }

  // A callback for every slot of `o` recording into this recorder; `also`
  // runs after recording.
  static void attach(netev::Options &o, const std::shared_ptr<Recorder> &r,
                     std::function<void(netev::ConnectionRef, const netev::Event &)> also = {}) {
    auto h = [r, also](netev::ConnectionRef c, const netev::Event &e) {
      r->record(e);
      if (also) also(c, e);
    };
    o.on_connection = o.on_data = o.on_shutdown = o.on_error = h;
    o.on_terminate = o.on_drain = o.on_end = h;
  }
};

// A plain-socket peer on 127.0.0.1 at an ephemeral port, accepting one
// connection. ECHO echoes until EOF then shuts its write side; HOLD reads
// and writes nothing until stopped.
class Peer {
 public:
  enum Mode { ECHO, HOLD };
  explicit Peer(Mode mode) : mode_(mode) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
    CHECK(listen(fd_, 16) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(fd_, reinterpret_cast<sockaddr *>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~Peer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    int c = conn_.load();
    if (c >= 0) shutdown(c, SHUT_RDWR);
    thread_.join();
    if (conn_ >= 0) close(conn_);
    close(fd_);
  }
  Peer(const Peer &) = delete;
  Peer &operator=(const Peer &) = delete;
  std::uint16_t port() const { return port_; }
  bool finished() const { return finished_; }

 private:
  void run() {
    int c = accept(fd_, nullptr, nullptr);
    if (c < 0) {
      finished_ = true;
      return;
    }
    conn_ = c;
    if (mode_ == ECHO) {
      char buf[65536];
      for (;;) {
        ssize_t n = recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        ssize_t off = 0;
        while (off < n) {
          ssize_t w = send(c, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
          if (w <= 0) break;
          off += w;
        }
        if (off < n) break;
      }
      shutdown(c, SHUT_WR);
    } else {
      while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    finished_ = true;
  }

  Mode mode_;
  int fd_ = -1;
  std::atomic<int> conn_{-1};
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false}, finished_{false};
  std::thread thread_;
};

// Counts exceptions reaching the callback exception handler.
inline std::atomic<int> &caught_exceptions() {
  static std::atomic<int> n{0};
  return n;
}
inline void counting_handler(const netev::CallbackFailure &f) {
  caught_exceptions()++;
  CHECK(f.exception != nullptr);
}

// Every program ends here: shut netev down, then no callback block is left.
inline void finish() {
  netev::Runtime::shutdown(10);
  CHECK_EQ(netev::live_callback_blocks(), 0L);
  std::printf("ok\n");
}

}  // namespace t

#endif
