/* http_hello: a small HTTP/1.1 server with keep-alive, on netev.
 *
 * Every GET gets "200 OK" and the body "hello from netev\n". What it shows
 * is the part every TCP server has to get right: requests arrive in
 * arbitrary pieces. One request may come split over several DATA events,
 * and one DATA event may hold several requests (pipelining). So each
 * connection gathers bytes in its own buffer, answers each complete request
 * in order, and keeps the rest for later.
 *
 * - keep-alive: a connection serves requests until the client says
 *   "Connection: close" (or speaks HTTP/1.0 without keep-alive); then the
 *   response goes out and the write side is shut down after it.
 * - a method other than GET: 405, then close. A request with a body: 400,
 *   then close (this server does not read bodies, so it could not find the
 *   start of the next request).
 * - a request head larger than 8 KiB: 431, then close. Memory per
 *   connection is bounded.
 * - 30 s without traffic ends an idle connection (netev's idle_timeout).
 *
 * SIGINT or SIGTERM stops it like echo_server: main waits in poll() on a
 * self-pipe.
 *
 * Usage: http_hello [--cert CHAIN.pem --key KEY.pem] [PORT]
 *   (PORT 0 or nothing: the system picks a free port)
 * First line on stdout: "listening on port N". Then: curl http://127.0.0.1:N/
 * With --cert and --key it serves HTTPS (TLS 1.2 and 1.3 through netev's
 * rustls; the connections' DATA is plaintext, so nothing else changes):
 *   curl --cacert CA.pem https://localhost:N/
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_HEAD 8192 /* request line and headers, the blank line included */
#define BODY "hello from netev\n"

/* One per connection: its user_data, freed by netev after TERMINATE. Only
 * that connection's callbacks touch it, and they never run at the same
 * time, so it needs no lock. */
typedef struct {
  char peer[64];
  bool done; /* a last response went out: ignore whatever else arrives */
  size_t len;
  char buf[MAX_HEAD];
} session;

static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "http_hello: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1);
  errno = saved;
}

/* Sends one whole response. `last`: shut the write side down after it (netev
 * writes everything queued first, then the FIN), and stop reading requests. */
static void respond(netev_connection conn, session *s, const char *status, const char *extra_headers,
                    const char *body, bool last) {
  char msg[512];
  int n = snprintf(msg, sizeof msg,
                   "HTTP/1.1 %s\r\n"
                   "Content-Type: text/plain\r\n"
                   "Content-Length: %zu\r\n"
                   "%s%s"
                   "\r\n"
                   "%s",
                   status, strlen(body), extra_headers, last ? "Connection: close\r\n" : "", body);
  if (n < 0 || (size_t)n >= sizeof msg) {
    fprintf(stderr, "http_hello: response too long\n");
    exit(1);
  }
  /* One send per response: responses go out whole and in request order. */
  netev_status st = netev_connection_send(conn, msg, (size_t)n);
  if (st == NETEV_ERR_BUFFER_FULL) {
    /* A client that pipelines requests without reading the answers: 8 MiB
     * of responses are waiting for it. Cut it off. */
    fprintf(stderr, "http_hello: %s does not read its responses: closing\n", s->peer);
    s->done = true;
    check(netev_connection_close(conn), "close");
    return;
  }
  if (st == NETEV_ERR_CLOSED) { /* already closing: nobody to answer */
    s->done = true;
    return;
  }
  check(st, "send");
  if (last) {
    s->done = true;
    st = netev_connection_shutdown(conn);
    if (st != NETEV_ERR_CLOSED) check(st, "shutdown");
  }
}

/* Whether the comma-separated header value [v, end) holds `token`, in any case. */
static bool has_token(const char *v, const char *end, const char *token) {
  size_t tlen = strlen(token);
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ',')) v++;
    const char *stop = v;
    while (stop < end && *stop != ',') stop++;
    const char *t = stop;
    while (t > v && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if ((size_t)(t - v) == tlen && strncasecmp(v, token, tlen) == 0) return true;
    v = stop;
  }
  return false;
}

/* Answers the request whose head is buf[0, len), "\r\n\r\n" included. */
static void handle_request(netev_connection conn, session *s, const char *head, size_t len) {
  const char *end = head + len;
  if (memchr(head, '\0', len)) { /* never valid, and it would cut the strstr calls below short */
    printf("%s: NUL byte in the request -> 400\n", s->peer);
    respond(conn, s, "400 Bad Request", "", "bad request\n", true);
    return;
  }
  const char *eol = strstr(head, "\r\n"); /* there is one: the head ends with "\r\n\r\n" */

  /* Request line: METHOD SP TARGET SP HTTP/1.x */
  const char *sp1 = memchr(head, ' ', (size_t)(eol - head));
  const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
  if (!sp1 || !sp2 || sp1 == head || sp2 == sp1 + 1 || eol - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
    printf("%s: malformed request line -> 400\n", s->peer);
    respond(conn, s, "400 Bad Request", "", "bad request\n", true);
    return;
  }
  bool http10 = sp2[8] == '0';

  /* Headers: only those that decide how the connection goes on. */
  bool close_asked = false, keep_alive_asked = false, has_body = false;
  for (const char *line = eol + 2; line < end - 2; line = strstr(line, "\r\n") + 2) {
    const char *line_end = strstr(line, "\r\n");
    const char *colon = memchr(line, ':', (size_t)(line_end - line));
    if (!colon) continue;
    size_t name_len = (size_t)(colon - line);
    const char *value = colon + 1;
    if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0) {
      close_asked |= has_token(value, line_end, "close");
      keep_alive_asked |= has_token(value, line_end, "keep-alive");
    } else if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
      const char *v_end = line_end;
      while (value < v_end && (*value == ' ' || *value == '\t')) value++;
      while (v_end > value && (v_end[-1] == ' ' || v_end[-1] == '\t')) v_end--;
      bool zero = v_end > value && strspn(value, "0") >= (size_t)(v_end - value);
      has_body |= !zero;
    } else if (name_len == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
      has_body = true;
    }
  }
  /* HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless told otherwise. */
  bool last = close_asked || (http10 && !keep_alive_asked);

  int method_len = (int)(sp1 - head), target_len = (int)(sp2 - sp1 - 1);
  if (method_len != 3 || strncmp(head, "GET", 3) != 0) {
    printf("%s: %.*s %.*s -> 405\n", s->peer, method_len, head, target_len, sp1 + 1);
    respond(conn, s, "405 Method Not Allowed", "Allow: GET\r\n", "only GET here\n", true);
    return;
  }
  if (has_body) {
    printf("%s: GET %.*s with a body -> 400\n", s->peer, target_len, sp1 + 1);
    respond(conn, s, "400 Bad Request", "", "a GET has no body here\n", true);
    return;
  }
  printf("%s: GET %.*s -> 200%s\n", s->peer, target_len, sp1 + 1, last ? " (close)" : "");
  respond(conn, s, "200 OK", http10 && !last ? "Connection: keep-alive\r\n" : "", BODY, last);
}

/* The end of the first request head in buf[0, len): just past its
 * "\r\n\r\n", or 0 when it has not all arrived yet. */
static size_t head_end(const char *buf, size_t len) {
  for (size_t i = 3; i < len; i++)
    if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') return i + 1;
  return 0;
}

static void on_data(netev_connection conn, const netev_event *e, void *user_data) {
  session *s = user_data;
  const uint8_t *p = e->data, *end = e->data + e->data_len;
  /* The event may carry more than the buffer holds (many pipelined
   * requests): take what fits, answer what is complete, repeat. */
  while (p < end && !s->done) {
    size_t n = (size_t)(end - p) < MAX_HEAD - s->len ? (size_t)(end - p) : MAX_HEAD - s->len;
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    p += n;

    size_t used;
    for (;;) {
      /* Empty lines between requests are allowed (RFC 9112, 2.2): skip them. */
      size_t skip = 0;
      while (s->len - skip >= 2 && s->buf[skip] == '\r' && s->buf[skip + 1] == '\n') skip += 2;
      memmove(s->buf, s->buf + skip, s->len - skip);
      s->len -= skip;
      if (s->done || (used = head_end(s->buf, s->len)) == 0) break;
      /* NUL-terminate the head in place, for strstr: its last byte is the
       * final '\n', which the parser does not need. */
      s->buf[used - 1] = '\0';
      handle_request(conn, s, s->buf, used - 1);
      memmove(s->buf, s->buf + used, s->len - used); /* pipelined bytes stay for the next round */
      s->len -= used;
    }
    if (!s->done && s->len == MAX_HEAD) {
      printf("%s: request head over %d bytes -> 431\n", s->peer, MAX_HEAD);
      respond(conn, s, "431 Request Header Fields Too Large", "", "request head too large\n", true);
    }
  }
}

static void on_error(netev_connection conn, const netev_event *e, void *user_data) {
  (void)conn;
  session *s = user_data;
  if (e->error == NETEV_ERR_TIMEOUT)
    printf("%s: idle for 30 s, closed\n", s->peer);
  else
    printf("%s: %s: %s\n", s->peer, netev_status_name((int32_t)e->error), e->message);
}

static bool on_incoming(netev_listener listener, const netev_event *e, void *user_data,
                        netev_connection_options *options) {
  (void)listener;
  (void)user_data;
  session *s = malloc(sizeof *s);
  if (!s) return false; /* out of memory: refuse this one, keep serving */
  s->len = 0;
  s->done = false;
  if (strchr(e->ip, ':'))
    snprintf(s->peer, sizeof s->peer, "[%s]:%u", e->ip, (unsigned)e->port);
  else
    snprintf(s->peer, sizeof s->peer, "%s:%u", e->ip, (unsigned)e->port);
  options->user_data = s;
  options->user_data_free = free;
  return true;
}

int main(int argc, char **argv) {
  const char *cert = NULL, *key = NULL, *port_arg = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc) {
      cert = argv[++i];
    } else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc) {
      key = argv[++i];
    } else if (!port_arg && argv[i][0] != '-') {
      port_arg = argv[i];
    } else {
      fprintf(stderr, "usage: %s [--cert CHAIN.pem --key KEY.pem] [PORT]\n", argv[0]);
      return 2;
    }
  }
  if (!cert != !key) {
    fprintf(stderr, "http_hello: --cert and --key go together\n");
    return 2;
  }
  char *end;
  long port = port_arg ? strtol(port_arg, &end, 10) : 0;
  if (port_arg && (*port_arg == '\0' || *end != '\0' || port < 0 || port > 65535)) {
    fprintf(stderr, "http_hello: bad port\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* The self-pipe and handlers, with the signals blocked while netev starts
   * its threads so that only main ever receives them (see echo_server.c). */
  if (pipe(signal_pipe) != 0) {
    perror("http_hello: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("http_hello: fcntl");
      return 1;
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      pthread_sigmask(SIG_BLOCK, &stop_signals, NULL) != 0) {
    perror("http_hello: signals");
    return 1;
  }

  netev_connection_options defaults; /* copied by listener_open */
  check(netev_connection_options_init(&defaults), "connection_options_init");
  defaults.on_data = on_data;
  defaults.on_error = on_error;
  defaults.no_delay = true; /* small responses: no Nagle delay */
  defaults.idle_timeout = 30;
  netev_tls_config tls = 0;
  if (cert) {
    /* HTTPS: a server config; the listener's connections then speak only
     * TLS (a failed handshake is an ERROR on that connection, no request). */
    netev_tls_options t;
    check(netev_tls_options_init(&t), "tls_options_init");
    t.cert_file = cert;
    t.key_file = key;
    t.alpn = "http/1.1";
    check(netev_tls_server_config_create(&t, &tls), "tls_server_config_create");
    defaults.tls = tls;
  }

  netev_listener_options options;
  check(netev_listener_options_init(&options), "listener_options_init");
  options.on_connection = on_incoming;
  options.connection_defaults = &defaults;

  netev_listener listener;
  check(netev_listener_open((uint16_t)port, &options, &listener), "listener_open");
  if (tls) check(netev_tls_config_release(tls), "tls_config_release"); /* the listener keeps it */
  uint16_t real_port;
  check(netev_listener_port(listener, &real_port), "listener_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("http_hello: pthread_sigmask");
    return 1;
  }

  unsigned char sig = 0;
  for (;;) {
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("http_hello: poll");
      return 1;
    }
    if (read(signal_pipe[0], &sig, 1) == 1) break;
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  check(netev_listener_terminate(listener), "listener_terminate");
  check(netev_listener_release(listener), "listener_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");
  return 0;
}
