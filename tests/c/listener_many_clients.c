/* 1000 concurrent netev clients against a netev echo listener, each with a
 * pattern of its own: every byte comes back to the right client, every
 * incoming connection is offered once, and after the clients shut down
 * every connection on both sides reaches TERMINATE. */
#include "common_listener.h"

#define WANT_CLIENTS 1000
#define CLIENT_BYTES 4096
#define MAX_SEQ 8

typedef struct client {
  int index;
  netev_connection conn;
  size_t got_len;
  int mismatch;     /* first offset that differed + 1, 0 if none */
  int seq[MAX_SEQ]; /* event types, runs of DATA folded */
  int nseq;
  int after_terminate;
  int terminated;
} client;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int complete;           /* clients that got all their bytes back */
static int client_terminates;
static int accepts;            /* listener on_connection calls */
static int accept_bad;
static int server_connections; /* accepted connections' CONNECTION events */
static int server_terminates;
static int server_errors;
static int server_send_failed;
static int listener_errors;

/* Byte k of client i's message: its index first, then a mix of both. */
static unsigned char client_byte(int i, size_t k) {
  if (k < 4) return (unsigned char)((unsigned)i >> (8 * (3 - k)));
  uint32_t x = (uint32_t)(i + 1) * 2654435761u ^ (uint32_t)k * 40503u;
  x ^= x >> 15;
  return (unsigned char)(x >> 7);
}

static void client_cb(netev_connection c, const netev_event *e, void *ud) {
  client *cl = ud;
  pthread_mutex_lock(&mu);
  if (cl->terminated) cl->after_terminate++;
  if (c != cl->conn && cl->conn != 0) cl->mismatch = -1;
  int t = (int)e->type;
  if (!(t == NETEV_EVENT_DATA && cl->nseq > 0 && cl->seq[cl->nseq - 1] == t) &&
      cl->nseq < MAX_SEQ)
    cl->seq[cl->nseq++] = t;
  if (t == NETEV_EVENT_DATA) {
    for (size_t k = 0; k < e->data_len; k++) {
      size_t off = cl->got_len + k;
      if ((off >= CLIENT_BYTES || e->data[k] != client_byte(cl->index, off)) && !cl->mismatch)
        cl->mismatch = (int)off + 1;
    }
    size_t before = cl->got_len;
    cl->got_len += e->data_len;
    if (before < CLIENT_BYTES && cl->got_len >= CLIENT_BYTES) {
      complete++;
      pthread_cond_broadcast(&cv);
    }
  }
  if (t == NETEV_EVENT_TERMINATE) {
    cl->terminated = 1;
    client_terminates++;
    pthread_cond_broadcast(&cv);
  }
  pthread_mutex_unlock(&mu);
}

static bool accept_cb(netev_listener l, const netev_event *e, void *ud,
                      netev_connection_options *o) {
  (void)l;
  (void)ud;
  (void)o;
  pthread_mutex_lock(&mu);
  accepts++;
  if (e->type != NETEV_EVENT_CONNECTION || e->connection == 0 || strcmp(e->ip, "127.0.0.1") != 0 ||
      e->port == 0)
    accept_bad++;
  pthread_mutex_unlock(&mu);
  return true;
}

static void listener_cb(netev_listener l, const netev_event *e, void *ud) {
  (void)l;
  (void)ud;
  pthread_mutex_lock(&mu);
  if (e->type == NETEV_EVENT_ERROR) {
    listener_errors++;
    fprintf(stderr, "listener error: %s (%s)\n", netev_status_name(e->error), e->message);
  }
  pthread_mutex_unlock(&mu);
}

static void server_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  netev_status st = NETEV_OK;
  if (e->type == NETEV_EVENT_DATA) st = netev_connection_send(c, e->data, e->data_len);
  pthread_mutex_lock(&mu);
  if (st != NETEV_OK) server_send_failed++;
  if (e->type == NETEV_EVENT_CONNECTION) server_connections++;
  if (e->type == NETEV_EVENT_ERROR) {
    server_errors++;
    fprintf(stderr, "server connection error: %s (%s)\n", netev_status_name(e->error),
            e->message);
  }
  if (e->type == NETEV_EVENT_TERMINATE) {
    server_terminates++;
    pthread_cond_broadcast(&cv);
  }
  pthread_mutex_unlock(&mu);
}

static int wait_counter(int *counter, int want, double seconds) {
  double end = now_seconds() + seconds;
  pthread_mutex_lock(&mu);
  while (*counter < want) {
    double left = end - now_seconds();
    if (left <= 0) break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = ts.tv_nsec + 50 * 1000 * 1000;
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    pthread_cond_timedwait(&cv, &mu, &ts);
  }
  int ok = *counter >= want;
  pthread_mutex_unlock(&mu);
  return ok;
}

static int read_counter(int *counter) {
  pthread_mutex_lock(&mu);
  int v = *counter;
  pthread_mutex_unlock(&mu);
  return v;
}

int main(void) {
  watchdog(120);
  rlim_t limit = raise_nofile();
  int n = WANT_CLIENTS;
  if (limit < 2100) {
    n = (int)((limit > 200 ? limit - 100 : 100) / 2);
    printf("RLIMIT_NOFILE hard limit is %llu: scaling down to %d clients\n",
           (unsigned long long)limit, n);
  }

  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  defaults.on_connection = server_cb;
  defaults.on_data = server_cb;
  defaults.on_error = server_cb;
  defaults.on_terminate = server_cb;
  netev_listener_options o;
  CHECK_OK(netev_listener_options_init(&o));
  o.bind_address = "127.0.0.1";
  o.on_connection = accept_cb;
  o.on_error = listener_cb;
  o.connection_defaults = &defaults;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(port != 0);

  client *cls = calloc((size_t)n, sizeof *cls);
  unsigned char *msg = malloc(CLIENT_BYTES);
  CHECK(cls != NULL && msg != NULL);
  double start = now_seconds();
  for (int i = 0; i < n; i++) {
    client *cl = &cls[i];
    cl->index = i;
    netev_connection_options co;
    CHECK_OK(netev_connection_options_init(&co));
    co.on_connection = co.on_data = co.on_shutdown = co.on_error = client_cb;
    co.on_terminate = co.on_end = co.on_drain = client_cb;
    co.user_data = cl;
    co.connection_timeout = 60;
    netev_connection c;
    pthread_mutex_lock(&mu); /* cl->conn is read by its callbacks */
    netev_status st = netev_connection_open("127.0.0.1", port, &co, &c);
    if (st == NETEV_OK) cl->conn = c;
    pthread_mutex_unlock(&mu);
    CHECK_STATUS(st, NETEV_OK);
    for (size_t k = 0; k < CLIENT_BYTES; k++) msg[k] = client_byte(i, k);
    CHECK_OK(netev_connection_send(c, msg, CLIENT_BYTES));
  }
  free(msg);

  if (!wait_counter(&complete, n, 60))
    FAIL("after 60 s only %d of %d clients got their bytes back (accepts %d, server errors %d, "
         "client terminates %d)",
         read_counter(&complete), n, read_counter(&accepts), read_counter(&server_errors),
         read_counter(&client_terminates));
  printf("%d clients echoed in %.2f s\n", n, now_seconds() - start);
  pthread_mutex_lock(&mu);
  for (int i = 0; i < n; i++) {
    if (cls[i].mismatch) FAIL("client %d: wrong byte at offset %d", i, cls[i].mismatch - 1);
    if (cls[i].got_len != CLIENT_BYTES) FAIL("client %d: %zu bytes", i, cls[i].got_len);
  }
  if (accepts != n) FAIL("%d accept callbacks for %d clients", accepts, n);
  if (accept_bad) FAIL("%d accept events with wrong fields", accept_bad);
  if (server_send_failed) FAIL("%d echo sends failed", server_send_failed);
  if (listener_errors) FAIL("%d listener errors", listener_errors);
  pthread_mutex_unlock(&mu);

  for (int i = 0; i < n; i++) CHECK_OK(netev_connection_shutdown(cls[i].conn));
  if (!wait_counter(&client_terminates, n, 60))
    FAIL("only %d of %d clients terminated", read_counter(&client_terminates), n);
  if (!wait_counter(&server_terminates, n, 60))
    FAIL("only %d of %d accepted connections terminated", read_counter(&server_terminates), n);

  pthread_mutex_lock(&mu);
  for (int i = 0; i < n; i++) {
    client *cl = &cls[i];
    char seq[128] = "";
    for (int k = 0; k < cl->nseq; k++) {
      strcat(seq, netev_event_type_name(cl->seq[k]));
      strcat(seq, " ");
    }
    if (strcmp(seq, "connection data end close terminate ") != 0)
      FAIL("client %d: sequence \"%s\"", i, seq);
    if (cl->after_terminate) FAIL("client %d: events after TERMINATE", i);
    if (cl->mismatch) FAIL("client %d: wrong byte or handle", i);
  }
  if (server_connections != n) FAIL("%d server CONNECTION events for %d", server_connections, n);
  if (server_errors) FAIL("%d server connection errors", server_errors);
  if (server_terminates != n) FAIL("%d server TERMINATE events for %d", server_terminates, n);
  if (client_terminates != n) FAIL("%d client TERMINATE events for %d", client_terminates, n);
  pthread_mutex_unlock(&mu);

  for (int i = 0; i < n; i++) CHECK_OK(netev_connection_release(cls[i].conn));
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(10));
  free(cls);
  return 0;
}
