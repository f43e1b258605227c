/* Prints the size and field offsets of every public struct as this C
 * compiler lays them out; tests/c_programs.rs compares them with Rust's. */
#include "common.h"
#include <stddef.h>

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))

int main(void) {
  SIZE(netev_event);
  OFF(netev_event, type);
  OFF(netev_event, connection);
  OFF(netev_event, data);
  OFF(netev_event, data_len);
  OFF(netev_event, ip);
  OFF(netev_event, port);
  OFF(netev_event, error);
  OFF(netev_event, os_error);
  OFF(netev_event, message);
  SIZE(netev_connection_options);
  OFF(netev_connection_options, size);
  OFF(netev_connection_options, on_connection);
  OFF(netev_connection_options, on_end);
  OFF(netev_connection_options, user_data);
  OFF(netev_connection_options, user_data_free);
  OFF(netev_connection_options, no_delay);
  OFF(netev_connection_options, allow_half_open);
  OFF(netev_connection_options, keepalive);
  OFF(netev_connection_options, idle_timeout);
  OFF(netev_connection_options, connection_timeout);
  OFF(netev_connection_options, send_buffer_limit);
  OFF(netev_connection_options, dispatcher);
  SIZE(netev_error_info);
  OFF(netev_error_info, code);
  OFF(netev_error_info, os_error);
  OFF(netev_error_info, message);
  OFF(netev_error_info, component);
  SIZE(netev_runtime_options);
  OFF(netev_runtime_options, size);
  OFF(netev_runtime_options, worker_threads);
  SIZE(netev_status);
  SIZE(netev_event_type);
  /* init sets size to the struct's sizeof. */
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  CHECK(o.size == sizeof o);
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  CHECK(ro.size == sizeof ro);
  return 0;
}
