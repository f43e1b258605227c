/* Helpers for netev's listener tests, on top of common.h: an echo server
 * built on a netev listener that keeps one recorder per accepted
 * connection and checks every event's fields, plus plain BSD-socket
 * clients. Every wait here is bounded. */
#ifndef NETEV_TEST_COMMON_LISTENER_H
#define NETEV_TEST_COMMON_LISTENER_H

#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>

/* ---- small utilities ---------------------------------------------------- */

static inline void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Polls `pred(arg)` every millisecond until it holds or `seconds` pass. For
 * conditions no callback signals (a handle going invalid right after its
 * TERMINATE callback returned). */
static inline int poll_until(int (*pred)(void *), void *arg, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (!pred(arg)) {
    if (now_seconds() >= end) return pred(arg);
    sleep_ms(1);
  }
  return 1;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit. */
static inline rlim_t raise_nofile(void) {
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  }
  return rl.rlim_cur;
}

/* ---- BSD-socket clients ------------------------------------------------- */

/* Connects a blocking TCP socket to ip:port (IPv4 or IPv6 literal). Returns
 * the fd, or -1 with errno set. Send and receive time out after 20 s. */
static inline int bsd_connect(const char *ip, uint16_t port) {
  struct sockaddr_storage ss;
  socklen_t len;
  memset(&ss, 0, sizeof ss);
  int family;
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    CHECK(inet_pton(AF_INET6, ip, &a->sin6_addr) == 1);
    len = sizeof *a;
    family = AF_INET6;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    CHECK(inet_pton(AF_INET, ip, &a->sin_addr) == 1);
    len = sizeof *a;
    family = AF_INET;
  }
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* The local port of a connected socket. */
static inline uint16_t bsd_local_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  CHECK(getsockname(fd, (struct sockaddr *)&ss, &len) == 0);
  if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Reads exactly n bytes within `seconds`; returns 0, or -1 (EOF, error, time). */
static inline int bsd_recv_exact(int fd, unsigned char *b, size_t n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (n > 0) {
    double left = end - now_seconds();
    if (left <= 0) return -1;
    struct pollfd p = {fd, POLLIN, 0};
    int k = poll(&p, 1, (int)(left * 1000) + 1);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    ssize_t r = recv(fd, b, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

/* Waits up to `seconds` for the end of the stream. Returns 0 on EOF, the
 * errno of a failed recv (ECONNRESET …), ETIMEDOUT when nothing came, or
 * -1 when bytes arrived instead. */
static inline int bsd_recv_end(int fd, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  for (;;) {
    double left = end - now_seconds();
    if (left <= 0) return ETIMEDOUT;
    struct pollfd p = {fd, POLLIN, 0};
    int k = poll(&p, 1, (int)(left * 1000) + 1);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) return ETIMEDOUT;
    if (k < 0) return errno;
    unsigned char b[256];
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (r == 0) return 0;
    if (r > 0) return -1;
    if (errno == EINTR || errno == EAGAIN) continue;
    return errno;
  }
}

/* Whether this machine has an IPv6 loopback to bind to. */
static inline int ipv6_available(void) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

/* ---- an echo server on a netev listener --------------------------------- */

#define LSN_MAX_CONNS 256
#define LSN_MAX_LEVENTS 256

struct lsn_server;

/* One accepted connection. `r` must stay the first member: it is the
 * connection's user_data. */
typedef struct lsn_conn {
  recorder r;
  struct lsn_server *srv;
  netev_connection conn;  /* .connection of the accept event */
  char ip[NETEV_IP_TEXT_LEN]; /* of the accept event */
  uint16_t port;          /* of the accept event */
  int queried;            /* properties read in the first callback */
  netev_listener listener_prop;
  char address_prop[64];
  uint16_t port_prop;
  int bad;                /* events whose fields were not as expected */
  char bad_what[200];
  int send_failed;
  pthread_t conn_thread;  /* thread of its on_connection callback */
} lsn_conn;

typedef struct lsn_server {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  netev_listener listener;
  int reject;             /* on_connection returns false */
  int echo;               /* accepted connections echo what they receive */
  int retain;             /* accepted connections retain themselves in on_connection */
  void *want_user_data;   /* expected options->user_data in on_connection (NULL: not checked) */
  netev_dispatcher want_dispatcher; /* expected options->dispatcher (checked when check_dispatcher) */
  int check_dispatcher;
  int check_thread;       /* every callback must run on expect_thread */
  pthread_t expect_thread;
  int wrong_thread;
  int accepts;            /* on_connection calls */
  int errors;             /* listener ERROR events */
  netev_event last_error; /* the last ERROR event (message pointer cleared) */
  char last_error_message[256];
  int terminates;         /* listener TERMINATE events */
  int after_terminate;    /* listener events after its TERMINATE */
  int levents[LSN_MAX_LEVENTS]; /* listener event types in order */
  int nlevents;
  int conn_terminates;    /* TERMINATE events of accepted connections */
  int bad;                /* accept events whose fields were not as expected */
  char bad_what[200];
  lsn_conn *conns[LSN_MAX_CONNS];
  int nconns;
} lsn_server;

static inline void lsn_init(lsn_server *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->echo = 1;
}

static inline void lsn_free(lsn_server *s) {
  for (int i = 0; i < s->nconns; i++) {
    rec_free(&s->conns[i]->r);
    free(s->conns[i]);
  }
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
}

static inline void lsn_bad(char *what, size_t cap, int *count, const char *fmt, const char *a,
                           long b) {
  if (!*count) snprintf(what, cap, fmt, a, b);
  (*count)++;
}

/* Callback of every slot of an accepted connection: records, checks the
 * event's fields, echoes DATA. */
static inline void lsn_conn_cb(netev_connection c, const netev_event *e, void *ud) {
  lsn_conn *lc = ud;
  lsn_server *s = lc->srv;
  rec_event(&lc->r, e);
  pthread_mutex_lock(&lc->r.mu);
  if (c != lc->conn || e->connection != lc->conn)
    lsn_bad(lc->bad_what, sizeof lc->bad_what, &lc->bad, "%s event: wrong handle %ld",
            netev_event_type_name((int32_t)e->type), (long)e->connection);
  if (strcmp(e->ip, lc->ip) != 0)
    lsn_bad(lc->bad_what, sizeof lc->bad_what, &lc->bad, "ip \"%s\" differs (%ld)", e->ip,
            (long)e->type);
  if (e->port != lc->port)
    lsn_bad(lc->bad_what, sizeof lc->bad_what, &lc->bad, "%s event: port %ld differs",
            netev_event_type_name((int32_t)e->type), (long)e->port);
  if (s->check_thread && !pthread_equal(pthread_self(), s->expect_thread))
    lsn_bad(lc->bad_what, sizeof lc->bad_what, &lc->bad, "%s event on another thread (%ld)",
            netev_event_type_name((int32_t)e->type), 0);
  if (e->type == NETEV_EVENT_CONNECTION) lc->conn_thread = pthread_self();
  int query = !lc->queried;
  lc->queried = 1;
  pthread_mutex_unlock(&lc->r.mu);
  if (query) {
    /* Properties, read inside the first callback where the handle is valid. */
    netev_listener l = 0;
    char addr[64];
    size_t need = 0;
    uint16_t port = 0;
    CHECK_OK(netev_connection_listener(c, &l));
    CHECK_OK(netev_connection_address(c, addr, sizeof addr, &need));
    CHECK_OK(netev_connection_port(c, &port));
    if (s->retain) CHECK_OK(netev_connection_retain(c));
    pthread_mutex_lock(&lc->r.mu);
    lc->listener_prop = l;
    snprintf(lc->address_prop, sizeof lc->address_prop, "%s", addr);
    lc->port_prop = port;
    pthread_mutex_unlock(&lc->r.mu);
  }
  if (e->type == NETEV_EVENT_DATA && s->echo) {
    netev_status st = netev_connection_send(c, e->data, e->data_len);
    if (st != NETEV_OK) {
      pthread_mutex_lock(&lc->r.mu);
      lc->send_failed++;
      pthread_mutex_unlock(&lc->r.mu);
    }
  }
  rec_done(&lc->r);
  if (e->type == NETEV_EVENT_TERMINATE) {
    pthread_mutex_lock(&s->mu);
    s->conn_terminates++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
}

static inline void lsn_record_levent(lsn_server *s, int type) {
  if (s->terminates) s->after_terminate++;
  if (s->nlevents < LSN_MAX_LEVENTS) s->levents[s->nlevents++] = type;
  if (s->check_thread && !pthread_equal(pthread_self(), s->expect_thread)) s->wrong_thread++;
}

/* The listener's on_connection. */
static inline bool lsn_accept(netev_listener l, const netev_event *e, void *ud,
                              netev_connection_options *o) {
  lsn_server *s = ud;
  pthread_mutex_lock(&s->mu);
  s->accepts++;
  lsn_record_levent(s, (int)e->type);
  if (l != s->listener && s->listener != 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: wrong listener %s%ld", "",
            (long)l);
  if (e->type != NETEV_EVENT_CONNECTION)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: event type %s (%ld)",
            netev_event_type_name((int32_t)e->type), (long)e->type);
  if (e->connection == 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: .connection is 0%s%ld", "", 0);
  if (e->ip[0] == 0 || e->port == 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: ip \"%s\" port %ld", e->ip,
            (long)e->port);
  if (e->data != NULL || e->data_len != 0 || e->error != NETEV_OK || e->message == NULL ||
      e->message[0] != 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: data/error fields set%s%ld", "",
            0);
  /* The library's own options: at least as large as this header's. */
  if (o == NULL || o->size < sizeof *o)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: options NULL or bad size%s%ld",
            "", 0);
  else if (s->want_user_data && o->user_data != s->want_user_data)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad,
            "accept: options not pre-filled from connection_defaults (user_data)%s%ld", "", 0);
  if (o && s->check_dispatcher && o->dispatcher != s->want_dispatcher)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "accept: options->dispatcher %s%ld", "",
            (long)o->dispatcher);
  if (s->reject || o == NULL || s->nconns >= LSN_MAX_CONNS) {
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return false;
  }
  lsn_conn *lc = calloc(1, sizeof *lc);
  if (!lc) FAIL("out of memory");
  rec_init(&lc->r);
  lc->srv = s;
  lc->conn = e->connection;
  memcpy(lc->ip, e->ip, sizeof lc->ip);
  lc->port = e->port;
  s->conns[s->nconns++] = lc;
  rec_set_all(o, &lc->r, lsn_conn_cb);
  o->user_data = lc;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return true;
}

/* The listener's on_error and on_terminate. */
static inline void lsn_listener_cb(netev_listener l, const netev_event *e, void *ud) {
  lsn_server *s = ud;
  pthread_mutex_lock(&s->mu);
  lsn_record_levent(s, (int)e->type);
  if (l != s->listener && s->listener != 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "listener event: wrong listener %s%ld",
            "", (long)l);
  if (e->connection != 0)
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "listener %s event: .connection %ld",
            netev_event_type_name((int32_t)e->type), (long)e->connection);
  if (e->type == NETEV_EVENT_ERROR) {
    s->errors++;
    s->last_error = *e;
    snprintf(s->last_error_message, sizeof s->last_error_message, "%s",
             e->message ? e->message : "(NULL)");
    s->last_error.message = NULL;
  } else if (e->type == NETEV_EVENT_TERMINATE) {
    s->terminates++;
  } else {
    lsn_bad(s->bad_what, sizeof s->bad_what, &s->bad, "listener callback got %s (%ld)",
            netev_event_type_name((int32_t)e->type), (long)e->type);
  }
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Fills listener options for this server (callbacks and user_data). */
static inline void lsn_options(lsn_server *s, netev_listener_options *o) {
  CHECK_OK(netev_listener_options_init(o));
  o->on_connection = lsn_accept;
  o->on_error = lsn_listener_cb;
  o->on_terminate = lsn_listener_cb;
  o->user_data = s;
}

/* Opens the server's listener on 127.0.0.1 (or `bind_address`) at a free
 * port and returns the port. */
static inline uint16_t lsn_open(lsn_server *s, const char *bind_address) {
  netev_listener_options o;
  lsn_options(s, &o);
  o.bind_address = bind_address;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  CHECK(l != 0);
  pthread_mutex_lock(&s->mu);
  s->listener = l;
  pthread_mutex_unlock(&s->mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(port != 0);
  return port;
}

/* Waits until `pred(s, arg)` holds (under the lock) or `seconds` pass. */
static inline int lsn_wait(lsn_server *s, int (*pred)(lsn_server *, long), long arg,
                           double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&s->mu);
  while (!pred(s, arg) && cond_wait_until(&s->cv, &s->mu, end)) {
  }
  int ok = pred(s, arg);
  pthread_mutex_unlock(&s->mu);
  return ok;
}

static inline int lsn_pred_accepts(lsn_server *s, long n) { return s->accepts >= n; }
static inline int lsn_pred_conns(lsn_server *s, long n) { return s->nconns >= n; }
static inline int lsn_pred_conn_terminates(lsn_server *s, long n) {
  return s->conn_terminates >= n;
}
static inline int lsn_pred_terminated(lsn_server *s, long n) {
  (void)n;
  return s->terminates > 0;
}
static inline int lsn_pred_errors(lsn_server *s, long n) { return s->errors >= n; }

static inline int lsn_get(lsn_server *s, int *field) {
  pthread_mutex_lock(&s->mu);
  int v = *field;
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* The accepted connection number i (bounded wait for it to appear). */
static inline lsn_conn *lsn_conn_at(lsn_server *s, int i, double seconds) {
  if (!lsn_wait(s, lsn_pred_conns, i + 1, seconds)) FAIL("accepted connection %d never came", i);
  pthread_mutex_lock(&s->mu);
  lsn_conn *lc = s->conns[i];
  pthread_mutex_unlock(&s->mu);
  return lc;
}

/* Asserts that no field check failed on the server or its connections. */
static inline void lsn_check_clean(lsn_server *s) {
  pthread_mutex_lock(&s->mu);
  if (s->bad) FAIL("listener: %d bad events, first: %s", s->bad, s->bad_what);
  for (int i = 0; i < s->nconns; i++) {
    lsn_conn *lc = s->conns[i];
    pthread_mutex_lock(&lc->r.mu);
    if (lc->bad) FAIL("accepted connection %d: %d bad events, first: %s", i, lc->bad, lc->bad_what);
    if (lc->send_failed) FAIL("accepted connection %d: %d echo sends failed", i, lc->send_failed);
    if (lc->r.overlaps) FAIL("accepted connection %d: overlapping callbacks", i);
    if (lc->r.after_terminate) FAIL("accepted connection %d: events after TERMINATE", i);
    pthread_mutex_unlock(&lc->r.mu);
  }
  pthread_mutex_unlock(&s->mu);
}

/* The listener's event types as text, like rec_sequence. */
static inline void lsn_sequence(lsn_server *s, char *out, size_t cap) {
  size_t used = 0;
  out[0] = 0;
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->nlevents; i++) {
    int w = snprintf(out + used, cap - used, "%s%s", used ? " " : "",
                     netev_event_type_name(s->levents[i]));
    if (w < 0 || (size_t)w >= cap - used) break;
    used += (size_t)w;
  }
  pthread_mutex_unlock(&s->mu);
}

#define CHECK_LSN_SEQUENCE(s, want)                                            \
  do {                                                                         \
    char lseq_[2048];                                                          \
    lsn_sequence((s), lseq_, sizeof lseq_);                                    \
    if (strcmp(lseq_, (want)) != 0)                                            \
      FAIL("listener event sequence \"%s\", expected \"%s\"", lseq_, (want));  \
  } while (0)

/* ---- a netev client with a recorder ------------------------------------- */

/* Opens a netev client to ip:port recording into `r`. */
static inline netev_connection client_open(const char *ip, uint16_t port, recorder *r) {
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, r, rec_callback);
  o.connection_timeout = 10;
  netev_connection c;
  CHECK_OK(netev_connection_open(ip, port, &o, &c));
  CHECK(c != 0);
  return c;
}

/* Sends `msg`, waits for its echo, shuts down, waits for TERMINATE and
 * checks the client's sequence and bytes. */
static inline void client_echo_round(netev_connection c, recorder *r, const char *msg) {
  size_t n = strlen(msg);
  CHECK_OK(netev_connection_send(c, msg, n));
  if (!rec_wait_bytes(r, n, 20)) FAIL("echo of \"%s\" did not come back", msg);
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(r, 20));
  CHECK_SEQUENCE(r, "connection data* end close terminate");
  CHECK(r->data_len == n && memcmp(r->data, msg, n) == 0);
  CHECK(r->overlaps == 0 && r->after_terminate == 0);
}

#endif
