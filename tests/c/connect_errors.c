/* Connects that fail: refused, unknown host, and a connect timeout. Each
 * gives "error terminate" with the right status in the event and in the
 * errors list; wait returns NETEV_OK at once; closed is true. */
#include "common_a.h"

typedef struct expect {
  const char *address;
  uint16_t port;
  double connection_timeout;
  netev_status code;
  const char *component;
  int os_error; /* -1: not checked */
  double min_seconds, max_seconds;
} expect;

static void run_case(const expect *want) {
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  o.connection_timeout = want->connection_timeout;
  netev_connection c = 0;
  double t0 = now_seconds();
  CHECK_OK(netev_connection_open(want->address, want->port, &o, &c));
  CHECK(c != 0);
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, want->max_seconds + 5);
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_SEQUENCE(&x.r, "error terminate");
  CHECK_XREC_CLEAN(&x);
  CHECK(XREC_GET(&x, seen_conn) == c);

  /* the event */
  netev_status got = XREC_GET(&x, r.error);
  if (got != want->code)
    FAIL("%s port %u: ERROR carried %s, expected %s (message: %s)", want->address,
         (unsigned)want->port, netev_status_name(got), netev_status_name(want->code),
         x.message);
  if (want->os_error >= 0 && XREC_GET(&x, os_error) != want->os_error)
    FAIL("event os_error %d, expected %d", (int)XREC_GET(&x, os_error), want->os_error);
  CHECK(x.message[0] != 0);
  double took = XREC_GET(&x, error_time) - t0;
  if (took < want->min_seconds || took >= want->max_seconds)
    FAIL("%s: ERROR after %.3f s, expected within [%.1f, %.1f)", want->address, took,
         want->min_seconds, want->max_seconds);

  /* the errors list */
  size_t n = 99;
  CHECK_OK(netev_connection_error_count(c, &n));
  CHECK(n == 1);
  netev_error_info info;
  memset(&info, 0x55, sizeof info);
  CHECK_OK(netev_connection_error_at(c, 0, &info));
  if (info.code != want->code)
    FAIL("errors[0].code %s, expected %s", netev_status_name(info.code),
         netev_status_name(want->code));
  if (want->os_error >= 0 && info.os_error != want->os_error)
    FAIL("errors[0].os_error %d, expected %d", (int)info.os_error, want->os_error);
  CHECK(memchr(info.component, 0, sizeof info.component) != NULL);
  CHECK(memchr(info.message, 0, sizeof info.message) != NULL);
  if (want->component && strcmp(info.component, want->component) != 0)
    FAIL("errors[0].component \"%s\", expected \"%s\"", info.component, want->component);
  CHECK(info.message[0] != 0);
  CHECK_STATUS(netev_connection_error_at(c, n, &info), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(netev_connection_error_at(c, (size_t)-1, &info), NETEV_ERR_INVALID_ARGUMENT);

  /* wait on a failed connection returns NETEV_OK at once */
  double w0 = now_seconds();
  CHECK_OK(netev_connection_wait(c, 5));
  CHECK_OK(netev_connection_wait(c, -1));
  CHECK(now_seconds() - w0 < 1);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  /* nothing to send on it any more */
  CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);
  /* close on an ended connection is harmless */
  CHECK_OK(netev_connection_close(c));
  CHECK_OK(netev_connection_release(c));
  CHECK(XREC_GET(&x, free_calls) == 1);
  CHECK(XREC_GET(&x, free_early) == 0);
  CHECK(rec_count(&x.r, NETEV_EVENT_TERMINATE) == 1);
  xrec_free_fields(&x);
}

/* A nonblocking connect to `port` that is still pending after `ms`
 * milliseconds returns 0; one that completed returns 1. *fd_out keeps it. */
static int connect_completes(uint16_t port, int ms, int *fd_out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  CHECK(fd >= 0);
  *fd_out = fd;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return 1;
  CHECK(errno == EINPROGRESS);
  struct pollfd pfd = {fd, POLLOUT, 0};
  int r = poll(&pfd, 1, ms);
  CHECK(r >= 0);
  if (r == 0) return 0;
  int err = 0;
  socklen_t len = sizeof err;
  CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0);
  CHECK(err == 0);
  return 1;
}

int main(void) {
  watchdog(60);

  /* refused: a port that was just free */
  expect refused = {"127.0.0.1", refused_port(), 0,  NETEV_ERR_CONNECTION_REFUSED,
                    "os",        ECONNREFUSED,  0,  5};
  run_case(&refused);

  /* unknown host */
  expect unknown = {"nonexistent.invalid", 80, 0, NETEV_ERR_HOST_NOT_FOUND, "dns", -1, 0, 20};
  run_case(&unknown);

  /* connect timeout: a listener whose accept queue is full drops new SYNs */
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(lfd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(lfd, 0) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(lfd, (struct sockaddr *)&a, &len) == 0);
  uint16_t full_port = ntohs(a.sin_port);
  int fillers[16];
  int nfill = 0;
  int pending = 0;
  /* connect until one stays pending: the queue is then full */
  while (nfill < 16 && !pending) {
    pending = !connect_completes(full_port, 300, &fillers[nfill]);
    nfill++;
  }
  CHECK(pending);
  expect timeout = {"127.0.0.1", full_port, 0.5, NETEV_ERR_TIMEOUT, NULL, -1, 0.4, 10};
  run_case(&timeout);
  for (int i = 0; i < nfill; i++) close(fillers[i]);
  close(lfd);

  /* a refused connect to a name: the name resolves, the connect fails */
  expect refused_name = {"localhost", refused_port(), 0, NETEV_ERR_CONNECTION_REFUSED,
                         "os",        ECONNREFUSED,   0, 5};
  run_case(&refused_name);

  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
