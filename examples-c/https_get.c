/* https_get: fetches one page over HTTPS with netev and prints it.
 *
 * Usage: https_get HOST PORT [PATH] [--ca CA.pem]
 *
 * The server's certificate is verified against CA.pem, or, without --ca,
 * against the system's trust store; its name is checked against HOST
 * (sent as SNI). A failed handshake (unknown issuer, a name mismatch, an
 * expired certificate, ...) arrives as an ERROR event, NETEV_ERR_TLS with
 * the reason, and ends the connection before any data.
 *
 * It sends "GET PATH HTTP/1.1" with "Connection: close", prints the
 * response (head and body) to stdout as it arrives, and exits 0 when the
 * response was "200" and the server closed the TLS session cleanly
 * (close_notify: the body is known to be whole), 1 otherwise. */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "https_get: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

typedef struct fetch {
  char head[16]; /* the first bytes of the response: "HTTP/1.1 200" */
  size_t head_len;
  size_t bytes;
  int failed;
  int ended; /* END: the server's close_notify */
} fetch;

/* Callbacks run on a netev I/O thread, one at a time for this connection;
 * main reads `fetch` only after the wait, when every callback returned. */
static void on_connection(netev_connection c, const netev_event *e, void *ud) {
  (void)e;
  (void)ud;
  char version[32], alpn[32];
  size_t n;
  check(netev_connection_tls_version(c, version, sizeof version, &n), "tls_version");
  check(netev_connection_alpn(c, alpn, sizeof alpn, &n), "alpn");
  fprintf(stderr, "https_get: connected, %s, ALPN %s\n", version, *alpn ? alpn : "none");
}

static void on_data(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  fetch *f = ud;
  size_t room = sizeof f->head - 1 - f->head_len;
  size_t k = e->data_len < room ? e->data_len : room;
  memcpy(f->head + f->head_len, e->data, k);
  f->head_len += k;
  f->bytes += e->data_len;
  fwrite(e->data, 1, e->data_len, stdout);
}

static void on_end(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)e;
  ((fetch *)ud)->ended = 1;
}

static void on_error(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  ((fetch *)ud)->failed = 1;
  fprintf(stderr, "https_get: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

int main(int argc, char **argv) {
  const char *host = NULL, *port_arg = NULL, *path = "/", *ca = NULL;
  int positional = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc) {
      ca = argv[++i];
    } else if (argv[i][0] != '-' && positional < 3) {
      const char **slot[] = {&host, &port_arg, &path};
      *slot[positional++] = argv[i];
    } else {
      positional = -1;
      break;
    }
  }
  if (positional < 2) {
    fprintf(stderr, "usage: %s HOST PORT [PATH] [--ca CA.pem]\n", argv[0]);
    return 2;
  }
  char *end;
  long port = strtol(port_arg, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535) {
    fprintf(stderr, "https_get: bad port %s\n", port_arg);
    return 2;
  }

  netev_tls_options t;
  check(netev_tls_options_init(&t), "tls_options_init");
  t.ca_file = ca; /* NULL: the system's trust store */
  t.alpn = "http/1.1";
  netev_tls_config tls;
  check(netev_tls_client_config_create(&t, &tls), "tls_client_config_create");

  fetch f;
  memset(&f, 0, sizeof f);
  netev_connection_options o;
  check(netev_connection_options_init(&o), "connection_options_init");
  o.on_connection = on_connection;
  o.on_data = on_data;
  o.on_end = on_end;
  o.on_error = on_error;
  o.user_data = &f;
  o.tls = tls; /* the name checked and sent is HOST */
  o.connection_timeout = 10;
  netev_connection c;
  check(netev_connection_open(host, (uint16_t)port, &o, &c), "connection_open");
  check(netev_tls_config_release(tls), "tls_config_release"); /* c keeps its own */

  char request[1024];
  int n = snprintf(request, sizeof request,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
  if (n < 0 || (size_t)n >= sizeof request) {
    fprintf(stderr, "https_get: path too long\n");
    return 2;
  }
  check(netev_connection_send(c, request, (size_t)n), "send"); /* sent after the handshake */
  netev_status waited = netev_connection_wait(c, 30);
  check(netev_connection_release(c), "release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");
  if (waited != NETEV_OK) {
    fprintf(stderr, "https_get: no answer within 30 s\n");
    return 1;
  }
  /* Every callback has returned: f is ours alone. */
  int ok = !f.failed && f.ended && strncmp(f.head, "HTTP/1.1 200", 12) == 0;
  fprintf(stderr, "https_get: %zu bytes, %s\n", f.bytes, ok ? "ok" : "failed");
  return ok ? 0 : 1;
}
