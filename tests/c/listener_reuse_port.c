/* reuse_port: two listeners share one port; every client is accepted by
 * exactly one of them (the kernel chooses, maybe unevenly). A third
 * listener without reuse_port is refused. */
#include "common_listener.h"

#define CLIENTS 64

static lsn_server s1, s2;

static int all_terminated(void *arg) {
  (void)arg;
  return lsn_get(&s1, &s1.conn_terminates) + lsn_get(&s2, &s2.conn_terminates) >= CLIENTS;
}

static netev_listener open_shared(lsn_server *s, uint16_t port) {
  netev_listener_options o;
  lsn_options(s, &o);
  o.bind_address = "127.0.0.1";
  o.reuse_port = true;
  netev_listener l;
  CHECK_OK(netev_listener_open(port, &o, &l));
  pthread_mutex_lock(&s->mu);
  s->listener = l;
  pthread_mutex_unlock(&s->mu);
  return l;
}

int main(void) {
  watchdog(60);
  lsn_init(&s1);
  lsn_init(&s2);
  netev_listener l1 = open_shared(&s1, 0);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l1, &port));
  CHECK(port != 0);
  netev_listener l2 = open_shared(&s2, port);
  uint16_t port2 = 0;
  CHECK_OK(netev_listener_port(l2, &port2));
  CHECK(port2 == port && l2 != l1);

  /* Without reuse_port the port stays taken. */
  netev_listener_options o;
  CHECK_OK(netev_listener_options_init(&o));
  o.bind_address = "127.0.0.1";
  netev_listener l3 = 0;
  CHECK_STATUS(netev_listener_open(port, &o, &l3), NETEV_ERR_ADDRESS_IN_USE);

  int fds[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    fds[i] = bsd_connect("127.0.0.1", port);
    if (fds[i] < 0) FAIL("client %d: connect: %s", i, strerror(errno));
  }
  for (int i = 0; i < CLIENTS; i++) {
    unsigned char b = (unsigned char)i, back = 0;
    CHECK(write_all(fds[i], &b, 1) == 0);
    if (bsd_recv_exact(fds[i], &back, 1, 10) != 0) FAIL("client %d: no echo", i);
    CHECK(back == b);
  }
  /* Each echo came from an accepted connection, so every accept has run. */
  int a1 = lsn_get(&s1, &s1.accepts), a2 = lsn_get(&s2, &s2.accepts);
  printf("accepts: %d by the first listener, %d by the second\n", a1, a2);
  if (a1 + a2 != CLIENTS) FAIL("%d + %d accepts for %d clients", a1, a2, CLIENTS);

  for (int i = 0; i < CLIENTS; i++) {
    CHECK(shutdown(fds[i], SHUT_WR) == 0);
    CHECK(bsd_recv_end(fds[i], 10) == 0);
    close(fds[i]);
  }
  CHECK(poll_until(all_terminated, NULL, 20));
  lsn_check_clean(&s1);
  lsn_check_clean(&s2);
  CHECK(lsn_get(&s1, &s1.errors) == 0 && lsn_get(&s2, &s2.errors) == 0);
  CHECK(lsn_get(&s1, &s1.accepts) == a1 && lsn_get(&s2, &s2.accepts) == a2);

  CHECK_OK(netev_listener_release(l1));
  CHECK_OK(netev_listener_release(l2));
  CHECK(lsn_wait(&s1, lsn_pred_terminated, 0, 10));
  CHECK(lsn_wait(&s2, lsn_pred_terminated, 0, 10));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&s1, &s1.terminates) == 1 && lsn_get(&s2, &s2.terminates) == 1);
  lsn_free(&s1);
  lsn_free(&s2);
  return 0;
}
