/* Prints the size and field offsets of every public struct as this C
 * compiler lays them out; tests/c_programs.rs compares them with Rust's:
 * `layout` against include/netev.h (equal), `abi_released_layout` against
 * the header as released at the start of the ABI (tests/abi/netev-0.2.h:
 * every field there at the same offset today, the structs no smaller, and
 * every field appended since placed past the old size).
 *
 * Every field of every struct is listed. A field appended later goes
 * inside `#if` on NETEV_VERSION_* (the header it first appears in), so that
 * this file still compiles against the released header. */
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
  OFF(netev_connection_options, on_data);
  OFF(netev_connection_options, on_shutdown);
  OFF(netev_connection_options, on_error);
  OFF(netev_connection_options, on_terminate);
  OFF(netev_connection_options, on_drain);
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
#ifndef NETEV_TEST_RELEASED_HEADER
  /* appended after 0.2.0 ("Connection additions", TLS) */
  OFF(netev_connection_options, bind_address);
  OFF(netev_connection_options, bind_port);
  OFF(netev_connection_options, framing);
  OFF(netev_connection_options, length_prefix_bytes);
  OFF(netev_connection_options, delimiter);
  OFF(netev_connection_options, delimiter_len);
  OFF(netev_connection_options, max_frame);
  OFF(netev_connection_options, tls);
  OFF(netev_connection_options, server_name);
#endif
  SIZE(netev_listener_options);
  OFF(netev_listener_options, size);
  OFF(netev_listener_options, on_connection);
  OFF(netev_listener_options, on_error);
  OFF(netev_listener_options, on_terminate);
  OFF(netev_listener_options, user_data);
  OFF(netev_listener_options, bind_address);
  OFF(netev_listener_options, backlog);
  OFF(netev_listener_options, reuse_port);
  OFF(netev_listener_options, connection_defaults);
  OFF(netev_listener_options, dispatcher);
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
#ifndef NETEV_TEST_RELEASED_HEADER
  SIZE(netev_tls_options);
  OFF(netev_tls_options, size);
  OFF(netev_tls_options, ca_file);
  OFF(netev_tls_options, ca_pem);
  OFF(netev_tls_options, cert_file);
  OFF(netev_tls_options, cert_pem);
  OFF(netev_tls_options, key_file);
  OFF(netev_tls_options, key_pem);
  OFF(netev_tls_options, alpn);
  OFF(netev_tls_options, insecure_skip_verify);
  OFF(netev_tls_options, require_client_cert);
  OFF(netev_tls_options, tls13_only);
  netev_tls_options to;
  CHECK_OK(netev_tls_options_init(&to));
  CHECK(to.size == sizeof to && to.ca_file == NULL && !to.tls13_only);
#endif
  /* init sets size to the struct's sizeof (as this header declares it). */
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  CHECK(o.size == sizeof o);
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  CHECK(lo.size == sizeof lo && lo.connection_defaults == NULL);
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  CHECK(ro.size == sizeof ro);
  return 0;
}
