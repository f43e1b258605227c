/* Options structs placed at the very end of a readable page whose next page
 * is PROT_NONE: a library that wrote or read a single byte past a struct's
 * `size` would fault. The structs have the size this program's header
 * gives them; tests/c_programs.rs also builds this program against the
 * header as released (tests/abi/netev-0.2.h) and runs it on the current
 * library, so once a struct grows, this is a struct of an earlier version
 * meeting a library whose own struct is larger.
 *
 * One round per size: first this header's sizeof (the init macros), then a
 * newer header's larger struct (sizeof + 24, through the _sized functions).
 * In each round:
 * 1. netev_runtime_options at a guard: initialised, then
 *    netev_runtime_init(1 worker thread) reads it.
 * 2. netev_connection_options (the listener's connection_defaults, an echo)
 *    and netev_listener_options, each at its own guard: initialised,
 *    filled, netev_listener_open reads both.
 * 3. netev_connection_options at a guard for a client: initialised,
 *    filled, netev_connection_open reads it; an echo round-trips and the
 *    events are "connection data* end close terminate".
 * Each initialisation leaves the bytes before the struct as they were (no
 * write outside the struct) and, for the larger size, zeroes the bytes past
 * this header's sizeof (the defaults of fields a newer header appended).
 * Each page is unmapped as soon as the call that read it returned: netev
 * copied what it needs (a later read would fault). */
#include "common_listener.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>

#define FILL 0xa5

static atomic_int bad_sends;

/* Two pages, the second PROT_NONE; returns where a struct of `size` bytes
 * ends exactly at the guard. The first page is filled with FILL. */
typedef struct guarded {
  unsigned char *map;
  size_t page;
  size_t size;
} guarded;

static void *guard_place(guarded *g, size_t size) {
  long ps = sysconf(_SC_PAGESIZE);
  CHECK(ps > 0 && size <= (size_t)ps);
  g->page = (size_t)ps;
  g->size = size;
  void *m = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) FAIL("mmap: %s", strerror(errno));
  g->map = m;
  if (mprotect(g->map + g->page, g->page, PROT_NONE) != 0) FAIL("mprotect: %s", strerror(errno));
  memset(g->map, FILL, g->page);
  void *at = g->map + g->page - size;
  CHECK((uintptr_t)at % 8 == 0); /* every size used keeps the struct aligned */
  return at;
}

/* The init wrote nothing before the struct, and zeros from `header_size`
 * (this header's sizeof) to the struct's end. */
static void guard_check_init(const guarded *g, size_t header_size, const char *what) {
  size_t start = g->page - g->size;
  for (size_t i = 0; i < start; i++)
    if (g->map[i] != FILL) FAIL("%s: init wrote byte %zu before the struct", what, start - i);
  for (size_t i = header_size; i < g->size; i++)
    if (g->map[start + i] != 0)
      FAIL("%s: byte %zu past this header's struct is %u, not 0 (its default)", what, i,
           g->map[start + i]);
  uint32_t size;
  memcpy(&size, g->map + start, sizeof size);
  if (size != g->size) FAIL("%s: init set size %u, expected %zu", what, size, g->size);
}

static void guard_free(guarded *g) { CHECK(munmap(g->map, 2 * g->page) == 0); }

static void echo_data(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  netev_status st = netev_connection_send(c, e->data, e->data_len);
  if (st != NETEV_OK && st != NETEV_ERR_CLOSED) atomic_fetch_add(&bad_sends, 1);
}

/* `extra`: bytes the structs have beyond this header's sizeof. */
static void round_trip(size_t extra) {
  char what[64];

  /* 1. the runtime */
  guarded grt;
  netev_runtime_options *rt = guard_place(&grt, sizeof *rt + extra);
  if (extra == 0)
    CHECK_OK(netev_runtime_options_init(rt));
  else
    CHECK_OK(netev_runtime_options_init_sized(rt, sizeof *rt + extra));
  snprintf(what, sizeof what, "runtime options, %zu extra bytes", extra);
  guard_check_init(&grt, sizeof *rt, what);
  rt->worker_threads = 1;
  CHECK_OK(netev_runtime_init(rt));
  guard_free(&grt);

  /* 2. the listener and its connection defaults */
  guarded gd, gl;
  netev_connection_options *d = guard_place(&gd, sizeof *d + extra);
  if (extra == 0)
    CHECK_OK(netev_connection_options_init(d));
  else
    CHECK_OK(netev_connection_options_init_sized(d, sizeof *d + extra));
  snprintf(what, sizeof what, "connection defaults, %zu extra bytes", extra);
  guard_check_init(&gd, sizeof *d, what);
  d->on_data = echo_data;
  d->no_delay = true;
  netev_listener_options *lo = guard_place(&gl, sizeof *lo + extra);
  if (extra == 0)
    CHECK_OK(netev_listener_options_init(lo));
  else
    CHECK_OK(netev_listener_options_init_sized(lo, sizeof *lo + extra));
  snprintf(what, sizeof what, "listener options, %zu extra bytes", extra);
  guard_check_init(&gl, sizeof *lo, what);
  lo->bind_address = "127.0.0.1";
  lo->connection_defaults = d;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, lo, &l));
  guard_free(&gd);
  guard_free(&gl);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));
  CHECK(port != 0);

  /* 3. a client */
  recorder r;
  rec_init(&r);
  guarded gc;
  netev_connection_options *co = guard_place(&gc, sizeof *co + extra);
  if (extra == 0)
    CHECK_OK(netev_connection_options_init(co));
  else
    CHECK_OK(netev_connection_options_init_sized(co, sizeof *co + extra));
  snprintf(what, sizeof what, "client options, %zu extra bytes", extra);
  guard_check_init(&gc, sizeof *co, what);
  rec_set_all(co, &r, rec_callback);
  co->connection_timeout = 10;
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", port, co, &c));
  guard_free(&gc);
  snprintf(what, sizeof what, "guarded options, %zu extra bytes", extra);
  client_echo_round(c, &r, what);

  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_listener_release(l));
  CHECK_OK(netev_runtime_shutdown(10));
  rec_free(&r);
  printf("%zu extra bytes: runtime, listener, defaults and client options read at the guard\n",
         extra);
}

int main(void) {
  watchdog(60);
  round_trip(0);
  round_trip(24);
  CHECK(atomic_load(&bad_sends) == 0);
  return 0;
}
