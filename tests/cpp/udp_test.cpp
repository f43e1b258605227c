// netev::UdpSocket against plain BSD UDP sockets on loopback: datagram
// boundaries (0, 1, 1400 and 65 507 bytes) in, echoed back from the DATA
// callback and sent from the host, the sender's ip and port exact both
// ways; a name ("localhost") and one that does not resolve (ERROR
// NETEV_ERR_HOST_NOT_FOUND, the socket goes on); refused input; close
// freeing the port before it returns; TERMINATE once and last, the block
// freed after it; an exception escaping a callback; a dispatcher-bound
// socket whose callbacks all run on the host's thread.
#include "test_util.hpp"

#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using netev::Event;
using netev::UdpSocket;
using netev::UdpSocketRef;

namespace {

const double LIMIT = 20;  // seconds any single wait may take

const char *loopback_text(int family) { return family == AF_INET ? "127.0.0.1" : "::1"; }

// A loopback socket address of `family` and `port`.
socklen_t loopback(int family, std::uint16_t port, sockaddr_storage &a) {
  std::memset(&a, 0, sizeof a);
  if (family == AF_INET) {
    auto *v4 = reinterpret_cast<sockaddr_in *>(&a);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof *v4;
  }
  auto *v6 = reinterpret_cast<sockaddr_in6 *>(&a);
  v6->sin6_family = AF_INET6;
  v6->sin6_port = htons(port);
  v6->sin6_addr = in6addr_loopback;
  return sizeof *v6;
}

// A UDP socket bound to the loopback address of `family` at `port`: its
// descriptor, or -1 with errno set (the bind's).
int try_bind(int family, std::uint16_t port) {
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  sockaddr_storage a;
  socklen_t len = loopback(family, port, a);
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

bool ipv6_available() {
  int fd = try_bind(AF_INET6, 0);
  if (fd < 0) return false;
  close(fd);
  return true;
}

// A plain BSD UDP peer bound to a loopback address.
class Bsd {
 public:
  explicit Bsd(int family, std::uint16_t port = 0) : family_(family) {
    fd_ = try_bind(family, port);
    if (fd_ < 0) FAIL("bind %s:%u: %s", loopback_text(family), port, std::strerror(errno));
    adopt();
  }
  // Takes a descriptor from try_bind.
  Bsd(int family, int fd, bool) : family_(family), fd_(fd) { adopt(); }
  ~Bsd() { close(fd_); }
  Bsd(const Bsd &) = delete;
  Bsd &operator=(const Bsd &) = delete;

  std::uint16_t port() const { return port_; }
  int fd() const { return fd_; }

  // Sends `bytes` as one datagram to this family's loopback at `port`.
  void send_to(const std::string &bytes, std::uint16_t port) const {
    sockaddr_storage a;
    socklen_t len = loopback(family_, port, a);
    ssize_t n = sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr *>(&a), len);
    if (n != static_cast<ssize_t>(bytes.size())) FAIL("sendto: %zd: %s", n, std::strerror(errno));
  }

  // Receives one datagram within `seconds`: its bytes and sender.
  struct Got {
    bool ok = false;
    std::string bytes, ip;
    std::uint16_t port = 0;
  };
  Got recv(double seconds = LIMIT) const {
    Got g;
    pollfd p{fd_, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(seconds * 1000));
    CHECK(r >= 0);
    if (r == 0) return g;
    std::string buf(65536, '\0');
    sockaddr_storage from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd_, &buf[0], buf.size(), 0, reinterpret_cast<sockaddr *>(&from), &len);
    CHECK(n >= 0);
    buf.resize(static_cast<std::size_t>(n));
    g.ok = true;
    g.bytes = std::move(buf);
    char text[INET6_ADDRSTRLEN];
    if (from.ss_family == AF_INET) {
      auto *v4 = reinterpret_cast<sockaddr_in *>(&from);
      CHECK(inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text));
      g.port = ntohs(v4->sin_port);
    } else {
      auto *v6 = reinterpret_cast<sockaddr_in6 *>(&from);
      CHECK(inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text));
      g.port = ntohs(v6->sin6_port);
    }
    g.ip = text;
    return g;
  }

  // Expects exactly `want` from loopback:`from_port` within LIMIT.
  void expect(const std::string &want, std::uint16_t from_port) const {
    Got g = recv();
    if (!g.ok) FAIL("no datagram of %zu bytes within %.0f s", want.size(), LIMIT);
    CHECK_EQ(g.bytes.size(), want.size());
    CHECK(g.bytes == want);
    CHECK_EQ(g.ip, std::string(loopback_text(family_)));
    CHECK_EQ(g.port, from_port);
  }

 private:
  void adopt() {
    int big = 4 << 20;  // room for a few 64 KiB datagrams
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    sockaddr_storage a;
    socklen_t len = sizeof a;
    CHECK(getsockname(fd_, reinterpret_cast<sockaddr *>(&a), &len) == 0);
    port_ = ntohs(a.ss_family == AF_INET ? reinterpret_cast<sockaddr_in *>(&a)->sin_port
                                         : reinterpret_cast<sockaddr_in6 *>(&a)->sin6_port);
  }

  int family_;
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

// One DATA event, copied.
struct Datagram {
  std::string bytes;
  bool null_data = false;  // event.raw().data == NULL
  std::string ip;
  std::uint16_t port = 0;
};

// Records the events of one UDP socket; shared (by shared_ptr) between the
// test and the callbacks, so it outlives whichever finishes last.
struct UdpLog {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> types;
  std::vector<Datagram> datagrams;
  std::vector<netev_status> errors;
  std::vector<std::string> messages;
  std::vector<std::thread::id> threads;
  std::vector<netev_udp_socket> handles;  // the ref's, per event
  int mismatched_handles = 0;             // event.connection_handle() != ref.handle()
  int running = 0, overlaps = 0, after_terminate = 0, terminates = 0;

  void enter(UdpSocketRef s, const Event &e) {
    std::lock_guard<std::mutex> g(mu);
    if (running++) overlaps++;
    if (terminates) after_terminate++;
    types.push_back(e.type_name());
    threads.push_back(std::this_thread::get_id());
    handles.push_back(s.handle());
    if (e.connection_handle() != s.handle()) mismatched_handles++;
    if (e.type() == NETEV_EVENT_DATA) {
      Datagram d;
      d.bytes.assign(e.data().data(), e.data().size());
      d.null_data = e.raw().data == nullptr;
      d.ip = std::string(e.ip());
      d.port = e.port();
      datagrams.push_back(std::move(d));
    }
    if (e.type() == NETEV_EVENT_ERROR) {
      errors.push_back(e.error());
      messages.emplace_back(e.message());
    }
    if (e.type() == NETEV_EVENT_TERMINATE) terminates++;
  }
  void leave() {
    std::lock_guard<std::mutex> g(mu);
    running--;
    cv.notify_all();
  }

  // Options whose three callbacks record here; `also` runs in between.
  static netev::UdpOptions options(const std::shared_ptr<UdpLog> &log,
                                   std::function<void(UdpSocketRef, const Event &)> also = {}) {
    netev::UdpOptions o;
    auto h = [log, also](UdpSocketRef s, const Event &e) {
      log->enter(s, e);
      struct Leave {
        UdpLog *l;
        ~Leave() { l->leave(); }
      } leave{log.get()};
      if (also) also(s, e);
    };
    o.on_data = o.on_error = o.on_terminate = h;
    return o;
  }

  bool wait(const std::function<bool()> &pred, double seconds = LIMIT) {
    std::unique_lock<std::mutex> g(mu);
    return cv.wait_for(g, std::chrono::duration<double>(seconds), pred);
  }
  bool wait_datagrams(std::size_t n) {
    return wait([&] { return datagrams.size() >= n; });
  }
  bool wait_terminated() {
    return wait([&] { return terminates > 0 && running == 0; });
  }
  Datagram datagram(std::size_t i) {
    std::lock_guard<std::mutex> g(mu);
    CHECK(i < datagrams.size());
    return datagrams[i];
  }
  std::string sequence() {
    std::lock_guard<std::mutex> g(mu);
    std::string s;
    for (auto &t : types) s += (s.empty() ? "" : " ") + t;
    return s;
  }
  std::size_t count(const std::string &type) {
    std::lock_guard<std::mutex> g(mu);
    std::size_t n = 0;
    for (auto &t : types) n += t == type;
    return n;
  }
  // Every callback ran with the socket `h`, one at a time, none after TERMINATE.
  void check_clean(netev_udp_socket h) {
    std::lock_guard<std::mutex> g(mu);
    for (auto x : handles) CHECK_EQ(x, h);
    CHECK_EQ(mismatched_handles, 0);
    CHECK_EQ(overlaps, 0);
    CHECK_EQ(after_terminate, 0);
  }
};

// Answers every DATA to its sender, from the callback.
void echo(UdpSocketRef s, const Event &e) {
  if (e.type() == NETEV_EVENT_DATA) s.send(e.data(), e.raw().ip, e.port());
}

// After its TERMINATE was seen, releases `sock` and waits until netev freed
// every callback block: the socket's user_data_free ran, so no callback of
// it can come any more and the log is final.
void release_and_settle(UdpSocket &sock) {
  sock.reset();
  CHECK(t::wait_until([] { return netev::live_callback_blocks() == 0; }, LIMIT));
}

const std::size_t SIZES[] = {0, 1, 1400, 65507};

// BSD -> netev -> back (echoed by the DATA callback), then netev -> BSD
// from this thread, for every size; an IPv6 sender on the same socket.
void boundaries() {
  auto log = std::make_shared<UdpLog>();
  UdpSocket sock = UdpSocket::open(0, UdpLog::options(log, echo));
  CHECK(sock);
  const std::uint16_t port = sock.port();
  CHECK(port != 0);
  Bsd peer(AF_INET);

  for (std::size_t i = 0; i < sizeof SIZES / sizeof SIZES[0]; i++) {
    const std::string payload = t::pattern(SIZES[i], i * 1000);
    peer.send_to(payload, port);
    // one at a time: the test must not rely on buffers holding several
    // 64 KiB datagrams
    if (!log->wait_datagrams(i + 1)) FAIL("datagram %zu (%zu bytes) did not arrive", i, SIZES[i]);
    Datagram d = log->datagram(i);
    CHECK_EQ(d.bytes.size(), SIZES[i]);
    CHECK(d.bytes == payload);
    CHECK_EQ(d.null_data, SIZES[i] == 0);  // an empty datagram: data NULL, len 0
    CHECK_EQ(d.ip, std::string("127.0.0.1"));
    CHECK_EQ(d.port, peer.port());
    peer.expect(payload, port);  // the echo, whole, from the socket's port
  }
  CHECK_EQ(log->count("data"), std::size_t(4));

  for (std::size_t i = 0; i < sizeof SIZES / sizeof SIZES[0]; i++) {
    const std::string payload = t::pattern(SIZES[i], i * 1000 + 7);
    sock.send(payload, "127.0.0.1", peer.port());
    peer.expect(payload, port);
  }
  // the other overloads: bytes and length, a std::string host, try_send
  sock.send(nullptr, 0, std::string("127.0.0.1"), peer.port());
  peer.expect("", port);
  CHECK_EQ(sock.try_send("try", "127.0.0.1", peer.port()), NETEV_OK);
  peer.expect("try", port);
  CHECK_EQ(sock.ref().try_send("ref", 3, std::string("127.0.0.1"), peer.port()), NETEV_OK);
  peer.expect("ref", port);

  if (ipv6_available()) {
    Bsd six(AF_INET6);
    six.send_to("six", port);
    CHECK(log->wait_datagrams(5));
    Datagram d = log->datagram(4);
    CHECK_EQ(d.bytes, std::string("six"));
    CHECK_EQ(d.ip, std::string("::1"));
    CHECK_EQ(d.port, six.port());
    six.expect("six", port);
  }

  CHECK(sock.errors().empty());
  sock.close();
  CHECK(log->wait_terminated());
  release_and_settle(sock);
  CHECK_EQ(log->count("terminate"), std::size_t(1));
  CHECK_EQ(log->count("error"), std::size_t(0));
  log->check_clean(log->handles.front());
}

// The loopback families "localhost" has, in getaddrinfo's order.
std::vector<int> localhost_families() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo *res = nullptr;
  int r = getaddrinfo("localhost", nullptr, &hints, &res);
  if (r != 0) FAIL("getaddrinfo(localhost): %s", gai_strerror(r));
  std::vector<int> v;
  for (addrinfo *a = res; a; a = a->ai_next)
    if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
        std::find(v.begin(), v.end(), a->ai_family) == v.end())
      v.push_back(a->ai_family);
  freeaddrinfo(res);
  CHECK(!v.empty());
  return v;
}

// A datagram to "localhost" reaches a peer on the loopback port; one to a
// name that does not resolve is an ERROR, and the socket goes on.
void names() {
  auto log = std::make_shared<UdpLog>();
  UdpSocket sock = UdpSocket::open(0, UdpLog::options(log));
  const std::uint16_t port = sock.port();

  // Which of localhost's addresses netev uses is not the test's business:
  // a peer listens on the same port of each loopback address it has.
  std::vector<int> families = localhost_families();
  std::vector<std::unique_ptr<Bsd>> peers;
  for (int attempt = 0; attempt < 20 && peers.size() < families.size(); attempt++) {
    peers.clear();
    peers.push_back(std::make_unique<Bsd>(families[0]));
    std::uint16_t p = peers[0]->port();
    for (std::size_t i = 1; i < families.size(); i++) {
      int fd = try_bind(families[i], p);
      if (fd < 0) break;  // that port is taken there: another one
      peers.push_back(std::make_unique<Bsd>(families[i], fd, true));
    }
  }
  CHECK_EQ(peers.size(), families.size());
  sock.send("by-name", "localhost", peers[0]->port());
  std::vector<pollfd> fds;
  for (auto &p : peers) fds.push_back(pollfd{p->fd(), POLLIN, 0});
  int r = poll(fds.data(), fds.size(), static_cast<int>(LIMIT * 1000));
  if (r <= 0) FAIL("nothing arrived for localhost");
  std::size_t which = 0;
  while (!(fds[which].revents & POLLIN)) which++;
  peers[which]->expect("by-name", port);

  // a name that does not resolve
  sock.send("lost", "no-such-host.invalid", 9);
  if (!log->wait([&] { return !log->errors.empty(); })) FAIL("no ERROR for no-such-host.invalid");
  {
    std::lock_guard<std::mutex> g(log->mu);
    CHECK_EQ(log->errors.size(), std::size_t(1));
    CHECK_EQ(log->errors[0], NETEV_ERR_HOST_NOT_FOUND);
    CHECK(log->messages[0].find("no-such-host.invalid") != std::string::npos);
  }
  auto errs = sock.errors();
  CHECK_EQ(errs.size(), std::size_t(1));
  CHECK_EQ(errs[0].code, NETEV_ERR_HOST_NOT_FOUND);
  CHECK_EQ(errs[0].component, std::string("dns"));
  CHECK(errs[0].message.find("no-such-host.invalid") != std::string::npos);

  // the socket goes on, both ways
  CHECK_EQ(log->count("terminate"), std::size_t(0));
  Bsd peer(AF_INET);
  peer.send_to("still here", port);
  CHECK(log->wait_datagrams(1));
  CHECK_EQ(log->datagram(0).bytes, std::string("still here"));
  CHECK_EQ(log->datagram(0).port, peer.port());
  sock.send("and back", "127.0.0.1", peer.port());
  peer.expect("and back", port);

  sock.close();
  CHECK(log->wait_terminated());
  release_and_settle(sock);
  CHECK_EQ(log->sequence(), std::string("error data terminate"));
  log->check_clean(log->handles.front());
}

// Refused calls throw (try_send returns) the header's statuses; each
// refused send is in the errors list; a refused open frees the callbacks.
void bad_input() {
  auto log = std::make_shared<UdpLog>();
  UdpSocket sock = UdpSocket::open(0, UdpLog::options(log));
  const std::string big(65508, 'x');
  CHECK_THROWS_STATUS(sock.send(big, "127.0.0.1", 9), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_EQ(sock.try_send(big, "127.0.0.1", 9), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.send("x", "127.0.0.1", 0), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.send("x", "", 9), NETEV_ERR_INVALID_ARGUMENT);
  auto errs = sock.errors();
  CHECK_EQ(errs.size(), std::size_t(4));
  for (auto &e : errs) CHECK_EQ(e.code, NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.join_multicast("127.0.0.1"), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.join_multicast("239.1.2.3", "nope"), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.leave_multicast("127.0.0.1"), NETEV_ERR_INVALID_ARGUMENT);
  // A NUL would cut the text short (another host or group than the
  // caller's): the wrapper refuses it before netev sees it.
  const std::string nul_host("127.0.0.1\0.evil", 15);
  CHECK_THROWS_STATUS(sock.send("x", nul_host, 9), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_EQ(sock.try_send("x", nul_host, 9), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.join_multicast(std::string("239.255.1.2\0", 12), "127.0.0.1"),
                      NETEV_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_STATUS(sock.leave_multicast("239.255.1.2", nul_host), NETEV_ERR_INVALID_ARGUMENT);
  sock.join_multicast("239.255.1.2", "127.0.0.1");  // on the loopback interface
  sock.leave_multicast("239.255.1.2", "127.0.0.1");
  try {
    sock.send(big, "127.0.0.1", 9);
    FAIL("no exception");
  } catch (const netev::Error &e) {
    CHECK(!e.message().empty());
    CHECK(std::string(e.what()).find("netev_udp_send: NETEV_ERR_INVALID_ARGUMENT") == 0);
  }

  // a refused open: no callback fires, the block is freed at once
  const long blocks = netev::live_callback_blocks();
  auto none = std::make_shared<UdpLog>();
  CHECK_THROWS_STATUS(UdpSocket::open(sock.port(), UdpLog::options(none)), NETEV_ERR_ADDRESS_IN_USE);
  netev::UdpOptions o = UdpLog::options(none);
  o.bind_address = "not-an-ip";
  CHECK_THROWS_STATUS(UdpSocket::open(0, o), NETEV_ERR_INVALID_ARGUMENT);
  o.bind_address.clear();
  o.dispatcher = 12345;
  CHECK_THROWS_STATUS(UdpSocket::open(0, o), NETEV_ERR_INVALID_HANDLE);
  CHECK_EQ(netev::live_callback_blocks(), blocks);
  CHECK_EQ(none.use_count(), 4L);  // this one and o's three callbacks: netev kept no copy

  // an empty object
  UdpSocket empty;
  CHECK(!empty);
  CHECK_THROWS_STATUS(empty.port(), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(empty.send("x", "127.0.0.1", 9), NETEV_ERR_INVALID_HANDLE);
  CHECK_EQ(empty.try_send("x", "127.0.0.1", 9), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(empty.close(), NETEV_ERR_INVALID_HANDLE);
  CHECK_THROWS_STATUS(empty.errors(), NETEV_ERR_INVALID_HANDLE);
  empty.reset();  // harmless

  // bound to one address; no callbacks at all
  UdpSocket quiet = UdpSocket::open(0, [] {
    netev::UdpOptions q;
    q.bind_address = "127.0.0.1";
    return q;
  }());
  Bsd peer(AF_INET);
  quiet.send("quiet", "127.0.0.1", peer.port());
  peer.expect("quiet", quiet.port());

  sock.close();
  CHECK(log->wait_terminated());
  release_and_settle(sock);
  CHECK_EQ(log->sequence(), std::string("terminate"));
}

// close: the port is free when it returns, TERMINATE follows once and
// last, sends are refused; the destructor of an open socket closes it.
void close_and_release() {
  auto log = std::make_shared<UdpLog>();
  UdpSocket sock = UdpSocket::open(0, UdpLog::options(log));
  const std::uint16_t port = sock.port();
  netev_udp_socket h = sock.handle();

  // taken while open (a dual-stack socket holds the IPv4 port too)
  CHECK_EQ(try_bind(AF_INET, port), -1);
  CHECK_EQ(errno, EADDRINUSE);

  Bsd peer(AF_INET);
  peer.send_to("before", port);
  CHECK(log->wait_datagrams(1));

  sock.close();
  int fd = try_bind(AF_INET, port);  // right after close returned
  if (fd < 0) FAIL("port %u still bound after close: %s", port, std::strerror(errno));
  close(fd);
  if (ipv6_available()) {
    fd = try_bind(AF_INET6, port);
    if (fd < 0) FAIL("[::1]:%u still bound after close: %s", port, std::strerror(errno));
    close(fd);
  }
  sock.close();  // harmless again
  CHECK_THROWS_STATUS(sock.send("late", "127.0.0.1", peer.port()), NETEV_ERR_CLOSED);
  CHECK_EQ(sock.try_send("late", "127.0.0.1", peer.port()), NETEV_ERR_CLOSED);
  CHECK(log->wait_terminated());
  CHECK_EQ(sock.port(), port);  // the handle stays valid until released
  release_and_settle(sock);
  CHECK_EQ(log->sequence(), std::string("data terminate"));
  log->check_clean(h);

  // the destructor of an open socket: TERMINATE still comes, then the block goes
  auto log2 = std::make_shared<UdpLog>();
  std::uint16_t port2 = 0;
  {
    UdpSocket a = UdpSocket::open(0, UdpLog::options(log2));
    port2 = a.port();
    UdpSocket b = std::move(a);  // the moved-from one releases nothing
    CHECK(!a);
    a.reset();
    CHECK_EQ(b.port(), port2);
    UdpSocket c;
    c = std::move(b);
    CHECK_EQ(c.port(), port2);
  }
  CHECK(log2->wait_terminated());
  CHECK(t::wait_until([] { return netev::live_callback_blocks() == 0; }, LIMIT));
  CHECK_EQ(log2->sequence(), std::string("terminate"));
  fd = try_bind(AF_INET, port2);
  CHECK(fd >= 0);
  close(fd);

  // detach: the caller owns the handle
  UdpSocket d = UdpSocket::open(0);
  netev_udp_socket raw = d.detach();
  CHECK(!d);
  CHECK_EQ(netev_udp_release(raw), NETEV_OK);
}

std::atomic<netev_udp_socket> failed_socket{0};
std::atomic<int> failed_type{0};
void udp_handler(const netev::CallbackFailure &f) {
  t::counting_handler(f);
  failed_socket = f.udp_socket;
  failed_type = f.event_type;
  CHECK_EQ(f.connection, netev_connection(0));
  CHECK_EQ(f.listener, netev_listener(0));
}

// An exception escaping a UDP callback goes to the handler; the socket goes on.
void callback_exception() {
  auto prev = netev::set_callback_exception_handler(&udp_handler);
  t::caught_exceptions() = 0;
  auto log = std::make_shared<UdpLog>();
  UdpSocket sock = UdpSocket::open(0, UdpLog::options(log, [](UdpSocketRef, const Event &e) {
                                     if (e.data() == "boom") throw std::runtime_error("boom");
                                   }));
  Bsd peer(AF_INET);
  peer.send_to("boom", sock.port());
  CHECK(log->wait_datagrams(1));
  peer.send_to("fine", sock.port());
  CHECK(log->wait_datagrams(2));
  CHECK_EQ(log->datagram(1).bytes, std::string("fine"));
  // callbacks of one socket never overlap: the handler ran before "fine"'s DATA
  CHECK_EQ(t::caught_exceptions().load(), 1);
  CHECK_EQ(failed_socket.load(), sock.handle());
  CHECK_EQ(failed_type.load(), int(NETEV_EVENT_DATA));
  CHECK_EQ(log->count("terminate"), std::size_t(0));
  sock.send("alive", "127.0.0.1", peer.port());
  peer.expect("alive", sock.port());
  sock.close();
  CHECK(log->wait_terminated());
  release_and_settle(sock);
  CHECK_EQ(t::caught_exceptions().load(), 1);
  netev::set_callback_exception_handler(prev);
}

// Runs `d` on this thread until `pred` holds or LIMIT passes.
bool pump(const netev::Dispatcher &d, const std::function<bool()> &pred) {
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(LIMIT);
  while (!pred() && std::chrono::steady_clock::now() < end) {
    pollfd p{d.fd(), POLLIN, 0};
    int r = poll(&p, 1, 100);
    CHECK(r >= 0);
    if (r > 0) d.run(0);
  }
  return pred();
}

// Every callback of a dispatcher-bound socket runs on the thread that
// runs the dispatcher, and only when it runs it.
void dispatcher() {
  const std::thread::id me = std::this_thread::get_id();
  auto d = netev::Dispatcher::create();
  auto log = std::make_shared<UdpLog>();
  netev::UdpOptions o = UdpLog::options(log, echo);
  o.dispatcher = d.handle();
  UdpSocket sock = UdpSocket::open(0, std::move(o));
  const std::uint16_t port = sock.port();
  Bsd peer(AF_INET);

  peer.send_to("ping", port);
  sock.send("lost", "no-such-host.invalid", 9);
  CHECK_EQ(log->sequence(), std::string(""));  // nothing runs until this thread dispatches
  CHECK(pump(d, [&] { return log->count("data") == 1 && log->count("error") == 1; }));
  Datagram got = log->datagram(0);
  CHECK_EQ(got.bytes, std::string("ping"));
  CHECK_EQ(got.ip, std::string("127.0.0.1"));
  CHECK_EQ(got.port, peer.port());
  peer.expect("ping", port);  // echoed from the callback on this thread
  {
    std::lock_guard<std::mutex> g(log->mu);
    CHECK_EQ(log->errors[0], NETEV_ERR_HOST_NOT_FOUND);
  }

  sock.close();
  CHECK_EQ(log->count("terminate"), std::size_t(0));  // queued for this thread
  CHECK(pump(d, [&] { return log->count("terminate") == 1; }));
  sock.reset();
  CHECK(pump(d, [] { return netev::live_callback_blocks() == 0; }));
  CHECK_EQ(log->count("terminate"), std::size_t(1));
  CHECK_EQ(log->types.back(), std::string("terminate"));
  log->check_clean(log->handles.front());
  for (auto &id : log->threads) CHECK(id == me);

  // releasing the dispatcher closes its sockets: TERMINATE runs here
  auto log2 = std::make_shared<UdpLog>();
  netev::UdpOptions o2 = UdpLog::options(log2);
  o2.dispatcher = d.handle();
  UdpSocket sock2 = UdpSocket::open(0, std::move(o2));
  d.reset();
  CHECK_EQ(log2->sequence(), std::string("terminate"));
  CHECK(log2->threads[0] == me);
  CHECK_THROWS_STATUS(sock2.send("x", "127.0.0.1", peer.port()), NETEV_ERR_CLOSED);
  release_and_settle(sock2);
}

}  // namespace

int main() {
  t::watchdog(120);
  TEST(boundaries);
  TEST(names);
  TEST(bad_input);
  TEST(close_and_release);
  TEST(callback_exception);
  TEST(dispatcher);
  t::finish();
  return 0;
}
