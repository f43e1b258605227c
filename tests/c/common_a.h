/* More helpers for netev's C tests, on top of common.h: a recorder that also
 * checks each event's fields (ip, port, connection, error details) and
 * counts user_data_free calls, plus small polling helpers. Every wait is
 * bounded. */
#ifndef NETEV_TEST_COMMON_A_H
#define NETEV_TEST_COMMON_A_H

#include "common.h"

#include <fcntl.h>
#include <poll.h>

/* A recorder plus per-event field checks. `r` must stay the first member:
 * the callbacks get the xrec as user_data. */
typedef struct xrec {
  recorder r;
  const char *want_ip;   /* expected ip from CONNECTION on (NULL: not checked) */
  uint16_t want_port;    /* expected port from CONNECTION on (0: not checked) */
  int bad_ip;            /* events whose ip differed from want_ip */
  int bad_port;          /* events whose port differed from want_port */
  int bad_conn;          /* events whose .connection differed from the conn argument */
  int bad_fields;        /* data/message/error fields not as documented for the type */
  char bad_what[160];    /* the first such field, in words */
  int check_data_null;   /* also check .data is NULL on non-DATA events */
  netev_connection seen_conn; /* the conn argument of the first callback */
  int free_calls;        /* user_data_free calls */
  int free_early;        /* user_data_free calls before TERMINATE had returned */
  int32_t os_error;      /* of the ERROR event */
  char message[256];     /* of the ERROR event */
  double error_time;     /* now_seconds() when ERROR arrived */
  double connection_time;
  int connected_seen;
} xrec;

static inline void xrec_init(xrec *x) {
  memset(x, 0, sizeof *x);
  rec_init(&x->r);
}

static inline void xrec_free_fields(xrec *x) { rec_free(&x->r); }

static inline void xrec_bad(xrec *x, const netev_event *e, const char *what) {
  if (!x->bad_fields)
    snprintf(x->bad_what, sizeof x->bad_what, "%s event: %s",
             netev_event_type_name((int32_t)e->type), what);
  x->bad_fields++;
}

static inline void xrec_check_event(xrec *x, netev_connection c, const netev_event *e) {
  pthread_mutex_lock(&x->r.mu);
  if (!x->seen_conn) x->seen_conn = c;
  if (e->connection != c) x->bad_conn++;
  if (e->type == NETEV_EVENT_CONNECTION) {
    x->connected_seen = 1;
    x->connection_time = now_seconds();
  }
  /* ip/port are the remote end from CONNECTION on */
  if (x->connected_seen) {
    if (x->want_ip && strncmp(e->ip, x->want_ip, NETEV_IP_TEXT_LEN) != 0) x->bad_ip++;
    if (x->want_port && e->port != x->want_port) x->bad_port++;
  }
  if (e->message == NULL) xrec_bad(x, e, "message is NULL");
  if (e->type == NETEV_EVENT_DATA) {
    if (e->data == NULL || e->data_len == 0) xrec_bad(x, e, "data NULL or data_len 0");
  } else {
    if (x->check_data_null && e->data != NULL)
      xrec_bad(x, e, "data is not NULL (header: \"DATA only ... NULL otherwise\")");
    if (e->data_len != 0) xrec_bad(x, e, "data_len is not 0");
  }
  if (e->type == NETEV_EVENT_ERROR) {
    if (e->error == NETEV_OK) xrec_bad(x, e, "error is NETEV_OK");
    x->os_error = e->os_error;
    if (e->message) snprintf(x->message, sizeof x->message, "%s", e->message);
    x->error_time = now_seconds();
  } else {
    if (e->error != NETEV_OK || e->os_error != 0) xrec_bad(x, e, "error or os_error set");
    if (e->message && e->message[0] != 0) xrec_bad(x, e, "message is not \"\"");
  }
  pthread_mutex_unlock(&x->r.mu);
}

/* A connection callback for every slot: user_data is the xrec. */
static inline void xrec_callback(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  xrec_check_event(x, c, e);
  rec_event(&x->r, e);
  rec_done(&x->r);
}

/* user_data_free for an xrec: counts calls, and those made too early. */
static inline void xrec_user_data_free(void *ud) {
  xrec *x = ud;
  pthread_mutex_lock(&x->r.mu);
  x->free_calls++;
  if (!x->r.terminated || x->r.in_callback) x->free_early++;
  pthread_cond_broadcast(&x->r.cv);
  pthread_mutex_unlock(&x->r.mu);
}

static inline void xrec_set_all(netev_connection_options *o, xrec *x) {
  rec_set_all(o, &x->r, xrec_callback);
  o->user_data = x;
  o->user_data_free = xrec_user_data_free;
}

static inline int xrec_pred_freed(recorder *r, size_t unused) {
  (void)unused;
  return ((xrec *)r)->free_calls > 0;
}

/* Waits (bounded) until user_data_free ran. */
static inline int xrec_wait_freed(xrec *x, double seconds) {
  return rec_wait(&x->r, xrec_pred_freed, 0, seconds);
}

/* Reads a field of the xrec under its lock. */
#define XREC_GET(x, field)                                                     \
  __extension__({                                                              \
    pthread_mutex_lock(&(x)->r.mu);                                            \
    __typeof__((x)->field) v_ = (x)->field;                                    \
    pthread_mutex_unlock(&(x)->r.mu);                                          \
    v_;                                                                        \
  })

/* Checks the xrec's field checks all passed. */
#define CHECK_XREC_CLEAN(x)                                                    \
  do {                                                                         \
    pthread_mutex_lock(&(x)->r.mu);                                            \
    int bi_ = (x)->bad_ip, bp_ = (x)->bad_port, bc_ = (x)->bad_conn;           \
    int bf_ = (x)->bad_fields, ov_ = (x)->r.overlaps;                          \
    int at_ = (x)->r.after_terminate;                                          \
    pthread_mutex_unlock(&(x)->r.mu);                                          \
    if (bi_ || bp_ || bc_ || bf_ || ov_ || at_)                                \
      FAIL("event fields: bad_ip %d bad_port %d bad_conn %d bad_fields %d "    \
           "overlaps %d after_terminate %d (first bad field: %s)",             \
           bi_, bp_, bc_, bf_, ov_, at_, (x)->bad_what);                       \
  } while (0)

/* Waits (bounded) for TERMINATE; on a timeout, fails showing the events so far. */
#define REC_WAIT_TERMINATED_OR_FAIL(r, seconds)                                \
  do {                                                                         \
    if (!rec_wait_terminated((r), (seconds))) {                                \
      char seq_[1024];                                                         \
      rec_sequence((r), seq_, sizeof seq_);                                    \
      FAIL("no TERMINATE within %g s; events so far: \"%s\"",                 \
           (double)(seconds), seq_);                                           \
    }                                                                          \
  } while (0)

static inline void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Polls until the connection handle answers NETEV_ERR_INVALID_HANDLE (the
 * handle dies just after TERMINATE returns); bounded. */
static inline int wait_handle_invalid(netev_connection c, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  for (;;) {
    uint16_t port;
    if (netev_connection_port(c, &port) == NETEV_ERR_INVALID_HANDLE) return 1;
    if (now_seconds() > end) return 0;
    sleep_ms(2);
  }
}

/* A loopback port with nothing listening: bound once, then closed. */
static inline uint16_t refused_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

#endif
