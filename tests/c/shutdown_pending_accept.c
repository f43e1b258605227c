/* Runtime shutdown while a dispatcher-bound listener holds an accepted
 * connection its host never dispatched: the shutdown ends promptly, the
 * accept callback never runs (nothing is offered during shutdown), and the
 * listener's TERMINATE runs on the thread calling shutdown. */
#include "common.h"

static int accepts, terminates;
static pthread_t main_thread;
static int wrong_thread;

static bool on_accept(netev_listener l, const netev_event *e, void *ud,
                      netev_connection_options *o) {
  (void)l, (void)e, (void)ud, (void)o;
  accepts++;
  return true;
}

static void on_terminate(netev_listener l, const netev_event *e, void *ud) {
  (void)l, (void)e, (void)ud;
  if (!pthread_equal(pthread_self(), main_thread)) wrong_thread++;
  terminates++;
}

int main(void) {
  watchdog(60);
  main_thread = pthread_self();
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.on_connection = on_accept;
  lo.on_terminate = on_terminate;
  lo.bind_address = "127.0.0.1";
  lo.dispatcher = d;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  uint16_t port;
  CHECK_OK(netev_listener_port(l, &port));

  /* A client whose connection the kernel completes; netev accepts it and
   * queues the decision for a host that never dispatches. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  int dfd;
  CHECK_OK(netev_dispatcher_fd(d, &dfd));
  struct pollfd p = {.fd = dfd, .events = POLLIN};
  CHECK(poll(&p, 1, 10000) == 1); /* the accept decision is queued */

  double t0 = now_seconds();
  CHECK_OK(netev_runtime_shutdown(10));
  double took = now_seconds() - t0;
  if (took > 5) FAIL("shutdown took %.2f s", took);
  CHECK(accepts == 0);
  CHECK(terminates == 1);
  CHECK(wrong_thread == 0);

  /* The client sees its connection closed. */
  char b;
  struct pollfd cp = {.fd = fd, .events = POLLIN};
  CHECK(poll(&cp, 1, 10000) == 1);
  CHECK(recv(fd, &b, 1, 0) <= 0);
  close(fd);

  /* Nothing ran afterwards; the handles answer as documented. */
  size_t ran = 99;
  CHECK_OK(netev_dispatcher_run(d, 0, &ran));
  CHECK(ran == 0);
  CHECK(accepts == 0 && terminates == 1);
  CHECK_OK(netev_listener_release(l));
  CHECK_STATUS(netev_listener_release(l), NETEV_ERR_INVALID_HANDLE);
  CHECK_OK(netev_dispatcher_release(d));
  return 0;
}
