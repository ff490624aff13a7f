/* A Wasmill middleware in C. Build it with `wasmill build .` (or `make`). */
#include "wasmill.h"

/* Wraps the rest of the chain: change the message, then run the chain with wasmill_next (its
 * outputs land in `out`), or answer without it. */
static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
    return wasmill_next(msg, out);
}

WASMILL_MIDDLEWARE(handle)
