// Issue 12's connection additions through netev.hpp: framing (delimiter,
// length prefix, max_frame, send_frame), pause/resume, local address and
// port, bind address/port, stats, zero-copy send_owned, NETEV_ERR_PROTOCOL.
// Loopback only: netev listeners and clients, and plain BSD sockets where
// the test must control the bytes on the wire.
#include "test_util.hpp"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <cerrno>
#include <map>
#include <memory>
#include <string>
#include <vector>

using netev::ConnectionRef;
using netev::Event;

namespace {

const double LIMIT = 20;  // seconds any single wait may take

std::string bytes(std::initializer_list<int> v) {
  std::string s;
  for (int c : v) s.push_back(static_cast<char>(c));
  return s;
}

// ---- plain sockets ------------------------------------------------------------

void set_timeouts(int fd) {
  timeval tv{static_cast<time_t>(LIMIT), 0};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  int one = 1;
  CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
}

sockaddr_in loopback(std::uint16_t port, const char *ip = "127.0.0.1") {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  CHECK(inet_pton(AF_INET, ip, &a.sin_addr) == 1);
  return a;
}

// A blocking client socket connected to 127.0.0.1:port, reads and writes
// bounded by LIMIT.
int raw_connect(std::uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  set_timeouts(fd);
  sockaddr_in a = loopback(port);
  CHECK(connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
  return fd;
}

void write_all(int fd, const std::string &s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) FAIL("send: %s", n < 0 ? strerror(errno) : "0");
    off += static_cast<std::size_t>(n);
  }
}

// Exactly n bytes, or FAIL (timeout or EOF).
std::string read_exact(int fd, std::size_t n) {
  std::string s(n, '\0');
  std::size_t off = 0;
  while (off < n) {
    ssize_t r = recv(fd, &s[off], n - off, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) FAIL("recv after %zu of %zu bytes: %s", off, n, r < 0 ? strerror(errno) : "EOF");
    off += static_cast<std::size_t>(r);
  }
  return s;
}

// The peer's FIN, with no byte before it.
void read_eof(int fd) {
  char c;
  ssize_t r;
  do r = recv(fd, &c, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r != 0) FAIL("expected EOF, recv gave %zd (%s)", r, r < 0 ? strerror(errno) : "a byte");
}

// A listening socket on 127.0.0.1 at an ephemeral port.
struct RawServer {
  int fd = -1;
  std::uint16_t port = 0;
  RawServer() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    sockaddr_in a = loopback(0);
    CHECK(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
    CHECK(listen(fd, 16) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0);
    port = ntohs(a.sin_port);
  }
  ~RawServer() { close(fd); }
  // The next connection, within LIMIT.
  int accept_one() {
    pollfd p{fd, POLLIN, 0};
    CHECK(poll(&p, 1, static_cast<int>(LIMIT * 1000)) == 1);
    int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    CHECK(c >= 0);
    set_timeouts(c);
    return c;
  }
};

// A port that was free on `ip` a moment ago (bound, read, closed: never
// connected, so nothing lingers in TIME_WAIT).
std::uint16_t free_port(const char *ip) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  sockaddr_in a = loopback(0, ip);
  CHECK(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

// ---- recording ----------------------------------------------------------------

// Every event of one connection, unfolded, and each DATA's bytes as one
// entry (with framing: one frame). Shared by the callbacks and the test.
struct Log {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> types;
  std::vector<std::string> frames;
  std::string data;  // every DATA, concatenated
  netev_status error = NETEV_OK;
  bool terminated = false;
  // Read in the CONNECTION callback.
  std::string local_address, peer_ip;
  std::uint16_t local_port = 0, peer_port = 0;
  bool paused_in_callback = false;
  // Accepted side: a reference taken in CONNECTION, for the test to take.
  netev::Connection retained;
  bool retain = false, pause_on_connect = false;

  void record(ConnectionRef c, const Event &e) {
    std::lock_guard<std::mutex> g(mu);
    types.push_back(e.type_name());
    switch (e.type()) {
      case NETEV_EVENT_CONNECTION:
        local_address = c.local_address();
        local_port = c.local_port();
        peer_ip = std::string(e.ip());
        peer_port = e.port();
        if (pause_on_connect) {
          c.pause();
          paused_in_callback = c.paused();
        }
        if (retain) retained = netev::Connection::retain(c.handle());
        break;
      case NETEV_EVENT_DATA:
        frames.emplace_back(e.data());
        data.append(e.data());
        break;
      case NETEV_EVENT_ERROR:
        error = e.error();
        break;
      case NETEV_EVENT_TERMINATE:
        terminated = true;
        break;
      default:
        break;
    }
    cv.notify_all();
  }
  // The callbacks of every slot into this log; `also` runs after recording.
  static netev::Options &attach(netev::Options &o, const std::shared_ptr<Log> &log,
                                std::function<void(ConnectionRef, const Event &)> also = {}) {
    auto h = [log, also](ConnectionRef c, const Event &e) {
      log->record(c, e);
      if (also) also(c, e);
    };
    o.on_connection = o.on_data = o.on_shutdown = o.on_error = h;
    o.on_terminate = o.on_drain = o.on_end = h;
    return o;
  }
  bool wait(const std::function<bool()> &pred, double seconds = LIMIT) {
    std::unique_lock<std::mutex> g(mu);
    return cv.wait_for(g, std::chrono::duration<double>(seconds), pred);
  }
  bool wait_frames(std::size_t n) {
    return wait([&] { return frames.size() >= n; });
  }
  bool wait_terminated() {
    return wait([&] { return terminated; });
  }
  // Until `n` events of `type` came.
  bool wait_type(const std::string &type, std::size_t n = 1) {
    return wait([&] {
      std::size_t k = 0;
      for (auto &t : types) k += t == type;
      return k >= n;
    });
  }
  std::string sequence() {
    std::lock_guard<std::mutex> g(mu);
    std::string s;
    for (auto &t : types) s += (s.empty() ? "" : " ") + t;
    return s;
  }
  std::vector<std::string> frames_copy() {
    std::lock_guard<std::mutex> g(mu);
    return frames;
  }
  std::size_t count(const std::string &type) {
    std::lock_guard<std::mutex> g(mu);
    std::size_t n = 0;
    for (auto &t : types) n += t == type;
    return n;
  }
  // The reference retained in CONNECTION (waits for it).
  netev::Connection take() {
    CHECK(wait([&] { return bool(retained); }));
    std::lock_guard<std::mutex> g(mu);
    return std::move(retained);
  }
};

// The logs of a listener's accepted connections, in accept order.
struct Accepted {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::shared_ptr<Log>> logs;
  std::shared_ptr<Log> add() {
    auto log = std::make_shared<Log>();
    log->retain = true;
    std::lock_guard<std::mutex> g(mu);
    logs.push_back(log);
    cv.notify_all();
    return log;
  }
  std::shared_ptr<Log> get(std::size_t i) {
    std::unique_lock<std::mutex> g(mu);
    CHECK(cv.wait_for(g, std::chrono::duration<double>(LIMIT), [&] { return logs.size() > i; }));
    return logs[i];
  }
};

std::string seq(const std::string &head, std::size_t datas, const std::string &tail) {
  std::string s = head;
  for (std::size_t i = 0; i < datas; i++) s += " data";
  return s + " " + tail;
}

std::string show_frames(const std::vector<std::string> &v) {
  std::string s = "[";
  for (auto &f : v) {
    s += s.size() > 1 ? ", \"" : "\"";
    for (unsigned char c : f) {
      if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
        s += static_cast<char>(c);
      } else {
        char b[8];
        std::snprintf(b, sizeof b, "\\x%02x", c);
        s += b;
      }
    }
    s += "\"";
  }
  return s + "]";
}

#define CHECK_FRAMES(got, ...)                                                       \
  do {                                                                               \
    std::vector<std::string> want_ = __VA_ARGS__;                                    \
    auto got_ = (got);                                                               \
    if (got_ != want_)                                                               \
      FAIL("frames %s, expected %s", show_frames(got_).c_str(), show_frames(want_).c_str()); \
  } while (0)

netev::Listener listen_with(netev::Options defaults, const std::shared_ptr<Accepted> &acc,
                            std::function<void(netev::Options &, std::size_t)> edit = {}) {
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = std::move(defaults);
  auto n = std::make_shared<std::atomic<std::size_t>>(0);
  lo.on_connection = [acc, edit, n](const Event &, netev::Options &o) {
    std::size_t i = (*n)++;
    if (edit) edit(o, i);
    Log::attach(o, acc->add());
    return true;
  };
  return netev::Listener::open(0, std::move(lo));
}

}  // namespace

// Delimiter framing on the accepting side, fed by a plain socket: a
// delimiter split across writes, empty frames, a delimiter's first byte
// inside a frame, the trailing partial frame at END, max_frame; a
// delimiter set per connection by the accept callback.
static void delimiter_framing() {
  auto acc = std::make_shared<Accepted>();
  netev::Options d;
  d.delimited("\r\n").max_frame = 4;
  auto seen = std::make_shared<std::vector<netev::Options>>();
  auto listener = listen_with(d, acc, [seen](netev::Options &o, std::size_t i) {
    seen->push_back(o);  // before any edit: connection_defaults as netev copied them
    if (i == 2) o.delimited("<>");  // a short string, gone when this returns
  });

  int fd = raw_connect(listener.port());
  auto log = acc->get(0);
  netev::Connection server = log->take();
  CHECK_EQ(seen->at(0).framing, std::uint8_t{NETEV_FRAMING_DELIMITER});
  CHECK_EQ(seen->at(0).delimiter, std::string("\r\n"));
  CHECK_EQ(seen->at(0).max_frame, std::size_t{4});
  CHECK_EQ(seen->at(0).length_prefix_bytes, std::uint8_t{0});

  // The frame and the first byte of its delimiter: read, nothing delivered.
  write_all(fd, "one\r");
  CHECK(t::wait_until([&] { return server.stats().bytes_received == 4; }, LIMIT));
  CHECK_FRAMES(log->frames_copy(), {});
  write_all(fd, "\ntwo\r\n\r\na\rb\r\nlast");
  CHECK(log->wait_frames(4));
  CHECK_FRAMES(log->frames_copy(), {"one", "two", "", "a\rb"});
  // END: the partial frame comes as a last DATA, then END.
  CHECK_EQ(shutdown(fd, SHUT_WR), 0);
  read_eof(fd);  // netev ends its side too (no half-open)
  CHECK(log->wait_terminated());
  CHECK_FRAMES(log->frames_copy(), {"one", "two", "", "a\rb", "last"});
  CHECK_EQ(log->sequence(), seq("connection", 5, "end close terminate"));
  netev::Stats st = server.stats();
  CHECK_EQ(st.bytes_received, std::uint64_t{4 + 17});
  CHECK_EQ(st.data_events, std::uint64_t{5});
  CHECK_EQ(st.bytes_sent, std::uint64_t{0});
  close(fd);

  // A frame of max_frame bytes passes; one longer is ERROR
  // NETEV_ERR_PROTOCOL and nothing of it is delivered, without END.
  fd = raw_connect(listener.port());
  log = acc->get(1);
  server = log->take();
  write_all(fd, "abcd\r\nabcdefgh");
  CHECK(log->wait_terminated());
  CHECK_FRAMES(log->frames_copy(), {"abcd"});
  CHECK_EQ(log->sequence(), std::string("connection data error terminate"));
  CHECK_EQ(log->error, NETEV_ERR_PROTOCOL);
  auto errs = server.errors();
  CHECK_EQ(errs.size(), std::size_t{1});
  CHECK_EQ(errs[0].code, NETEV_ERR_PROTOCOL);
  close(fd);

  // The accept callback's own delimiter, read by netev after it returned.
  fd = raw_connect(listener.port());
  log = acc->get(2);
  server = log->take();
  write_all(fd, "x<>\r\n<><y");
  CHECK(log->wait_frames(2));
  CHECK_EQ(shutdown(fd, SHUT_WR), 0);
  read_eof(fd);
  CHECK(log->wait_terminated());
  CHECK_FRAMES(log->frames_copy(), {"x", "\r\n", "<y"});
  close(fd);
}

// Length-prefix framing fed by a plain socket: frames split inside the
// payload and inside the prefix, an empty frame, max_frame exactly and
// past it, END inside a frame.
static void length_prefix_framing() {
  auto acc = std::make_shared<Accepted>();
  netev::Options d;
  d.length_prefixed(2).max_frame = 16;
  auto listener = listen_with(d, acc);

  int fd = raw_connect(listener.port());
  auto log = acc->get(0);
  netev::Connection server = log->take();
  write_all(fd, bytes({0, 3}) + "abc" + bytes({0, 0}) + bytes({0, 5}) + "he");
  CHECK(t::wait_until([&] { return server.stats().bytes_received == 11; }, LIMIT));
  CHECK(log->wait_frames(2));
  CHECK_FRAMES(log->frames_copy(), {"abc", ""});
  write_all(fd, "llo" + bytes({0}));  // the rest, and half of the next prefix
  CHECK(log->wait_frames(3));
  CHECK(t::wait_until([&] { return server.stats().bytes_received == 15; }, LIMIT));
  CHECK_FRAMES(log->frames_copy(), {"abc", "", "hello"});
  std::string sixteen = t::pattern(16);
  write_all(fd, bytes({16}) + sixteen);
  CHECK(log->wait_frames(4));
  CHECK_FRAMES(log->frames_copy(), {"abc", "", "hello", sixteen});
  // END inside a frame: ERROR NETEV_ERR_PROTOCOL, then TERMINATE.
  write_all(fd, bytes({0, 4}) + "x");
  CHECK_EQ(shutdown(fd, SHUT_WR), 0);
  CHECK(log->wait_terminated());
  CHECK_FRAMES(log->frames_copy(), {"abc", "", "hello", sixteen});
  CHECK_EQ(log->sequence(), seq("connection", 4, "error terminate"));
  CHECK_EQ(log->error, NETEV_ERR_PROTOCOL);
  CHECK_EQ(server.errors().at(0).code, NETEV_ERR_PROTOCOL);
  netev::Stats st = server.stats();
  CHECK_EQ(st.bytes_received, std::uint64_t{5 + 2 + 7 + 2 + 16 + 3});
  CHECK_EQ(st.data_events, std::uint64_t{4});
  close(fd);

  // A prefix announcing 17 bytes: ERROR at once, nothing delivered.
  fd = raw_connect(listener.port());
  log = acc->get(1);
  server = log->take();
  write_all(fd, bytes({0, 17}) + t::pattern(17));
  CHECK(log->wait_terminated());
  CHECK_EQ(log->sequence(), std::string("connection error terminate"));
  CHECK_EQ(log->error, NETEV_ERR_PROTOCOL);
  CHECK_EQ(server.stats().data_events, std::uint64_t{0});
  close(fd);
}

// A payload without any delimiter sequence in it.
static std::string payload(std::size_t n, std::size_t seed, const std::string &delim) {
  std::string s = t::pattern(n, seed);
  if (!delim.empty())
    for (auto &c : s)
      if (c == delim[0]) c = 'x';
  return s;
}

// send_frame between two netev ends with the same framing: the server
// echoes each frame with send_frame; the client gets exactly the frames it
// sent; refused frames queue nothing. Then the bytes on the wire.
static void send_frame_round_trip() {
  struct Case {
    netev::Options o;
    std::size_t prefix;  // bytes added per frame on the wire
    std::string delim;
    std::size_t max_payload;
  };
  std::vector<Case> cases;
  auto add = [&](netev::Options o, std::size_t prefix, std::string delim, std::size_t max) {
    cases.push_back(Case{std::move(o), prefix, std::move(delim), max});
  };
  netev::Options o;
  add(o.delimited("\n"), 1, "\n", 100000);
  add(netev::Options().delimited(bytes({0, 0xff, 0})), 3, bytes({0, 0xff, 0}), 100000);
  add(netev::Options().length_prefixed(1), 1, "", 255);
  add(netev::Options().length_prefixed(2), 2, "", 65535);
  add(netev::Options().length_prefixed(4), 4, "", 100000);
  add(netev::Options().length_prefixed(8), 8, "", 100000);
  add(netev::Options().length_prefixed(0), 4, "", 100000);  // 0 = 4

  for (auto &k : cases) {
    netev::Options server_opts = k.o;
    server_opts.max_frame = 200000;
    netev::ListenerOptions lo;
    lo.bind_address = "127.0.0.1";
    lo.connection_defaults = server_opts;
    lo.connection_defaults.on_data = [](ConnectionRef c, const Event &e) { c.send_frame(e.data()); };
    auto listener = netev::Listener::open(0, std::move(lo));

    std::vector<std::string> sent = {"", "a", "hello world", payload(200, 1, k.delim),
                                     payload(k.max_payload, 2, k.delim), ""};
    auto log = std::make_shared<Log>();
    netev::Options co = k.o;
    co.max_frame = 200000;
    co.no_delay = true;
    Log::attach(co, log);
    auto c = netev::Connection::open("127.0.0.1", listener.port(), co);
    std::uint64_t wire = 0;
    for (auto &f : sent) {
      c.send_frame(f);
      wire += f.size() + k.prefix;
      // Refused: nothing of them is queued (the frames stay exact).
      if (!k.delim.empty()) {
        CHECK_THROWS_STATUS(c.send_frame("a" + k.delim + "b"), NETEV_ERR_INVALID_ARGUMENT);
        CHECK_EQ(c.try_send_frame(k.delim), NETEV_ERR_INVALID_ARGUMENT);
      } else if (k.max_payload < 100000) {
        CHECK_THROWS_STATUS(c.send_frame(std::string(k.max_payload + 1, 'z')), NETEV_ERR_INVALID_ARGUMENT);
      }
    }
    CHECK(log->wait_frames(sent.size()));
    c.shutdown();
    CHECK(log->wait_terminated());
    CHECK_FRAMES(log->frames_copy(), sent);
    CHECK_EQ(log->sequence(), seq("connection", sent.size(), "end close terminate"));
    netev::Stats st = c.stats();
    CHECK_EQ(st.bytes_sent, wire);
    CHECK_EQ(st.bytes_received, wire);
    CHECK_EQ(st.data_events, std::uint64_t{sent.size()});
    CHECK_EQ(st.buffered_amount, std::size_t{0});
  }

  // Without framing: refused.
  {
    t::Peer peer(t::Peer::HOLD);
    auto c = netev::Connection::open("127.0.0.1", peer.port());
    CHECK_THROWS_STATUS(c.send_frame("x"), NETEV_ERR_INVALID_ARGUMENT);
    CHECK_EQ(c.try_send_frame("x"), NETEV_ERR_INVALID_ARGUMENT);
    c.close();
  }

  // The wire: a big-endian prefix before, or the delimiter after.
  struct Wire {
    netev::Options o;
    std::vector<std::string> frames;
    std::string bytes;
  };
  std::vector<Wire> wires = {
      {netev::Options().length_prefixed(2), {"hi", ""}, bytes({0, 2}) + "hi" + bytes({0, 0})},
      {netev::Options().length_prefixed(8), {"abc"}, bytes({0, 0, 0, 0, 0, 0, 0, 3}) + "abc"},
      {netev::Options().length_prefixed(4), {std::string(258, 'q')},
       bytes({0, 0, 1, 2}) + std::string(258, 'q')},
      {netev::Options().delimited("\r\n"), {"hi", "", "x"}, "hi\r\n\r\nx\r\n"},
  };
  for (auto &w : wires) {
    RawServer raw;
    auto c = netev::Connection::open("127.0.0.1", raw.port, w.o);
    int fd = raw.accept_one();
    for (auto &f : w.frames) c.send_frame(f);
    CHECK_EQ(read_exact(fd, w.bytes.size()), w.bytes);
    c.shutdown();
    read_eof(fd);
    close(fd);
    CHECK(c.wait(LIMIT));
  }
}

// pause in the CONNECTION callback: the peer writes until its socket
// blocks (netev reads nothing), no DATA arrives, then resume delivers every
// byte in order. Paused again with the peer ended: no DATA and no END until
// resume, then both in order.
static void pause_resume() {
  auto acc = std::make_shared<Accepted>();
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.on_connection = [acc](const Event &, netev::Options &o) {
    auto log = acc->add();
    log->pause_on_connect = true;
    Log::attach(o, log);
    return true;
  };
  auto listener = netev::Listener::open(0, std::move(lo));
  int fd = raw_connect(listener.port());
  auto log = acc->get(0);
  netev::Connection server = log->take();
  CHECK(log->paused_in_callback);
  CHECK(server.paused());

  // Write until the kernel's buffers are full: netev holds nothing more.
  CHECK_EQ(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  std::size_t written = 0;
  const std::size_t cap = 256u << 20;
  for (;;) {
    std::string chunk = t::pattern(65536, written);
    ssize_t n = send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) FAIL("send: %s", strerror(errno));
    written += static_cast<std::size_t>(n);
    if (written > cap) FAIL("%zu bytes written into a paused connection: netev kept reading", written);
  }
  CHECK(written > 0);
  // The bounded window: nothing arrives while paused.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_EQ(log->count("data"), std::size_t{0});
  CHECK_EQ(server.stats().bytes_received, std::uint64_t{0});
  CHECK_EQ(server.stats().data_events, std::uint64_t{0});
  CHECK(server.paused());
  server.pause();  // idempotent
  CHECK(server.paused());

  server.resume();
  CHECK(!server.paused());
  server.resume();  // idempotent
  CHECK(log->wait([&] { return log->data.size() >= written; }));
  {
    std::lock_guard<std::mutex> g(log->mu);
    CHECK_EQ(log->data.size(), written);
    CHECK(log->data == t::pattern(written));
  }
  CHECK_EQ(server.stats().bytes_received, std::uint64_t{written});

  // Paused from this thread, the peer sends a tail and ends.
  server.pause();
  CHECK(server.paused());
  std::size_t before = log->count("data");
  CHECK_EQ(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
  write_all(fd, "tail");
  CHECK_EQ(shutdown(fd, SHUT_WR), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_EQ(log->count("data"), before);
  CHECK_EQ(log->count("end"), std::size_t{0});
  CHECK_EQ(log->count("close"), std::size_t{0});
  server.resume();
  CHECK(log->wait_terminated());
  {
    std::lock_guard<std::mutex> g(log->mu);
    CHECK(log->data == t::pattern(written) + "tail");
    // connection data... end close terminate, END after every DATA.
    CHECK_EQ(log->types.front(), std::string("connection"));
    std::size_t i = 1;
    while (i < log->types.size() && log->types[i] == "data") i++;
    CHECK(i > before);
    std::vector<std::string> rest(log->types.begin() + static_cast<long>(i), log->types.end());
    CHECK_FRAMES(rest, {"end", "close", "terminate"});
  }
  read_eof(fd);
  close(fd);

  // A stale handle.
  netev::ConnectionRef stale(0xdead0003);
  CHECK_THROWS_STATUS(stale.pause(), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(stale.resume(), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(stale.paused(), NETEV_ERR_INVALID_HANDLE);
}

// local_address/local_port against what the other end sees; bind_address
// and bind_port; "" and 0 once ended.
static void local_address_and_bind() {
  auto acc = std::make_shared<Accepted>();
  auto listener = listen_with(netev::Options(), acc);

  auto log = std::make_shared<Log>();
  netev::Options o;
  Log::attach(o, log);
  auto c = netev::Connection::open("127.0.0.1", listener.port(), o);
  auto slog = acc->get(0);
  netev::Connection server = slog->take();
  CHECK(log->wait_type("connection"));
  CHECK_EQ(log->local_address, std::string("127.0.0.1"));
  CHECK(log->local_port != 0);
  CHECK_EQ(log->peer_ip, std::string("127.0.0.1"));
  CHECK_EQ(log->peer_port, listener.port());
  CHECK_EQ(slog->peer_ip, std::string("127.0.0.1"));
  CHECK_EQ(slog->peer_port, log->local_port);
  CHECK_EQ(slog->local_address, std::string("127.0.0.1"));
  CHECK_EQ(slog->local_port, listener.port());
  // The getters outside callbacks, while connected.
  CHECK_EQ(c.local_address(), std::string("127.0.0.1"));
  CHECK_EQ(c.local_port(), log->local_port);
  CHECK_EQ(server.local_port(), listener.port());
  CHECK_EQ(server.port(), log->local_port);  // an accepted connection's port is the peer's
  // Connected: the kernel knows a round-trip time (the handshake's).
  CHECK(c.stats().rtt_us > 0);
  CHECK(server.stats().rtt_us > 0);
  c.shutdown();
  CHECK(log->wait_terminated());
  CHECK(slog->wait_terminated());
  CHECK_EQ(c.local_address(), std::string(""));
  CHECK_EQ(c.local_port(), std::uint16_t{0});
  CHECK_EQ(server.local_address(), std::string(""));
  CHECK_EQ(server.local_port(), std::uint16_t{0});
  CHECK_EQ(c.stats().rtt_us, std::uint32_t{0});  // ended: unknown
  CHECK_EQ(server.stats().rtt_us, std::uint32_t{0});

  // bind: another loopback address and a chosen port.
  std::uint16_t port = free_port("127.0.0.2");
  auto blog = std::make_shared<Log>();
  netev::Options b;
  b.bind("127.0.0.2", port);
  Log::attach(b, blog);
  auto bc = netev::Connection::open("127.0.0.1", listener.port(), b);
  auto sblog = acc->get(1);
  netev::Connection bserver = sblog->take();
  CHECK(blog->wait_type("connection"));
  CHECK_EQ(blog->local_address, std::string("127.0.0.2"));
  CHECK_EQ(blog->local_port, port);
  CHECK_EQ(sblog->peer_ip, std::string("127.0.0.2"));
  CHECK_EQ(sblog->peer_port, port);
  CHECK_EQ(bserver.address(), std::string("127.0.0.2"));
  bc.shutdown();
  CHECK(blog->wait_terminated());

  // bind_address only: any port.
  auto alog = std::make_shared<Log>();
  netev::Options a;
  a.bind("127.0.0.3");
  Log::attach(a, alog);
  auto ac = netev::Connection::open("127.0.0.1", listener.port(), a);
  auto salog = acc->get(2);
  CHECK(alog->wait_type("connection"));
  CHECK_EQ(alog->local_address, std::string("127.0.0.3"));
  CHECK(alog->local_port != 0);
  CHECK(salog->wait_type("connection"));
  CHECK_EQ(salog->peer_ip, std::string("127.0.0.3"));
  CHECK_EQ(salog->peer_port, alog->local_port);
  salog->take();
  ac.shutdown();
  CHECK(alog->wait_terminated());
}

// Options netev refuses: INVALID_ARGUMENT (or NULL_ARGUMENT) at open, no
// callback, no block left; as listener defaults too.
static void bad_options() {
  long blocks = netev::live_callback_blocks();
  auto refused = [](netev::Options o, netev_status want) {
    o.on_terminate = [](ConnectionRef, const Event &) { FAIL("callback of a refused open"); };
    CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 9, o), want);
    netev::ListenerOptions lo;
    lo.bind_address = "127.0.0.1";
    lo.connection_defaults = o;
    CHECK_THROWS_STATUS(netev::Listener::open(0, lo), want);
  };
  refused(netev::Options().delimited(""), NETEV_ERR_INVALID_ARGUMENT);
  refused(netev::Options().delimited(std::string(17, '-')), NETEV_ERR_INVALID_ARGUMENT);
  refused(netev::Options().length_prefixed(3), NETEV_ERR_INVALID_ARGUMENT);
  netev::Options o;
  o.framing = 3;
  refused(o, NETEV_ERR_INVALID_ARGUMENT);
  o = netev::Options();
  o.delimiter = "\n";  // without framing
  refused(o, NETEV_ERR_INVALID_ARGUMENT);
  o = netev::Options().delimited("\n");
  o.length_prefix_bytes = 2;
  refused(o, NETEV_ERR_INVALID_ARGUMENT);
  o = netev::Options().bind("localhost");  // not an IP
  CHECK_THROWS_STATUS(netev::Connection::open("127.0.0.1", 9, o), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_EQ(netev::live_callback_blocks(), blocks);
  // The longest delimiter is fine.
  t::Peer peer(t::Peer::HOLD);
  auto c = netev::Connection::open("127.0.0.1", peer.port(), netev::Options().delimited(std::string(16, '-')));
  c.close();
  CHECK(c.wait(LIMIT));

  CHECK_EQ(std::string(netev_status_name(NETEV_ERR_PROTOCOL)), std::string("NETEV_ERR_PROTOCOL"));
  netev::Error e(NETEV_ERR_PROTOCOL, "x", "m");
  CHECK_EQ(std::string(e.status_name()), std::string("NETEV_ERR_PROTOCOL"));
}

// ---- send_owned -----------------------------------------------------------------

namespace {

// How many allocations each buffer (by id) made, and how many times it
// was freed.
struct Frees {
  std::mutex mu;
  std::map<int, int> allocs, count;
  void allocated(int id) {
    std::lock_guard<std::mutex> g(mu);
    allocs[id]++;
  }
  void freed(int id) {
    std::lock_guard<std::mutex> g(mu);
    count[id]++;
  }
  int of(int id) {
    std::lock_guard<std::mutex> g(mu);
    auto it = count.find(id);
    return it == count.end() ? 0 : it->second;
  }
  int allocs_of(int id) {
    std::lock_guard<std::mutex> g(mu);
    auto it = allocs.find(id);
    return it == allocs.end() ? 0 : it->second;
  }
};
Frees &frees() {
  static Frees f;
  return f;
}

struct CountingDelete {
  int id = 0;
  void operator()(std::uint8_t *p) const {
    frees().freed(id);
    delete[] p;
  }
};
using OwnedPtr = std::unique_ptr<std::uint8_t[], CountingDelete>;

template <class T>
struct CountingAlloc {
  using value_type = T;
  int id = 0;
  CountingAlloc() = default;
  explicit CountingAlloc(int i) : id(i) {}
  template <class U>
  CountingAlloc(const CountingAlloc<U> &o) : id(o.id) {}
  T *allocate(std::size_t n) {
    frees().allocated(id);
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T *p, std::size_t n) {
    frees().freed(id);
    std::allocator<T>().deallocate(p, n);
  }
  template <class U>
  bool operator==(const CountingAlloc<U> &o) const { return id == o.id; }
  template <class U>
  bool operator!=(const CountingAlloc<U> &o) const { return id != o.id; }
};
using OwnedVec = std::vector<std::uint8_t, CountingAlloc<std::uint8_t>>;
using OwnedStr = std::basic_string<char, std::char_traits<char>, CountingAlloc<char>>;

OwnedPtr owned_ptr(int id, const std::string &bytes) {
  OwnedPtr p(new std::uint8_t[bytes.size() + 1], CountingDelete{id});
  frees().allocated(id);
  std::memcpy(p.get(), bytes.data(), bytes.size());
  return p;
}
OwnedVec owned_vec(int id, const std::string &bytes) {
  OwnedVec v{CountingAlloc<std::uint8_t>(id)};
  v.reserve(bytes.size() + 1);  // one allocation, also when empty
  v.assign(bytes.begin(), bytes.end());
  return v;
}

}  // namespace

// Buffers of every size through unique_ptr, vector and string, mixed with
// copying sends, to a netev echo server: echoed byte for byte, each freed
// exactly once. A refused send_owned leaves the buffer with the caller;
// a buffer dropped by close is freed once.
static void send_owned() {
  netev::ListenerOptions lo;
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults.on_data = [](ConnectionRef c, const Event &e) { c.send(e.data()); };
  lo.connection_defaults.send_buffer_limit = 64 << 20;  // never BUFFER_FULL here
  auto listener = netev::Listener::open(0, std::move(lo));

  auto log = std::make_shared<Log>();
  netev::Options o;
  o.no_delay = true;
  o.send_buffer_limit = 64 << 20;
  Log::attach(o, log);
  auto c = netev::Connection::open("127.0.0.1", listener.port(), o);

  const std::vector<std::size_t> sizes = {0, 1, 100, 4095, 4096, 4097, 65537, (1u << 20) + 3, 3u << 20};
  std::string expect;
  std::vector<int> ids;  // buffers netev took
  int id = 0;
  std::size_t off = 0;
  for (std::size_t n : sizes) {
    for (int kind = 0; kind < 3; kind++) {
      std::string b = t::pattern(n, off);
      off += n;
      expect += b;
      ids.push_back(++id);
      if (kind == 0) {
        OwnedPtr p = owned_ptr(id, b);
        c.send_owned(std::move(p), n);
        CHECK(!p);  // moved into netev
      } else if (kind == 1) {
        OwnedVec v = owned_vec(id, b);
        CHECK_EQ(c.try_send_owned(std::move(v)), NETEV_OK);
      } else {
        // A short string allocates nothing: its bytes move with it.
        OwnedStr s(b.begin(), b.end(), CountingAlloc<char>(id));
        c.send_owned(std::move(s));
      }
      std::string copy = "|" + std::to_string(id) + "|";  // a copying send between them
      c.send(copy);
      expect += copy;
    }
  }
  // Plain std types too (nothing to count; the bytes must be exact).
  std::string p5000 = t::pattern(5000, 7);
  std::unique_ptr<std::uint8_t[]> plain(new std::uint8_t[5000]);
  std::memcpy(plain.get(), p5000.data(), 5000);
  c.send_owned(std::move(plain), 5000);
  c.send_owned(std::vector<char>(p5000.begin(), p5000.end()));
  c.send_owned(std::string("short, in place"));
  expect += p5000 + p5000 + "short, in place";

  CHECK(log->wait([&] { return log->data.size() >= expect.size(); }, 60));
  {
    std::lock_guard<std::mutex> g(log->mu);
    CHECK_EQ(log->data.size(), expect.size());
    CHECK(log->data == expect);
  }
  // Written, so freed, each exactly once; every unique_ptr and vector
  // allocated once, a string once or (short) never.
  for (int i : ids) {
    int kind = (i - 1) % 3;
    int allocs = frees().allocs_of(i);
    if (kind < 2) CHECK_EQ(allocs, 1);
    else CHECK(allocs <= 1);
    CHECK(t::wait_until([&] { return frees().of(i) == allocs; }, LIMIT));
  }

  // Refused: the caller keeps the buffer, netev never frees it.
  c.shutdown();
  CHECK(c.wait(LIMIT));
  {
    OwnedPtr keep = owned_ptr(1000, std::string(8192, 'k'));
    std::uint8_t *raw = keep.get();
    CHECK_THROWS_STATUS(c.send_owned(std::move(keep), 8192), NETEV_ERR_CLOSED);
    CHECK(keep.get() == raw);
    CHECK_EQ(keep[8191], std::uint8_t{'k'});
    OwnedVec kv = owned_vec(1001, std::string(8192, 'v'));
    CHECK_EQ(c.try_send_owned(std::move(kv)), NETEV_ERR_CLOSED);
    CHECK_EQ(kv.size(), std::size_t{8192});
    CHECK_EQ(kv[0], std::uint8_t{'v'});
    OwnedStr ks(9000, 's', CountingAlloc<char>(1002));
    CHECK_THROWS_STATUS(c.send_owned(std::move(ks)), NETEV_ERR_CLOSED);
    CHECK(ks == OwnedStr(9000, 's', CountingAlloc<char>(1003)));
    CHECK(log->wait_terminated());
    CHECK_EQ(frees().of(1000), 0);
    CHECK_EQ(frees().of(1001), 0);
    CHECK_EQ(frees().of(1002), 0);
  }  // the caller's to free, here
  CHECK_EQ(frees().of(1000), 1);
  CHECK_EQ(frees().of(1001), 1);
  CHECK_EQ(frees().of(1002), 1);
  for (int i : ids) CHECK_EQ(frees().of(i), frees().allocs_of(i));  // none freed twice

  // Dropped: a peer that reads nothing, a buffer too big for the kernel's
  // buffers, then BUFFER_FULL for the next (left to the caller), then
  // close: the first is freed once.
  t::Peer hold(t::Peer::HOLD);
  auto hlog = std::make_shared<Log>();
  netev::Options ho;
  ho.send_buffer_limit = 64 << 10;
  Log::attach(ho, hlog);
  auto h = netev::Connection::open("127.0.0.1", hold.port(), ho);
  CHECK(hlog->wait_type("connection"));
  {
    OwnedVec bigv{CountingAlloc<std::uint8_t>(2000)};
    bigv.resize(32u << 20, 0x5a);
    h.send_owned(std::move(bigv));  // into an empty queue: taken whole
    OwnedVec next = owned_vec(2001, std::string(8192, 'n'));
    CHECK_THROWS_STATUS(h.send_owned(std::move(next)), NETEV_ERR_BUFFER_FULL);
    CHECK_EQ(next.size(), std::size_t{8192});
    CHECK_EQ(frees().of(2000), 0);  // still being written
    CHECK(h.buffered_amount() > 0);
    h.close();
    CHECK(hlog->wait_terminated());
    CHECK(t::wait_until([] { return frees().of(2000) == 1; }, LIMIT));
    CHECK_EQ(frees().of(2001), 0);
  }
  CHECK_EQ(frees().of(2001), 1);
  CHECK_EQ(frees().of(2000), 1);
}

int main() {
  t::watchdog(120);
  std::printf("netev %s\n", netev::Runtime::version());
  TEST(delimiter_framing);
  TEST(length_prefix_framing);
  TEST(send_frame_round_trip);
  TEST(pause_resume);
  TEST(local_address_and_bind);
  TEST(bad_options);
  TEST(send_owned);
  t::finish();
  return 0;
}
