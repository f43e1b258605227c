// The lifecycle log through the wrapper: netev::log_open / log_close write
// the lines tests/c/log_lines.c expects ("<timestamp> connection <id> open
// ...") for a connection to a netev::Listener; netev::set_log_callback
// hands them to a std::function; an exception it throws is reported and
// netev goes on; removing or replacing it from outside waits for running
// calls and destroys the old function before returning; replacing or
// removing it from inside itself neither deadlocks nor frees it early.
#include "test_util.hpp"

#include <sys/stat.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using netev::ConnectionRef;
using netev::Event;

// ---- helpers -----------------------------------------------------------------

// Lines a log callback collected; shared with the callback.
struct Lines {
  std::mutex mu;
  std::vector<std::string> v;
  void add(std::string_view line) {
    std::lock_guard<std::mutex> g(mu);
    v.emplace_back(line);
  }
  std::vector<std::string> copy() {
    std::lock_guard<std::mutex> g(mu);
    return v;
  }
  std::size_t size() {
    std::lock_guard<std::mutex> g(mu);
    return v.size();
  }
};

static std::vector<std::string> read_file(const std::string &path) {
  std::vector<std::string> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) out.push_back(line);
  return out;
}

static long file_size(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<long>(st.st_size) : -1;
}

// The part after "<timestamp> <kind> <id> " when `line` is about object
// `id` of `kind`, else "".
static std::string what_of(const std::string &line, const char *kind, std::uint64_t id) {
  std::string tag = std::string(" ") + kind + " " + std::to_string(id) + " ";
  auto p = line.find(tag);
  return p == std::string::npos ? std::string() : line.substr(p + tag.size());
}

// Some line about `id` of `kind` has its "what" beginning with `start`.
static bool has_line(const std::vector<std::string> &lines, const char *kind, std::uint64_t id,
                     const std::string &start) {
  for (auto &l : lines) {
    std::string w = what_of(l, kind, id);
    if (!w.empty() && w.compare(0, start.size(), start) == 0) return true;
  }
  return false;
}

static void dump(const char *title, const std::vector<std::string> &lines) {
  std::fprintf(stderr, "%s (%zu lines):\n", title, lines.size());
  for (auto &l : lines) std::fprintf(stderr, "  %s\n", l.c_str());
}

// "2026-11-25T15:00:00.123456Z connection 3 open ...": the timestamp's
// shape, no newline.
static bool well_formed(const std::string &l) {
  return l.size() > 28 && l[4] == '-' && l[7] == '-' && l[10] == 'T' && l[13] == ':' &&
         l[16] == ':' && l[19] == '.' && l[26] == 'Z' && l[27] == ' ' &&
         l.find('\n') == std::string::npos;
}

// A netev::Listener on 127.0.0.1 echoing on netev's threads.
static netev::Listener echo_listener() {
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults.on_data = [](ConnectionRef c, const Event &e) { c.send(e.data()); };
  return netev::Listener::open(0, std::move(lo));
}

// One client lifecycle against the echo listener: open, send, the echo,
// shutdown, TERMINATE. Returns the client's handle.
static netev_connection echo_round(std::uint16_t port) {
  auto rec = std::make_shared<t::Recorder>();
  netev::Options o;
  t::Recorder::attach(o, rec);
  auto c = netev::Connection::open("127.0.0.1", port, std::move(o));
  c.send("hello");
  if (!rec->wait_bytes(5, 20)) FAIL("no echo; events \"%s\"", rec->sequence().c_str());
  c.shutdown();
  if (!rec->wait_terminated(20)) FAIL("no TERMINATE; events \"%s\"", rec->sequence().c_str());
  CHECK_EQ(rec->sequence(), std::string("connection data* end close terminate"));
  return c.handle();
}

// What a client connection's full lifecycle logs, in log_lines.c's words.
static const char *const lifecycle[] = {"open 127.0.0.1 port ", "connected", "sent ",
                                        "received ", "shutdown", "closed", "terminated"};

static void check_lifecycle(const char *title, const std::vector<std::string> &lines,
                            netev_connection id) {
  for (const char *w : lifecycle) {
    if (!has_line(lines, "connection", id, w)) {
      dump(title, lines);
      FAIL("%s: no line \"connection %llu %s...\"", title, static_cast<unsigned long long>(id), w);
    }
  }
}

// Destroyed with the std::function capturing it: counts that.
// alive() reads it: a call running after its function was destroyed
// fails here (and under ASan, as a use after free).
struct Probe {
  std::shared_ptr<std::atomic<long>> destroyed;
  std::atomic<int> magic{0x10c};
  explicit Probe(std::shared_ptr<std::atomic<long>> d) : destroyed(std::move(d)) {}
  ~Probe() {
    magic = 0;
    (*destroyed)++;
  }
  bool alive() const { return magic.load() == 0x10c; }
};

// Threads opening and closing connections to `port` in a loop, so lines
// come all the time, from their threads and netev's.
class Producers {
 public:
  explicit Producers(std::uint16_t port, int n = 2) {
    for (int i = 0; i < n; i++) threads_.emplace_back([this, port] { run(port); });
  }
  ~Producers() { stop(); }
  void stop() {
    stop_ = true;
    for (auto &th : threads_)
      if (th.joinable()) th.join();
    if (failed_) FAIL("producer: %s", failure().c_str());
  }
  long rounds() const { return rounds_.load(); }
  // Bounded wait for `n` more rounds, so lines came after whatever happened.
  void advance(long n) {
    long start = rounds();
    if (!t::wait_until([&] { return failed_ || rounds() >= start + n; }, 20) || failed_)
      FAIL("the producers made no progress%s%s", failed_ ? ": " : "", failure().c_str());
  }
  std::string failure() {
    std::lock_guard<std::mutex> g(mu_);
    return failure_;
  }

 private:
  void run(std::uint16_t port) {
    while (!stop_) {
      try {
        netev::Options o;
        o.connection_timeout = 10;
        auto c = netev::Connection::open("127.0.0.1", port, std::move(o));
        c.send("x");
        c.close();
        if (!c.wait(10)) throw std::runtime_error("wait timed out");
      } catch (const std::exception &e) {
        std::lock_guard<std::mutex> g(mu_);
        if (failure_.empty()) failure_ = e.what();
        failed_ = true;
        return;
      }
      rounds_++;
    }
  }
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::atomic<long> rounds_{0};
  std::mutex mu_;
  std::string failure_;
};

// ---- the tests -----------------------------------------------------------------

// log_open writes the lifecycle, with the listener's lines; log_close stops
// it; a path that cannot be opened throws.
static void file_log() {
  std::string path = "/tmp/netev_cpp_log_test_" + std::to_string(getpid()) + ".log";
  unlink(path.c_str());
  netev::log_open(path);
  CHECK_EQ(file_size(path), 0L);
  auto listener = echo_listener();
  std::uint16_t port = listener.port();
  netev_connection id = echo_round(port);
  // the last lines (terminated) come as the round ends: bounded wait
  t::wait_until([&] { return has_line(read_file(path), "connection", id, "terminated"); }, 20);
  auto lines = read_file(path);
  check_lifecycle(path.c_str(), lines, id);
  if (!has_line(lines, "connection", id, "open 127.0.0.1 port " + std::to_string(port))) {
    dump(path.c_str(), lines);
    FAIL("no line \"connection %llu open 127.0.0.1 port %u\"", static_cast<unsigned long long>(id),
         port);
  }
  netev_listener lid = listener.handle();
  if (!has_line(lines, "listener", lid, "listening on port " + std::to_string(port)) ||
      !has_line(lines, "listener", lid, "accepted ")) {
    dump(path.c_str(), lines);
    FAIL("no \"listening\" or \"accepted\" line about listener %llu",
         static_cast<unsigned long long>(lid));
  }
  for (auto &l : lines)
    if (!well_formed(l)) FAIL("malformed line in %s: \"%s\"", path.c_str(), l.c_str());
  listener.reset();
  CHECK(t::wait_until([] { return netev::live_callback_blocks() == 0; }, 20));

  // closed: nothing more is written
  netev::log_close();
  netev::log_close();  // harmless again
  long size = file_size(path);
  CHECK(size > 0);
  auto listener2 = echo_listener();
  netev_connection id2 = echo_round(listener2.port());
  listener2.reset();
  CHECK_EQ(file_size(path), size);
  CHECK(!has_line(read_file(path), "connection", id2, "open"));

  // a directory cannot be a log file
  bool thrown = false;
  try {
    netev::log_open("/");
  } catch (const netev::Error &e) {
    thrown = true;
    CHECK(e.status() == NETEV_ERR_IO || e.status() == NETEV_ERR_PERMISSION_DENIED);
    CHECK(std::string(e.what()).find("netev_log_open") != std::string::npos);
    // The status is named once: what() adds it, message() has netev's words.
    std::string what = e.what(), name = e.status_name();
    CHECK(what.find(name) == what.rfind(name));
    CHECK(e.message().find(name) == std::string::npos);
  }
  CHECK(thrown);

  // a NUL inside the path would cut it short: another file than the one asked for
  std::string cut = path + ".cut";
  std::string with_nul = cut + std::string(1, '\0') + "rest";
  thrown = false;
  try {
    netev::log_open(with_nul);
  } catch (const netev::Error &e) {
    thrown = true;
    CHECK(e.status() == NETEV_ERR_INVALID_ARGUMENT);
  }
  CHECK(thrown);
  CHECK(file_size(cut) < 0);  // nothing created under the cut name
  unlink(path.c_str());
}

// The callback gets the lifecycle's lines, as string_views it copies.
static void callback_lines() {
  auto got = std::make_shared<Lines>();
  netev::set_log_callback([got](std::string_view line) { got->add(line); });
  auto listener = echo_listener();
  netev_connection id = echo_round(listener.port());
  t::wait_until([&] { return has_line(got->copy(), "connection", id, "terminated"); }, 20);
  auto lines = got->copy();
  check_lifecycle("callback", lines, id);
  for (auto &l : lines)
    if (!well_formed(l)) FAIL("malformed line from the callback: \"%s\"", l.c_str());
  listener.reset();
  netev::set_log_callback(nullptr);
}

std::atomic<int> log_failures{0}, other_failures{0};
static void log_failure_handler(const netev::CallbackFailure &f) {
  CHECK(f.exception != nullptr);
  if (f.log_callback && f.connection == 0 && f.listener == 0 && f.udp_socket == 0)
    log_failures++;
  else
    other_failures++;
}

// A callback that always throws: every exception reaches the handler
// (marked log_callback), connections work as before, and the callback
// stays installed.
static void throwing_callback() {
  auto previous = netev::set_callback_exception_handler(&log_failure_handler);
  auto calls = std::make_shared<std::atomic<long>>(0);
  netev::set_log_callback([calls](std::string_view line) {
    (*calls)++;
    throw std::runtime_error("log callback throws: " + std::string(line));
  });
  auto listener = echo_listener();
  echo_round(listener.port());
  echo_round(listener.port());  // netev still runs, and the callback still gets lines
  listener.reset();
  CHECK(t::wait_until([] { return netev::live_callback_blocks() == 0; }, 20));
  netev::set_log_callback(nullptr);  // waits for running calls: the counts are final
  CHECK(calls->load() >= 10);
  CHECK_EQ(static_cast<long>(log_failures.load()), calls->load());
  CHECK_EQ(other_failures.load(), 0);
  netev::set_callback_exception_handler(previous);
}

// Removing the callback stops the calls: no call runs once set_log_callback
// returns, none starts later, and the function has been destroyed. The
// same when it is replaced; lines come all the time meanwhile.
static void clearing_stops() {
  auto listener = echo_listener();
  Producers producers(listener.port());
  int rounds = 100;
  for (int k = 0; k < rounds; k++) {
    struct State {
      std::atomic<long> calls{0}, running{0}, late{0};
      std::atomic<bool> removed{false};
    };
    auto st = std::make_shared<State>();
    auto destroyed = std::make_shared<std::atomic<long>>(0);
    auto probe = std::make_shared<Probe>(destroyed);
    netev::set_log_callback([st, probe](std::string_view) {
      st->running++;
      if (st->removed) st->late++;
      st->calls++;
      std::this_thread::yield();
      st->running--;
    });
    probe.reset();  // the function holds the only reference now
    if (!t::wait_until([&] { return st->calls >= 2; }, 20)) FAIL("round %d: no lines came", k);
    if (k % 2 == 0)
      netev::set_log_callback(nullptr);
    else
      netev::set_log_callback([](std::string_view) {});  // replaced
    st->removed = true;
    CHECK_EQ(st->running.load(), 0L);  // every call returned
    CHECK_EQ(destroyed->load(), 1L);    // and the function was destroyed, here
    long calls = st->calls;
    producers.advance(2);
    CHECK_EQ(st->late.load(), 0L);
    CHECK_EQ(st->calls.load(), calls);
  }
  netev::set_log_callback(nullptr);
  producers.stop();
  listener.reset();
}

// Replacing or removing the callback from inside it: no deadlock, the
// running call's function (and captures) stay alive until it returns, the
// new callback gets the next lines, the old function is destroyed once its
// last call returned.
static void reentry() {
  auto listener = echo_listener();
  std::uint16_t port = listener.port();

  // replaces itself on its first call
  {
    auto a_calls = std::make_shared<std::atomic<long>>(0);
    auto b_lines = std::make_shared<Lines>();
    auto a_destroyed = std::make_shared<std::atomic<long>>(0);
    auto probe = std::make_shared<Probe>(a_destroyed);
    netev::set_log_callback([a_calls, b_lines, probe](std::string_view) {
      if ((*a_calls)++ == 0)
        netev::set_log_callback([b_lines](std::string_view line) { b_lines->add(line); });
      CHECK(probe->alive());  // the running call's captures outlive the replacement
    });
    probe.reset();
    echo_round(port);
    if (!t::wait_until([&] { return a_destroyed->load() == 1; }, 20))
      FAIL("the replaced callback's function was never destroyed");
    CHECK(b_lines->size() > 0);
    netev_connection id = echo_round(port);  // all of it after the replacement
    t::wait_until([&] { return has_line(b_lines->copy(), "connection", id, "terminated"); }, 20);
    check_lifecycle("the replacing callback", b_lines->copy(), id);
    netev::set_log_callback(nullptr);
  }

  // removes itself on its first call
  {
    auto calls = std::make_shared<std::atomic<long>>(0);
    auto destroyed = std::make_shared<std::atomic<long>>(0);
    auto probe = std::make_shared<Probe>(destroyed);
    netev::set_log_callback([calls, probe](std::string_view) {
      if ((*calls)++ == 0) netev::set_log_callback(nullptr);
      CHECK(probe->alive());
    });
    probe.reset();
    echo_round(port);
    if (!t::wait_until([&] { return destroyed->load() == 1; }, 20))
      FAIL("the callback that removed itself was never destroyed");
    long n = calls->load();
    echo_round(port);
    CHECK_EQ(calls->load(), n);  // removed: no more calls
  }

  // under load, callbacks replacing themselves from inside while this
  // thread replaces them from outside
  {
    Producers producers(port);
    auto made = std::make_shared<std::atomic<long>>(0);
    auto gone = std::make_shared<std::atomic<long>>(0);
    auto inner_sets = std::make_shared<std::atomic<long>>(0);
    // a callback that, on its first call, replaces itself with one that
    // does the same, `depth` times, then removes itself
    struct Chain {
      static netev::LogHandler make(int depth, std::shared_ptr<std::atomic<long>> made,
                                    std::shared_ptr<std::atomic<long>> gone,
                                    std::shared_ptr<std::atomic<long>> inner_sets) {
        (*made)++;
        auto probe = std::make_shared<Probe>(gone);
        auto first = std::make_shared<std::atomic<bool>>(true);
        return [=](std::string_view) {
          if (first->exchange(false)) {
            (*inner_sets)++;
            netev::set_log_callback(depth > 0 ? make(depth - 1, made, gone, inner_sets)
                                              : netev::LogHandler());
          }
          CHECK(probe->alive());
        };
      }
    };
    for (int k = 0; k < 50; k++) {
      netev::set_log_callback(Chain::make(3, made, gone, inner_sets));
      producers.advance(1);
    }
    // the last one, from outside, must get lines: the registration with
    // netev ended as the wrapper's state says
    auto last = std::make_shared<std::atomic<long>>(0);
    netev::set_log_callback([last](std::string_view) { (*last)++; });
    producers.advance(2);
    CHECK(last->load() > 0);
    netev::set_log_callback(nullptr);
    producers.stop();
    // every function made was destroyed (those replaced from inside, by
    // their last call)
    CHECK(t::wait_until([&] { return gone->load() == made->load(); }, 20));
    CHECK(inner_sets->load() > 0);
    std::printf("   %ld chained callbacks, %ld set from inside\n", made->load(), inner_sets->load());
  }
  listener.reset();
}

int main() {
  t::watchdog(120);
  TEST(file_log);
  TEST(callback_lines);
  TEST(throwing_callback);
  TEST(clearing_stops);
  TEST(reentry);
  netev::set_log_callback(nullptr);
  t::finish();
  return 0;
}
