/// \file netev.hpp
/// \brief netev.hpp: a header-only C++17 layer over netev.h.
///
/// Written by hand (netev.h is generated); netev.h stays the API reference:
/// every wrapper here is one netev_* call, and its rules apply unchanged.
///
/// - netev::Connection, netev::Listener, netev::UdpSocket, netev::Dispatcher:
///   move-only owners of a handle; the destructor releases it (never
///   throws).
/// - netev::ConnectionRef, netev::UdpSocketRef: copyable, non-owning
///   handles: what callbacks get.
/// - netev::Event: a view of one event, valid during the callback.
/// - netev::Error: thrown by every wrapper on a non-OK status.
/// - netev::log_open, log_close, set_log_callback: the lifecycle log.
///
/// Errors are exceptions, not expected-style returns: C++17 has no
/// std::expected, a home-made one would be one more type for every caller
/// to learn, and what fails here (a bad argument, a stale handle, a port in
/// use, a send after close) is exceptional in a correct program; the one
/// status a correct program meets in normal flow, NETEV_ERR_BUFFER_FULL
/// (and CLOSED racing the peer), is also available without exceptions
/// through try_send().
///
/// Text arguments (addresses, hosts, groups, paths, PEM, ALPN) are
/// std::string, handed to netev as C strings. One holding a NUL byte would
/// be cut short there, naming another host or file than the caller's, so
/// the wrappers refuse it: Error with NETEV_ERR_INVALID_ARGUMENT, or that
/// status from a try_ variant.
///
/// Callbacks and lifetimes. The std::function callbacks of a connection live
/// in a heap block handed to netev as user_data, with user_data_free
/// deleting it: netev owns that block, calls the callbacks from it and frees
/// it exactly once, after TERMINATE. So destroying a Connection (= release)
/// while it still runs is safe: netev closes it, CLOSE and TERMINATE still
/// reach the callbacks (later, on netev's thread), then the block and every
/// capture in it is destroyed. What the callbacks capture by reference must
/// therefore outlive TERMINATE, not the Connection object: capture by value
/// or shared_ptr, or call netev::Runtime::shutdown() (which runs every
/// TERMINATE) before destroying it. A listener's block (its callbacks and
/// connection defaults) is freed after the listener's TERMINATE; each
/// accepted connection gets its own copy of the defaults' callbacks. A UDP
/// socket's block is freed as a connection's: after its TERMINATE.
///
/// Exceptions thrown by a callback never unwind into netev: each trampoline
/// catches everything. The exception is swallowed: there is no C++ caller to
/// rethrow it to (callbacks run on netev's I/O threads or inside a dispatcher
/// run), and storing it for a later call would surface it far from its cause
/// and on an arbitrary thread. Instead it is handed to the callback
/// exception handler (set_callback_exception_handler; the default prints one
/// line to stderr), and then:
/// - a connection callback's connection is closed (its state is unknown):
///   CLOSE and TERMINATE follow as for netev_connection_close;
/// - a listener's on_connection rejects the incoming connection;
/// - a listener's on_error / on_terminate: nothing more (its block is
///   still freed after TERMINATE);
/// - a UDP socket's callback: nothing more, the socket goes on. Unlike a
///   connection's stream, a datagram leaves no state behind that the
///   exception could have broken, and closing the socket would let any
///   sender of one bad datagram end it for every other peer.
/// - the log callback: nothing more, it stays installed and gets the next
///   line (a line is a report, nothing is left half-done by a failure).

#ifndef NETEV_HPP
#define NETEV_HPP

#include <netev.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

/// netev's C++ API: the wrappers over netev.h's handles and calls.
namespace netev {

// ---- errors ---------------------------------------------------------------

/// A failed netev call: status() is the netev_status, message() netev's own
/// words (netev_last_error_message), what() `"<call>: <STATUS_NAME>: <message>"`.
class Error : public std::runtime_error {
 public:
  /// The failure of `call` (the netev_* function's name), which returned
  /// `status`, with netev's `message` for it. The wrappers throw it; a
  /// host rarely builds one.
  Error(netev_status status, const std::string &call, std::string message)
      : Error(status, call, without_status(status, std::move(message)), 0) {}

  /// The status the call returned (never NETEV_OK).
  netev_status status() const noexcept { return status_; }
  /// The status's identifier, "NETEV_ERR_TIMEOUT" say (netev_status_name):
  /// static, never null.
  const char *status_name() const noexcept { return netev_status_name(status_); }
  /// netev's words for the failure (netev_last_error_message, read right
  /// after the call), without the call and status that what() adds.
  const std::string &message() const noexcept { return message_; }

 private:
  netev_status status_;
  std::string message_;

  Error(netev_status status, const std::string &call, std::string message, int)
      : std::runtime_error(call + ": " + netev_status_name(status) + ": " + message),
        status_(status),
        message_(std::move(message)) {}
  // netev_last_error_message starts with the status's name, which what()
  // already shows once.
  static std::string without_status(netev_status status, std::string message) {
    std::string prefix = std::string(netev_status_name(status)) + ": ";
    if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
    return message;
  }
};

/// \cond INTERNAL
namespace detail {

// The calling thread's last netev failure, in words.
inline std::string last_error_message() {
  char buf[512];
  size_t need = netev_last_error_message(buf, sizeof buf);
  if (need < sizeof buf) return std::string(buf, need);
  std::string s(need + 1, '\0');
  netev_last_error_message(&s[0], s.size());
  s.resize(need);
  return s;
}

// Text for a C string parameter: a NUL inside would cut it short there,
// naming another host or file than the caller's, so it is refused.
inline bool has_nul(const std::string &s) noexcept { return s.find('\0') != std::string::npos; }

inline const char *c_text(const std::string &s, const char *call, const char *what) {
  if (has_nul(s)) throw Error(NETEV_ERR_INVALID_ARGUMENT, call, std::string(what) + " contains a NUL byte");
  return s.c_str();
}

// Throws netev::Error for a non-OK status. Reads the message at once: it is
// per thread and the next failing call would replace it.
inline void check(netev_status status, const char *call) {
  if (status != NETEV_OK) throw Error(status, call, last_error_message());
}

}  // namespace detail
/// \endcond

/// One entry of an object's errors list (4D's errors collection), a copy
/// of netev_error_info, as the errors() functions return them.
struct ErrorInfo {
  netev_status code = NETEV_OK;  ///< The status of the failure.
  int os_error = 0;              ///< errno, or 0.
  std::string message;           ///< netev's words for the failure.
  std::string component;  ///< Who reported it: "netev", "os", "dns", "tls", "framing".
};

/// A connection's counters (netev_connection_stats), as stats() reads them.
/// Fields a library older than this header does not fill read 0.
struct Stats {
  /// Bytes written to the socket (plain TCP), or plaintext handed to TLS.
  std::uint64_t bytes_sent = 0;
  /// Bytes read from the socket (plain TCP), or plaintext out of TLS.
  std::uint64_t bytes_received = 0;
  std::uint64_t data_events = 0;     ///< DATA callbacks run.
  std::size_t buffered_amount = 0;   ///< As buffered_amount(), in bytes.
  std::uint32_t rtt_us = 0;          ///< The kernel's smoothed RTT in microseconds; 0 when unknown.
};

// ---- the event --------------------------------------------------------------

class ConnectionRef;

/// Bytes borrowed from an event: a span-ish pair.
struct Bytes {
  const std::uint8_t *data = nullptr;  ///< The first byte; null when the event carries none.
  std::size_t size = 0;                ///< How many bytes.
  /// `data`: with end(), a range for range-for loops and algorithms.
  const std::uint8_t *begin() const noexcept { return data; }
  /// `data + size`, one past the last byte.
  const std::uint8_t *end() const noexcept { return data + size; }
  /// Whether there is no byte (`size` 0).
  bool empty() const noexcept { return size == 0; }
};

/// A view of one netev_event. It and everything it returns (data(), bytes(),
/// ip(), message()) is borrowed until the callback returns: copy what you
/// keep. Not copyable, so that it is not kept by mistake.
class Event {
 public:
  /// A view of `e`, which must outlive it (the wrappers' trampolines wrap
  /// the event netev hands them).
  explicit Event(const netev_event &e) noexcept : e_(e) {}
  Event(const Event &) = delete;
  Event &operator=(const Event &) = delete;

  /// What happened: NETEV_EVENT_CONNECTION, NETEV_EVENT_DATA, ...
  netev_event_type type() const noexcept { return e_.type; }
  /// The type's 4D name: "connection", "data", "error", "close",
  /// "terminate", "drain", "end".
  const char *type_name() const noexcept { return netev_event_type_name(e_.type); }
  /// The connection concerned; 0 for listener-only events. A UDP socket's
  /// events carry the socket's handle here: use the UdpSocketRef its
  /// callbacks receive, not connection().
  netev_connection connection_handle() const noexcept { return e_.connection; }
  /// connection_handle() as a non-owning ConnectionRef (not for UDP
  /// events: see connection_handle()).
  inline ConnectionRef connection() const noexcept;
  /// DATA: the bytes received (empty otherwise; an empty datagram too).
  std::string_view data() const noexcept {
    return e_.data ? std::string_view(reinterpret_cast<const char *>(e_.data), e_.data_len)
                   : std::string_view();
  }
  /// data() as unsigned bytes.
  Bytes bytes() const noexcept { return e_.data ? Bytes{e_.data, e_.data_len} : Bytes{}; }
  /// Remote IP as text ("" when unknown): the peer's, or a datagram's
  /// sender.
  std::string_view ip() const noexcept {
    const void *nul = std::memchr(e_.ip, 0, sizeof e_.ip);
    return std::string_view(e_.ip, nul ? static_cast<std::size_t>(static_cast<const char *>(nul) - e_.ip)
                                       : sizeof e_.ip);
  }
  /// Remote port (0 when unknown).
  std::uint16_t port() const noexcept { return e_.port; }
  /// ERROR only: the status, errno and netev's words; OK, 0, "" otherwise.
  netev_status error() const noexcept { return e_.error; }
  /// ERROR only: errno, or 0.
  int os_error() const noexcept { return e_.os_error; }
  /// ERROR only: netev's words for the failure; "" otherwise.
  std::string_view message() const noexcept {
    return e_.message ? std::string_view(e_.message) : std::string_view();
  }
  /// The netev_event itself, borrowed as the view is.
  const netev_event &raw() const noexcept { return e_; }

 private:
  const netev_event &e_;
};

// ---- callback exceptions ------------------------------------------------------

/// What a trampoline caught. `event_type` is the event being delivered;
/// `connection` / `listener` / `udp_socket` the object concerned (0 for the
/// other kinds). `log_callback` is true for the log callback, which has no
/// event or object (event_type 0, handles 0).
struct CallbackFailure {
  std::exception_ptr exception;      ///< What the callback threw (rethrow it to inspect it).
  netev_event_type event_type;       ///< The event being delivered; 0 for the log callback.
  netev_connection connection;       ///< The connection whose callback threw; 0 otherwise.
  netev_listener listener;           ///< The listener whose callback threw; 0 otherwise.
  netev_udp_socket udp_socket = 0;   ///< The UDP socket whose callback threw; 0 otherwise.
  bool log_callback = false;         ///< Whether the log callback threw.
};

/// The handler of exceptions escaping callbacks
/// (set_callback_exception_handler). Called on the callback's thread,
/// possibly concurrently; must not throw (whatever it throws is dropped).
using CallbackExceptionHandler = void (*)(const CallbackFailure &);

/// \cond INTERNAL
namespace detail {

inline void default_exception_handler(const CallbackFailure &f) {
  std::string what = "unknown exception";
  try {
    std::rethrow_exception(f.exception);
  } catch (const std::exception &e) {
    what = e.what();
  } catch (...) {
  }
  if (f.log_callback) {
    std::fprintf(stderr, "netev: exception escaped the log callback: %s\n", what.c_str());
    return;
  }
  const char *kind = f.udp_socket ? "udp socket" : f.listener ? "listener" : "connection";
  netev_connection id = f.udp_socket ? f.udp_socket : f.listener ? f.listener : f.connection;
  std::fprintf(stderr, "netev: exception escaped a %s callback of %s %llu: %s\n",
               netev_event_type_name(f.event_type), kind, static_cast<unsigned long long>(id),
               what.c_str());
}

inline std::atomic<CallbackExceptionHandler> &exception_handler() {
  static std::atomic<CallbackExceptionHandler> h{&default_exception_handler};
  return h;
}

// Inside a catch block: hands the current exception to the handler.
inline void report_current_exception(netev_event_type type, netev_connection conn,
                                     netev_listener listener, netev_udp_socket udp = 0,
                                     bool log_callback = false) noexcept {
  try {
    CallbackFailure f{std::current_exception(), type, conn, listener, udp, log_callback};
    CallbackExceptionHandler h = exception_handler().load();
    if (h) h(f);
  } catch (...) {
  }
}

// Callback blocks alive (connections', listeners' and UDP sockets'): for
// tests and leak hunting. Never negative: each block is freed exactly once.
inline std::atomic<long> &live_blocks() {
  static std::atomic<long> n{0};
  return n;
}

}  // namespace detail
/// \endcond

/// Replaces the handler of exceptions escaping callbacks (nullptr: drop them
/// silently); returns the previous one.
inline CallbackExceptionHandler set_callback_exception_handler(CallbackExceptionHandler h) noexcept {
  return detail::exception_handler().exchange(h);
}

/// How many callback blocks netev still owns (connections, listeners and UDP
/// sockets not yet past TERMINATE). 0 after Runtime::shutdown.
inline long live_callback_blocks() noexcept { return detail::live_blocks().load(); }

// ---- connections -------------------------------------------------------------

class Connection;

namespace detail {

/// \cond INTERNAL
// A buffer lent to netev_connection_send_owned: netev frees it through
// free() (its free_fn), exactly once, on any thread.
template <class T>
struct OwnedBuffer {
  T value;
  static void free(void *p) noexcept { delete static_cast<OwnedBuffer *>(p); }
};

// Moves `value` into an OwnedBuffer, whose bytes (`data_of(buffer's value)`,
// `len`) netev then sends without copying. NETEV_OK: netev owns the buffer
// (`value` is moved-from, and the buffer may already be freed). Any other
// status: netev did not take it and `value` holds it again, untouched.
template <class T, class DataOf>
netev_status send_owned_buffer(netev_connection conn, T &value, std::size_t len, DataOf data_of) {
  auto *b = new OwnedBuffer<T>{std::move(value)};
  // After this call `b` belongs to netev: free() may run at once, on any
  // thread, even before it returns. Only a failure leaves it ours.
  netev_status st = netev_connection_send_owned(conn, data_of(b->value), len, &OwnedBuffer<T>::free, b);
  if (st != NETEV_OK) {
    value = std::move(b->value);
    delete b;  // moved-from: frees nothing, calls no netev function
  }
  return st;
}

template <class T>
constexpr bool is_byte = sizeof(T) == 1 && std::is_trivially_copyable<T>::value;
/// \endcond

/// The operations on a connection handle, shared by the owning Connection
/// and the non-owning ConnectionRef. D provides handle().
///
/// Each is the netev_connection_* call of the same name on handle(), and
/// its rules apply. Those that fail throw Error; the try_ ones return the
/// status instead. The properties (address() to errors()) are readable
/// until the handle is released, also after the connection ended.
template <class D>
class ConnectionOps {
 public:
  /// Queues a copy of the bytes. Throws Error (CLOSED, BUFFER_FULL, ...).
  void send(std::string_view bytes) const { send(bytes.data(), bytes.size()); }
  /// Queues a copy of `len` bytes at `data`, as send(std::string_view).
  void send(const void *data, std::size_t len) const {
    check(netev_connection_send(h(), data, len), "netev_connection_send");
  }
  /// The same without throwing: NETEV_OK, NETEV_ERR_BUFFER_FULL (nothing
  /// queued; DRAIN follows), NETEV_ERR_CLOSED, ...
  netev_status try_send(std::string_view bytes) const noexcept {
    return try_send(bytes.data(), bytes.size());
  }
  /// try_send(std::string_view) for `len` bytes at `data`.
  netev_status try_send(const void *data, std::size_t len) const noexcept {
    return netev_connection_send(h(), data, len);
  }
  /// Zero-copy send of the `len` bytes of an array owned by a unique_ptr.
  ///
  /// Zero-copy sends (netev_connection_send_owned): netev takes the buffer
  /// and reads it in place until it is written or dropped (close, error,
  /// runtime shutdown), then destroys it, exactly once, on any thread
  /// (a netev I/O thread, the dispatcher's, or this one, possibly before
  /// the call returns). Same limit, order and statuses as send(); sends
  /// under 4 KiB are copied and their buffer destroyed at once.
  ///
  /// On success the argument is moved-from: do not touch the bytes again.
  /// On failure (an exception, or a try_ status other than NETEV_OK) netev
  /// did not take it and the argument is left as it was, still the
  /// caller's. A custom deleter or allocator runs when netev frees it.
  template <class Deleter>
  void send_owned(std::unique_ptr<std::uint8_t[], Deleter> &&data, std::size_t len) const {
    check(try_send_owned(std::move(data), len), "netev_connection_send_owned");
  }
  /// Zero-copy send of a vector of bytes (uint8_t, char, std::byte), all of
  /// it; ownership as for the unique_ptr overload.
  template <class T, class Alloc>
  void send_owned(std::vector<T, Alloc> &&data) const {
    check(try_send_owned(std::move(data)), "netev_connection_send_owned");
  }
  /// Zero-copy send of a string's bytes, all of them; ownership as for the
  /// unique_ptr overload. A short string's bytes move with it, so they
  /// are read from netev's copy of the string.
  template <class Traits, class Alloc>
  void send_owned(std::basic_string<char, Traits, Alloc> &&data) const {
    check(try_send_owned(std::move(data)), "netev_connection_send_owned");
  }
  /// The same without throwing NETEV_ERR_* (the buffer's own allocation
  /// may still throw std::bad_alloc, and then nothing was sent).
  template <class Deleter>
  netev_status try_send_owned(std::unique_ptr<std::uint8_t[], Deleter> &&data, std::size_t len) const {
    return send_owned_buffer(h(), data, len, [](const std::unique_ptr<std::uint8_t[], Deleter> &p) {
      return static_cast<const void *>(p.get());
    });
  }
  /// send_owned(std::vector) returning the status instead of throwing
  /// NETEV_ERR_*.
  template <class T, class Alloc>
  netev_status try_send_owned(std::vector<T, Alloc> &&data) const {
    static_assert(is_byte<T>, "send_owned sends vectors of bytes (uint8_t, char, std::byte)");
    return send_owned_buffer(h(), data, data.size(), [](const std::vector<T, Alloc> &v) {
      return static_cast<const void *>(v.data());
    });
  }
  /// send_owned(std::basic_string) returning the status instead of
  /// throwing NETEV_ERR_*.
  template <class Traits, class Alloc>
  netev_status try_send_owned(std::basic_string<char, Traits, Alloc> &&data) const {
    // data() of the string moved into the buffer: a short string's bytes move with it
    return send_owned_buffer(h(), data, data.size(), [](const std::basic_string<char, Traits, Alloc> &s) {
      return static_cast<const void *>(s.data());
    });
  }

  /// Sends `payload` (copied) as one frame of the connection's framing:
  /// after its big-endian length prefix, or followed by the delimiter; all
  /// of it is queued or none. Throws Error: INVALID_ARGUMENT without framing,
  /// for a payload containing the delimiter or too long for the prefix;
  /// CLOSED, BUFFER_FULL as send().
  void send_frame(std::string_view payload) const { send_frame(payload.data(), payload.size()); }
  /// send_frame(std::string_view) for `len` bytes at `data`.
  void send_frame(const void *data, std::size_t len) const {
    check(netev_connection_send_frame(h(), data, len), "netev_connection_send_frame");
  }
  /// send_frame(std::string_view) returning the status instead of throwing.
  netev_status try_send_frame(std::string_view payload) const noexcept {
    return try_send_frame(payload.data(), payload.size());
  }
  /// send_frame(const void *, std::size_t) returning the status instead of
  /// throwing.
  netev_status try_send_frame(const void *data, std::size_t len) const noexcept {
    return netev_connection_send_frame(h(), data, len);
  }

  /// Stops reading: receive-side flow control. After pause() no DATA or
  /// END arrives until resume() (a DATA callback already running
  /// finishes); netev stops reading, so the peer's bytes back up in the
  /// kernel and then block its sends. Idempotent; from any thread and any
  /// callback.
  void pause() const { check(netev_connection_pause(h()), "netev_connection_pause"); }
  /// Reads again after pause(): delivers what was held back first, in
  /// order. Idempotent; from any thread and any callback.
  void resume() const { check(netev_connection_resume(h()), "netev_connection_resume"); }
  /// Whether the connection is paused.
  bool paused() const { return get<bool>(netev_connection_paused, "netev_connection_paused"); }

  /// Closes the write side once queued bytes are out; ends any wait.
  void shutdown() const { check(netev_connection_shutdown(h()), "netev_connection_shutdown"); }
  /// Aborts now: unsent bytes are dropped; CLOSE and TERMINATE follow.
  void close() const { check(netev_connection_close(h()), "netev_connection_close"); }
  /// Waits until the connection ended or shutdown was called on it: true;
  /// false when `seconds` ran out (< 0: no limit). Runs the connection's
  /// dispatcher meanwhile. Throws Error (WOULD_DEADLOCK inside a callback).
  bool wait(double seconds) const {
    netev_status st = netev_connection_wait(h(), seconds);
    if (st == NETEV_ERR_TIMEOUT) return false;
    check(st, "netev_connection_wait");
    return true;
  }

  /// A string property, whatever its length: read with `fn`, one of the
  /// getters that copy into a buffer (netev_connection_tls_version, ...),
  /// which is asked the length first. Throws Error naming `call`.
  std::string text(netev_status (*fn)(netev_connection, char *, std::size_t, std::size_t *),
                   const char *call) const {
    std::size_t need = 0;
    check(fn(h(), nullptr, 0, &need), call);
    std::string s(need + 1, '\0');
    check(fn(h(), &s[0], s.size(), &need), call);
    s.resize(need < s.size() ? need : s.size() - 1);
    return s;
  }

  // Properties: readable until released, also after the connection ended.

  /// The address given to open (name or IP; for an accepted connection,
  /// the peer's IP).
  std::string address() const {
    std::size_t need = 0;
    check(netev_connection_address(h(), nullptr, 0, &need), "netev_connection_address");
    std::string s(need + 1, '\0');
    check(netev_connection_address(h(), &s[0], s.size(), &need), "netev_connection_address");
    s.resize(need < s.size() ? need : s.size() - 1);  // the address never changes
    return s;
  }
  /// The port given to open; for an accepted connection, the peer's port.
  std::uint16_t port() const { return get<std::uint16_t>(netev_connection_port, "netev_connection_port"); }
  /// True once shutdown or close was called, the peer ended (unless
  /// half-open is allowed), or the connection closed or failed.
  bool closed() const { return get<bool>(netev_connection_closed, "netev_connection_closed"); }
  /// Whether TCP_NODELAY was asked for (Options::no_delay).
  bool no_delay() const { return get<bool>(netev_connection_no_delay, "netev_connection_no_delay"); }
  /// The listener that accepted it; 0 for a client connection.
  netev_listener listener() const {
    return get<netev_listener>(netev_connection_listener, "netev_connection_listener");
  }
  /// Bytes queued by send but not yet written to the socket (with TLS:
  /// plaintext not yet handed to rustls).
  std::size_t buffered_amount() const {
    return get<std::size_t>(netev_connection_buffered_amount, "netev_connection_buffered_amount");
  }
  /// The connection's own IP and port (getsockname): "" and 0 before the
  /// TCP connect completed and after the connection ended (read them in the
  /// CONNECTION callback to keep them). IPv4 never shows as "::ffff:".
  std::string local_address() const {
    char buf[NETEV_IP_TEXT_LEN];
    std::size_t need = 0;
    check(netev_connection_local_address(h(), buf, sizeof buf, &need), "netev_connection_local_address");
    if (need < sizeof buf) return std::string(buf, need);
    return text(netev_connection_local_address, "netev_connection_local_address");
  }
  /// The connection's own port: 0 before the TCP connect completed and
  /// after the connection ended (see local_address()).
  std::uint16_t local_port() const {
    return get<std::uint16_t>(netev_connection_local_port, "netev_connection_local_port");
  }
  /// The counters (netev_connection_stats_get); readable after the end too,
  /// until released.
  Stats stats() const {
    netev_connection_stats s;
    std::memset(&s, 0, sizeof s);
    check(netev_connection_stats_get(h(), &s), "netev_connection_stats_get");
    Stats out;
    out.bytes_sent = s.bytes_sent;
    out.bytes_received = s.bytes_received;
    out.data_events = s.data_events;
    out.buffered_amount = s.buffered_amount;
    out.rtt_us = s.rtt_us;
    return out;
  }
  /// TLS: "TLSv1.3"/"TLSv1.2" ("" for plain TCP or before the handshake).
  std::string tls_version() const { return text(netev_connection_tls_version, "netev_connection_tls_version"); }
  /// TLS: the ALPN protocol agreed on ("" when none, or for plain TCP).
  std::string alpn() const { return text(netev_connection_alpn, "netev_connection_alpn"); }
  /// TLS, server side: the SNI name the client sent ("" when none).
  std::string server_name() const { return text(netev_connection_server_name, "netev_connection_server_name"); }
  /// TLS: the DER of the peer's leaf certificate (empty when none).
  std::vector<std::uint8_t> peer_certificate() const {
    std::size_t need = 0;
    check(netev_connection_peer_certificate(h(), nullptr, 0, &need), "netev_connection_peer_certificate");
    std::vector<std::uint8_t> v(need);
    if (need == 0) return v;
    check(netev_connection_peer_certificate(h(), v.data(), v.size(), &need),
          "netev_connection_peer_certificate");
    v.resize(need < v.size() ? need : v.size());
    return v;
  }
  /// The errors list, oldest first (the newest 64 are kept).
  std::vector<ErrorInfo> errors() const {
    std::size_t n = get<std::size_t>(netev_connection_error_count, "netev_connection_error_count");
    std::vector<ErrorInfo> v;
    v.reserve(n);
    for (std::size_t i = 0; i < n; i++) {
      netev_error_info e;
      netev_status st = netev_connection_error_at(h(), i, &e);
      if (st == NETEV_ERR_INVALID_ARGUMENT) break;  // the list moved on meanwhile
      check(st, "netev_connection_error_at");
      v.push_back(ErrorInfo{e.code, e.os_error, e.message, e.component});
    }
    return v;
  }

 private:
  netev_connection h() const noexcept { return static_cast<const D *>(this)->handle(); }
  template <class T, class F>
  T get(F f, const char *call) const {
    T v{};
    check(f(h(), &v), call);
    return v;
  }
};

}  // namespace detail

/// A handle without ownership: copyable, releases nothing. What callbacks
/// receive (valid inside them). To keep an accepted connection beyond its
/// TERMINATE, take ownership with retain().
class ConnectionRef : public detail::ConnectionOps<ConnectionRef> {
 public:
  ConnectionRef() noexcept = default;
  /// Refers to `h` without taking a reference: valid while a reference
  /// someone else holds (or the callback `h` came from) lasts.
  explicit ConnectionRef(netev_connection h) noexcept : h_(h) {}
  /// The connection's handle, for the C API; 0 when empty.
  netev_connection handle() const noexcept { return h_; }
  /// Whether it refers to a connection (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }
  /// A new reference (netev_connection_retain) owned by the result.
  inline Connection retain() const;

 private:
  netev_connection h_ = 0;
};

inline ConnectionRef Event::connection() const noexcept { return ConnectionRef(e_.connection); }

/// A connection callback: the connection (borrowed) and the event.
using Handler = std::function<void(ConnectionRef, const Event &)>;

/// netev_connection_options with std::function callbacks. Empty callbacks
/// are not registered.
struct Options {
  Handler on_connection;  ///< CONNECTION: established
  Handler on_data;        ///< DATA
  Handler on_shutdown;    ///< CLOSE: closed properly (4D's onShutdown)
  Handler on_error;       ///< ERROR; TERMINATE follows
  Handler on_terminate;   ///< TERMINATE: the last event, always, once
  Handler on_drain;       ///< DRAIN: after a refused send, the queue fell to half
  Handler on_end;         ///< END: the peer finished sending
  bool no_delay = false;  ///< TCP_NODELAY: send small writes at once.
  /// false: when the peer ends, netev shuts our side too once queued bytes
  /// are out. true: the host keeps sending and ends with shutdown() or
  /// close().
  bool allow_half_open = false;
  double keepalive = 0;           ///< Seconds of idle before TCP keepalive probes; 0 = off
  double idle_timeout = 0;        ///< Seconds without traffic before a TIMEOUT ERROR; 0 = none
  double connection_timeout = 0;  ///< Seconds for name lookup and connect; 0 = 30
  std::size_t send_buffer_limit = 0;  ///< Bytes queued but unsent before send refuses; 0 = 8 MiB
  netev_dispatcher dispatcher = 0;    ///< Dispatcher::handle(); 0 = netev's threads
  netev_tls_config tls = 0;           ///< TlsConfig::handle(); 0 = plain TCP
  std::string server_name;            ///< client TLS: SNI and name checked; "" = the address
  /// Client: the local IP (IPv4 or IPv6 literal) and port to bind before
  /// connecting; "" / 0 = any. Accepted connections ignore them.
  std::string bind_address;
  std::uint16_t bind_port = 0;  ///< Client: the local port to bind (see bind_address); 0 = any.
  /// NETEV_FRAMING_NONE: DATA carries bytes as they arrive.
  /// NETEV_FRAMING_DELIMITER: each DATA one frame without `delimiter` (1 to
  /// 16 bytes; frames may be empty; a trailing partial frame comes at END).
  /// NETEV_FRAMING_LENGTH_PREFIX: each DATA one frame's payload, after a
  /// big-endian prefix of `length_prefix_bytes` (1, 2, 4 or 8; 0 = 4); END
  /// inside a frame is ERROR NETEV_ERR_PROTOCOL. A frame over `max_frame`
  /// bytes (0 = 1 MiB) is ERROR NETEV_ERR_PROTOCOL, then TERMINATE.
  /// delimited() and length_prefixed() set these together.
  std::uint8_t framing = NETEV_FRAMING_NONE;
  /// Length-prefix framing: the prefix's size in bytes, 1, 2, 4 or 8; 0 = 4.
  std::uint8_t length_prefix_bytes = 0;
  std::string delimiter;  ///< Delimiter framing: the delimiter's bytes; "" = none
  std::size_t max_frame = 0;  ///< With framing, the largest frame accepted, in bytes; 0 = 1 MiB.

  /// Sets bind_address and bind_port.
  Options &bind(std::string address, std::uint16_t port = 0) {
    bind_address = std::move(address);
    bind_port = port;
    return *this;
  }
  /// Delimiter framing with `delim` (any bytes, e.g. "\r\n").
  Options &delimited(std::string_view delim) {
    framing = NETEV_FRAMING_DELIMITER;
    length_prefix_bytes = 0;
    delimiter.assign(delim.data(), delim.size());
    return *this;
  }
  /// Length-prefix framing with a `prefix_bytes` big-endian prefix.
  Options &length_prefixed(std::uint8_t prefix_bytes = 4) {
    framing = NETEV_FRAMING_LENGTH_PREFIX;
    length_prefix_bytes = prefix_bytes;
    delimiter.clear();
    return *this;
  }
};
/// The connection options under the name that matches ListenerOptions and
/// UdpOptions.
using ConnectionOptions = Options;

/// \cond INTERNAL
namespace detail {

// The callbacks of one connection, owned by netev (user_data) and deleted
// by user_data_free after TERMINATE. It also holds the strings the C
// options point at (bind_address, delimiter): a listener's accept callback
// returns options that netev reads after it returned.
struct ConnectionBlock {
  Handler on_connection, on_data, on_shutdown, on_error, on_terminate, on_drain, on_end;
  std::string bind_address, delimiter;

  explicit ConnectionBlock(Options &&o)
      : on_connection(std::move(o.on_connection)),
        on_data(std::move(o.on_data)),
        on_shutdown(std::move(o.on_shutdown)),
        on_error(std::move(o.on_error)),
        on_terminate(std::move(o.on_terminate)),
        on_drain(std::move(o.on_drain)),
        on_end(std::move(o.on_end)),
        bind_address(std::move(o.bind_address)),
        delimiter(std::move(o.delimiter)) {
    live_blocks()++;
  }
  ~ConnectionBlock() { live_blocks()--; }
  ConnectionBlock(const ConnectionBlock &) = delete;
  ConnectionBlock &operator=(const ConnectionBlock &) = delete;

  template <Handler ConnectionBlock::*Slot>
  static void trampoline(netev_connection conn, const netev_event *ev, void *user_data) noexcept {
    auto *b = static_cast<ConnectionBlock *>(user_data);
    try {
      (b->*Slot)(ConnectionRef(conn), Event(*ev));
    } catch (...) {
      report_current_exception(ev->type, conn, 0);
      netev_connection_close(conn);  // harmless when already closing
    }
  }

  static void free_block(void *user_data) noexcept { delete static_cast<ConnectionBlock *>(user_data); }
};

inline bool has_callbacks(const Options &o) noexcept {
  return o.on_connection || o.on_data || o.on_shutdown || o.on_error || o.on_terminate ||
         o.on_drain || o.on_end;
}

// Points `c` at the bind address and delimiter strings (not copied).
inline void point_strings(const std::string &bind_address, const std::string &delimiter,
                          netev_connection_options &c) noexcept {
  c.bind_address = bind_address.empty() ? nullptr : bind_address.c_str();
  c.delimiter = delimiter.empty() ? nullptr : reinterpret_cast<const std::uint8_t *>(delimiter.data());
  c.delimiter_len = delimiter.size();
}

// The numbers of `o` into `c`; no callbacks, no user_data. `c` borrows
// o's bind_address and delimiter: `o` must outlive netev's reading of `c`.
inline void write_numbers(const Options &o, netev_connection_options &c) noexcept {
  c.no_delay = o.no_delay;
  c.allow_half_open = o.allow_half_open;
  c.keepalive = o.keepalive;
  c.idle_timeout = o.idle_timeout;
  c.connection_timeout = o.connection_timeout;
  c.send_buffer_limit = o.send_buffer_limit;
  c.dispatcher = o.dispatcher;
  c.tls = o.tls;
  point_strings(o.bind_address, o.delimiter, c);
  c.bind_port = o.bind_port;
  c.framing = o.framing;
  c.length_prefix_bytes = o.length_prefix_bytes;
  c.max_frame = o.max_frame;
  c.on_connection = c.on_data = c.on_shutdown = c.on_error = nullptr;
  c.on_terminate = c.on_drain = c.on_end = nullptr;
  c.user_data = nullptr;
  c.user_data_free = nullptr;
}

// Fills `c` (already initialised) from `o`: the numbers, and the callbacks
// and strings in a new block that `c` owns from now on (via
// user_data_free). Returns that block, or nullptr when there are neither
// callbacks nor strings; the caller deletes it only if netev refuses the
// options without taking it. Throws only bad_alloc, and then leaves `c`
// without callbacks (pointing at o's strings).
inline ConnectionBlock *fill(Options &&o, netev_connection_options &c) {
  write_numbers(o, c);
  if (!has_callbacks(o) && o.bind_address.empty() && o.delimiter.empty()) return nullptr;
  using B = ConnectionBlock;
  bool con = bool(o.on_connection), data = bool(o.on_data), shut = bool(o.on_shutdown),
       err = bool(o.on_error), term = bool(o.on_terminate), drain = bool(o.on_drain),
       end = bool(o.on_end);
  auto *b = new B(std::move(o));
  point_strings(b->bind_address, b->delimiter, c);  // moved into the block
  if (con) c.on_connection = &B::trampoline<&B::on_connection>;
  if (data) c.on_data = &B::trampoline<&B::on_data>;
  if (shut) c.on_shutdown = &B::trampoline<&B::on_shutdown>;
  if (err) c.on_error = &B::trampoline<&B::on_error>;
  if (term) c.on_terminate = &B::trampoline<&B::on_terminate>;
  if (drain) c.on_drain = &B::trampoline<&B::on_drain>;
  if (end) c.on_end = &B::trampoline<&B::on_end>;
  c.user_data = b;
  c.user_data_free = &B::free_block;
  return b;
}

// The numbers of `c` into `o` (callbacks untouched).
inline void read_numbers(const netev_connection_options &c, Options &o) noexcept {
  o.no_delay = c.no_delay;
  o.allow_half_open = c.allow_half_open;
  o.keepalive = c.keepalive;
  o.idle_timeout = c.idle_timeout;
  o.connection_timeout = c.connection_timeout;
  o.send_buffer_limit = c.send_buffer_limit;
  o.dispatcher = c.dispatcher;
  o.tls = c.tls;
  o.bind_address = c.bind_address ? c.bind_address : "";
  o.bind_port = c.bind_port;
  o.framing = c.framing;
  o.length_prefix_bytes = c.length_prefix_bytes;
  o.delimiter = c.delimiter ? std::string(reinterpret_cast<const char *>(c.delimiter), c.delimiter_len)
                            : std::string();
  o.max_frame = c.max_frame;
}

}  // namespace detail
/// \endcond

/// Owns one reference to a connection (from open or retain); the destructor
/// gives it back (netev_connection_release): a client connection still open
/// is closed, and its CLOSE and TERMINATE still reach the callbacks, later.
/// Move-only; a moved-from Connection holds 0 and releases nothing.
class Connection : public detail::ConnectionOps<Connection> {
 public:
  Connection() noexcept = default;
  /// Takes over `o`'s reference; `o` is left empty.
  Connection(Connection &&o) noexcept : h_(std::exchange(o.h_, 0)) {}
  /// Releases the reference held (as reset() does), then takes over `o`'s;
  /// `o` is left empty.
  Connection &operator=(Connection &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  Connection(const Connection &) = delete;
  Connection &operator=(const Connection &) = delete;
  ~Connection() { reset(); }

  /// netev_connection_open: returns at once; connect runs in the background
  /// and a failure arrives as ERROR then TERMINATE. Throws Error
  /// (INVALID_ARGUMENT for port 0, INVALID_HANDLE for a dead dispatcher, ...);
  /// then no callback ever fires and the callbacks are destroyed here.
  static Connection open(const std::string &address, std::uint16_t port, Options options = {}) {
    netev_connection_options c;
    detail::check(netev_connection_options_init(&c), "netev_connection_options_init");
    detail::c_text(options.bind_address, "netev_connection_open", "bind_address");
    std::unique_ptr<detail::ConnectionBlock> block(detail::fill(std::move(options), c));
    // fill moved the callbacks and strings out, not server_name: it is
    // still ours, alive for the call (netev copies it)
    if (!options.server_name.empty())
      c.server_name = detail::c_text(options.server_name, "netev_connection_open", "server_name");
    netev_connection h = 0;
    netev_status st = netev_connection_open(detail::c_text(address, "netev_connection_open", "address"), port, &c, &h);
    if (st != NETEV_OK) {
      std::string msg = detail::last_error_message();
      throw Error(st, "netev_connection_open", std::move(msg));  // `block` freed: netev never took it
    }
    block.release();  // netev owns it now: user_data_free after TERMINATE
    return Connection(h);
  }

  /// Takes a new reference to `h` (netev_connection_retain), typically an
  /// accepted connection inside one of its own callbacks, so that the handle
  /// stays valid past its TERMINATE until this object is destroyed.
  static Connection retain(netev_connection h) {
    detail::check(netev_connection_retain(h), "netev_connection_retain");
    return Connection(h);
  }
  /// Adopts a reference the caller already owns (no retain).
  static Connection adopt(netev_connection h) noexcept { return Connection(h); }

  /// The connection's handle, for the C API (still owned by this object);
  /// 0 when empty.
  netev_connection handle() const noexcept { return h_; }
  /// A non-owning ConnectionRef to the same connection.
  ConnectionRef ref() const noexcept { return ConnectionRef(h_); }
  /// Whether it holds a reference (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }

  /// Releases now (as the destructor does); harmless when empty.
  void reset() noexcept {
    if (h_) netev_connection_release(std::exchange(h_, 0));
  }
  /// Gives up ownership without releasing: the caller now owns the reference.
  netev_connection detach() noexcept { return std::exchange(h_, 0); }

 private:
  explicit Connection(netev_connection h) noexcept : h_(h) {}
  netev_connection h_ = 0;
};

inline Connection ConnectionRef::retain() const { return Connection::retain(h_); }

// ---- TLS configurations -------------------------------------------------------

/// netev_tls_options with strings: paths (`*_file`) or PEM text (`*_pem`);
/// "" means not given. At most one of the file and the PEM of each item.
struct TlsOptions {
  /// Trusted root certificates (PEM) from this file. A client with ""
  /// here and in ca_pem trusts the system's store; both given: their
  /// union.
  std::string ca_file;
  std::string ca_pem;     ///< Trusted root certificates as PEM text.
  /// The certificate chain (PEM, leaf first) from this file: the
  /// server's, or the client's (mutual TLS).
  std::string cert_file;
  std::string cert_pem;   ///< The certificate chain as PEM text.
  std::string key_file;   ///< The chain's private key (PEM) from this file.
  std::string key_pem;    ///< The chain's private key as PEM text.
  std::string alpn;       ///< ALPN protocols in order of preference, "h2,http/1.1"; "" = none
  /// Client, tests only: do not verify the server's certificate or name.
  bool insecure_skip_verify = false;
  /// Server: ask every client for a certificate and verify it against
  /// `ca_file`/`ca_pem`.
  bool require_client_cert = false;
  bool tls13_only = false;  ///< Only TLS 1.3; otherwise TLS 1.2 and 1.3.
};

/// Owns a TLS configuration handle (netev_tls_client_config_create /
/// netev_tls_server_config_create); the destructor releases it. Connections
/// (and listeners' defaults) using it keep it alive: it may be destroyed
/// right after open. Move-only.
class TlsConfig {
 public:
  TlsConfig() noexcept = default;
  /// Takes over `o`'s handle; `o` is left empty.
  TlsConfig(TlsConfig &&o) noexcept : h_(std::exchange(o.h_, 0)) {}
  /// Releases the handle held (as reset() does), then takes over `o`'s.
  TlsConfig &operator=(TlsConfig &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  TlsConfig(const TlsConfig &) = delete;
  TlsConfig &operator=(const TlsConfig &) = delete;
  ~TlsConfig() { reset(); }

  /// A client configuration (netev_tls_client_config_create): the
  /// server's chain and name are verified, against `ca_*` or the system's
  /// store. Throws Error: NETEV_ERR_TLS (unreadable file, bad PEM, a key not
  /// matching its certificate), NETEV_ERR_INVALID_ARGUMENT (a missing piece).
  static TlsConfig client(const TlsOptions &o) {
    return create(o, netev_tls_client_config_create, "netev_tls_client_config_create");
  }
  /// A server configuration (netev_tls_server_config_create): `cert_*` and
  /// `key_*` are required. Throws Error as client() does.
  static TlsConfig server(const TlsOptions &o) {
    return create(o, netev_tls_server_config_create, "netev_tls_server_config_create");
  }

  /// For Options::tls; 0 when empty.
  netev_tls_config handle() const noexcept { return h_; }
  /// Whether it holds a configuration (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }
  /// Releases the handle now (as the destructor does); connections using
  /// the configuration keep it alive. Harmless when empty.
  void reset() noexcept {
    if (h_) netev_tls_config_release(std::exchange(h_, 0));
  }

 private:
  explicit TlsConfig(netev_tls_config h) noexcept : h_(h) {}
  static const char *opt(const std::string &s, const char *call, const char *what) {
    return s.empty() ? nullptr : detail::c_text(s, call, what);
  }
  static TlsConfig create(const TlsOptions &o,
                          netev_status (*fn)(const netev_tls_options *, netev_tls_config *),
                          const char *call) {
    netev_tls_options t;
    detail::check(netev_tls_options_init(&t), "netev_tls_options_init");
    t.ca_file = opt(o.ca_file, call, "ca_file");
    t.ca_pem = opt(o.ca_pem, call, "ca_pem");
    t.cert_file = opt(o.cert_file, call, "cert_file");
    t.cert_pem = opt(o.cert_pem, call, "cert_pem");
    t.key_file = opt(o.key_file, call, "key_file");
    t.key_pem = opt(o.key_pem, call, "key_pem");
    t.alpn = opt(o.alpn, call, "alpn");
    t.insecure_skip_verify = o.insecure_skip_verify;
    t.require_client_cert = o.require_client_cert;
    t.tls13_only = o.tls13_only;
    netev_tls_config h = 0;
    detail::check(fn(&t, &h), call);
    return TlsConfig(h);
  }
  netev_tls_config h_ = 0;
};

// ---- dispatchers ----------------------------------------------------------------

/// Runs callbacks of the objects that name it on the thread that calls run()
/// (or waits on one of its connections). Move-only; the destructor releases
/// it: its connections are closed and their last callbacks run there.
class Dispatcher {
 public:
  Dispatcher() noexcept = default;
  /// Takes over `o`'s handle; `o` is left empty.
  Dispatcher(Dispatcher &&o) noexcept : h_(std::exchange(o.h_, 0)) {}
  /// Releases the dispatcher held (as reset() does), then takes over `o`'s.
  Dispatcher &operator=(Dispatcher &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  Dispatcher(const Dispatcher &) = delete;
  Dispatcher &operator=(const Dispatcher &) = delete;
  ~Dispatcher() { reset(); }

  /// A new dispatcher (netev_dispatcher_create). Throws Error (IO when no
  /// descriptor is left).
  static Dispatcher create() {
    netev_dispatcher h = 0;
    detail::check(netev_dispatcher_create(&h), "netev_dispatcher_create");
    return Dispatcher(h);
  }
  /// Runs the queued callbacks, waiting up to `seconds` (< 0: no limit) for
  /// the first; returns how many ran. Throws Error (WOULD_DEADLOCK inside one
  /// of its own callbacks).
  std::size_t run(double seconds) const {
    std::size_t ran = 0;
    detail::check(netev_dispatcher_run(h_, seconds, &ran), "netev_dispatcher_run");
    return ran;
  }
  /// A descriptor readable while callbacks are queued, for poll, epoll or
  /// an event loop; owned by netev (never close it).
  int fd() const {
    int fd = -1;
    detail::check(netev_dispatcher_fd(h_, &fd), "netev_dispatcher_fd");
    return fd;
  }
  /// For Options::dispatcher, ListenerOptions::dispatcher and UdpOptions::dispatcher.
  netev_dispatcher handle() const noexcept { return h_; }
  /// Whether it holds a dispatcher (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }
  /// Releases the dispatcher now (as the destructor does): its objects are
  /// closed and their last callbacks run on this thread. Harmless when
  /// empty.
  void reset() noexcept {
    if (h_) netev_dispatcher_release(std::exchange(h_, 0));
  }

 private:
  explicit Dispatcher(netev_dispatcher h) noexcept : h_(h) {}
  netev_dispatcher h_ = 0;
};

// ---- listeners ------------------------------------------------------------------

/// A listener's on_connection: `event` (CONNECTION) carries the peer's ip and
/// port and, in connection_handle(), the handle the connection will have
/// (valid only once this returned true: retain it in the connection's own
/// on_connection, not here). `options` starts as connection_defaults (with
/// the listener's dispatcher if none): edit it, callbacks included, and
/// return true to accept, false to close the socket at once.
using AcceptHandler = std::function<bool(const Event &event, Options &options)>;
/// A listener's on_error or on_terminate: the ERROR or TERMINATE event.
using ListenerHandler = std::function<void(const Event &)>;

/// netev_listener_options with std::function callbacks, and the options
/// of the connections it accepts as Options.
struct ListenerOptions {
  AcceptHandler on_connection;    ///< Accepts or rejects each connection; empty: accepts all
  ListenerHandler on_error;       ///< ERROR: accepting failed; the listener goes on
  ListenerHandler on_terminate;   ///< TERMINATE: the listener stopped; its last event
  std::string bind_address;       ///< IPv4/IPv6 literal; "" = all interfaces
  std::uint32_t backlog = 0;      ///< Connections the kernel queues before accept; 0 = 1024
  bool reuse_port = false;        ///< SO_REUSEPORT: several listeners share the port
  Options connection_defaults;    ///< What each accepted connection starts from
  netev_dispatcher dispatcher = 0;  ///< Dispatcher::handle(); 0 = netev's threads
};

/// \cond INTERNAL
namespace detail {

// A listener's callbacks and connection defaults. netev_listener_options has
// no user_data_free: the TERMINATE trampoline (always registered) deletes
// it, TERMINATE being the listener's last callback; open() deletes it when
// netev refuses the options.
struct ListenerBlock {
  AcceptHandler on_connection;
  ListenerHandler on_error, on_terminate;
  Options defaults;

  explicit ListenerBlock(ListenerOptions &&o)
      : on_connection(std::move(o.on_connection)),
        on_error(std::move(o.on_error)),
        on_terminate(std::move(o.on_terminate)),
        defaults(std::move(o.connection_defaults)) {
    live_blocks()++;
  }
  ~ListenerBlock() { live_blocks()--; }
  ListenerBlock(const ListenerBlock &) = delete;
  ListenerBlock &operator=(const ListenerBlock &) = delete;

  static bool accept(netev_listener l, const netev_event *ev, void *user_data,
                     netev_connection_options *c) noexcept {
    auto *b = static_cast<ListenerBlock *>(user_data);
    try {
      Options o = b->defaults;  // each connection its own copy of the callbacks
      read_numbers(*c, o);
      if (b->on_connection && !b->on_connection(Event(*ev), o)) return false;
      fill(std::move(o), *c);  // netev owns the block from here, even if it refuses the options
      return true;
    } catch (...) {
      report_current_exception(ev->type, 0, l);
      return false;
    }
  }
  static void error(netev_listener l, const netev_event *ev, void *user_data) noexcept {
    auto *b = static_cast<ListenerBlock *>(user_data);
    if (!b->on_error) return;
    try {
      b->on_error(Event(*ev));
    } catch (...) {
      report_current_exception(ev->type, 0, l);
    }
  }
  static void terminate(netev_listener l, const netev_event *ev, void *user_data) noexcept {
    auto *b = static_cast<ListenerBlock *>(user_data);
    if (b->on_terminate) {
      try {
        b->on_terminate(Event(*ev));
      } catch (...) {
        report_current_exception(ev->type, 0, l);
      }
    }
    delete b;
  }
};

}  // namespace detail
/// \endcond

/// Owns a listener; the destructor releases it (netev_listener_release:
/// stops accepting, frees the port; accepted connections go on).
/// Move-only; a moved-from Listener holds 0 and releases nothing.
class Listener {
 public:
  Listener() noexcept = default;
  /// Takes over `o`'s listener; `o` is left empty.
  Listener(Listener &&o) noexcept : h_(std::exchange(o.h_, 0)) {}
  /// Releases the listener held (as reset() does), then takes over `o`'s.
  Listener &operator=(Listener &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  Listener(const Listener &) = delete;
  Listener &operator=(const Listener &) = delete;
  ~Listener() { reset(); }

  /// netev_listener_open: binds now (port 0: a free one, see port()).
  /// Throws Error (ADDRESS_IN_USE, INVALID_ARGUMENT, INVALID_HANDLE, ...).
  static Listener open(std::uint16_t port, ListenerOptions options = {}) {
    netev_listener_options c;
    detail::check(netev_listener_options_init(&c), "netev_listener_options_init");
    std::string bind = options.bind_address;
    c.bind_address = bind.empty() ? nullptr : detail::c_text(bind, "netev_listener_open", "bind_address");
    // Client-only fields, which netev ignores here; refused like everywhere.
    detail::c_text(options.connection_defaults.bind_address, "netev_listener_open", "connection_defaults.bind_address");
    detail::c_text(options.connection_defaults.server_name, "netev_listener_open", "connection_defaults.server_name");
    c.backlog = options.backlog;
    c.reuse_port = options.reuse_port;
    c.dispatcher = options.dispatcher;
    // The numbers are validated by netev here (it copies them during the
    // call); the callbacks are added per connection by the accept
    // trampoline. `defaults` borrows the block's strings (moved there).
    std::unique_ptr<detail::ListenerBlock> block(new detail::ListenerBlock(std::move(options)));
    netev_connection_options defaults;
    detail::check(netev_connection_options_init(&defaults), "netev_connection_options_init");
    detail::write_numbers(block->defaults, defaults);
    c.connection_defaults = &defaults;
    c.on_connection = &detail::ListenerBlock::accept;
    c.on_error = &detail::ListenerBlock::error;
    c.on_terminate = &detail::ListenerBlock::terminate;
    c.user_data = block.get();
    netev_listener h = 0;
    netev_status st = netev_listener_open(port, &c, &h);
    if (st != NETEV_OK) {
      std::string msg = detail::last_error_message();
      throw Error(st, "netev_listener_open", std::move(msg));  // no callback will ever run
    }
    block.release();  // deleted by the TERMINATE trampoline
    return Listener(h);
  }

  /// The port bound (the real one when opened with 0).
  std::uint16_t port() const {
    std::uint16_t p = 0;
    detail::check(netev_listener_port(h_, &p), "netev_listener_port");
    return p;
  }
  /// Stops accepting; the port is free when this returns. TERMINATE follows.
  void terminate() const { detail::check(netev_listener_terminate(h_), "netev_listener_terminate"); }
  /// The listener's errors list, oldest first (the newest 64 are kept):
  /// failed accepts.
  std::vector<ErrorInfo> errors() const {
    std::size_t n = 0;
    detail::check(netev_listener_error_count(h_, &n), "netev_listener_error_count");
    std::vector<ErrorInfo> v;
    for (std::size_t i = 0; i < n; i++) {
      netev_error_info e;
      netev_status st = netev_listener_error_at(h_, i, &e);
      if (st == NETEV_ERR_INVALID_ARGUMENT) break;
      detail::check(st, "netev_listener_error_at");
      v.push_back(ErrorInfo{e.code, e.os_error, e.message, e.component});
    }
    return v;
  }
  /// The listener's handle, for the C API (still owned by this object);
  /// 0 when empty.
  netev_listener handle() const noexcept { return h_; }
  /// Whether it holds a listener (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }
  /// Releases now (as the destructor does); harmless when empty.
  void reset() noexcept {
    if (h_) netev_listener_release(std::exchange(h_, 0));
  }

 private:
  explicit Listener(netev_listener h) noexcept : h_(h) {}
  netev_listener h_ = 0;
};

// ---- UDP sockets ------------------------------------------------------------------

class UdpSocket;

namespace detail {

/// The operations on a UDP socket handle, shared by the owning UdpSocket and
/// the non-owning UdpSocketRef. D provides handle().
///
/// Each is the netev_udp_* call of the same name on handle(), and its rules
/// apply. Those that fail throw Error; the try_ ones return the status
/// instead.
template <class D>
class UdpOps {
 public:
  /// Sends a copy of the bytes as one datagram to `host` (an IP literal, or
  /// a name resolved in the background: a name that does not resolve is an
  /// ERROR event, NETEV_ERR_HOST_NOT_FOUND, later) and `port`. Datagrams
  /// leave in the order sent; empty bytes are an empty datagram. Throws
  /// Error: INVALID_ARGUMENT (over 65 507 bytes, or 65 527 to an IPv6
  /// literal; port 0; an empty host), BUFFER_FULL (past send_buffer_limit:
  /// nothing queued, no DRAIN follows, a later send may succeed), CLOSED
  /// (after close), an OS error refusing it at once. To answer a DATA
  /// event's sender: send(bytes, event.raw().ip, event.port()).
  void send(std::string_view bytes, const char *host, std::uint16_t port) const {
    send(bytes.data(), bytes.size(), host, port);
  }
  /// send(std::string_view, const char *, std::uint16_t) with `host` as a
  /// std::string.
  void send(std::string_view bytes, const std::string &host, std::uint16_t port) const {
    send(bytes.data(), bytes.size(), detail::c_text(host, "netev_udp_send", "host"), port);
  }
  /// send(std::string_view, const char *, std::uint16_t) for `len` bytes
  /// at `data`.
  void send(const void *data, std::size_t len, const char *host, std::uint16_t port) const {
    check(netev_udp_send(h(), data, len, host, port), "netev_udp_send");
  }
  /// send(std::string_view, const char *, std::uint16_t) for `len` bytes
  /// at `data`, with `host` as a std::string.
  void send(const void *data, std::size_t len, const std::string &host, std::uint16_t port) const {
    send(data, len, detail::c_text(host, "netev_udp_send", "host"), port);
  }
  /// The same without throwing: NETEV_OK, NETEV_ERR_BUFFER_FULL,
  /// NETEV_ERR_CLOSED, ... (netev_last_error_message() has the words).
  netev_status try_send(std::string_view bytes, const char *host, std::uint16_t port) const noexcept {
    return try_send(bytes.data(), bytes.size(), host, port);
  }
  /// try_send(std::string_view, const char *, std::uint16_t) with `host` as
  /// a std::string.
  netev_status try_send(std::string_view bytes, const std::string &host, std::uint16_t port) const noexcept {
    return try_send(bytes.data(), bytes.size(), host, port);
  }
  /// try_send(std::string_view, const char *, std::uint16_t) for `len`
  /// bytes at `data`.
  netev_status try_send(const void *data, std::size_t len, const char *host,
                        std::uint16_t port) const noexcept {
    return netev_udp_send(h(), data, len, host, port);
  }
  /// try_send(std::string_view, const char *, std::uint16_t) for `len`
  /// bytes at `data`, with `host` as a std::string.
  netev_status try_send(const void *data, std::size_t len, const std::string &host,
                        std::uint16_t port) const noexcept {
    // A NUL would cut the name short: another host than the caller's.
    if (detail::has_nul(host)) return NETEV_ERR_INVALID_ARGUMENT;
    return try_send(data, len, host.c_str(), port);
  }

  /// The port bound (the real one when opened with 0).
  std::uint16_t port() const {
    std::uint16_t p = 0;
    check(netev_udp_port(h(), &p), "netev_udp_port");
    return p;
  }
  /// Joins / leaves the multicast group `group` (an IPv4 or IPv6 multicast
  /// address) on the interface with IPv4 address `interface_address` (""
  /// = the default interface; IPv6 groups take "" only). Throws Error
  /// (INVALID_ARGUMENT, an OS error when the machine does not allow it,
  /// CLOSED).
  void join_multicast(const std::string &group, const std::string &interface_address = "") const {
    const char *call = "netev_udp_join_multicast";
    check(netev_udp_join_multicast(h(), detail::c_text(group, call, "group"), opt(interface_address, call)), call);
  }
  /// Leaves a group joined with join_multicast(); the same arguments and
  /// errors.
  void leave_multicast(const std::string &group, const std::string &interface_address = "") const {
    const char *call = "netev_udp_leave_multicast";
    check(netev_udp_leave_multicast(h(), detail::c_text(group, call, "group"), opt(interface_address, call)), call);
  }
  /// Stops the socket: its port is free when this returns, queued datagrams
  /// are dropped, TERMINATE follows. Harmless again.
  void close() const { check(netev_udp_close(h()), "netev_udp_close"); }
  /// The errors list, oldest first (the newest 64 are kept): failed lookups
  /// and every refused send.
  std::vector<ErrorInfo> errors() const {
    std::size_t n = 0;
    check(netev_udp_error_count(h(), &n), "netev_udp_error_count");
    std::vector<ErrorInfo> v;
    v.reserve(n);
    for (std::size_t i = 0; i < n; i++) {
      netev_error_info e;
      netev_status st = netev_udp_error_at(h(), i, &e);
      if (st == NETEV_ERR_INVALID_ARGUMENT) break;  // the list moved on meanwhile
      check(st, "netev_udp_error_at");
      v.push_back(ErrorInfo{e.code, e.os_error, e.message, e.component});
    }
    return v;
  }

 private:
  netev_udp_socket h() const noexcept { return static_cast<const D *>(this)->handle(); }
  static const char *opt(const std::string &s, const char *call) {
    return s.empty() ? nullptr : detail::c_text(s, call, "interface_address");
  }
};

}  // namespace detail

/// A UDP socket handle without ownership: copyable, releases nothing. What
/// UDP callbacks receive (valid inside them).
class UdpSocketRef : public detail::UdpOps<UdpSocketRef> {
 public:
  UdpSocketRef() noexcept = default;
  /// Refers to `h` without owning it: valid while its owner (or the
  /// callback `h` came from) keeps it.
  explicit UdpSocketRef(netev_udp_socket h) noexcept : h_(h) {}
  /// The socket's handle, for the C API; 0 when empty.
  netev_udp_socket handle() const noexcept { return h_; }
  /// Whether it refers to a socket (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }

 private:
  netev_udp_socket h_ = 0;
};

/// A UDP socket callback: the socket (borrowed) and the event. DATA: one
/// datagram, data() its bytes (empty for an empty one), ip()/port() its
/// sender; ERROR: error(), os_error(), message(); TERMINATE: the last
/// event, once. connection_handle() is the socket's handle.
using UdpHandler = std::function<void(UdpSocketRef, const Event &)>;

/// netev_udp_options with std::function callbacks. Empty callbacks are not
/// registered.
struct UdpOptions {
  UdpHandler on_data;       ///< DATA: one datagram, never merged or split
  UdpHandler on_error;      ///< ERROR: a send failed or a name did not resolve; the socket goes on
  UdpHandler on_terminate;  ///< TERMINATE: after close, release or runtime shutdown; last, once
  std::string bind_address;  ///< IPv4/IPv6 literal; "" = all interfaces, IPv6 and IPv4
  bool reuse_port = false;   ///< SO_REUSEPORT: several sockets may bind the port
  bool broadcast = false;    ///< SO_BROADCAST: sends to broadcast addresses are allowed
  std::size_t send_buffer_limit = 0;  ///< Bytes of datagrams queued but unsent; 0 = 1 MiB
  netev_dispatcher dispatcher = 0;    ///< Dispatcher::handle(); 0 = netev's threads
};

/// \cond INTERNAL
namespace detail {

// The callbacks of one UDP socket, owned by netev (user_data) and deleted
// by user_data_free after TERMINATE.
struct UdpBlock {
  UdpHandler on_data, on_error, on_terminate;

  explicit UdpBlock(UdpOptions &&o)
      : on_data(std::move(o.on_data)),
        on_error(std::move(o.on_error)),
        on_terminate(std::move(o.on_terminate)) {
    live_blocks()++;
  }
  ~UdpBlock() { live_blocks()--; }
  UdpBlock(const UdpBlock &) = delete;
  UdpBlock &operator=(const UdpBlock &) = delete;

  template <UdpHandler UdpBlock::*Slot>
  static void trampoline(netev_udp_socket sock, const netev_event *ev, void *user_data) noexcept {
    auto *b = static_cast<UdpBlock *>(user_data);
    try {
      (b->*Slot)(UdpSocketRef(sock), Event(*ev));
    } catch (...) {
      report_current_exception(ev->type, 0, 0, sock);  // the socket goes on
    }
  }

  static void free_block(void *user_data) noexcept { delete static_cast<UdpBlock *>(user_data); }
};

}  // namespace detail
/// \endcond

/// Owns a UDP socket; the destructor releases it (netev_udp_release: closes
/// it if still open, and TERMINATE still reaches the callbacks, later).
/// Move-only; a moved-from UdpSocket holds 0 and releases nothing.
class UdpSocket : public detail::UdpOps<UdpSocket> {
 public:
  UdpSocket() noexcept = default;
  /// Takes over `o`'s socket; `o` is left empty.
  UdpSocket(UdpSocket &&o) noexcept : h_(std::exchange(o.h_, 0)) {}
  /// Releases the socket held (as reset() does), then takes over `o`'s.
  UdpSocket &operator=(UdpSocket &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  UdpSocket(const UdpSocket &) = delete;
  UdpSocket &operator=(const UdpSocket &) = delete;
  ~UdpSocket() { reset(); }

  /// netev_udp_open: bound when this returns (port 0: a free one, see
  /// port()); datagrams are read in the background. Throws Error
  /// (ADDRESS_IN_USE, INVALID_ARGUMENT for a bad bind_address,
  /// INVALID_HANDLE for a dead dispatcher, ...); then no callback ever
  /// fires and the callbacks are destroyed here.
  static UdpSocket open(std::uint16_t port, UdpOptions options = {}) {
    netev_udp_options c;
    detail::check(netev_udp_options_init(&c), "netev_udp_options_init");
    c.bind_address =
        options.bind_address.empty() ? nullptr : detail::c_text(options.bind_address, "netev_udp_open", "bind_address");
    c.reuse_port = options.reuse_port;
    c.broadcast = options.broadcast;
    c.send_buffer_limit = options.send_buffer_limit;
    c.dispatcher = options.dispatcher;
    std::unique_ptr<detail::UdpBlock> block;
    if (options.on_data || options.on_error || options.on_terminate) {
      using B = detail::UdpBlock;
      if (options.on_data) c.on_data = &B::trampoline<&B::on_data>;
      if (options.on_error) c.on_error = &B::trampoline<&B::on_error>;
      if (options.on_terminate) c.on_terminate = &B::trampoline<&B::on_terminate>;
      block.reset(new B(std::move(options)));  // bind_address stays in `options`, alive for the call
      c.user_data = block.get();
      c.user_data_free = &B::free_block;
    }
    netev_udp_socket h = 0;
    netev_status st = netev_udp_open(port, &c, &h);
    if (st != NETEV_OK) {
      std::string msg = detail::last_error_message();
      throw Error(st, "netev_udp_open", std::move(msg));  // `block` freed: netev never took it
    }
    block.release();  // netev owns it now: user_data_free after TERMINATE
    return UdpSocket(h);
  }

  /// The socket's handle, for the C API (still owned by this object); 0
  /// when empty.
  netev_udp_socket handle() const noexcept { return h_; }
  /// A non-owning UdpSocketRef to the same socket.
  UdpSocketRef ref() const noexcept { return UdpSocketRef(h_); }
  /// Whether it holds a socket (handle() is not 0).
  explicit operator bool() const noexcept { return h_ != 0; }

  /// Releases now (as the destructor does); harmless when empty.
  void reset() noexcept {
    if (h_) netev_udp_release(std::exchange(h_, 0));
  }
  /// Gives up ownership without releasing: the caller now owns the handle.
  netev_udp_socket detach() noexcept { return std::exchange(h_, 0); }

 private:
  explicit UdpSocket(netev_udp_socket h) noexcept : h_(h) {}
  netev_udp_socket h_ = 0;
};

// ---- the runtime ----------------------------------------------------------------

/// netev's runtime, one per process: its I/O threads, started by the first
/// open unless init() came first.
struct Runtime {
  /// netev_runtime_init: optional, before first use (0 threads: one per core).
  static void init(std::uint32_t worker_threads = 0) {
    netev_runtime_options o;
    detail::check(netev_runtime_options_init(&o), "netev_runtime_options_init");
    o.worker_threads = worker_threads;
    detail::check(netev_runtime_init(&o), "netev_runtime_init");
  }
  /// netev_runtime_shutdown: ends every object (each TERMINATE runs, so every
  /// callback block is freed) and stops netev's threads. Call it before exit
  /// and before destroying what callbacks capture by reference.
  static void shutdown(double seconds) {
    detail::check(netev_runtime_shutdown(seconds), "netev_runtime_shutdown");
  }
  /// The library's version, "MAJOR.MINOR.PATCH" (netev_version): static,
  /// never null.
  static const char *version() noexcept { return netev_version(); }
};

// ---- the lifecycle log ------------------------------------------------------------

/// netev_log_open: appends the lifecycle log (one line per step of each
/// connection, listener and UDP socket) to the file at `path`, created if
/// needed, replacing any log file already open. Throws Error
/// (PERMISSION_DENIED, IO; INVALID_ARGUMENT for a path that is not UTF-8).
/// No try_ variant: a log that cannot be opened is not normal flow.
inline void log_open(const std::string &path) {
  detail::check(netev_log_open(detail::c_text(path, "netev_log_open", "path")), "netev_log_open");
}
/// netev_log_close: closes the log file, if one is open (harmless again).
inline void log_close() { detail::check(netev_log_close(), "netev_log_close"); }

/// The log callback: one line, `"<UTC timestamp> <kind> <id> <what>"` without
/// a newline, borrowed until it returns (copy what you keep). It runs on
/// any thread (netev's, a dispatcher's, or yours inside the netev call that
/// logged), concurrently with itself, and may call any netev function.
using LogHandler = std::function<void(std::string_view line)>;

/// \cond INTERNAL
namespace detail {

// The log callback's state. netev gets one static trampoline with this
// object as user_data, never a block per callback, so that what netev
// holds never dangles; the std::function lives in a shared_ptr that every
// running call copies. Why not a block per callback freed by
// set_log_callback, as netev_log_set_callback's contract would allow?
// Replaced from inside the log callback (which the contract allows and the
// wrapper must support), netev does not wait for calls of the old callback
// running on other threads, and no later call of netev says when they have
// returned (a replacement waits only for "the callback it replaced"), so
// such a block could never be freed safely. With the shared_ptr the old
// function is destroyed by whichever holder lets go last: set_log_callback
// itself when it waited (outside any log callback), or else the last
// call of it still running, on that call's thread once it returned.
struct LogState {
  std::mutex mu;
  std::condition_variable call_ended;
  std::shared_ptr<const LogHandler> current;  // null: no callback
  std::uint64_t generation = 0;               // of `current`, bumped by each set
  // (generation, calls of it running now), for generations with calls running.
  std::vector<std::pair<std::uint64_t, std::size_t>> in_flight;
};

// Never destroyed: netev's threads may still log while statics are being
// destroyed at exit. Reachable from here, so not a leak for LeakSanitizer.
inline LogState &log_state() {
  static LogState *s = new LogState;
  return *s;
}

// Calls of log_trampoline running on this thread (nested ones count):
// set_log_callback must not wait for calls when it is one of them.
inline int &log_depth() {
  static thread_local int depth = 0;
  return depth;
}

inline void log_trampoline(const char *line, void *user_data) noexcept {
  auto *s = static_cast<LogState *>(user_data);
  std::shared_ptr<const LogHandler> fn;
  std::uint64_t gen = 0;
  {
    std::lock_guard<std::mutex> g(s->mu);
    if (!s->current) return;  // cleared; netev's registration follows shortly
    fn = s->current;
    gen = s->generation;
    auto it = s->in_flight.begin();
    while (it != s->in_flight.end() && it->first != gen) ++it;
    if (it == s->in_flight.end())
      s->in_flight.emplace_back(gen, 1);  // reserved by set_log_callback: cannot throw
    else
      it->second++;
  }
  log_depth()++;
  try {
    (*fn)(std::string_view(line));
  } catch (...) {
    report_current_exception(static_cast<netev_event_type>(0), 0, 0, 0, true);  // it stays installed
  }
  // Let go of the function before the count drops, so that a waiting
  // set_log_callback holds the last reference and destroys it itself. If
  // it was replaced from inside a callback, this may be the last one: its
  // captures are destroyed here, still counted as inside the callback (a
  // destructor calling set_log_callback does not wait for this very call).
  fn.reset();
  log_depth()--;
  std::lock_guard<std::mutex> g(s->mu);
  for (auto it = s->in_flight.begin(); it != s->in_flight.end(); ++it) {
    if (it->first == gen) {
      if (--it->second == 0) {
        s->in_flight.erase(it);
        s->call_ended.notify_all();
      }
      break;
    }
  }
}

// Makes netev's registration match `current`: the trampoline while there
// is a function (netev then formats lines for it), none without (netev
// formats nothing when no file is open either). Two set_log_callback calls
// racing may register out of order, so each checks afterwards and goes
// again until what is registered matches; no lock is held during the
// netev call, which waits for calls that may themselves set the callback.
inline void sync_log_registration(LogState &s) {
  for (;;) {
    bool want;
    {
      std::lock_guard<std::mutex> g(s.mu);
      want = s.current != nullptr;
    }
    check(netev_log_set_callback(want ? &log_trampoline : nullptr, want ? &s : nullptr),
          "netev_log_set_callback");
    std::lock_guard<std::mutex> g(s.mu);
    if ((s.current != nullptr) == want) return;
  }
}

}  // namespace detail
/// \endcond

/// netev_log_set_callback with a std::function: every log line goes to `fn`
/// (as well as to the log file, if one is open); an empty function (or
/// nullptr) removes it. Exceptions `fn` throws go to the callback exception
/// handler, and `fn` stays installed. Throws Error only if
/// netev_log_set_callback fails, which its contract never has it do.
///
/// Outside the log callback, when this returns, no call of any earlier
/// function is still running and none starts again, and the function it
/// replaced has been destroyed, here. So `fn` may capture by reference what
/// outlives the set_log_callback that removes it (it stays installed across
/// netev::Runtime::shutdown: remove it before what it captures goes away).
/// It waits for calls running on other threads, so do not call it holding a
/// lock your log callback takes.
/// Inside the log callback (replacing or removing itself, say), it does not
/// wait: the earlier function is never called again, but calls of it
/// already running on other threads, this one included, finish, and it is
/// destroyed when the last of them returns, on that thread.
///
/// Use this or netev_log_set_callback, not both: each replaces the other's
/// callback without telling it.
inline void set_log_callback(LogHandler fn) {
  detail::LogState &s = detail::log_state();
  std::shared_ptr<const LogHandler> next;
  if (fn) next = std::make_shared<const LogHandler>(std::move(fn));
  std::shared_ptr<const LogHandler> old;  // destroyed last, with no lock held
  std::uint64_t gen;
  {
    std::lock_guard<std::mutex> g(s.mu);
    // room for the new generation's count, so a call never allocates
    s.in_flight.reserve(s.in_flight.size() + 1);
    old = std::exchange(s.current, std::move(next));
    gen = ++s.generation;
  }
  detail::sync_log_registration(s);
  if (detail::log_depth() > 0) return;  // inside the log callback: no wait (see above)
  std::unique_lock<std::mutex> g(s.mu);
  s.call_ended.wait(g, [&] {
    for (auto &e : s.in_flight)
      if (e.first < gen) return false;
    return true;
  });
}

}  // namespace netev

#endif  // NETEV_HPP
