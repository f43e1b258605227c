/* One echo round trip: the smallest proof the library works from C. */
#include "common.h"

int main(void) {
  watchdog(60);
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "hello", 5));
  CHECK(rec_wait_bytes(&r, 5, 10));
  CHECK_OK(netev_connection_shutdown(c));
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(memcmp(r.data, "hello", 5) == 0);
  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_runtime_shutdown(10));
  peer_stop(&p);
  rec_free(&r);
  return 0;
}
