/* Memory bound with a slow reader: the host streams at the send limit
 * (default 8 MiB, resuming on each DRAIN with the refused chunk) to a BSD
 * peer whose SO_RCVBUF is 1 KiB (set before listen) and which reads 1 KiB at
 * a time with a short pause every few reads. netev writes the queue out a
 * little at a time; what it holds must stay within the limit + 1 MiB + a
 * fixed overhead (API.md, "Precise rules"): the process may grow by at most
 * limit + 2 MiB + 16 MiB. The peer must get every byte, once, in order. */
#include "common_mem.h"

int main(void) {
  watchdog(180);
  stream_params sp = {
      .test = "mem_slow_reader",
      /* well past the 8 MiB limit (plus the socket's buffers) at either scale */
      .total = (size_t)test_scale(64L * MEM_MIB, 16L * MEM_MIB),
      .rcvbuf = 1024,
      .read_size = 1024,
      .pause_every = 64,
      .pause_s = 0.0002,
      .no_delay = false,
  };
  stream_at_limit(&sp);
  return 0;
}
